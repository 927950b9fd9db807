package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/ctxutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// outputDrainTimeout bounds how long an exit waits for the process's
// output to reach the host after the guest reported it: output that a
// leftover child keeps open does not hold the exit forever (containerd's
// shims wait 2 s for their copies the same way).
const outputDrainTimeout = 5 * time.Second

// proc is a process in the guest. Its standard streams are agentmux
// stdio streams: the agent bridges each to a FIFO in the guest that the
// guest's Task API gets, and the host copies between the streams and the
// caller's stdio.
//
// Output is delivered once, in order, across sandboxer restarts: the host
// writes each chunk it receives to the caller's FIFO, then records the
// stream's new offset in an offset file (stdio.go), then acknowledges it
// to the agent, which keeps what is not acknowledged. A new worker
// resumes the stream from the recorded offset. A crash between the write
// and the record repeats that one chunk; no byte is lost.
type proc struct {
	c        *container
	execID   string
	terminal bool

	// guestIn/guestOut/guestErr are the guest FIFOs ("" for none).
	guestIn, guestOut, guestErr string
	// in is the stdin stream; inR the caller's stdin and inHeld the
	// write end held until CloseStdin (nil for a plain file).
	in            net.Conn
	inR, inHeld   *os.File
	inHold        bool // the VMM holds a duplicate of inR
	closeInOnce   sync.Once
	outs          []net.Conn
	recs          []*offsetRecord // the output streams' offset files
	detaching     atomic.Bool     // the copies stop for a later process to resume
	abort         chan struct{}   // closed to give up the copies
	abortOnce     sync.Once
	copies        sync.WaitGroup // output copies
	inCopy        sync.WaitGroup
	closeOnce     sync.Once
	startInOnce   sync.Once
	pid           uint32
	startOnce     sync.Once
	exited        chan struct{}
	exit          backend.ExitStatus
	outputDrained chan struct{}
}

// newProc opens the stdio streams of a process about to be created and
// starts copying its output; the caller passes the guest paths to the
// Task API, then calls startInput (or closeIO on failure).
func (c *container) newProc(ctx context.Context, execID string, stdio backend.Stdio) (_ *proc, retErr error) {
	p := &proc{c: c, execID: execID, terminal: stdio.Terminal, exited: make(chan struct{}), abort: make(chan struct{}), outputDrained: make(chan struct{})}
	defer func() {
		if retErr != nil {
			p.closeIO()
		}
	}()
	// The IDs name the guest's FIFOs and the host's offset files.
	if err := (agentmux.StdioHeader{Container: c.id, Exec: execID}).Validate(); err != nil {
		return nil, fmt.Errorf("process %s/%s: %v: %w", c.id, execID, err, errdefs.ErrInvalidArgument)
	}
	mc, err := c.s.muxClient()
	if err != nil {
		return nil, err
	}
	dial := func(st agentmux.Stream) (net.Conn, string, error) {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return mc.DialStdio(dctx, agentmux.StdioHeader{Container: c.id, Exec: execID, Stream: st})
	}
	if stdio.Stdin != "" {
		r, held, err := hoststdio.OpenInput(stdio.Stdin)
		if err != nil {
			return nil, fmt.Errorf("open stdin: %w", err)
		}
		p.inHeld = held
		if p.inR, err = pollable(r); err != nil {
			return nil, err
		}
		p.inHold = p.holdFIFO(agentmux.Stdin, p.inR)
		if p.in, p.guestIn, err = dial(agentmux.Stdin); err != nil {
			return nil, err
		}
	}
	for _, o := range []struct {
		dst   string
		st    agentmux.Stream
		guest *string
	}{{stdio.Stdout, agentmux.Stdout, &p.guestOut}, {stdio.Stderr, agentmux.Stderr, &p.guestErr}} {
		if o.dst == "" || (o.st == agentmux.Stderr && stdio.Terminal) {
			continue // a terminal's output is all on stdout
		}
		rec, err := createOffsetRecord(c.offsetPath(execID, o.st))
		if err != nil {
			return nil, fmt.Errorf("%s offset record: %w", o.st, err)
		}
		p.recs = append(p.recs, rec)
		conn, path, err := dial(o.st)
		if err != nil {
			return nil, err
		}
		*o.guest = path
		p.startOutput(conn, o.st, o.dst, rec, 0)
	}
	p.watchOutput()
	return p, nil
}

// startOutput starts copying an output stream from offset pos.
func (p *proc) startOutput(conn net.Conn, st agentmux.Stream, dst string, rec *offsetRecord, pos uint64) {
	if conn != nil {
		p.outs = append(p.outs, conn)
	}
	p.copies.Add(1)
	go p.copyOut(conn, st, dst, rec, pos)
}

// fdName names, in the VMM, the held FIFO end of one of p's streams.
func (p *proc) fdName(st agentmux.Stream) string {
	h := sha256.Sum256([]byte(p.c.id + "\x00" + p.execID + "\x00" + st.String()))
	return "mgnt-" + hex.EncodeToString(h[:8])
}

// fdHolder is the sandbox's VMM as an FDHolder, or nil.
func (p *proc) fdHolder() hypervisor.FDHolder {
	if p.c == nil || p.c.s == nil {
		return nil
	}
	p.c.s.mu.Lock()
	v := p.c.s.vm
	p.c.s.mu.Unlock()
	h, _ := v.(hypervisor.FDHolder)
	return h
}

// holdFIFO has the VMM hold f, an end of a stdio FIFO of the caller's,
// so that the FIFO keeps it while no sandboxer runs: an output FIFO keeps
// a writer (containerd's reader does not see end of file when the worker
// dies), a stdin FIFO a reader (containerd's writes wait in it instead of
// failing). Best effort: without it a restart ends the caller's copy.
func (p *proc) holdFIFO(st agentmux.Stream, f *os.File) bool {
	h := p.fdHolder()
	if h == nil {
		return false
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		return false
	}
	// QEMU makes a descriptor it receives blocking, which would change
	// f's open file (shared by duplicates) under the Go poller: it gets
	// one of its own, opened anew.
	flag := unix.O_WRONLY
	if st == agentmux.Stdin {
		flag = unix.O_RDONLY
	}
	own, err := reopen(f, flag)
	if err != nil {
		return false
	}
	defer own.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.HoldFD(ctx, p.fdName(st), own) == nil
}

// reopen opens the FIFO that f is an end of again, as a new open file,
// with flag (without waiting: the caller holds an end, so a writer finds
// a reader).
func reopen(f *os.File, flag int) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	cerr := sc.Control(func(fd uintptr) {
		nfd, err = unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), flag|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// releaseFIFO releases what the VMM holds for stream st.
func (p *proc) releaseFIFO(st agentmux.Stream) {
	if h := p.fdHolder(); h != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.ReleaseFD(ctx, p.fdName(st))
	}
}

// watchOutput closes outputDrained once every output copy ended.
func (p *proc) watchOutput() {
	go func() {
		p.copies.Wait()
		close(p.outputDrained)
	}()
}

// pollable reopens a FIFO end in non-blocking mode, so that Close ends a
// read blocked in it.
func pollable(f *os.File) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	nfd := -1
	cerr := sc.Control(func(fd uintptr) { nfd, err = unix.Dup(int(fd)) })
	f.Close()
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(nfd)
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}

// copyOut copies a stream into the caller's output until the agent ends
// it (every writer in the guest is gone). Each chunk is written, then its
// end offset recorded in rec, then acknowledged to the agent (see
// [proc]). When the caller's end fails or never opens, the stream is
// still drained and acknowledged so the guest never blocks.
//
// The VMM holds a duplicate of the caller's FIFO end while the copy runs
// (see holdFIFO), released once the stream ended, so that the caller
// reads end of file after the last byte.
func (p *proc) copyOut(conn net.Conn, st agentmux.Stream, dst string, rec *offsetRecord, pos uint64) {
	defer p.copies.Done()
	// An abort ends the wait for a reader and a write to one that does
	// not read.
	ctx, cancel := ctxutil.UntilClosed(context.Background(), p.abort, nil)
	defer cancel()
	w, err := hoststdio.OpenOutput(ctx, dst)
	if err == nil {
		// Pollable, so that the write deadline below works.
		w, err = pollable(w)
	}
	if err == nil {
		stop := context.AfterFunc(ctx, func() { _ = w.SetWriteDeadline(time.Now()) })
		defer stop()
		if p.holdFIFO(st, w) {
			defer p.releaseFIFO(st)
		}
		// A read end of our own, as containerd's shims keep one: while
		// containerd restarts, writes wait in the FIFO (or block when it
		// is full) instead of failing with EPIPE, and the new containerd
		// reads on from where the old one stopped.
		if r, err := reopen(w, unix.O_RDONLY); err == nil {
			defer r.Close()
		}
	} else {
		w = nil
	}
	// deliver moves what the journal holds to the caller (nothing to do
	// without a record: each chunk is written as it comes).
	deliver := func() bool {
		if rec == nil {
			return true
		}
		if w != nil {
			if err := rec.deliver(w); err == nil {
				return true
			}
			if p.detaching.Load() {
				return false // the next process delivers the rest
			}
			w.Close()
			w = nil // the caller's end is gone (or the copy aborted): drain
		}
		rec.skip()
		return true
	}
	// What an earlier process received and did not deliver.
	if !deliver() || conn == nil {
		if w != nil {
			w.Close()
		}
		return
	}
	buf := make([]byte, 32<<10)
	for {
		n, rerr := conn.Read(buf)
		if n > 0 {
			if rec != nil {
				if err := rec.receive(buf[:n], int64(pos)); err != nil {
					break // unacknowledged: the agent keeps it for the next process
				}
			} else if w != nil {
				if _, err := w.Write(buf[:n]); err != nil {
					w.Close()
					w = nil
				}
			}
			pos += uint64(n)
			_ = agentmux.WriteAck(conn, pos)
			if !deliver() {
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	if w != nil {
		w.Close()
	}
}

// startInput starts copying the caller's stdin to the guest once the
// process exists there (so that the agent's FIFO has a reader).
func (p *proc) startInput() {
	if p.in == nil {
		return
	}
	p.startInOnce.Do(func() {
		p.inCopy.Add(1)
		go func() {
			defer p.inCopy.Done()
			_, _ = io.Copy(p.in, p.inR)
			_ = p.in.Close() // FIN: the agent closes its end of the guest FIFO
		}()
	})
}

// abortIO gives up the copies: streams stop blocking, and an output
// FIFO without a reader is no longer waited for.
func (p *proc) abortIO() {
	p.abortOnce.Do(func() {
		close(p.abort)
		for _, c := range append([]net.Conn{p.in}, p.outs...) {
			if c != nil {
				_ = c.SetDeadline(time.Now())
			}
		}
	})
}

// closeIO ends the copies and closes the streams and the caller's stdin.
// The agent is told that the host is done with the output streams, so
// that it drops what it holds of them.
func (p *proc) closeIO() { p.shutIO(true) }

// shutIO is closeIO; release false leaves the output streams to the
// agent (for a later session to resume).
func (p *proc) shutIO(release bool) {
	p.closeOnce.Do(func() {
		for _, c := range p.outs {
			if release {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_ = agentmux.WriteAck(c, agentmux.AckRelease)
			}
		}
		if release && p.inHold {
			p.releaseFIFO(agentmux.Stdin)
		}
		if !release {
			p.detaching.Store(true) // the journals stay for the next process
		}
		p.abortIO()
		p.closeIn()
		if p.inR != nil {
			p.inR.Close() // ends a read blocked in it
		}
		p.inCopy.Wait()
		p.copies.Wait()
		for _, c := range append([]net.Conn{p.in}, p.outs...) {
			if c != nil {
				c.Close()
			}
		}
		for _, r := range p.recs {
			r.Close()
		}
	})
}

func (p *proc) closeIn() {
	p.closeInOnce.Do(func() {
		if p.inHeld != nil {
			p.inHeld.Close()
		}
	})
}

// Start starts the process in the guest.
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
	p.startOnce.Do(func() { go p.watch(tc) })
	return p.pid, nil
}

// Pid is the guest pid (known after create for the init).
func (p *proc) Pid() uint32 { return p.pid }

// watch waits for the exit in the guest, then for the output to reach
// the host: the exit is reported after the output, as containerd
// expects. If the VM goes away first the process is reported killed.
func (p *proc) watch(tc taskapi.TTRPCTaskService) {
	s := p.c.s
	resp, err := tc.Wait(s.ns(s.life), &taskapi.WaitRequest{ID: p.c.id, ExecID: p.execID})
	if err != nil {
		p.exit = backend.ExitStatus{Code: 128 + uint32(syscall.SIGKILL), ExitedAt: time.Now().UTC()}
	} else {
		p.exit = backend.ExitStatus{Code: resp.GetExitStatus(), ExitedAt: resp.GetExitedAt().AsTime()}
	}
	t := time.NewTimer(outputDrainTimeout)
	select {
	case <-p.outputDrained:
	case <-t.C:
		p.abortIO()
		<-p.outputDrained
	}
	t.Stop()
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

// ResizePTY forwards a terminal's size to the guest.
func (p *proc) ResizePTY(ctx context.Context, width, height uint32) error {
	if !p.terminal {
		return fmt.Errorf("%s/%s has no terminal: %w", p.c.id, p.execID, errdefs.ErrFailedPrecondition)
	}
	tc, err := p.c.s.taskClient()
	if err != nil {
		return err
	}
	if _, err := tc.ResizePty(p.c.s.ns(ctx), &taskapi.ResizePtyRequest{ID: p.c.id, ExecID: p.execID, Width: width, Height: height}); err != nil {
		return fmt.Errorf("resize terminal of %s/%s in the guest: %w", p.c.id, p.execID, errgrpc.ToNative(err))
	}
	return nil
}

// CloseStdin closes the held write end of the caller's stdin, so that the
// copy to the guest ends (and the agent closes its end of the guest FIFO)
// once the caller's writers are gone, and forwards CloseIO to the guest's
// Task API, which closes the write end it holds. The process reads end of
// file after the last byte copied.
func (p *proc) CloseStdin(ctx context.Context) error {
	if p.in == nil {
		return nil
	}
	p.closeIn()
	tc, err := p.c.s.taskClient()
	if err != nil {
		return err
	}
	if _, err := tc.CloseIO(p.c.s.ns(ctx), &taskapi.CloseIORequest{ID: p.c.id, ExecID: p.execID, Stdin: true}); err != nil {
		if err = errgrpc.ToNative(err); !errdefs.IsNotFound(err) {
			return fmt.Errorf("close stdin of %s/%s in the guest: %w", p.c.id, p.execID, err)
		}
	}
	return nil
}

// Delete deletes the process in the guest (for the init: the container)
// and ends the copies of its stdio.
func (p *proc) Delete(ctx context.Context) error {
	var err error
	if tc, terr := p.c.s.taskClient(); terr == nil {
		if _, derr := tc.Delete(p.c.s.ns(ctx), &taskapi.DeleteRequest{ID: p.c.id, ExecID: p.execID}); derr != nil {
			if derr = errgrpc.ToNative(derr); !errdefs.IsNotFound(derr) {
				err = fmt.Errorf("delete %s/%s in the guest: %w", p.c.id, p.execID, derr)
			}
		}
	}
	p.closeIO()
	if p.execID != "" {
		p.c.mu.Lock()
		delete(p.c.execs, p.execID)
		p.c.mu.Unlock()
		for _, st := range []agentmux.Stream{agentmux.Stdout, agentmux.Stderr} {
			if rerr := removeOffsetRecord(p.c.offsetPath(p.execID, st)); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}
	return err
}
