package supervisor

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	transferapi "github.com/containerd/containerd/api/types/transfer"
	"github.com/containerd/fifo"
	"github.com/containerd/typeurl/v2"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Streamed stdio (containerd's `streaming` io type) is terminated here, in
// the supervisor, and not in the worker: CRI opens each process's stdin,
// stdout and stderr as a call of containerd's Streaming service on the
// pod's task socket, and those calls must outlive the worker as the task
// connections do. The relay answers them itself (a [streamHub] per task
// socket) and bridges each stream to a FIFO of its own; the worker gives
// the FIFOs to the engine as it gives containerd's FIFOs of the default io
// type, so that a process's stdio never passes through the worker.
//
// The wire protocol is containerd's (core/streaming/proxy and
// core/transfer/streaming): one ttrpc stream per call; the client's first
// message is a StreamInit naming the stream and the server acknowledges it
// with an Empty; then the receiving side grants credit (WindowUpdate) and
// the sending side sends transfer.Data within it. A stream ends with ttrpc's
// close flags: the client's CloseSend, the server's end of stream.

// streamMethod is the Streaming service's one method.
const streamMethod = "/containerd.services.streaming.v1.Streaming/Stream"

// flagNoData marks a ttrpc data frame without a message (with
// flagRemoteClosed: the end of a stream).
const flagNoData = 0x4

const (
	// streamWindow is the credit a receiver grants at a time and
	// streamChunk the most one message carries: containerd's windowSize
	// and maxRead (core/transfer/streaming).
	streamWindow = 64 << 10
	streamChunk  = 32 << 10
	// maxStreamCredit caps the credit a client may grant.
	maxStreamCredit = 1 << 30
	// maxInputQueued bounds the bytes of an input stream received and not
	// yet written: a client sending past its credit is refused.
	maxInputQueued = 4 * streamWindow
	// maxWaitingStreams bounds the streams of one socket that no bridge
	// has claimed yet.
	maxWaitingStreams = 4096
	// maxBridges bounds the bridges of one socket.
	maxBridges = 4096
	// maxStreamIDLen is NAME_MAX: a stream's ID names its FIFO.
	maxStreamIDLen = 255
	// maxNoteLen bounds a bridge's note.
	maxNoteLen = 4096
	// listPage is how many bridges one listing answer carries (a control
	// message is at most maxControlMessage bytes).
	listPage = 64
)

// Bridge describes one stream bridge: the stream with ID, and the FIFO at
// Path that the process reads (Out false: the stream carries containerd's
// input) or writes (Out true: the stream carries the process's output).
type Bridge struct {
	ID  string `json:"id"`
	Out bool   `json:"out,omitempty"`
	// Note is the worker's, kept with the bridge and listed back to the
	// next worker (which process the stream belongs to).
	Note string `json:"note,omitempty"`
	// Path is the FIFO (set by the supervisor).
	Path string `json:"path,omitempty"`
}

// ValidStreamID checks a stream ID: it names a FIFO, so it is a plain file
// name of [A-Za-z0-9._-], not "." or "..".
func ValidStreamID(id string) error {
	if id == "" || len(id) > maxStreamIDLen {
		return fmt.Errorf("stream id must have 1 to %d characters", maxStreamIDLen)
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("stream id %q has a character other than [A-Za-z0-9._-]", id)
		}
	}
	if id == "." || strings.Contains(id, "..") {
		return fmt.Errorf("stream id %q is not a plain name", id)
	}
	return nil
}

// streamHub terminates the Streaming calls of one task socket and holds
// the bridges of its processes' streams.
type streamHub struct {
	dir string
	log hclog.Logger

	mu     sync.Mutex
	closed bool
	// frozen: a handover collects the hub's state (see freeze).
	frozen  bool
	waiting map[string]*sstream // opened, no bridge for their ID yet
	bridges map[string]*bridge
}

func newStreamHub(dir string, log hclog.Logger) *streamHub {
	return &streamHub{dir: dir, log: log, waiting: map[string]*sstream{}, bridges: map[string]*bridge{}}
}

// open registers stream s under id, after its StreamInit was
// acknowledged: it is attached to id's bridge, or waits for one. A stream
// that held the ID before is ended: containerd opens a stream again under
// the same ID when it reconnects (a containerd restart).
func (h *streamHub) open(s *sstream, id string) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return errors.New("the task socket is closing")
	}
	if b := h.bridges[id]; b != nil {
		h.mu.Unlock()
		b.attach(s)
		return nil
	}
	old := h.waiting[id]
	if old == nil && len(h.waiting) >= maxWaitingStreams {
		h.mu.Unlock()
		return fmt.Errorf("more than %d streams wait for a process", maxWaitingStreams)
	}
	h.waiting[id] = s
	h.mu.Unlock()
	if old != nil {
		old.end()
	}
	// containerd opens a process's streams just before it creates the
	// process, which bridges them; one still waiting long after belongs to
	// no process (a restarted containerd reopens the streams of processes
	// that are gone). It would wait forever, and keep the supervisor from
	// re-executing itself (streams open): it ends instead.
	time.AfterFunc(waitingStreamTimeout, func() { h.expire(s, id) })
	return nil
}

// waitingStreamTimeout is how long a stream may wait for its bridge.
var waitingStreamTimeout = time.Minute

// expire ends stream s if it still waits for a bridge under id.
func (h *streamHub) expire(s *sstream, id string) {
	h.mu.Lock()
	if h.frozen {
		// Its state is being handed over: the next supervisor (or this
		// one, thawed) ends it later.
		h.mu.Unlock()
		time.AfterFunc(waitingStreamTimeout, func() { h.expire(s, id) })
		return
	}
	waiting := h.waiting[id] == s
	if waiting {
		delete(h.waiting, id)
	}
	h.mu.Unlock()
	if waiting {
		h.log.Debug("a stream waited for its process in vain: ended", "id", id)
		s.end()
	}
}

// unpark forgets s if it waits for a bridge.
func (h *streamHub) unpark(s *sstream, id string) {
	h.mu.Lock()
	if h.waiting[id] == s {
		delete(h.waiting, id)
	}
	h.mu.Unlock()
}

// bridge makes a FIFO and a bridge for each of bs, all or none, and
// attaches the streams that wait for them.
func (h *streamHub) bridge(bs []Bridge) ([]Bridge, error) {
	seen := map[string]bool{}
	for _, b := range bs {
		if err := ValidStreamID(b.ID); err != nil {
			return nil, err
		}
		if len(b.Note) > maxNoteLen {
			return nil, fmt.Errorf("stream %q: note longer than %d bytes", b.ID, maxNoteLen)
		}
		if seen[b.ID] {
			return nil, fmt.Errorf("stream %q named twice", b.ID)
		}
		seen[b.ID] = true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("the task socket is closing")
	}
	if len(h.bridges)+len(bs) > maxBridges {
		return nil, fmt.Errorf("more than %d stream bridges on one task socket", maxBridges)
	}
	for _, b := range bs {
		if h.bridges[b.ID] != nil {
			return nil, fmt.Errorf("stream %q is already bridged", b.ID)
		}
	}
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create stream dir: %w", err)
	}
	made := make([]*bridge, 0, len(bs))
	out := make([]Bridge, 0, len(bs))
	for _, spec := range bs {
		path := filepath.Join(h.dir, spec.ID)
		// A FIFO left by an earlier supervisor has no bridge any more.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			h.undo(made)
			return nil, fmt.Errorf("remove stale FIFO: %w", err)
		}
		if err := syscall.Mkfifo(path, 0o600); err != nil {
			h.undo(made)
			return nil, fmt.Errorf("create FIFO for stream %q: %w", spec.ID, err)
		}
		spec.Path = path
		made = append(made, newBridge(spec, h.log))
		out = append(out, spec)
	}
	for _, b := range made {
		h.bridges[b.ID] = b
		b.start()
		if s := h.waiting[b.ID]; s != nil {
			delete(h.waiting, b.ID)
			b.attach(s)
		}
	}
	return out, nil
}

func (h *streamHub) undo(made []*bridge) {
	for _, b := range made {
		_ = os.Remove(b.Path)
	}
}

// list returns the bridges with IDs after after, in ID order, at most
// listPage of them.
func (h *streamHub) list(after string) []Bridge {
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]string, 0, len(h.bridges))
	for id := range h.bridges {
		if id > after {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	if len(ids) > listPage {
		ids = ids[:listPage]
	}
	out := make([]Bridge, 0, len(ids))
	for _, id := range ids {
		out = append(out, h.bridges[id].Bridge)
	}
	return out
}

// wait waits until every named bridge has settled (see bridge.settled) or
// is gone, at most timeout; false when the time ran out.
func (h *streamHub) wait(ids []string, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, id := range ids {
		h.mu.Lock()
		b := h.bridges[id]
		h.mu.Unlock()
		if b == nil {
			continue
		}
		for {
			b.mu.Lock()
			ok := b.removed || b.settled()
			ch := b.changed
			b.mu.Unlock()
			if ok {
				break
			}
			select {
			case <-ch:
			case <-t.C:
				return false
			}
		}
	}
	return true
}

// unbridge removes the named bridges: their streams end and their FIFOs
// are removed. Unknown IDs are ignored.
func (h *streamHub) unbridge(ids []string) {
	var bs []*bridge
	h.mu.Lock()
	for _, id := range ids {
		if b := h.bridges[id]; b != nil {
			bs = append(bs, b)
			delete(h.bridges, id)
		}
	}
	h.mu.Unlock()
	for _, b := range bs {
		b.remove()
	}
}

// close ends every stream and bridge and removes the FIFOs' directory.
func (h *streamHub) close() error {
	h.mu.Lock()
	h.closed = true
	bridges, waiting := h.bridges, h.waiting
	h.bridges, h.waiting = map[string]*bridge{}, map[string]*sstream{}
	h.mu.Unlock()
	for _, s := range waiting {
		s.end()
	}
	for _, b := range bridges {
		b.remove()
	}
	if err := os.RemoveAll(h.dir); err != nil {
		return fmt.Errorf("remove stream dir: %w", err)
	}
	return nil
}

// bridge pumps between one stream and its FIFO. The stream attached to it
// may change: when containerd's connection goes away the bridge keeps the
// FIFO and what it had read, and a stream opened again under the same ID
// takes over. All of its state is in this struct (not in its pump's
// variables), so that a supervisor re-executing itself can freeze the
// pump at a point where nothing is in flight and hand the state over (see
// streams_handover.go).
type bridge struct {
	Bridge
	log hclog.Logger

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	removed bool
	s       *sstream // the attached stream (nil: none)
	// f is the FIFO end the pump has open (nil: not yet, or closed), a
	// file with deadlines, so that a freeze can interrupt a read or write.
	f *os.File
	// openCancel ends an open of the FIFO under way (a freeze does).
	openCancel context.CancelFunc
	// Output: credit is what the attached stream may still receive;
	// pending was read from the FIFO and not yet sent; eof is set once the
	// FIFO reached end of file (or could not be opened); drained once
	// everything read was sent after that; done once the stream was ended
	// after that.
	credit  int64
	pending []byte
	eof     bool
	drained bool
	done    bool
	// Input: queue is received data not yet written to the FIFO (queued
	// bytes of it); window the credit granted to the attached stream and
	// not yet used; eos is set when a stream's input ended (its sender
	// closed, or its connection went away), ending is that stream (nil:
	// gone) to end once the queue is written; broken once the process's
	// end went away (data is dropped until the next end of input).
	queue  [][]byte
	queued int
	window int64
	eos    bool
	ending *sstream
	broken bool
	// frozen: a handover collects the state, the pump parks (parked) at
	// the next point where nothing is in flight; gone: the state was
	// handed over, the pump ends without touching anything.
	frozen bool
	parked bool
	gone   bool
	// running is set while the pump runs.
	running bool
}

func newBridge(spec Bridge, log hclog.Logger) *bridge {
	ctx, cancel := context.WithCancel(context.Background())
	return &bridge{Bridge: spec, log: log, ctx: ctx, cancel: cancel, changed: make(chan struct{})}
}

// notify wakes whoever waits for a change; the caller holds b.mu.
func (b *bridge) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// wait waits, with b.mu held (released meanwhile), for the next change.
func (b *bridge) wait() {
	ch := b.changed
	b.mu.Unlock()
	<-ch
	b.mu.Lock()
}

// await waits, with b.mu held (released meanwhile), until cond holds or
// the bridge is removed; false when removed.
func (b *bridge) await(cond func() bool) bool {
	for !b.removed && !cond() {
		b.wait()
	}
	return !b.removed
}

// settled reports, with b.mu held, that the bridge has nothing in flight:
// an output bridge has sent all the process wrote until its end of file,
// an input bridge has written all it received and has no stream sending.
func (b *bridge) settled() bool {
	if b.Out {
		return b.drained
	}
	return len(b.queue) == 0 && !b.eos && b.s == nil
}

// attach makes s the bridge's stream, ending the one before.
func (b *bridge) attach(s *sstream) {
	b.mu.Lock()
	if b.removed || b.done {
		b.mu.Unlock()
		s.end() // an ended output, or a removed bridge: nothing comes
		return
	}
	old := b.s
	b.s = s
	b.credit = s.attach(b)
	b.window = 0
	if b.ending == old {
		b.ending = nil
	}
	b.notify()
	b.mu.Unlock()
	if old != nil && old != s {
		old.end()
	}
}

// grant adds credit from s (output).
func (b *bridge) grant(s *sstream, n int32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s == s && n > 0 {
		b.credit = min(b.credit+int64(n), maxStreamCredit)
		b.notify()
	}
}

// deliver queues data received from s (input); false when s sent past
// its credit.
func (b *bridge) deliver(s *sstream, data []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.s != s || b.Out {
		return true // not the stream that feeds the FIFO: dropped
	}
	if b.queued+len(data) > maxInputQueued {
		return false
	}
	if len(data) > 0 {
		b.queue = append(b.queue, data)
		b.queued += len(data)
		b.notify()
	}
	return true
}

// senderClosed handles s's CloseSend.
func (b *bridge) senderClosed(s *sstream) {
	b.mu.Lock()
	if b.s != s {
		b.mu.Unlock()
		s.end()
		return
	}
	if b.Out {
		// containerd's reader closed: it reads no more.
		b.s, b.credit = nil, 0
		b.notify()
		b.mu.Unlock()
		s.end()
		return
	}
	// End of input: written out first, then the FIFO is closed.
	b.eos, b.ending = true, s
	b.s = nil
	b.notify()
	b.mu.Unlock()
}

// lost handles the end of s's connection: what it sent is still written.
func (b *bridge) lost(s *sstream) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ending == s {
		b.ending = nil
	}
	if b.s != s {
		return
	}
	b.s, b.credit = nil, 0
	if !b.Out {
		b.eos = true
	}
	b.notify()
}

// remove stops the bridge: its stream ends, its FIFO end closes and the
// FIFO is removed.
func (b *bridge) remove() {
	b.mu.Lock()
	if b.removed {
		b.mu.Unlock()
		return
	}
	b.removed = true
	s, ending, f := b.s, b.ending, b.f
	b.s, b.ending, b.f = nil, nil, nil
	b.notify()
	b.mu.Unlock()
	b.cancel()
	if f != nil {
		_ = f.Close() // unblocks the pump's read or write
	}
	for _, st := range []*sstream{s, ending} {
		if st != nil {
			st.end()
		}
	}
	if err := os.Remove(b.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		b.log.Warn("remove stream FIFO", "path", b.Path, "error", err)
	}
}

// start runs the bridge's pump.
func (b *bridge) start() {
	b.mu.Lock()
	b.running = true
	b.mu.Unlock()
	go func() {
		defer func() {
			b.mu.Lock()
			b.running = false
			b.notify()
			b.mu.Unlock()
		}()
		if b.Out {
			b.pumpOut()
		} else {
			b.pumpIn()
		}
	}()
}

// hold parks the pump while the bridge is frozen (b.mu held); false when
// the pump must end (removed, or its state handed over).
func (b *bridge) hold() bool {
	for b.frozen && !b.gone && !b.removed {
		if !b.parked {
			b.parked = true
			b.notify()
		}
		b.wait()
	}
	b.parked = false
	return !b.gone && !b.removed
}

// open opens the FIFO's end for the pump (b.mu held, released meanwhile);
// nil without an error when a freeze or a removal interrupted it.
func (b *bridge) open(flag int) (*os.File, error) {
	ctx, cancel := context.WithCancel(b.ctx)
	b.openCancel = cancel
	b.mu.Unlock()
	// Blocks until the process's end is opened.
	f, err := openEnd(ctx, b.Path, flag)
	b.mu.Lock()
	cancel()
	b.openCancel = nil
	if b.removed || b.gone {
		if f != nil {
			_ = f.Close()
		}
		return nil, nil
	}
	if err != nil && b.frozen && ctx.Err() != nil {
		return nil, nil // opened again once thawed (or by the next supervisor)
	}
	return f, err
}

// openEnd opens one end of the FIFO at path, waiting until the other end
// is opened or ctx ends, and returns it as a file with deadlines.
func openEnd(ctx context.Context, path string, flag int) (*os.File, error) {
	ff, err := fifo.OpenFifo(ctx, path, flag, 0)
	if err != nil {
		return nil, err
	}
	defer ff.Close()
	sc, ok := ff.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("FIFO %s: no descriptor", path)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	if cerr := raw.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	return fifoFile(nfd, path)
}

// fifoFile makes a file with deadlines of FIFO descriptor fd.
func fifoFile(fd int, path string) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("FIFO %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// pumpOut reads the process's output from the FIFO and sends it to the
// attached stream within its credit. It reads only what a stream may take,
// so that while no stream is attached (containerd restarting) the process's
// writes wait in the FIFO; a message that could not be written to a stream
// (its connection went away) is sent again to the next one.
func (b *bridge) pumpOut() {
	buf := make([]byte, streamChunk)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if !b.hold() {
			return
		}
		if b.f == nil && !b.eof {
			f, err := b.open(syscall.O_RDONLY)
			switch {
			case err != nil:
				if b.ctx.Err() == nil {
					b.log.Warn("open output FIFO", "path", b.Path, "error", err)
				}
				b.eof = true
			case f != nil:
				b.f = f
			}
			continue
		}
		if b.eof && len(b.pending) == 0 && !b.drained {
			b.drained = true
			b.notify()
		}
		if b.s == nil || (b.credit <= 0 && !b.drained) {
			if b.removed {
				return
			}
			if !b.frozen {
				b.wait()
			}
			continue
		}
		s := b.s
		if b.drained {
			b.done, b.s = true, nil
			f := b.f
			b.f = nil
			b.notify()
			b.mu.Unlock()
			s.end()
			if f != nil {
				_ = f.Close()
			}
			b.mu.Lock()
			return
		}
		n := int(min(b.credit, streamChunk))
		if len(b.pending) == 0 {
			f := b.f
			b.mu.Unlock()
			k, err := f.Read(buf[:n])
			b.mu.Lock()
			if k > 0 {
				b.pending = bytes.Clone(buf[:k])
			}
			switch {
			case err == nil:
			case errors.Is(err, os.ErrDeadlineExceeded):
				// A freeze: read again once thawed (or by the next
				// supervisor).
			default:
				if !errors.Is(err, io.EOF) && !b.removed && !b.gone {
					b.log.Warn("read output FIFO", "path", b.Path, "error", err)
				}
				b.eof = true
			}
			continue // the stream may have changed while reading
		}
		k := min(len(b.pending), n)
		data := b.pending[:k]
		b.mu.Unlock()
		err := s.sendData(data)
		b.mu.Lock()
		if err != nil {
			// Not delivered: the frame was not written whole, so the
			// next stream gets these bytes, once.
			if b.s == s {
				b.s, b.credit = nil, 0
				b.notify()
			}
			continue
		}
		if b.s == s {
			b.credit -= int64(k)
		}
		b.pending = b.pending[k:]
	}
}

// pumpIn writes what the attached stream sends to the FIFO, granting it
// credit as containerd's receiver does (core/transfer/streaming
// ReceiveStream): a window when what it may still send drops below one.
// The FIFO's write end is open while a stream feeds it: when the stream
// ends (CloseSend, or containerd's connection going away, as containerd's
// own FIFO writer would close), what it sent is written and the end
// closed, so that the process reads end of file once nothing else holds
// its stdin open.
func (b *bridge) pumpIn() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if !b.hold() {
			return
		}
		switch {
		case len(b.queue) > 0 && b.f == nil && !b.broken:
			f, err := b.open(syscall.O_WRONLY)
			switch {
			case err != nil:
				if b.ctx.Err() == nil {
					b.log.Warn("open input FIFO", "path", b.Path, "error", err)
				}
				b.broken = true
			case f != nil:
				b.f = f
			}
		case len(b.queue) > 0:
			data := b.queue[0]
			n := len(data)
			if f := b.f; f != nil {
				b.mu.Unlock()
				var err error
				n, err = f.Write(data)
				b.mu.Lock()
				switch {
				case err == nil:
				case errors.Is(err, os.ErrDeadlineExceeded):
					// A freeze: the rest is written once thawed (or
					// by the next supervisor).
				default:
					if !b.removed && !b.gone {
						b.log.Debug("write input FIFO: the process's stdin is gone", "path", b.Path, "error", err)
						if b.f == f {
							b.f = nil
						}
						_ = f.Close()
						b.broken = true
					}
					n = len(data) // dropped
				}
			}
			if b.removed || b.gone {
				return
			}
			if n == len(data) {
				b.queue = b.queue[1:]
			} else {
				b.queue[0] = data[n:]
			}
			b.queued -= n
			b.window -= int64(n)
			b.notify()
		case b.eos:
			ending, f := b.ending, b.f
			b.eos, b.ending, b.f, b.broken = false, nil, nil, false
			b.mu.Unlock()
			if f != nil {
				_ = f.Close()
			}
			if ending != nil {
				ending.end()
			}
			b.mu.Lock()
			b.notify()
		case b.s != nil && b.window < streamWindow && !b.frozen:
			s := b.s
			b.window += streamWindow
			b.mu.Unlock()
			_ = s.sendAny(&transferapi.WindowUpdate{Update: streamWindow})
			b.mu.Lock()
		default:
			if b.removed {
				return
			}
			if !b.frozen {
				b.wait()
			}
		}
	}
}

// sstream is one Streaming call that the relay answers itself.
type sstream struct {
	c   *relayConn
	sid uint32

	mu     sync.Mutex // guards the fields below and serializes sends
	id     string     // from the StreamInit
	br     *bridge
	credit int64 // granted before a bridge took it
	ended  bool
}

// attach records that b took s and returns the credit s collected.
func (s *sstream) attach(b *bridge) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.br = b
	c := s.credit
	s.credit = 0
	return c
}

// handle processes one data frame of the stream from containerd.
func (s *sstream) handle(f frame) {
	hub := s.c.r.streamHub()
	if f.flags()&flagNoData == 0 {
		var a anypb.Any
		if err := proto.Unmarshal(f[headerLen:], &a); err != nil {
			s.fail(codes.InvalidArgument, fmt.Sprintf("decode stream message: %v", err))
			return
		}
		v, err := typeurl.UnmarshalAny(&a)
		if err != nil {
			s.fail(codes.InvalidArgument, fmt.Sprintf("decode stream message: %v", err))
			return
		}
		s.mu.Lock()
		id, br := s.id, s.br
		if id != "" && br == nil {
			// Waiting for a bridge: credit is kept for it.
			if u, ok := v.(*transferapi.WindowUpdate); ok && u.Update > 0 {
				s.credit = min(s.credit+int64(u.Update), maxStreamCredit)
			}
			_, data := v.(*transferapi.Data)
			s.mu.Unlock()
			if data {
				s.fail(codes.FailedPrecondition, "data sent before any credit was granted")
			}
			return
		}
		s.mu.Unlock()
		switch {
		case id == "":
			init, ok := v.(*streamingapi.StreamInit)
			if !ok {
				s.fail(codes.InvalidArgument, "the first stream message must be a StreamInit")
				return
			}
			if err := ValidStreamID(init.ID); err != nil {
				s.fail(codes.InvalidArgument, err.Error())
				return
			}
			if hub == nil {
				s.fail(codes.Unavailable, "the task socket is closing")
				return
			}
			s.mu.Lock()
			s.id = init.ID
			s.mu.Unlock()
			// Acknowledged before anything else is sent on it.
			if err := s.sendAny(&emptypb.Empty{}); err != nil {
				return
			}
			if err := hub.open(s, init.ID); err != nil {
				s.fail(codes.ResourceExhausted, err.Error())
			}
		default:
			switch m := v.(type) {
			case *transferapi.WindowUpdate:
				br.grant(s, m.Update)
			case *transferapi.Data:
				if !br.deliver(s, m.Data) {
					s.fail(codes.ResourceExhausted, "stream data past the granted credit")
				}
			}
		}
	}
	if f.flags()&flagRemoteClosed != 0 {
		s.mu.Lock()
		id, br := s.id, s.br
		s.mu.Unlock()
		switch {
		case br != nil:
			br.senderClosed(s)
		default:
			if id != "" && hub != nil {
				hub.unpark(s, id)
			}
			s.end()
		}
	}
}

// lost handles the end of the stream's connection.
func (s *sstream) lost() {
	s.mu.Lock()
	s.ended = true
	id, br := s.id, s.br
	s.mu.Unlock()
	if br != nil {
		br.lost(s)
	} else if hub := s.c.r.streamHub(); id != "" && hub != nil {
		hub.unpark(s, id)
	}
}

// sendAny sends one message on the stream.
func (s *sstream) sendAny(m proto.Message) error {
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		return err
	}
	payload, err := proto.Marshal(typeurl.MarshalProto(a))
	if err != nil {
		return err
	}
	return s.send(typeData, 0, payload)
}

func (s *sstream) sendData(p []byte) error {
	return s.sendAny(&transferapi.Data{Data: p})
}

// send writes one frame of the stream; an error means the frame was not
// written whole.
func (s *sstream) send(typ, flags byte, payload []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return io.EOF
	}
	return s.c.sendClient(newFrame(s.sid, typ, flags, payload))
}

// end ends the stream from the server's side (containerd reads end of
// stream) and forgets it.
func (s *sstream) end() {
	s.finish(newFrame(s.sid, typeData, flagRemoteClosed|flagNoData, nil))
}

// fail ends the stream with an error status.
func (s *sstream) fail(code codes.Code, msg string) {
	s.finish(errorResponse(s.sid, code, msg))
}

func (s *sstream) finish(f frame) {
	s.mu.Lock()
	if !s.ended {
		s.ended = true
		_ = s.c.sendClient(f)
	}
	br := s.br
	s.mu.Unlock()
	s.c.dropStream(s.sid)
	if br != nil {
		br.lost(s)
	}
}

// newFrame builds one frame.
func newFrame(sid uint32, typ, flags byte, payload []byte) frame {
	f := make(frame, headerLen+len(payload))
	binary.BigEndian.PutUint32(f[:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(f[4:8], sid)
	f[8] = typ
	f[9] = flags
	copy(f[headerLen:], payload)
	return f
}

// The relay's side: which frames of a connection are streams it answers.

// streamFrame handles f when it belongs to a Streaming call that the relay
// answers itself (true), or starts one; false: f is for the worker.
func (c *relayConn) streamFrame(f frame) bool {
	sid := f.streamID()
	switch f.typ() {
	case typeRequest:
		if c.r.streamHub() == nil {
			return false
		}
		m, err := f.method()
		if err != nil || m != streamMethod {
			return false
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return true
		}
		if c.local == nil {
			c.local = map[uint32]*sstream{}
		}
		c.local[sid] = &sstream{c: c, sid: sid}
		c.mu.Unlock()
		return true
	case typeData:
		c.mu.Lock()
		s := c.local[sid]
		c.mu.Unlock()
		if s == nil {
			return false
		}
		s.handle(f)
		return true
	}
	return false
}

// dropStream forgets a stream that ended.
func (c *relayConn) dropStream(sid uint32) {
	c.mu.Lock()
	delete(c.local, sid)
	c.mu.Unlock()
}

// closeStreams handles the end of the connection for its streams.
func (c *relayConn) closeStreams() {
	c.mu.Lock()
	local := c.local
	c.local = nil
	c.mu.Unlock()
	for _, s := range local {
		s.lost()
	}
}

// sendClient writes a frame to the client; an error means it was not
// written whole (the connection is then closed).
func (c *relayConn) sendClient(f frame) error {
	c.cw.Lock()
	defer c.cw.Unlock()
	if _, err := c.client.Write(f); err != nil {
		c.client.Close()
		return err
	}
	return nil
}

// streamHub returns the relay's stream hub (nil: streams go to the worker).
func (r *Relay) streamHub() *streamHub {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hub
}

// EnableStreams makes the relay answer containerd's Streaming calls
// itself, bridging them to FIFOs under dir. Enabling it again with the
// same dir does nothing.
func (r *Relay) EnableStreams(dir string) error {
	if err := checkPath(dir); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("the relay is closed")
	}
	if r.hub != nil {
		if r.hub.dir != dir {
			return fmt.Errorf("streams of %s already bridge under %s", r.path, r.hub.dir)
		}
		return nil
	}
	r.hub = newStreamHub(dir, r.log)
	return nil
}
