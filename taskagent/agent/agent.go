package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Version is the agent's version, set at build time with
// -ldflags "-X github.com/magnetar-io/magnetar/taskagent/agent.Version=...".
var Version = "dev"

// Options configures an Agent. The zero value of each field means the
// default used inside the guest.
type Options struct {
	// PortName is the name of the virtio-serial port to serve on
	// (default "agent").
	PortName string
	// PortsDir is the sysfs directory listing virtio-serial ports
	// (default /sys/class/virtio-ports).
	PortsDir string
	// DevDir is where the port device nodes are (default /dev).
	DevDir string
	// ModulesDir holds the kernel modules and their load order in the
	// file "order" (default /modules).
	ModulesDir string
	// EtcDir is where Setup writes hostname, hosts and resolv.conf
	// (default /etc).
	EtcDir string
	// SysctlDir is where Setup writes the pod's sysctls
	// (default /proc/sys).
	SysctlDir string
	// StdioDir holds the FIFOs of the processes' standard streams
	// (default /run/magnetar/stdio).
	StdioDir string
	// PowerOff ends the VM after Shutdown; the default syncs and calls
	// reboot(2).
	PowerOff func()
}

func (o *Options) defaults() {
	if o.PortName == "" {
		o.PortName = "agent"
	}
	if o.PortsDir == "" {
		o.PortsDir = "/sys/class/virtio-ports"
	}
	if o.DevDir == "" {
		o.DevDir = "/dev"
	}
	if o.ModulesDir == "" {
		o.ModulesDir = "/modules"
	}
	if o.EtcDir == "" {
		o.EtcDir = "/etc"
	}
	if o.StdioDir == "" {
		o.StdioDir = stdioDir
	}
	if o.SysctlDir == "" {
		o.SysctlDir = "/proc/sys"
	}
	if o.PowerOff == nil {
		o.PowerOff = powerOff
	}
}

// Agent is the task agent of one guest.
type Agent struct {
	opts    Options
	logp    atomic.Pointer[slog.Logger]
	level   *slog.LevelVar
	events  *eventHub
	reaper  *Reaper
	started time.Time
	// tasks is the in-guest runtime behind the Task API; nil when it
	// could not start (then only AgentService is served).
	tasks *tasks
	// replies counts the answers written to the host.
	replies replies
	// stdio holds the processes' standard streams across host sessions.
	stdio *stdioBridge
}

// New returns an agent that logs to log at the level held by level (which
// Setup changes).
func New(opts Options, log *slog.Logger, level *slog.LevelVar, events *eventHub) *Agent {
	opts.defaults()
	if events == nil {
		events = newEventHub(256)
	}
	a := &Agent{opts: opts, level: level, events: events, reaper: NewReaper("/proc", DefaultReapGrace), started: time.Now(), stdio: newStdioBridge(opts.StdioDir)}
	a.logp.Store(log)
	return a
}

// log returns the agent's logger (Setup adds the sandbox ID to it).
func (a *Agent) log() *slog.Logger { return a.logp.Load() }

// Reaper returns the agent's reaper; code in the agent that starts
// processes registers them with it.
func (a *Agent) Reaper() *Reaper { return a.reaper }

// Main is magnetar-agent's main function. As PID 1 it boots the guest and
// serves until Shutdown; if serving fails it powers the VM off. It returns
// the process exit code (only when not PID 1).
func Main(ctx context.Context) int {
	level := new(slog.LevelVar)
	if cmdlineFlag("/proc/cmdline", "magnetar.debug") {
		level.Set(slog.LevelDebug)
	}
	// Libraries (ttrpc, go-runc) log through logrus: JSON on the console too.
	logrus.SetFormatter(&logrus.JSONFormatter{})
	logrus.SetOutput(os.Stderr)
	if level.Level() <= slog.LevelDebug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	hub := newEventHub(256)
	log := slog.New(newTeeHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}), hub, level))
	a := New(Options{}, log, level, hub)
	pid1 := os.Getpid() == 1
	log.Info("magnetar-agent starting", "version", Version, "pid1", pid1)
	if pid1 {
		if err := a.Boot(ctx); err != nil {
			log.Error("boot failed", "error", err)
			a.opts.PowerOff()
			return 1
		}
		t, err := startTasks(ctx)
		if err != nil {
			log.Error("task API unavailable", "error", err)
		}
		a.tasks = t
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() { // owned: stopped by cancel, waited for below
		defer close(done)
		a.reaper.Run(ctx)
	}()
	fwd := make(chan struct{})
	go func() { // owned: stopped by cancel, waited for below
		defer close(fwd)
		a.forwardTaskEvents(ctx)
	}()
	err := a.Serve(ctx)
	cancel()
	<-done
	<-fwd
	log.Error("agent stopped", "error", err)
	if pid1 {
		a.opts.PowerOff()
	}
	return 1
}

// cmdlineFlag reports whether the kernel command line in file sets key to
// 1, true or yes (or names key alone).
func cmdlineFlag(file, key string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(b)) {
		k, v, hasValue := strings.Cut(f, "=")
		if k != key {
			continue
		}
		if !hasValue {
			return true
		}
		switch v {
		case "1", "true", "yes", "on":
			return true
		}
		return false
	}
	return false
}

// bootTime is when the kernel booted, by the current wall clock.
func bootTime() (time.Time, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}, fmt.Errorf("clock_gettime(CLOCK_BOOTTIME): %w", err)
	}
	return time.Now().Add(-time.Duration(ts.Nano())), nil
}

// powerOff syncs and powers the VM off; with QEMU's -no-reboot a restart
// also ends the VM, so it is the fallback.
func powerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	if err != nil {
		err = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	fmt.Fprintf(os.Stderr, "magnetar-agent: power off: %v\n", errors.Join(err))
	for {
		time.Sleep(time.Hour)
	}
}
