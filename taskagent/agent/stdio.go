package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/fifo"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// stdioDir holds the FIFOs of the processes' standard streams in the
// guest.
const stdioDir = "/run/magnetar/stdio"

// Bounds of the output the agent holds for the host.
const (
	// defaultStdioHold is how many bytes of a process's output stream
	// the agent keeps until the host acknowledges them. Beyond it the
	// agent stops reading the FIFO: the process's pipe fills and its
	// writes block (back pressure; no byte is dropped).
	defaultStdioHold = 1 << 20
	// stdioChunk is the most the agent reads or sends at once.
	stdioChunk = 32 << 10
)

// stdioBridge serves the host's stdio streams: for each it makes a FIFO
// that the in-guest Task API gets as the process's stdin, stdout or stderr
// (like containerd hands FIFOs to a shim) and copies between the FIFO and
// the stream.
//
// The FIFOs belong to the bridge, not to a host session, so that a
// process keeps its stdio while no host is attached (the sandboxer
// restarts): output is read into a bounded buffer and held until the host
// acknowledges it, and a new session resumes each stream from the offset
// the host has delivered (see agentmux.Client.ResumeStdio). A stream
// ends when the host releases it (or, for stdin, closes it), when its
// output ended and was all acknowledged, or when its process is deleted
// in the guest ([stdioBridge.releaseProcess]).
type stdioBridge struct {
	dir  string
	hold int // bytes of unacknowledged output kept per stream
	seq  atomic.Uint64

	mu      sync.Mutex
	streams map[agentmux.StdioHeader]bridged
}

// bridged is one process's stream held by the bridge.
type bridged interface {
	// attach serves conn until the host detaches (the session ends),
	// releases or closes the stream, after replying to the request.
	attach(ctx context.Context, conn net.Conn, req agentmux.StdioRequest)
	// release closes the FIFO and drops what the stream holds.
	release()
}

func newStdioBridge(dir string) *stdioBridge {
	return &stdioBridge{dir: dir, hold: defaultStdioHold, streams: map[agentmux.StdioHeader]bridged{}}
}

// serve is an agentmux.StdioHandler.
func (b *stdioBridge) serve(ctx context.Context, conn net.Conn, req agentmux.StdioRequest) {
	defer conn.Close()
	if req.Mode == agentmux.StdioResume {
		b.mu.Lock()
		s, ok := b.streams[req.StdioHeader]
		b.mu.Unlock()
		if !ok {
			_ = agentmux.ReplyStdio(conn, "", fmt.Errorf("%s: %w", req.StdioHeader, agentmux.ErrStdioGone))
			return
		}
		s.attach(ctx, conn, req)
		return
	}
	s, err := b.open(ctx, req)
	if err != nil {
		_ = agentmux.ReplyStdio(conn, "", err)
		return
	}
	s.attach(ctx, conn, req)
}

// open makes the FIFO of a new stream and opens the agent's end without
// waiting for the process's: the Task API opens its end when it creates
// the process. A stream held under the same name is stale (the host asks
// for streams of a process it is about to create) and is released.
func (b *stdioBridge) open(ctx context.Context, req agentmux.StdioRequest) (bridged, error) {
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(b.dir, fmt.Sprintf("%d.%s", b.seq.Add(1), req.Stream))
	flag := syscall.O_RDONLY
	if req.Stream == agentmux.Stdin {
		flag = syscall.O_WRONLY
	}
	// The FIFO outlives the request: ctx only bounds the open.
	f, err := fifo.OpenFifo(context.WithoutCancel(ctx), path, flag|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("stdio fifo for %s: %w", req.StdioHeader, err)
	}
	var s bridged
	if req.Stream == agentmux.Stdin {
		s = &inStream{b: b, key: req.StdioHeader, path: path, f: f}
	} else {
		o := &outStream{b: b, key: req.StdioHeader, path: path, f: f, hold: b.hold, legacy: req.Mode == agentmux.StdioLegacy}
		o.cond = sync.NewCond(&o.mu)
		go o.read()
		s = o
	}
	b.mu.Lock()
	old := b.streams[req.StdioHeader]
	b.streams[req.StdioHeader] = s
	b.mu.Unlock()
	if old != nil {
		old.release()
	}
	return s, nil
}

// forget removes s from the streams if it is still the one held for key.
func (b *stdioBridge) forget(key agentmux.StdioHeader, s bridged) {
	b.mu.Lock()
	if b.streams[key] == s {
		delete(b.streams, key)
	}
	b.mu.Unlock()
}

// releaseProcess releases the streams of a process deleted in the guest
// (execID "": the container's, and those of all its execs).
func (b *stdioBridge) releaseProcess(id, execID string) {
	var rel []bridged
	b.mu.Lock()
	for k, s := range b.streams {
		if k.Container == id && (execID == "" || k.Exec == execID) {
			delete(b.streams, k)
			rel = append(rel, s)
		}
	}
	b.mu.Unlock()
	for _, s := range rel {
		s.release()
	}
}

// count returns how many streams the bridge holds.
func (b *stdioBridge) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.streams)
}

// outStream is a process's stdout or stderr: the agent reads the FIFO
// into buf, which holds the bytes from offset base (the host acknowledged
// every byte before it) to base+len(buf).
type outStream struct {
	b      *stdioBridge
	key    agentmux.StdioHeader
	path   string
	f      io.ReadCloser
	hold   int
	legacy bool // a host that does not acknowledge: sent is delivered

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	base     uint64
	eof      bool   // every writer of the FIFO is gone
	released bool   // the FIFO is closed, the stream dropped
	gen      uint64 // the current attachment (0: none yet)
}

func (o *outStream) end() uint64 { return o.base + uint64(len(o.buf)) }

// read fills buf from the FIFO, leaving the rest in the pipe while buf
// holds o.hold bytes, until every writer is gone or the stream is
// released.
func (o *outStream) read() {
	tmp := make([]byte, stdioChunk)
	for {
		o.mu.Lock()
		for len(o.buf) >= o.hold && !o.released {
			o.cond.Wait()
		}
		if o.released {
			o.mu.Unlock()
			return
		}
		room := min(len(tmp), o.hold-len(o.buf))
		o.mu.Unlock()
		n, err := o.f.Read(tmp[:room])
		o.mu.Lock()
		o.buf = append(o.buf, tmp[:n]...)
		if err != nil {
			o.eof = true
		}
		o.cond.Broadcast()
		done := o.finishedLocked()
		o.mu.Unlock()
		if done {
			o.finish()
		}
		if err != nil {
			return
		}
	}
}

// finishedLocked reports whether the stream is over: its output ended
// and the host acknowledged all of it.
func (o *outStream) finishedLocked() bool {
	return o.eof && len(o.buf) == 0 && !o.released
}

// finish drops a stream that is over.
func (o *outStream) finish() {
	o.b.forget(o.key, o)
	o.release()
}

func (o *outStream) release() {
	o.mu.Lock()
	if o.released {
		o.mu.Unlock()
		return
	}
	o.released = true
	o.buf = nil
	o.cond.Broadcast()
	o.mu.Unlock()
	o.f.Close() // ends a read blocked in it
	_ = os.Remove(o.path)
}

// ack drops the bytes before off, which the host has delivered.
func (o *outStream) ack(off uint64) {
	o.mu.Lock()
	if off > o.base && off <= o.end() {
		o.buf = o.buf[off-o.base:]
		o.base = off
		o.cond.Broadcast()
	}
	done := o.finishedLocked()
	o.mu.Unlock()
	if done {
		o.finish()
	}
}

// detach ends attachment gen (its session is gone).
func (o *outStream) detach(gen uint64) {
	o.mu.Lock()
	if o.gen == gen {
		o.gen++
		o.cond.Broadcast()
	}
	o.mu.Unlock()
}

func (o *outStream) attach(ctx context.Context, conn net.Conn, req agentmux.StdioRequest) {
	from := uint64(0)
	if req.Mode == agentmux.StdioResume {
		from = req.Offset
	}
	o.mu.Lock()
	var err error
	switch {
	case o.released:
		err = fmt.Errorf("%s: %w", o.key, agentmux.ErrStdioGone)
	case from < o.base || from > o.end():
		err = fmt.Errorf("%s: resume at %d, but the agent holds %d to %d", o.key, from, o.base, o.end())
	}
	if err != nil {
		o.mu.Unlock()
		_ = agentmux.ReplyStdio(conn, "", err)
		return
	}
	o.gen++ // a newer session takes the stream over
	gen := o.gen
	o.cond.Broadcast()
	o.mu.Unlock()
	if err := agentmux.ReplyStdio(conn, o.path, nil); err != nil {
		o.detach(gen)
		return
	}
	stop := context.AfterFunc(ctx, func() { o.detach(gen); _ = conn.Close() })
	defer stop()
	acks := make(chan struct{})
	go func() {
		defer close(acks)
		o.readAcks(conn, gen)
	}()
	o.send(conn, gen, from)
	<-acks
}

// send writes the stream from offset pos to conn until the output ended
// (then it half-closes conn) or the attachment ends.
func (o *outStream) send(conn net.Conn, gen, pos uint64) {
	for {
		o.mu.Lock()
		for o.gen == gen && !o.released && pos >= o.end() && !o.eof {
			o.cond.Wait()
		}
		if o.eof && pos >= o.end() {
			// All sent (and perhaps all acknowledged, the stream then
			// dropped): FIN, the host's copy ends after the last byte.
			o.mu.Unlock()
			_ = conn.Close()
			return
		}
		if o.gen != gen || o.released {
			o.mu.Unlock()
			return
		}
		i := pos - o.base
		chunk := append([]byte(nil), o.buf[i:min(uint64(len(o.buf)), i+stdioChunk)]...)
		o.mu.Unlock()
		if _, err := conn.Write(chunk); err != nil {
			o.detach(gen)
			return
		}
		pos += uint64(len(chunk))
		if o.legacy {
			o.ack(pos)
		}
	}
}

// readAcks applies the host's acknowledgements until it releases the
// stream or the attachment ends. A legacy host sends none: its closing
// the stream, or the session ending, releases it (as before resumable
// streams).
func (o *outStream) readAcks(conn net.Conn, gen uint64) {
	for {
		off, err := agentmux.ReadAck(conn)
		if err != nil {
			o.detach(gen)
			if o.legacy {
				o.b.forget(o.key, o)
				o.release()
			}
			return
		}
		if off == agentmux.AckRelease {
			o.b.forget(o.key, o)
			o.release()
			return
		}
		if !o.legacy {
			o.ack(off)
		}
	}
}

// inStream is a process's stdin: the agent writes what the host sends
// into the FIFO. The host closing the stream closes the FIFO (the process
// reads end of file once the Task API's CloseIO closed its own write end
// too); a session that ends leaves it open for the next.
type inStream struct {
	b    *stdioBridge
	key  agentmux.StdioHeader
	path string
	f    io.WriteCloser

	released atomic.Bool
}

func (s *inStream) attach(ctx context.Context, conn net.Conn, req agentmux.StdioRequest) {
	if err := agentmux.ReplyStdio(conn, s.path, nil); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	buf := make([]byte, stdioChunk)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			// A write blocks while the process does not read; the
			// process's end goes away when it is deleted, which ends it.
			if s.released.Load() {
				return
			}
			if _, werr := s.f.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// The host closed its end (CloseIO), or a legacy host's
			// session ended: the input is over. A resumable stream
			// whose session ended waits for the next.
			if errors.Is(err, io.EOF) || req.Mode == agentmux.StdioLegacy {
				s.b.forget(s.key, s)
				s.release()
			}
			return
		}
	}
}

func (s *inStream) release() {
	if s.released.Swap(true) {
		return
	}
	s.f.Close()
	_ = os.Remove(s.path)
}
