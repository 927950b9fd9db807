package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Streams across a re-executed supervisor. The stream bridges' state
// (credit, bytes read from a FIFO and not yet sent, input received and not
// yet written, which stream of which connection feeds which bridge) lives
// in this process's memory; a live upgrade hands it to the next program
// with the rest (see handover.go):
//
//  1. the relays' client loops stop (stopLoops): nothing new arrives from
//     containerd;
//  2. every bridge is frozen: its pump stops at the next point where
//     nothing is in flight — a read or write of the FIFO under way is
//     interrupted through a deadline (what it had read, or the part of a
//     write not written, stays in the bridge's state), an open of the FIFO
//     is cancelled (the next program opens it again), a message being sent
//     to containerd is sent whole first;
//  3. the state is collected with duplicates of the FIFO ends, and the
//     pumps end without closing anything the process or containerd sees;
//  4. the next program rebuilds the connections' streams and the bridges
//     before it reads a frame from containerd, and starts the pumps.
//
// If a pump does not stop within freezeTimeout (containerd does not read
// what is sent to it) everything is thawed and the supervisor is not
// re-executed (the worker alone is upgraded, as before).

// freezeTimeout bounds how long a handover waits for the stream pumps.
var freezeTimeout = 5 * time.Second

// errStreamsBusy refuses a handover whose streams did not come to rest.
var errStreamsBusy = errors.New("streamed stdio did not come to rest for the handover")

// hubState is a stream hub's part of a handover.
type hubState struct {
	Bridges []bridgeState `json:"bridges,omitempty"`
	// Waiting are the streams that wait for a bridge (ID: the one they
	// wait under).
	Waiting []streamRef `json:"waiting,omitempty"`
}

// bridgeState is one bridge's state (see bridge).
type bridgeState struct {
	Bridge
	// FD is the FIFO end the pump had open (-1: none).
	FD      int        `json:"fd"`
	Credit  int64      `json:"credit,omitempty"`
	Pending []byte     `json:"pending,omitempty"`
	EOF     bool       `json:"eof,omitempty"`
	Drained bool       `json:"drained,omitempty"`
	Done    bool       `json:"done,omitempty"`
	Queue   [][]byte   `json:"queue,omitempty"`
	Window  int64      `json:"window,omitempty"`
	EOS     bool       `json:"eos,omitempty"`
	Broken  bool       `json:"broken,omitempty"`
	Stream  *streamRef `json:"stream,omitempty"`
	Ending  *streamRef `json:"ending,omitempty"`
}

// streamRef names a stream that the relay answers: the index of its
// connection in relayState.Conns and its ttrpc stream ID.
type streamRef struct {
	Conn int    `json:"conn"`
	SID  uint32 `json:"sid"`
	ID   string `json:"id,omitempty"`
}

// localStream is one stream a connection has with the relay.
type localStream struct {
	SID    uint32 `json:"sid"`
	ID     string `json:"id,omitempty"`
	Credit int64  `json:"credit,omitempty"`
}

// freezeStreams freezes the relay's stream bridges (its client loops
// stopped); false when they did not come to rest in time (thawed again).
func (r *Relay) freezeStreams(timeout time.Duration) bool {
	h := r.streamHub()
	return h == nil || h.freeze(timeout)
}

// thawStreams undoes freezeStreams.
func (r *Relay) thawStreams() {
	if h := r.streamHub(); h != nil {
		h.thaw()
	}
}

// freeze stops every pump of the hub where nothing is in flight; false
// when one did not stop within timeout (the hub is thawed again).
func (h *streamHub) freeze(timeout time.Duration) bool {
	h.mu.Lock()
	h.frozen = true
	bs := slices.Collect(maps.Values(h.bridges))
	h.mu.Unlock()
	for _, b := range bs {
		b.freeze()
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, b := range bs {
		if !b.awaitParked(t.C) {
			h.thaw()
			return false
		}
	}
	return true
}

// thaw lets the pumps go on.
func (h *streamHub) thaw() {
	h.mu.Lock()
	h.frozen = false
	bs := slices.Collect(maps.Values(h.bridges))
	h.mu.Unlock()
	for _, b := range bs {
		b.thaw()
	}
}

func (b *bridge) freeze() {
	b.mu.Lock()
	b.frozen = true
	f, cancel := b.f, b.openCancel
	b.notify()
	b.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if f != nil {
		_ = f.SetDeadline(time.Now()) // interrupts a read or write
	}
}

func (b *bridge) thaw() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.frozen = false
	if b.f != nil {
		_ = b.f.SetDeadline(time.Time{})
	}
	b.notify()
}

// awaitParked waits until the bridge's pump is parked or has ended; false
// when timeout fired first.
func (b *bridge) awaitParked(timeout <-chan time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.running && !b.parked {
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			b.mu.Lock()
			return false
		}
		b.mu.Lock()
	}
	return true
}

// handOver returns the frozen hub's state with duplicates of its FIFO
// ends that an exec keeps (index: each connection's place in the relay's
// state). Its pumps end; nothing the processes or containerd see is
// closed or removed.
func (h *streamHub) handOver(index map[*relayConn]int) (*hubState, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ref := func(s *sstream) *streamRef {
		if s == nil {
			return nil
		}
		i, ok := index[s.c]
		if !ok {
			return nil
		}
		return &streamRef{Conn: i, SID: s.sid}
	}
	st := &hubState{}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(h.bridges)) {
		b := h.bridges[id]
		b.mu.Lock()
		bs := bridgeState{
			Bridge: b.Bridge, FD: -1,
			Credit: b.credit, Pending: bytes.Clone(b.pending), EOF: b.eof, Drained: b.drained, Done: b.done,
			Window: b.window, EOS: b.eos, Broken: b.broken,
			Stream: ref(b.s), Ending: ref(b.ending),
		}
		for _, q := range b.queue {
			bs.Queue = append(bs.Queue, bytes.Clone(q))
		}
		f := b.f
		if f != nil {
			fd, err := dupOf(f)
			if err != nil {
				// The next supervisor opens the FIFO again.
				errs = append(errs, fmt.Errorf("stream %s: %w", id, err))
			} else {
				bs.FD = fd
			}
		}
		b.gone, b.f = true, nil
		b.notify()
		b.mu.Unlock()
		if f != nil {
			_ = f.Close() // the state has its duplicate
		}
		st.Bridges = append(st.Bridges, bs)
	}
	for _, id := range slices.Sorted(maps.Keys(h.waiting)) {
		if r := ref(h.waiting[id]); r != nil {
			r.ID = id
			st.Waiting = append(st.Waiting, *r)
		}
	}
	h.closed = true
	h.bridges, h.waiting = map[string]*bridge{}, map[string]*sstream{}
	return st, errors.Join(errs...)
}

// restore rebuilds the bridges and waiting streams of hs (conns: the
// relay's adopted connections by index, nil where one was lost), without
// starting them (see startPumps). It takes every descriptor of hs.
func (h *streamHub) restore(hs *hubState, conns []*relayConn) error {
	lookup := func(r *streamRef) *sstream {
		if r == nil || r.Conn < 0 || r.Conn >= len(conns) || conns[r.Conn] == nil {
			return nil
		}
		return conns[r.Conn].local[r.SID]
	}
	var errs []error
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, bs := range hs.Bridges {
		if err := ValidStreamID(bs.ID); err != nil || h.bridges[bs.ID] != nil || bs.Path != filepath.Join(h.dir, bs.ID) {
			closeFD(bs.FD)
			errs = append(errs, fmt.Errorf("stream bridge %q (%s) from the handover: not a bridge of %s", bs.ID, bs.Path, h.dir))
			continue
		}
		b := newBridge(bs.Bridge, h.log)
		if bs.FD >= 0 {
			f, err := fifoFile(bs.FD, bs.Path)
			if err != nil {
				errs = append(errs, err) // opened again by the pump
			} else {
				b.f = f
			}
		}
		b.credit, b.pending, b.eof, b.drained, b.done = bs.Credit, bs.Pending, bs.EOF, bs.Drained, bs.Done
		b.queue, b.window, b.eos, b.broken = bs.Queue, bs.Window, bs.EOS, bs.Broken
		for _, q := range b.queue {
			b.queued += len(q)
		}
		if s := lookup(bs.Stream); s != nil {
			b.s, s.br = s, b
		} else if bs.Stream != nil {
			// Its connection was lost in the handover.
			b.credit = 0
			b.eos = b.eos || !b.Out
		}
		if s := lookup(bs.Ending); s != nil {
			b.ending, s.br = s, b
		}
		h.bridges[bs.ID] = b
	}
	for _, w := range hs.Waiting {
		s := lookup(&w)
		if s == nil || ValidStreamID(w.ID) != nil {
			continue
		}
		h.waiting[w.ID] = s
		id := w.ID
		time.AfterFunc(waitingStreamTimeout, func() { h.expire(s, id) })
	}
	return errors.Join(errs...)
}

// startPumps starts the pumps of restored bridges.
func (h *streamHub) startPumps() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range h.bridges {
		if !b.done {
			b.start()
		}
	}
}

// fds lists the descriptors hs names.
func (hs *hubState) fds() []int {
	var out []int
	for _, b := range hs.Bridges {
		if b.FD >= 0 {
			out = append(out, b.FD)
		}
	}
	return out
}

// closeFD closes fd unless it is -1.
func closeFD(fd int) {
	if fd >= 0 {
		_ = unix.Close(fd)
	}
}
