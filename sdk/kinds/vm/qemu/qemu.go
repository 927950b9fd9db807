// Package qemu implements [hypervisor.Hypervisor] with QEMU's microvm
// machine: PVH direct boot of an uncompressed vmlinux, virtio-mmio devices
// found through ACPI, the agent channel on a virtio-serial port backed by a
// unix socket, 9p shares, tap networking, QMP for control.
//
// QEMU runs in its own session, owned by the driver but not bound to any
// request context, so a VM survives the call that started it (and, for
// [Driver.Recover], the sandboxer itself). It starts paused (-S), is placed
// in the VM's cgroup, then resumed with QMP "cont", so no guest instruction
// runs outside the cgroup.
package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// Name is the driver name.
const Name = "qemu"

// Options configure a [Driver]. Zero fields take the documented defaults.
type Options struct {
	// Binary is the QEMU executable, a path or a name looked up in PATH
	// (default "qemu-system-x86_64").
	Binary string
	// StopTimeout bounds a graceful Stop before QEMU is killed
	// (default 5s).
	StopTimeout time.Duration
	// Host is where the accelerator decision looks (default
	// [hypervisor.DefaultHost]).
	Host *hypervisor.Host
}

// Driver is the QEMU [hypervisor.Hypervisor]. It is safe for concurrent use.
type Driver struct {
	binary      string
	stopTimeout time.Duration
	host        hypervisor.Host
}

var (
	_ hypervisor.Hypervisor = (*Driver)(nil)
	_ hypervisor.Recoverer  = (*Driver)(nil)
)

// New returns a driver.
func New(o Options) *Driver {
	d := &Driver{binary: o.Binary, stopTimeout: o.StopTimeout, host: hypervisor.DefaultHost()}
	if d.binary == "" {
		d.binary = "qemu-system-x86_64"
	}
	if d.stopTimeout <= 0 {
		d.stopTimeout = 5 * time.Second
	}
	if o.Host != nil {
		d.host = *o.Host
	}
	return d
}

// Name returns "qemu".
func (d *Driver) Name() string { return Name }

// Check verifies that the QEMU binary exists and runs.
func (d *Driver) Check(ctx context.Context) error {
	_, _, err := d.version(ctx)
	return err
}

// version returns the resolved binary and its first "-version" line.
func (d *Driver) version(ctx context.Context) (string, string, error) {
	bin, err := exec.LookPath(d.binary)
	if err != nil {
		return "", "", fmt.Errorf("qemu: %w (install the qemu-system-x86 package)", err)
	}
	out, err := exec.CommandContext(ctx, bin, "-version").Output()
	if err != nil {
		return "", "", fmt.Errorf("qemu: %s -version: %w", bin, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return bin, strings.TrimSpace(line), nil
}

// ChooseAccel returns the accelerator this driver would use for pref, with
// the reason to log.
func (d *Driver) ChooseAccel(pref hypervisor.Accel) (hypervisor.AccelChoice, error) {
	return hypervisor.ChooseAccel(pref, d.host)
}

// Start boots a VM: validate, choose the accelerator, launch QEMU paused,
// place it in the cgroup, resume it. On error everything done is undone.
func (d *Driver) Start(ctx context.Context, cfg hypervisor.Config) (_ hypervisor.VM, retErr error) {
	cfg, err := validate(cfg)
	if err != nil {
		return nil, err
	}
	choice, err := d.ChooseAccel(cfg.Accel)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	bin, err := exec.LookPath(d.binary)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w (install the qemu-system-x86 package)", err)
	}
	f := vmFiles(cfg.Dir)
	for _, p := range []string{f.qmp, f.agent, f.pid} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("qemu: remove stale %s: %w", p, err)
		}
	}
	logf, err := os.OpenFile(f.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	defer logf.Close() // the child has its own copy

	args := commandLine(cfg, choice)
	cmd := exec.Command(bin, args...) //nolint:noctx // the VM must outlive ctx; Stop and Wait own it
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = cfg.Dir
	// Own session: a signal to the sandboxer's process group (Ctrl-C, a
	// restart) does not reach the VM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	for _, t := range cfg.Taps {
		if t.File != nil {
			cmd.ExtraFiles = append(cmd.ExtraFiles, t.File)
		}
	}
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: start %s: %w", bin, err)
	}
	v := newVM(cfg, choice, d.stopTimeout, cmd.Process.Pid, append([]string{bin}, args...))
	v.timings["start"] = started
	go v.reapChild(cmd) // ends when QEMU exits; Stop guarantees that
	defer func() {
		if retErr != nil {
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_ = v.Stop(kctx, true)
			retErr = fmt.Errorf("%w%s", retErr, v.logTail())
		}
	}()

	if cfg.CgroupPath != "" {
		rm, err := placeInCgroup(cfg.CgroupPath, v.pid)
		v.setCgroupCleanup(rm)
		if err != nil {
			return nil, fmt.Errorf("qemu: %w", err)
		}
	}
	q, err := v.qmp(ctx)
	if err != nil {
		return nil, err
	}
	defer q.close()
	if cfg.Incoming != "" {
		if err := restoreState(ctx, q, cfg.Incoming); err != nil {
			return nil, err
		}
		v.timings["restored"] = time.Now()
	}
	if _, err := q.execute(ctx, "cont", nil); err != nil {
		return nil, err
	}
	v.timings["running"] = time.Now()
	return v, nil
}

// ignoreShared makes a migration leave out the guest memory in a shared
// memory file (the template's), on both ends.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// restoreState loads the saved state of a VM started with -incoming defer
// and waits until it is loaded (QEMU exits when the state is bad: the
// caller's error then carries its log).
func restoreState(ctx context.Context, q *qmp, path string) error {
	if _, err := q.execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	if _, err := q.execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat '" + path + "'"}); err != nil {
		return err
	}
	return pollMigration(ctx, q)
}

// pollMigration waits for the migration under way (in or out) to end.
func pollMigration(ctx context.Context, q *qmp) error {
	delay := 2 * time.Millisecond
	for {
		raw, err := q.execute(ctx, "query-migrate", nil)
		if err != nil {
			return fmt.Errorf("restore state: %w", err)
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("migration %s: %w", st.Status, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

var _ hypervisor.Snapshotter = (*Driver)(nil)

// SnapshotKey is a digest of the QEMU binary and the accelerator chosen
// for accel.
func (d *Driver) SnapshotKey(ctx context.Context, accel hypervisor.Accel) (string, error) {
	bin, ver, err := d.version(ctx)
	if err != nil {
		return "", err
	}
	choice, err := d.ChooseAccel(accel)
	if err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	f, err := os.Open(bin)
	if err != nil {
		return "", fmt.Errorf("qemu: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("qemu: digest %s: %w", bin, err)
	}
	fmt.Fprintf(h, "\x00%s\x00%s", ver, choice.Accel)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Recover re-attaches to a QEMU started by an earlier run with the same
// cfg.Dir: it reads the pid file, checks that the process is that VM's
// QEMU and watches it with a pidfd. Its exit code cannot be collected
// (it is not our child): Wait reports [hypervisor.UnknownExitCode]. When
// the VM exits, its host files and cfg.CgroupPath (if set) are removed,
// as after [Driver.Start].
//
// If that QEMU is no longer running, Recover removes what it left (host
// files, cgroup) and returns a VM that has already exited.
func (d *Driver) Recover(ctx context.Context, cfg hypervisor.Config) (hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	choice, err := d.ChooseAccel(cfg.Accel)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	f := vmFiles(cfg.Dir)
	b, err := os.ReadFile(f.pid)
	if errors.Is(err, os.ErrNotExist) {
		return d.exitedVM(cfg, choice), nil
	}
	if err != nil {
		return nil, fmt.Errorf("qemu: recover %s: %w", cfg.ID, err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 0 {
		return nil, fmt.Errorf("qemu: recover %s: bad pid file %q", cfg.ID, b)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(f.qmp)) {
		// Gone (or the pid was reused): the VM is not running.
		return d.exitedVM(cfg, choice), nil
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	v := newVM(cfg, choice, d.stopTimeout, pid, args)
	if cfg.CgroupPath != "" {
		v.setCgroupCleanup(cgroupRemover(cfg.CgroupPath))
	}
	if err := v.watchPidfd(); err != nil {
		return nil, fmt.Errorf("qemu: recover %s: %w", cfg.ID, err)
	}
	return v, nil
}

// exitedVM returns a VM whose QEMU is gone, after removing its files and
// cgroup.
func (d *Driver) exitedVM(cfg hypervisor.Config, choice hypervisor.AccelChoice) *vm {
	v := newVM(cfg, choice, d.stopTimeout, 0, nil)
	if cfg.CgroupPath != "" {
		v.setCgroupCleanup(cgroupRemover(cfg.CgroupPath))
	}
	v.exited(hypervisor.ExitStatus{Code: hypervisor.UnknownExitCode, ExitedAt: time.Now()})
	return v
}
