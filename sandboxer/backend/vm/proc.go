package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/magnetar-io/magnetar/sandboxer/backend/internal/hoststdio"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// proc is a process in the guest.
type proc struct {
	c      *container
	execID string

	// hostOut/hostErr are the files in the shared dir the guest writes
	// (empty: none); guestOut/guestErr their guest paths; dstOut/dstErr
	// the caller's stdio.
	hostOut, hostErr   string
	guestOut, guestErr string
	dstOut, dstErr     string

	pid       uint32
	startOnce sync.Once
	exited    chan struct{}
	exit      backend.ExitStatus
	tails     sync.WaitGroup
	stop      chan struct{}
	stopOnce  sync.Once
}

func (c *container) newProc(execID, prefix string, stdio backend.Stdio) (*proc, error) {
	p := &proc{c: c, execID: execID, exited: make(chan struct{}), stop: make(chan struct{}), dstOut: stdio.Stdout, dstErr: stdio.Stderr}
	if stdio.Stdout != "" {
		p.hostOut = filepath.Join(c.dir, prefix+"stdout")
	}
	if stdio.Stderr != "" {
		p.hostErr = filepath.Join(c.dir, prefix+"stderr")
	}
	for _, f := range []string{p.hostOut, p.hostErr} {
		if f == "" {
			continue
		}
		if err := os.WriteFile(f, nil, 0o666); err != nil {
			return nil, err
		}
	}
	if p.hostOut != "" {
		p.guestOut = c.s.guestPath(p.hostOut)
	}
	if p.hostErr != "" {
		p.guestErr = c.s.guestPath(p.hostErr)
	}
	return p, nil
}

func (p *proc) removeFiles() {
	for _, f := range []string{p.hostOut, p.hostErr} {
		if f != "" {
			_ = os.Remove(f)
		}
	}
}

// Start starts the process in the guest and begins copying its output.
func (p *proc) Start(ctx context.Context) (uint32, error) {
	tc, err := p.c.s.taskClient()
	if err != nil {
		return 0, err
	}
	resp, err := tc.Start(p.c.s.ns(ctx), &taskapi.StartRequest{ID: p.c.id, ExecID: p.execID})
	if err != nil {
		return 0, fmt.Errorf("start %s/%s in the guest: %w", p.c.id, p.execID, errgrpc.ToNative(err))
	}
	p.pid = resp.GetPid()
	p.startOnce.Do(func() {
		if p.hostOut != "" {
			p.tails.Add(1)
			go p.tail(p.hostOut, p.dstOut)
		}
		if p.hostErr != "" {
			p.tails.Add(1)
			go p.tail(p.hostErr, p.dstErr)
		}
		go p.watch(tc)
	})
	return p.pid, nil
}

// Pid is the guest pid (known after create for the init).
func (p *proc) Pid() uint32 { return p.pid }

// watch waits for the exit in the guest. If the VM goes away first the
// process is reported killed.
func (p *proc) watch(tc taskapi.TTRPCTaskService) {
	s := p.c.s
	resp, err := tc.Wait(s.ns(s.life), &taskapi.WaitRequest{ID: p.c.id, ExecID: p.execID})
	if err != nil {
		p.exit = backend.ExitStatus{Code: 128 + uint32(syscall.SIGKILL), ExitedAt: time.Now().UTC()}
	} else {
		p.exit = backend.ExitStatus{Code: resp.GetExitStatus(), ExitedAt: resp.GetExitedAt().AsTime()}
	}
	close(p.exited)
}

func (p *proc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.exited:
		return p.exit, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (p *proc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	tc, err := p.c.s.taskClient()
	if err != nil {
		return fmt.Errorf("kill %s/%s: %v: %w", p.c.id, p.execID, err, errdefs.ErrNotFound)
	}
	if _, err := tc.Kill(p.c.s.ns(ctx), &taskapi.KillRequest{ID: p.c.id, ExecID: p.execID, Signal: uint32(sig), All: all}); err != nil {
		return fmt.Errorf("kill %s/%s in the guest: %w", p.c.id, p.execID, errgrpc.ToNative(err))
	}
	return nil
}

func (p *proc) ResizePTY(ctx context.Context, width, height uint32) error {
	return fmt.Errorf("terminals for vm sandboxes: %w", errdefs.ErrNotImplemented)
}

func (p *proc) CloseStdin(ctx context.Context) error { return nil }

// Delete deletes the process in the guest (for the init: the container)
// and ends the copies of its output.
func (p *proc) Delete(ctx context.Context) error {
	var err error
	if tc, terr := p.c.s.taskClient(); terr == nil {
		if _, derr := tc.Delete(p.c.s.ns(ctx), &taskapi.DeleteRequest{ID: p.c.id, ExecID: p.execID}); derr != nil {
			if derr = errgrpc.ToNative(derr); !errdefs.IsNotFound(derr) {
				err = fmt.Errorf("delete %s/%s in the guest: %w", p.c.id, p.execID, derr)
			}
		}
	}
	p.stopTails()
	if p.execID != "" {
		p.removeFiles()
		p.c.mu.Lock()
		delete(p.c.execs, p.execID)
		p.c.mu.Unlock()
	}
	return err
}

// stopTails lets the output copies finish (they end shortly after the
// exit), forcing them after a few seconds.
func (p *proc) stopTails() {
	done := make(chan struct{})
	go func() { p.tails.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		p.stopOnce.Do(func() { close(p.stop) })
		<-done
	}
}

// tail copies the growth of src into dst until the process exited and
// src stopped growing for tailQuiet.
func (p *proc) tail(src, dst string) {
	defer p.tails.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	go func() {
		select {
		case <-p.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	w, err := hoststdio.OpenOutput(ctx, dst)
	cancel()
	if err != nil {
		return
	}
	defer w.Close()
	f, err := os.Open(src)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 64*1024)
	var quietSince time.Time
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			quietSince = time.Time{}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		select {
		case <-p.exited:
			if quietSince.IsZero() {
				quietSince = time.Now()
			} else if time.Since(quietSince) >= tailQuiet {
				return
			}
		default:
		}
		select {
		case <-p.stop:
			return
		case <-time.After(tailPoll):
		}
	}
}
