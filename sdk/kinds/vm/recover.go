package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// endWait bounds the wait for a container killed during a recovery.
const endWait = 30 * time.Second

// endedContainer is how a container that ran in the guest before a
// sandboxer restart ended: its exit status, or why it could not be ended.
type endedContainer struct {
	exit backend.ExitStatus
	err  error
}

var _ backend.ContainerRecoverer = (*sandbox)(nil)

// recoverSandbox re-attaches to the VM of a sandbox started by an earlier
// run: to the QEMU process (through the driver's [hypervisor.Recoverer]),
// then to the guest agent with a new session on its serial socket, so that
// the sandbox is again fully usable (Wait, new containers, exec, Stop).
//
// With [Config.ResumeContainers] (the task connections outlived the
// restart), the containers keep running: [sandbox.RecoverContainer]
// resumes each one's stdio streams and waits for it in the guest.
// Otherwise containerd 2.4 has reported the containers of the restarted
// sandboxer dead (it runs the shim's delete when the task connection
// closes, which answers 137); so that no container keeps running unseen in
// the guest, every container found in the sandbox's shared directory is
// killed (SIGKILL to all its processes) and deleted in the guest, and
// [sandbox.RecoverContainer] then hands the engine containers that have
// exited, with their status.
//
// If the VM is gone, the sandbox is returned exited (Wait returns at once)
// so that it can be deleted. If its agent does not answer within the boot
// timeout, the VM is stopped: a VM that cannot run containers is reported
// exited rather than left READY.
func (b *Backend) recoverSandbox(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	s := newSandbox(b, cfg)
	if len(state) > 0 {
		if err := json.Unmarshal(state, &s.st); err != nil {
			return nil, fmt.Errorf("decode vm sandbox state: %w", err)
		}
	}
	if d := s.st.SharedDir; d != "" {
		if !b.sharedDirOK(d) {
			return nil, fmt.Errorf("recover vm sandbox %s: share %q is not a pooled vm's: %w", cfg.ID, d, errdefs.ErrInvalidArgument)
		}
		s.shared = d
	}
	r, ok := b.cfg.Driver.(hypervisor.Recoverer)
	if !ok || s.st.VMDir == "" {
		return nil, fmt.Errorf("recover vm sandbox %s: %w", cfg.ID, errdefs.ErrNotImplemented)
	}
	v, err := r.Recover(ctx, s.hvConfig())
	if err != nil {
		return nil, fmt.Errorf("recover vm sandbox %s: %w", cfg.ID, err)
	}
	s.vm = v
	go s.waitVM()
	if s.isGone() {
		return s, nil
	}
	cctx, cancel := context.WithTimeout(ctx, b.cfg.BootTimeout)
	defer cancel()
	if err := s.connect(cctx); err != nil {
		s.closeAgent()
		sctx, c := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer c()
		if serr := v.Stop(sctx, true); serr != nil {
			return nil, fmt.Errorf("recover vm sandbox %s: agent: %v; stop vm: %w", cfg.ID, err, serr)
		}
		return s, nil
	}
	if b.cfg.ResumeContainers {
		s.startMonitors()
		return s, nil
	}
	ended, err := s.endContainers(ctx)
	if err != nil {
		// The earlier containers could not be ended: stop the VM rather
		// than leave them running unseen; the sandbox is reported exited
		// and its Delete still unmounts and removes what it holds.
		s.closeAgent()
		sctx, c := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer c()
		if serr := v.Stop(sctx, true); serr != nil {
			return nil, fmt.Errorf("recover vm sandbox %s: %v; stop vm: %w", cfg.ID, err, serr)
		}
		return s, nil
	}
	s.mu.Lock()
	s.ended = ended
	s.mu.Unlock()
	s.startMonitors()
	return s, nil
}

// endContainers kills and deletes in the guest every container that has a
// directory under the shared directory, and returns how each ended.
func (s *sandbox) endContainers(ctx context.Context) (map[string]endedContainer, error) {
	ents, err := os.ReadDir(s.shared)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tc, err := s.taskClient()
	if err != nil {
		return nil, err
	}
	out := map[string]endedContainer{}
	for _, e := range ents {
		if e.IsDir() {
			out[e.Name()] = s.endContainer(ctx, tc, e.Name())
		}
	}
	return out, nil
}

// endContainer kills container id in the guest (if it still runs), waits
// for it and deletes it there.
func (s *sandbox) endContainer(ctx context.Context, tc taskapi.TTRPCTaskService, id string) endedContainer {
	ctx = s.ns(ctx)
	st, err := tc.State(ctx, &taskapi.StateRequest{ID: id})
	if err != nil {
		if err = errgrpc.ToNative(err); errdefs.IsNotFound(err) {
			// Never created in the guest, or already deleted there.
			return endedContainer{exit: backend.ExitStatus{Code: 255, ExitedAt: time.Now().UTC()}}
		}
		return endedContainer{err: fmt.Errorf("state of container %q in the guest: %w", id, err)}
	}
	res := endedContainer{exit: backend.ExitStatus{Code: st.GetExitStatus(), ExitedAt: st.GetExitedAt().AsTime()}}
	if st.GetStatus() != task.Status_STOPPED {
		if _, err := tc.Kill(ctx, &taskapi.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL), All: true}); err != nil {
			if err = errgrpc.ToNative(err); !errdefs.IsNotFound(err) {
				return endedContainer{err: fmt.Errorf("kill container %q in the guest: %w", id, err)}
			}
		}
		wctx, cancel := context.WithTimeout(ctx, endWait)
		w, err := tc.Wait(wctx, &taskapi.WaitRequest{ID: id})
		cancel()
		if err != nil {
			return endedContainer{err: fmt.Errorf("wait for killed container %q in the guest: %w", id, errgrpc.ToNative(err))}
		}
		res.exit = backend.ExitStatus{Code: w.GetExitStatus(), ExitedAt: w.GetExitedAt().AsTime()}
	}
	if _, err := tc.Delete(ctx, &taskapi.DeleteRequest{ID: id}); err != nil {
		if err = errgrpc.ToNative(err); !errdefs.IsNotFound(err) {
			return endedContainer{err: fmt.Errorf("delete container %q in the guest: %w", id, err)}
		}
	}
	return res
}

// RecoverContainer returns a container that ran before a sandboxer
// restart. With [Config.ResumeContainers] it is resumed (see
// resumeContainer); otherwise it has exited (the recovery ended it in the
// guest, see [Backend.Recover]) and can only be waited for and deleted,
// which unmounts its rootfs and removes its shared directory.
func (s *sandbox) RecoverContainer(ctx context.Context, cfg backend.ContainerConfig, pid uint32) (backend.Container, error) {
	if cfg.ID == "" || filepath.Base(cfg.ID) != cfg.ID || cfg.ID == "." || cfg.ID == ".." {
		return nil, fmt.Errorf("container id %q: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if s.b.cfg.ResumeContainers {
		return s.resumeContainer(ctx, cfg)
	}
	s.mu.Lock()
	e, ok := s.ended[cfg.ID]
	s.mu.Unlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("container %q of vm sandbox %s: %w", cfg.ID, s.cfg.ID, errdefs.ErrNotFound)
	case e.err != nil:
		return nil, e.err
	}
	return s.exitedContainer(cfg.ID, pid, e.exit, rootReadonly(cfg)), nil
}

// exitedContainer registers container id, which has exited with exit: it
// has no stdio (its streams ended with the earlier agent session, or
// could not be resumed).
func (s *sandbox) exitedContainer(id string, pid uint32, exit backend.ExitStatus, readonly bool) *container {
	c := &container{s: s, id: id, dir: filepath.Join(s.shared, id), execs: map[string]*proc{}, hostRoot: s.recoveredHostRoot(id), readonly: readonly}
	p := &proc{c: c, pid: pid, exited: make(chan struct{}), abort: make(chan struct{}), outputDrained: make(chan struct{}), exit: exit}
	close(p.exited)
	close(p.outputDrained)
	// The ends of the caller's FIFOs that the VMM held for the earlier
	// worker go: the caller's copies see end of file.
	for _, st := range []agentmux.Stream{agentmux.Stdin, agentmux.Stdout, agentmux.Stderr} {
		p.releaseFIFO(st)
	}
	c.init = p
	s.mu.Lock()
	s.ctrs[id] = c
	s.mu.Unlock()
	return c
}

// resumeContainer re-attaches to a container that kept running in the
// guest while no worker was attached: its output streams resume from the
// offsets the host recorded (the agent held what was not acknowledged),
// its stdin stream is attached again to the caller's FIFO, and it is
// waited for in the guest, which kept its exit status if it exited
// meanwhile. It can then be signalled, exec'd into, attached to and
// deleted like any other. A container the guest no longer knows is
// reported exited (255); one whose streams cannot be resumed (an agent
// without resumable streams) is ended as without ResumeContainers.
func (s *sandbox) resumeContainer(ctx context.Context, cfg backend.ContainerConfig) (backend.Container, error) {
	tc, err := s.taskClient()
	if err != nil {
		return nil, err
	}
	st, err := tc.State(s.ns(ctx), &taskapi.StateRequest{ID: cfg.ID})
	if err != nil {
		if err = errgrpc.ToNative(err); errdefs.IsNotFound(err) {
			return s.exitedContainer(cfg.ID, 0, backend.ExitStatus{Code: 255, ExitedAt: time.Now().UTC()}, rootReadonly(cfg)), nil
		}
		return nil, fmt.Errorf("state of container %q in the guest: %w", cfg.ID, err)
	}
	c := &container{s: s, id: cfg.ID, dir: filepath.Join(s.shared, cfg.ID), execs: map[string]*proc{},
		hostRoot: s.recoveredHostRoot(cfg.ID), readonly: rootReadonly(cfg)}
	p := &proc{c: c, terminal: cfg.Stdio.Terminal, pid: st.GetPid(), exited: make(chan struct{}), abort: make(chan struct{}), outputDrained: make(chan struct{})}
	if err := p.resumeIO(ctx, cfg.Stdio, st.GetStatus() != task.Status_STOPPED); err != nil {
		p.shutIO(false)
		e := s.endContainer(ctx, tc, cfg.ID)
		if e.err != nil {
			return nil, fmt.Errorf("resume stdio of container %q: %v; end it: %w", cfg.ID, err, e.err)
		}
		return s.exitedContainer(cfg.ID, st.GetPid(), e.exit, rootReadonly(cfg)), nil
	}
	p.watchOutput()
	p.startOnce.Do(func() { go p.watch(tc) })
	c.init = p
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// resumeIO resumes the stdio streams of a process of a recovered
// container, its init or an exec'd process (running: whether it still
// runs, so that its stdin matters).
func (p *proc) resumeIO(ctx context.Context, stdio backend.Stdio, running bool) error {
	mc, err := p.c.s.muxClient()
	if err != nil {
		return err
	}
	resume := func(st agentmux.Stream, off uint64) (net.Conn, error) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return mc.ResumeStdio(rctx, agentmux.StdioHeader{Container: p.c.id, Exec: p.execID, Stream: st}, off)
	}
	for _, o := range []struct {
		dst string
		st  agentmux.Stream
	}{{stdio.Stdout, agentmux.Stdout}, {stdio.Stderr, agentmux.Stderr}} {
		if o.dst == "" || (o.st == agentmux.Stderr && stdio.Terminal) {
			continue
		}
		rec, off, err := openOffsetRecord(p.c.offsetPath(p.execID, o.st))
		if err != nil {
			return fmt.Errorf("%s offset: %w", o.st, err)
		}
		conn, err := resume(o.st, off)
		if errors.Is(err, agentmux.ErrStdioGone) {
			// Received to the end: what the journal holds still goes to
			// the caller, who then reads end of file once the end the VMM
			// holds for the earlier worker is closed.
			if rec.pending() {
				p.recs = append(p.recs, rec)
				p.startOutput(nil, o.st, o.dst, rec, off)
				continue
			}
			rec.Close()
			p.releaseFIFO(o.st)
			continue
		}
		if err != nil {
			rec.Close()
			return err
		}
		p.recs = append(p.recs, rec)
		p.startOutput(conn, o.st, o.dst, rec, off)
	}
	if stdio.Stdin == "" {
		return nil
	}
	if !running {
		p.releaseFIFO(agentmux.Stdin) // no more input for it
		return nil
	}
	conn, err := resume(agentmux.Stdin, 0)
	if errors.Is(err, agentmux.ErrStdioGone) {
		p.releaseFIFO(agentmux.Stdin)
		return nil // closed before the restart
	}
	if err != nil {
		return err
	}
	p.in = conn
	r, held, err := hoststdio.OpenInput(stdio.Stdin)
	if err != nil {
		return fmt.Errorf("open stdin: %w", err)
	}
	p.inHeld = held
	if p.inR, err = pollable(r); err != nil {
		return err
	}
	p.inHold = p.holdFIFO(agentmux.Stdin, p.inR) // replaces the earlier worker's
	p.startInput()
	return nil
}

var _ backend.ExecRecoverer = (*container)(nil)

// RecoverExec re-attaches to an exec'd process after a sandboxer restart.
// The guest's agent kept it running while no worker was attached (and its
// exit status, if it exited meanwhile, until it is deleted), and kept its
// output streams: they resume from the offsets the host recorded, its
// stdin is attached again to the caller's FIFO, and it is waited for in
// the guest, so that its real exit code is reported once its output is
// drained. One created but never started can be started. One the guest
// no longer knows, or whose streams cannot be resumed (it is killed), is
// an error: the engine reports it exited with 255. Without
// [Config.ResumeContainers] the container, and its execs with it, was
// ended by the recovery: nothing is re-attached.
func (c *container) RecoverExec(ctx context.Context, cfg backend.ExecConfig, rec backend.ExecRecord) (backend.Process, error) {
	if err := (agentmux.StdioHeader{Container: c.id, Exec: cfg.ID}).Validate(); err != nil || cfg.ID == "" {
		return nil, fmt.Errorf("exec %q of container %q: %v: %w", cfg.ID, c.id, err, errdefs.ErrInvalidArgument)
	}
	p := &proc{c: c, execID: cfg.ID, terminal: cfg.Stdio.Terminal, exited: make(chan struct{}), abort: make(chan struct{}), outputDrained: make(chan struct{})}
	// lost releases what the earlier worker left for a process that is
	// not re-attached: the FIFO ends the VMM holds and the offset files.
	lost := func(err error) (backend.Process, error) {
		for _, st := range []agentmux.Stream{agentmux.Stdin, agentmux.Stdout, agentmux.Stderr} {
			p.releaseFIFO(st)
		}
		for _, st := range []agentmux.Stream{agentmux.Stdout, agentmux.Stderr} {
			_ = removeOffsetRecord(c.offsetPath(cfg.ID, st))
		}
		return nil, err
	}
	if !c.s.b.cfg.ResumeContainers || c.init == nil || c.s.isGone() {
		return lost(fmt.Errorf("exec %q of container %q ended with the restart: %w", cfg.ID, c.id, errdefs.ErrNotFound))
	}
	if rec.Exited {
		// The engine has its exit status: only Delete is left, which
		// deletes it in the guest and releases its streams.
		p.pid = rec.Pid
		close(p.exited)
		close(p.outputDrained)
		for _, st := range []agentmux.Stream{agentmux.Stdin, agentmux.Stdout, agentmux.Stderr} {
			p.releaseFIFO(st)
		}
		c.addExec(p)
		return p, nil
	}
	tc, err := c.s.taskClient()
	if err != nil {
		return lost(err)
	}
	st, err := tc.State(c.s.ns(ctx), &taskapi.StateRequest{ID: c.id, ExecID: cfg.ID})
	if err != nil {
		return lost(fmt.Errorf("state of exec %q of container %q in the guest: %w", cfg.ID, c.id, errgrpc.ToNative(err)))
	}
	p.pid = st.GetPid()
	if err := p.resumeIO(ctx, cfg.Stdio, st.GetStatus() != task.Status_STOPPED); err != nil {
		p.shutIO(false)
		c.s.forgetInGuest(tc, c.id, cfg.ID)
		return lost(fmt.Errorf("resume stdio of exec %q of container %q: %w", cfg.ID, c.id, err))
	}
	p.watchOutput()
	if st.GetStatus() != task.Status_CREATED {
		p.startOnce.Do(func() { go p.watch(tc) })
	}
	c.addExec(p)
	return p, nil
}

// addExec registers exec'd process p.
func (c *container) addExec(p *proc) {
	c.mu.Lock()
	c.execs[p.execID] = p
	c.mu.Unlock()
}
