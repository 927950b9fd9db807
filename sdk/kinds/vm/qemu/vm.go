package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// vm is a QEMU process. Its watcher goroutine (reapChild or the pidfd
// watcher) ends when the process exits, then closes done; Stop makes sure
// that happens.
type vm struct {
	cfg         hypervisor.Config
	files       files
	choice      hypervisor.AccelChoice
	stopTimeout time.Duration
	pid         int
	args        []string
	timings     map[string]time.Time // set before the VM is shared

	done chan struct{} // closed after exit and cleanup

	mu       sync.Mutex
	status   hypervisor.ExitStatus
	cgRemove func() error
	// cgTaken: exited took cgRemove (a later MoveCgroup cleans up itself).
	cgTaken  bool
	cleanErr error
}

var _ hypervisor.VM = (*vm)(nil)

func newVM(cfg hypervisor.Config, ch hypervisor.AccelChoice, stopTimeout time.Duration, pid int, args []string) *vm {
	return &vm{
		cfg: cfg, files: vmFiles(cfg.Dir), choice: ch, stopTimeout: stopTimeout,
		pid: pid, args: args, timings: map[string]time.Time{}, done: make(chan struct{}),
	}
}

func (v *vm) setCgroupCleanup(f func() error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cgRemove = f
}

// reapChild waits for our child and records its status.
func (v *vm) reapChild(cmd *exec.Cmd) {
	_ = cmd.Wait() // the status is in ProcessState
	st := hypervisor.ExitStatus{ExitedAt: time.Now()}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		st.Signal = ws.Signal()
		st.Code = 128 + int(ws.Signal())
	} else {
		st.Code = cmd.ProcessState.ExitCode()
	}
	v.exited(st)
}

// watchPidfd watches a process that is not our child.
func (v *vm) watchPidfd() error {
	fd, err := unix.PidfdOpen(v.pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", v.pid, err)
	}
	go func() {
		// Not our child (or reaped by the Cmd that started it): the
		// status stays unknown. A failed wait is taken for the exit, as
		// before.
		_, _ = pidfd.WaitNoReap(context.Background(), v.pid, fd)
		v.exited(hypervisor.ExitStatus{Code: hypervisor.UnknownExitCode, ExitedAt: time.Now()})
	}()
	return nil
}

// exited removes the VM's host files and cgroup, then publishes st.
func (v *vm) exited(st hypervisor.ExitStatus) {
	var errs []error
	for _, p := range []string{v.files.qmp, v.files.agent, v.files.pid} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	v.mu.Lock()
	rm := v.cgRemove
	v.cgTaken = true
	v.mu.Unlock()
	if rm != nil {
		if err := rm(); err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", v.cfg.CgroupPath, err))
		}
	}
	v.mu.Lock()
	v.status = st
	v.cleanErr = errors.Join(errs...)
	v.mu.Unlock()
	close(v.done)
}

// Pid returns QEMU's pid.
func (v *vm) Pid() int { return v.pid }

// Wait waits for QEMU to exit.
func (v *vm) Wait(ctx context.Context) (hypervisor.ExitStatus, error) {
	select {
	case <-v.done:
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.status, nil
	case <-ctx.Done():
		return hypervisor.ExitStatus{}, ctx.Err()
	}
}

// Stop quits QEMU through QMP (unless force) and kills it if it is still
// there after the stop timeout or when ctx is about to end.
func (v *vm) Stop(ctx context.Context, force bool) error {
	select {
	case <-v.done:
		return v.cleanupErr()
	default:
	}
	if !force {
		gctx, cancel := context.WithTimeout(ctx, v.stopTimeout)
		err := v.quit(gctx)
		if err == nil {
			select {
			case <-v.done:
			case <-gctx.Done():
			}
		}
		cancel()
		select {
		case <-v.done:
			return v.cleanupErr()
		default:
		}
	}
	if err := unix.Kill(v.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("qemu: kill %d: %w", v.pid, err)
	}
	select {
	case <-v.done:
		return v.cleanupErr()
	case <-ctx.Done():
		return fmt.Errorf("qemu: pid %d killed but not reaped: %w", v.pid, ctx.Err())
	}
}

func (v *vm) cleanupErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cleanErr != nil {
		return fmt.Errorf("qemu: vm %s exited, cleanup: %w", v.cfg.ID, v.cleanErr)
	}
	return nil
}

// quit asks QEMU to exit cleanly. microvm's ACPI power button
// (system_powerdown) needs a guest that handles it; the agent powers off
// on its own Shutdown RPC instead, so the driver goes straight to "quit".
func (v *vm) quit(ctx context.Context) error {
	q, err := v.qmp(ctx)
	if err != nil {
		return err
	}
	defer q.close()
	_, err = q.execute(ctx, "quit", nil)
	return err
}

// qmp opens a QMP session, giving up when QEMU exits.
func (v *vm) qmp(ctx context.Context) (*qmp, error) {
	return dialQMP(ctx, v.files.qmp, v.done)
}

var _ hypervisor.FDHolder = (*vm)(nil)

// HoldFD hands QEMU a duplicate of f (QMP getfd, SCM_RIGHTS): QEMU keeps
// it in its monitor, across QMP sessions, until closefd or its exit.
func (v *vm) HoldFD(ctx context.Context, name string, f *os.File) error {
	q, err := v.qmp(ctx)
	if err != nil {
		return err
	}
	defer q.close()
	_, err = q.executeWithFile(ctx, "getfd", map[string]any{"fdname": name}, f)
	return err
}

// ReleaseFD closes what QEMU holds under name (QMP closefd).
func (v *vm) ReleaseFD(ctx context.Context, name string) error {
	q, err := v.qmp(ctx)
	if err != nil {
		return err
	}
	defer q.close()
	_, err = q.execute(ctx, "closefd", map[string]any{"fdname": name})
	if err != nil && strings.Contains(err.Error(), "not found") {
		return nil
	}
	return err
}

// AgentConn dials the agent socket.
func (v *vm) AgentConn(ctx context.Context) (net.Conn, error) {
	conn, err := dialRetry(ctx, v.files.agent, v.done)
	if err != nil {
		return nil, fmt.Errorf("qemu: agent socket of vm %s: %w", v.cfg.ID, err)
	}
	return conn, nil
}

// Info describes the VM.
func (v *vm) Info() map[string]string {
	m := map[string]string{
		"hypervisor":     Name,
		"accel":          string(v.choice.Accel),
		"accel_reason":   v.choice.Reason,
		"pid":            strconv.Itoa(v.pid),
		"console_log":    v.files.console,
		"qemu_log":       v.files.log,
		"qmp_socket":     v.files.qmp,
		"agent_socket":   v.files.agent,
		"command_line":   strings.Join(v.args, " "),
		"kernel_cmdline": kernelCmdline(v.cfg, v.choice),
	}
	if s, r := v.timings["start"], v.timings["running"]; !s.IsZero() && !r.IsZero() {
		m["vmm_start_duration"] = r.Sub(s).String()
	}
	if s, r := v.timings["start"], v.timings["restored"]; !s.IsZero() && !r.IsZero() {
		m["restore_duration"] = r.Sub(s).String()
	}
	return m
}

// logTail returns the end of QEMU's stderr log for error messages.
func (v *vm) logTail() string {
	b, err := os.ReadFile(v.files.log)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 1024 {
		b = b[len(b)-1024:]
	}
	return ": qemu says: " + strings.TrimSpace(string(b))
}

var _ hypervisor.CgroupMover = (*vm)(nil)

// MoveCgroup moves QEMU into the cgroup at path and removes the one it
// leaves (if the driver created it).
func (v *vm) MoveCgroup(path string) error {
	select {
	case <-v.done:
		return fmt.Errorf("qemu: vm %s has exited", v.cfg.ID)
	default:
	}
	rm, err := placeInCgroup(path, v.pid)
	if err != nil {
		if rm != nil {
			_ = rm()
		}
		return fmt.Errorf("qemu: %w", err)
	}
	v.mu.Lock()
	if v.cgTaken { // exited meanwhile: its cleanup ran without this cgroup
		v.mu.Unlock()
		if rm != nil {
			_ = rm()
		}
		return fmt.Errorf("qemu: vm %s has exited", v.cfg.ID)
	}
	old := v.cgRemove
	v.cgRemove = rm
	v.mu.Unlock()
	if old != nil {
		if err := old(); err != nil {
			return fmt.Errorf("qemu: remove the cgroup left: %w", err)
		}
	}
	return nil
}

var _ hypervisor.StateSaver = (*vm)(nil)

// SaveState stops the guest and migrates it to path, leaving out the
// memory in a shared memory file (x-ignore-shared).
func (v *vm) SaveState(ctx context.Context, path string) error {
	if !v.cfg.MemoryShared || v.cfg.MemoryFile == "" {
		return fmt.Errorf("qemu: vm %s: saving its state needs a shared memory file", v.cfg.ID)
	}
	if !filepath.IsAbs(path) || strings.ContainsAny(path, "'\n") {
		return fmt.Errorf("qemu: state file %q: not absolute or has a quote", path)
	}
	q, err := v.qmp(ctx)
	if err != nil {
		return err
	}
	defer q.close()
	if _, err := q.execute(ctx, "stop", nil); err != nil {
		return err
	}
	if _, err := q.execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	if _, err := q.execute(ctx, "migrate", map[string]any{"uri": "exec:cat > '" + path + "'"}); err != nil {
		return err
	}
	if err := pollMigration(ctx, q); err != nil {
		return fmt.Errorf("qemu: save the state of vm %s: %w", v.cfg.ID, err)
	}
	return nil
}
