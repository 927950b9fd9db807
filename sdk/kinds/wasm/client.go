package wasm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pidfd"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// runnerFile records the backend's current runner in its root, so that a
// restarted sandboxer finds it again.
const runnerFile = "runner.json"

// runnerRef identifies a runner process and its control socket.
type runnerRef struct {
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Socket    string `json:"socket"`
}

// alive reports whether the runner still is the process that started at
// StartTime.
func (r *runnerRef) alive() bool {
	if r == nil || r.Pid <= 0 {
		return false
	}
	t, err := procstat.StartTime(r.Pid)
	return err == nil && t == r.StartTime
}

// errRunnerExiting: the runner refused a start because it is closing.
var errRunnerExiting = errors.New("wasm runner exiting")

// exited waits up to timeout for the runner to exit and reports whether
// it did (a runner that closed its socket exits right after).
func (r *runnerRef) exited(timeout time.Duration) bool {
	fd, err := unix.PidfdOpen(r.Pid, 0)
	if err != nil {
		return true
	}
	defer unix.Close(fd)
	if !r.alive() {
		return true
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, int(timeout.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// call sends req (with files as SCM_RIGHTS) to the runner behind ref and
// reads its response; ctx ending closes the connection.
func (ref *runnerRef) call(ctx context.Context, req *request, files ...*os.File) (*response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", ref.Socket)
	if err != nil {
		return nil, fmt.Errorf("wasm runner %d: %w", ref.Pid, err)
	}
	c := conn.(*net.UnixConn)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(data, oob, nil); err != nil {
		return nil, fmt.Errorf("wasm runner %d: %w", ref.Pid, err)
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("wasm runner %d: no answer: %w", ref.Pid, err)
	}
	var resp response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("wasm runner %d: bad answer: %w", ref.Pid, err)
	}
	if resp.Exiting {
		return &resp, errRunnerExiting
	}
	if resp.Error != "" {
		err := fmt.Errorf("wasm runner: %s", resp.Error)
		switch {
		case resp.NotFound:
			err = fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		case resp.Exhausted:
			err = fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
		}
		return &resp, err
	}
	return &resp, nil
}

// currentRunner returns the runner to start instances in: the one this
// backend started or found, else the one recorded in the root (a restart),
// else a new one.
func (b *Backend) currentRunner(ctx context.Context) (*runnerRef, error) {
	b.rmu.Lock()
	defer b.rmu.Unlock()
	if b.runner.alive() {
		return b.runner, nil
	}
	if ref := b.recordedRunner(); ref != nil {
		b.runner = ref
		b.watchRunner(ref, false)
		return ref, nil
	}
	return b.spawnRunnerLocked()
}

// recordedRunner is the runner recorded in the root if it still runs.
func (b *Backend) recordedRunner() *runnerRef {
	data, err := os.ReadFile(filepath.Join(b.cfg.Root, runnerFile))
	if err != nil {
		return nil
	}
	var ref runnerRef
	if json.Unmarshal(data, &ref) != nil || !ref.alive() {
		return nil
	}
	return &ref
}

// replaceRunner drops ref as the current runner (it is exiting or gone)
// and starts a new one.
func (b *Backend) replaceRunner(ref *runnerRef) (*runnerRef, error) {
	b.rmu.Lock()
	defer b.rmu.Unlock()
	if b.runner != nil && b.runner != ref && b.runner.alive() {
		return b.runner, nil
	}
	return b.spawnRunnerLocked()
}

// spawnRunnerLocked starts a runner: the executable re-executed with
// MAGNETAR_WASM_RUNNER=1 in a session of its own, serving a socket made
// here (so it answers as soon as it accepts).
func (b *Backend) spawnRunnerLocked() (*runnerRef, error) {
	sock := filepath.Join(b.cfg.Root, fmt.Sprintf("runner-%x.sock", time.Now().UnixNano()))
	if len(sock) >= 108 {
		return nil, fmt.Errorf("wasm runner socket path %s is too long for a unix socket: %w", sock, errdefs.ErrFailedPrecondition)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("wasm runner socket: %w", err)
	}
	lf := os.NewFile(uintptr(fd), "runner-socket")
	defer lf.Close()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		return nil, fmt.Errorf("wasm runner socket %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		_ = os.Remove(sock)
		return nil, err
	}
	if err := unix.Listen(fd, 128); err != nil {
		_ = os.Remove(sock)
		return nil, fmt.Errorf("wasm runner socket %s: %w", sock, err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		_ = os.Remove(sock)
		return nil, err
	}
	defer null.Close()
	proc, err := os.StartProcess(b.cfg.Executable, []string{"magnetar-wasm-runner", "--cache", b.cacheDir, "--idle", b.cfg.RunnerIdleExit.String()}, &os.ProcAttr{
		Dir:   "/",
		Env:   []string{runnerEnv + "=1"},
		Files: []*os.File{null, null, null, lf},
		// Its own session, so that signals to the sandboxer's process
		// group miss it.
		Sys: &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		_ = os.Remove(sock)
		return nil, fmt.Errorf("start wasm runner: %w", err)
	}
	pid := proc.Pid
	_ = proc.Release() // reaped by watchRunner, through a pidfd
	startTime, err := procstat.StartTime(pid)
	if err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		_, _ = unix.Wait4(pid, nil, 0, nil)
		_ = os.Remove(sock)
		return nil, fmt.Errorf("wasm runner %d: %w", pid, err)
	}
	ref := &runnerRef{Pid: pid, StartTime: startTime, Socket: sock}
	data, _ := json.Marshal(ref)
	if err := atomicfile.WriteFile(filepath.Join(b.cfg.Root, runnerFile), data, 0o600); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		_, _ = unix.Wait4(pid, nil, 0, nil)
		_ = os.Remove(sock)
		return nil, err
	}
	b.runner = ref
	b.watchRunner(ref, true)
	return ref, nil
}

// watchRunner waits for the runner's exit (reaping it when child), and
// then forgets it and removes a socket it left.
func (b *Backend) watchRunner(ref *runnerRef, child bool) {
	fd, err := unix.PidfdOpen(ref.Pid, 0)
	if err != nil {
		return
	}
	if !ref.alive() {
		unix.Close(fd)
		return
	}
	b.wg.Go(func() {
		var err error
		if child {
			_, err = pidfd.Wait(b.life, ref.Pid, fd)
		} else {
			_, err = pidfd.WaitNoReap(b.life, ref.Pid, fd)
		}
		if err != nil {
			return // closing: the runner keeps running
		}
		_ = os.Remove(ref.Socket)
		b.rmu.Lock()
		if b.runner == ref {
			b.runner = nil
		}
		b.rmu.Unlock()
	})
}

// recoverRunner returns the runner every live instance is in: the one
// this backend uses, else the one recorded in the root if it still runs
// (a restart); nil when there is none.
func (b *Backend) recoverRunner() *runnerRef {
	b.rmu.Lock()
	defer b.rmu.Unlock()
	if b.runner.alive() {
		return b.runner
	}
	ref := b.recordedRunner()
	if ref != nil {
		b.runner = ref
		b.watchRunner(ref, false)
	}
	return ref
}
