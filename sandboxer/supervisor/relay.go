package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"

	"github.com/magnetar-io/magnetar/internal/unixsock"
)

// replaySafe are the methods whose requests the relay sends again to a new
// worker when the one that had them went away before answering: they
// change nothing, so answering them twice is harmless, and the long-running
// ones among them (Wait) must outlive a restart for containerd to learn of
// exits at all. Any other request that a lost worker had received is
// answered Unavailable; a request no worker had received yet is sent to
// the next one, whatever its method.
var replaySafe = map[string]bool{
	"/containerd.task.v3.Task/State":    true,
	"/containerd.task.v3.Task/Wait":     true,
	"/containerd.task.v3.Task/Pids":     true,
	"/containerd.task.v3.Task/Stats":    true,
	"/containerd.task.v3.Task/Connect":  true,
	"/containerd.task.v3.Task/Shutdown": true,
}

// replayMarked are the methods whose requests the relay sends again to a
// new worker marked as replays (ttrpc metadata [replayedKey]): Start,
// which the lost worker may have carried out or not. The new worker
// starts a process still created and answers the Start of one already
// started with its pid (the process's record is written before its
// start, and a start cut short is found at recovery), where a second
// Start would otherwise fail.
var replayMarked = map[string]bool{
	"/containerd.task.v3.Task/Start": true,
}

// replayedKey is taskservice.ReplayedMetadataKey (the worker's side; not
// imported, which would bring the engine into the supervisor).
const replayedKey = "magnetar-replayed"

// maxQueued bounds the requests one connection may have waiting for a
// worker; past it the relay answers new ones Unavailable.
const maxQueued = 1024

// Relay serves a ttrpc socket (a pod's task socket) on behalf of the
// worker: it owns the listening socket and every connection accepted on
// it, and relays whole ttrpc frames between each connection and a
// connection of its own to the worker's backend socket. When the worker
// goes away the client connections stay open; requests wait for the next
// worker (see [replaySafe] for those the lost worker had received), and
// [Relay.SetBackend] connects them to it.
type Relay struct {
	path string
	ln   net.Listener
	log  hclog.Logger

	mu      sync.Mutex
	backend string // "" while no worker serves it
	conns   map[*relayConn]struct{}
	closed  bool
	// paused: new requests wait for the next worker (see Drain).
	paused bool
	// handingOver: the relay's loops stop without closing anything, for a
	// re-executed supervisor to take its descriptors (see handover.go).
	handingOver bool
	// hub answers containerd's Streaming calls (nil: the worker does;
	// see EnableStreams).
	hub *streamHub
	wg  sync.WaitGroup
}

// NewRelay listens on path (mode 0600; a stale socket file is replaced).
func NewRelay(path string, log hclog.Logger) (*Relay, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	return newRelay(path, ln, log), nil
}

func newRelay(path string, ln net.Listener, log hclog.Logger) *Relay {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	r := &Relay{path: path, ln: ln, log: log, conns: map[*relayConn]struct{}{}}
	r.wg.Go(r.accept)
	return r
}

// listenUnix listens on a unix socket readable by its owner only.
func listenUnix(path string) (net.Listener, error) {
	l, err := unixsock.Listen(path)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (r *Relay) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed, or handing over
		}
		r.mu.Lock()
		if r.handingOver {
			// Accepted as the handover began: it goes with the others.
			r.mu.Unlock()
			_ = c.(*net.UnixConn).SetReadDeadline(time.Now())
		} else {
			r.mu.Unlock()
		}
		r.add(c, nil, nil)
	}
}

// add serves client connection c; partial holds bytes of its next frame
// already read and pending its requests waiting for a worker (both from a
// handover).
func (r *Relay) add(c net.Conn, partial []byte, pend map[uint32]*pending) {
	r.serveConn(r.newConn(c, partial, pend))
}

// newConn makes a relay connection of client connection c (see add).
func (r *Relay) newConn(c net.Conn, partial []byte, pend map[uint32]*pending) *relayConn {
	if pend == nil {
		pend = map[uint32]*pending{}
	}
	return &relayConn{r: r, client: c, in: frameReader{r: c, buf: partial}, pending: pend, answered: make(chan struct{})}
}

// serveConn serves rc.
func (r *Relay) serveConn(rc *relayConn) {
	c := rc.client
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		c.Close()
		return
	}
	r.conns[rc] = struct{}{}
	backend := r.backend
	r.mu.Unlock()
	if backend != "" {
		rc.connect(backend)
	}
	r.wg.Go(rc.clientLoop)
}

// SetBackend tells the relay where the worker now serves this socket and
// connects every client connection to it, sending first what waited for a
// worker.
func (r *Relay) SetBackend(path string) {
	r.mu.Lock()
	r.backend = path
	r.paused = false
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.connect(path)
	}
}

// Drain prepares a planned handover to a new worker: requests that arrive
// from now on wait for the next worker, and Drain returns once the
// current worker has answered every call it has that would not be
// replayed (everything but Wait and the other read-only calls), or when
// ctx ends.
func (r *Relay) Drain(ctx context.Context) error {
	r.pause()
	r.mu.Lock()
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		if err := c.drained(ctx); err != nil {
			return err
		}
	}
	return nil
}

// pause makes new requests wait for the next worker.
func (r *Relay) pause() {
	r.mu.Lock()
	r.paused = true
	r.mu.Unlock()
}

// ClearBackend records that the worker no longer serves this socket (it
// exited): requests wait for the next one.
func (r *Relay) ClearBackend() {
	r.mu.Lock()
	r.backend = ""
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		var failed []uint32
		if c.back != nil {
			// Handled here, not only when its loop notices, so that
			// the next SetBackend replays what the worker had.
			failed = c.lostLocked()
		}
		c.mu.Unlock()
		c.failAll(failed)
	}
}

// Close stops listening, closes every connection and removes the socket.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	hub := r.hub
	r.mu.Unlock()
	err := r.ln.Close()
	for _, c := range conns {
		c.close()
	}
	r.wg.Wait()
	if hub != nil {
		if herr := hub.close(); herr != nil && err == nil {
			err = herr
		}
	}
	if rerr := os.Remove(r.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

// pending is a request frame that has no response yet.
type pending struct {
	f      frame
	method string
	stream bool // a streaming call (not replayable)
	sent   bool // a worker received it
}

// relayConn is one client connection and its link to the worker.
type relayConn struct {
	r      *Relay
	client net.Conn
	in     frameReader // the client's frames

	cw sync.Mutex // serializes writes to the client

	mu      sync.Mutex // guards back, gen, pending and writes to back
	back    net.Conn
	gen     int // counts backend connections, so a late loss is ignored
	pending map[uint32]*pending
	closed  bool
	// answered is signalled whenever a response arrives (see drained).
	answered chan struct{}
	// local are the Streaming calls the relay answers itself.
	local map[uint32]*sstream
}

// drained waits until no call the worker has would be lost with it.
func (c *relayConn) drained(ctx context.Context) error {
	for {
		c.mu.Lock()
		busy := false
		for _, p := range c.pending {
			if p.sent && (p.stream || !replaySafe[p.method]) {
				busy = true
				break
			}
		}
		ch := c.answered
		c.mu.Unlock()
		if !busy || ch == nil {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// writeClient sends a frame to the client.
func (c *relayConn) writeClient(f frame) {
	c.cw.Lock()
	defer c.cw.Unlock()
	if _, err := c.client.Write(f); err != nil {
		c.client.Close()
	}
}

// clientLoop forwards the client's frames to the worker, or keeps them
// for the next one.
func (c *relayConn) clientLoop() {
	for {
		f, err := c.in.next()
		if err != nil {
			c.r.mu.Lock()
			handingOver := c.r.handingOver
			c.r.mu.Unlock()
			if handingOver {
				return // the connection goes to the next supervisor as it is
			}
			c.close()
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.r.log.Debug("task relay: client connection ends", "socket", c.r.path, "error", err)
			}
			return
		}
		if c.streamFrame(f) {
			continue
		}
		var reject frame
		c.mu.Lock()
		sid := f.streamID()
		switch f.typ() {
		case typeRequest:
			m, err := f.method()
			if err != nil {
				reject = errorResponse(sid, codes.InvalidArgument, err.Error())
				break
			}
			if c.back == nil && len(c.pending) >= maxQueued {
				reject = errorResponse(sid, codes.Unavailable, "the sandboxer is restarting and has too many requests waiting")
				break
			}
			p := &pending{f: f, method: m, stream: f.flags()&flagRemoteOpen != 0}
			c.pending[sid] = p
			c.r.mu.Lock()
			paused := c.r.paused
			c.r.mu.Unlock()
			if c.back != nil && !paused {
				p.sent = c.writeBack(f)
			}
		case typeData:
			// Data of a streaming call reaches only the worker that has
			// the call; a new worker does not, and the call has ended.
			if p := c.pending[sid]; p != nil && p.sent && c.back != nil {
				c.writeBack(f)
			}
		}
		c.mu.Unlock()
		if reject != nil {
			c.writeClient(reject)
		}
	}
}

// writeBack sends a frame to the worker; the caller holds c.mu. A failed
// write is reported by the backend loop.
func (c *relayConn) writeBack(f frame) bool {
	_, err := c.back.Write(f)
	return err == nil
}

// connect links the connection to a worker's backend socket and sends it
// the requests that wait, in the order the client sent them (ttrpc stream
// IDs only grow on a connection).
func (c *relayConn) connect(path string) {
	back, err := net.Dial("unix", path)
	if err != nil {
		c.r.log.Error("task relay: cannot reach the worker", "socket", c.r.path, "backend", path, "error", err)
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		back.Close()
		return
	}
	var failed []uint32
	if c.back != nil {
		// The connection it replaces is lost now, not when its loop
		// notices: what that worker had must be replayed to this one.
		failed = c.lostLocked()
	}
	c.back = back
	c.gen++
	gen := c.gen
	sids := make([]uint32, 0, len(c.pending))
	for sid, p := range c.pending {
		if !p.sent {
			sids = append(sids, sid)
		}
	}
	slices.Sort(sids)
	for _, sid := range sids {
		if !c.writeBack(c.pending[sid].f) {
			break
		}
		c.pending[sid].sent = true
	}
	c.mu.Unlock()
	c.failAll(failed)
	c.r.wg.Go(func() { c.backLoop(back, gen) })
}

// backLoop forwards the worker's frames to the client until the worker's
// connection ends.
func (c *relayConn) backLoop(back net.Conn, gen int) {
	for {
		f, err := readFrame(back)
		if err != nil {
			c.lost(gen)
			return
		}
		if f.typ() == typeResponse {
			c.mu.Lock()
			delete(c.pending, f.streamID())
			close(c.answered)
			c.answered = make(chan struct{})
			c.mu.Unlock()
		}
		c.writeClient(f)
	}
}

// lost handles the end of backend connection gen: requests the worker had
// received are sent again to the next worker when that is safe, and
// answered Unavailable otherwise.
func (c *relayConn) lost(gen int) {
	c.mu.Lock()
	if gen != c.gen || c.closed {
		c.mu.Unlock()
		return
	}
	failed := c.lostLocked()
	c.mu.Unlock()
	c.failAll(failed)
}

// lostLocked drops the backend connection (the caller holds c.mu): the
// requests it had are marked for the next worker when safe to replay and
// returned otherwise, to be failed (failAll) once c.mu is released.
func (c *relayConn) lostLocked() []uint32 {
	if c.back != nil {
		c.back.Close()
		c.back = nil
	}
	var failed []uint32
	for sid, p := range c.pending {
		if !p.sent {
			continue
		}
		if !p.stream && replaySafe[p.method] {
			p.sent = false
			continue
		}
		if !p.stream && replayMarked[p.method] {
			if f, err := p.f.withMetadata(replayedKey, "1"); err == nil {
				p.f, p.sent = f, false
				continue
			}
		}
		failed = append(failed, sid)
		delete(c.pending, sid)
	}
	return failed
}

// failAll answers the requests lost with a worker Unavailable.
func (c *relayConn) failAll(failed []uint32) {
	slices.Sort(failed)
	for _, sid := range failed {
		c.writeClient(errorResponse(sid, codes.Unavailable, "the sandboxer restarted while handling this call"))
	}
}

func (c *relayConn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if c.back != nil {
		c.back.Close()
		c.back = nil
	}
	c.mu.Unlock()
	c.client.Close()
	c.closeStreams()
	c.r.mu.Lock()
	delete(c.r.conns, c)
	c.r.mu.Unlock()
}
