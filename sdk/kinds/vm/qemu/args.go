package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// Defaults applied to a [hypervisor.Config] that leaves them zero.
const (
	DefaultVCPUs     = 1
	DefaultMemoryMiB = 256
)

// File names inside [hypervisor.Config.Dir].
const (
	QMPSocket   = "qmp.sock"    // QMP control socket
	AgentSocket = "agent.sock"  // host end of the virtio-serial port "agent"
	ConsoleLog  = "console.log" // the guest's serial console (ttyS0)
	PidFile     = "qemu.pid"    // written by QEMU (-pidfile)
	QEMULog     = "qemu.log"    // QEMU's own stderr
)

// AgentPortName is the virtio-serial port name the guest agent opens.
const AgentPortName = "agent"

// maxSocketPath is sizeof(sockaddr_un.sun_path) - 1.
const maxSocketPath = 107

// files are the per-VM paths.
type files struct {
	qmp, agent, console, pid, log string
}

func vmFiles(dir string) files {
	return files{
		qmp:     filepath.Join(dir, QMPSocket),
		agent:   filepath.Join(dir, AgentSocket),
		console: filepath.Join(dir, ConsoleLog),
		pid:     filepath.Join(dir, PidFile),
		log:     filepath.Join(dir, QEMULog),
	}
}

// validate checks cfg and fills defaults in a copy.
func validate(cfg hypervisor.Config) (hypervisor.Config, error) {
	var errs []error
	if cfg.ID == "" {
		errs = append(errs, errors.New("empty id"))
	}
	if !filepath.IsAbs(cfg.Dir) {
		errs = append(errs, fmt.Errorf("work dir %q is not absolute", cfg.Dir))
	} else if fi, err := os.Stat(cfg.Dir); err != nil || !fi.IsDir() {
		errs = append(errs, fmt.Errorf("work dir %q is not a directory", cfg.Dir))
	}
	f := vmFiles(cfg.Dir)
	for _, s := range []string{f.qmp, f.agent} {
		if len(s) > maxSocketPath {
			errs = append(errs, fmt.Errorf("socket path %q longer than %d bytes: use a shorter work dir", s, maxSocketPath))
		}
	}
	if cfg.Kernel == "" {
		errs = append(errs, errors.New("no kernel"))
	} else if _, err := os.Stat(cfg.Kernel); err != nil {
		errs = append(errs, fmt.Errorf("kernel: %w", err))
	}
	if cfg.Initrd != "" {
		if _, err := os.Stat(cfg.Initrd); err != nil {
			errs = append(errs, fmt.Errorf("initrd: %w", err))
		}
	}
	if cfg.VCPUs < 0 || cfg.MemoryMiB < 0 {
		errs = append(errs, fmt.Errorf("negative size: %d vCPUs, %d MiB", cfg.VCPUs, cfg.MemoryMiB))
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = DefaultVCPUs
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	tags := map[string]bool{}
	for _, s := range cfg.Shares {
		if s.Tag == "" || strings.ContainsAny(s.Tag, ", ") || len(s.Tag) > 31 {
			errs = append(errs, fmt.Errorf("share %q: bad 9p tag %q", s.HostPath, s.Tag))
		}
		if tags[s.Tag] {
			errs = append(errs, fmt.Errorf("share tag %q used twice", s.Tag))
		}
		tags[s.Tag] = true
		if fi, err := os.Stat(s.HostPath); err != nil || !fi.IsDir() {
			errs = append(errs, fmt.Errorf("share %q is not a directory", s.HostPath))
		}
	}
	if cfg.TCGCacheMiB < 0 {
		errs = append(errs, fmt.Errorf("negative tcg cache size %d MiB", cfg.TCGCacheMiB))
	}
	if cfg.MemoryFile != "" && !filepath.IsAbs(cfg.MemoryFile) {
		errs = append(errs, fmt.Errorf("memory file %q is not absolute", cfg.MemoryFile))
	}
	if cfg.Incoming != "" {
		if cfg.MemoryFile == "" || cfg.MemoryShared {
			errs = append(errs, errors.New("a restored vm needs a private memory file with the saved memory"))
		} else if fi, err := os.Stat(cfg.MemoryFile); err != nil || fi.Size() < int64(cfg.MemoryMiB)<<20 {
			errs = append(errs, fmt.Errorf("memory file %q missing or shorter than %d MiB", cfg.MemoryFile, cfg.MemoryMiB))
		}
		if !filepath.IsAbs(cfg.Incoming) || strings.ContainsAny(cfg.Incoming, "'\n") {
			errs = append(errs, fmt.Errorf("state file %q: not absolute or has a quote", cfg.Incoming))
		} else if _, err := os.Stat(cfg.Incoming); err != nil {
			errs = append(errs, fmt.Errorf("state file: %w", err))
		}
	}
	for i, t := range cfg.Taps {
		if t.File == nil && t.Name == "" {
			errs = append(errs, fmt.Errorf("tap %d: neither name nor file", i))
		}
		if t.MAC != "" {
			if _, err := net.ParseMAC(t.MAC); err != nil {
				errs = append(errs, fmt.Errorf("tap %d: %w", i, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("qemu: invalid vm config: %w", err)
	}
	return cfg, nil
}

// kernelCmdline is the guest kernel command line: console on the first
// serial port, panic and reboot end QEMU (with -no-reboot), the TSC rate
// under TCG, then the caller's extras.
func kernelCmdline(cfg hypervisor.Config, ch hypervisor.AccelChoice) string {
	args := []string{"console=ttyS0", "reboot=t", "panic=-1", "quiet"}
	if ch.Accel == hypervisor.AccelTCG && ch.TSCkHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.FormatUint(ch.TSCkHz, 10))
	}
	return strings.Join(append(args, cfg.KernelArgs...), " ")
}

// commandLine renders QEMU's arguments (without the binary). cfg has been
// validated. Taps given as files are inherited as fds 3, 4, ... in order.
func commandLine(cfg hypervisor.Config, ch hypervisor.AccelChoice) []string {
	f := vmFiles(cfg.Dir)
	a := []string{
		"-name", "magnetar-" + esc(cfg.ID) + ",debug-threads=on",
		"-no-user-config", "-nodefaults", "-nographic", "-no-reboot",
		// Start paused: the sandboxer places QEMU in its cgroup, then
		// resumes the guest with QMP "cont".
		"-S",
	}
	machine := "microvm,acpi=on"
	switch ch.Accel {
	case hypervisor.AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	default:
		if cfg.TCGCacheMiB > 0 {
			a = append(a, "-accel", "tcg,tb-size="+strconv.Itoa(cfg.TCGCacheMiB))
		} else {
			a = append(a, "-accel", "tcg")
		}
		// TCG: the legacy timers the kernel calibrates against.
		machine += ",pit=on,pic=on,rtc=on"
	}
	if cfg.MemoryFile != "" {
		// Guest RAM in a file: shared for a template, private
		// (copy-on-write) for the VMs restored from it.
		share := "off"
		if cfg.MemoryShared {
			share = "on"
		}
		machine += ",memory-backend=ram0"
		a = append(a, "-object", "memory-backend-file,id=ram0,size="+strconv.Itoa(cfg.MemoryMiB)+"M,mem-path="+esc(cfg.MemoryFile)+",share="+share)
	}
	a = append(a,
		"-machine", machine,
		"-smp", strconv.Itoa(cfg.VCPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB)+"M",
		"-kernel", cfg.Kernel,
	)
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	a = append(a,
		"-append", kernelCmdline(cfg, ch),
		"-chardev", "file,id=console,path="+esc(f.console),
		"-serial", "chardev:console",
		"-qmp", "unix:"+esc(f.qmp)+",server=on,wait=off",
		"-pidfile", f.pid,
		"-device", "virtio-serial-device,id=vser0",
		"-chardev", "socket,id=agent,path="+esc(f.agent)+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+AgentPortName,
	)
	for i, s := range cfg.Shares {
		fs := "local,id=fs" + strconv.Itoa(i) + ",path=" + esc(s.HostPath) + ",security_model=none"
		if s.ReadOnly {
			fs += ",readonly=on"
		}
		a = append(a,
			"-fsdev", fs,
			"-device", "virtio-9p-device,fsdev=fs"+strconv.Itoa(i)+",mount_tag="+s.Tag,
		)
	}
	if cfg.FreePageReporting {
		a = append(a, "-device", "virtio-balloon-device,free-page-reporting=on")
	}
	fd := 3
	for i, t := range cfg.Taps {
		id := "net" + strconv.Itoa(i)
		nd := "tap,id=" + id
		if t.File != nil {
			nd += ",fd=" + strconv.Itoa(fd)
			fd++
		} else {
			nd += ",ifname=" + esc(t.Name) + ",script=no,downscript=no"
		}
		dev := "virtio-net-device,netdev=" + id
		if t.MAC != "" {
			dev += ",mac=" + t.MAC
		}
		a = append(a, "-netdev", nd, "-device", dev)
	}
	if cfg.Incoming != "" {
		// The state comes through QMP (migrate-incoming) once the
		// capabilities are set.
		a = append(a, "-incoming", "defer")
	}
	return a
}

// esc escapes a value for QEMU's comma-separated option syntax.
func esc(s string) string { return strings.ReplaceAll(s, ",", ",,") }
