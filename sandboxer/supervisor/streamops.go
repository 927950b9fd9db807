package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Operations of the control channel on the stream bridges of a relayed
// task socket (see streams.go).
const (
	opStreams    = "streams"    // answer Path's Streaming calls, FIFOs under Dir (when set); list its bridges
	opBridge     = "bridge"     // make bridges (FIFOs) for streams
	opBridgeWait = "bridgewait" // wait until bridges settled
	opUnbridge   = "unbridge"   // remove bridges
)

// maxBridgeWait bounds a bridgewait.
const maxBridgeWait = time.Minute

// waitingStreamOp reports whether op may take a while to answer (it is
// answered apart from the other requests).
func waitingStreamOp(op string) bool { return op == opBridgeWait || op == opUnbridge }

// answerStreams answers a stream bridge operation; false when op is none.
func (s *supervisor) answerStreams(req request, resp *response) bool {
	switch req.Op {
	case opStreams, opBridge, opBridgeWait, opUnbridge:
	default:
		return false
	}
	s.mu.Lock()
	r := s.relays[req.Path]
	s.mu.Unlock()
	if r == nil {
		resp.Err = fmt.Sprintf("%s is not a relayed task socket", req.Path)
		return true
	}
	if req.Op == opStreams && req.Dir != "" {
		if err := r.EnableStreams(req.Dir); err != nil {
			resp.Err = err.Error()
			return true
		}
	}
	hub := r.streamHub()
	if hub == nil {
		resp.Err = fmt.Sprintf("the streams of %s are not bridged (no streams operation yet)", req.Path)
		return true
	}
	switch req.Op {
	case opStreams:
		resp.Bridges = hub.list(req.After)
	case opBridge:
		bs, err := hub.bridge(req.Bridges)
		if err != nil {
			resp.Err = err.Error()
		}
		resp.Bridges = bs
	case opBridgeWait:
		timeout := time.Duration(req.TimeoutMS) * time.Millisecond
		if timeout <= 0 || timeout > maxBridgeWait {
			timeout = maxBridgeWait
		}
		resp.Done = hub.wait(req.IDs, timeout)
	case opUnbridge:
		hub.unbridge(req.IDs)
	}
	return true
}

// ErrStreamsUnsupported reports a supervisor that does not answer
// containerd's Streaming calls itself (one from before this feature).
var ErrStreamsUnsupported = errors.New("the supervisor does not bridge streams")

// StreamHost is a worker's handle on the stream bridges of one relayed
// task socket.
type StreamHost struct {
	c    *Client
	path string
}

// Streams makes the supervisor answer containerd's Streaming calls on the
// relayed task socket public itself, bridging each stream to a FIFO under
// dir, and returns the handle on those bridges. [ErrStreamsUnsupported]:
// the supervisor relays the calls to the worker instead.
func (t *TaskSockets) Streams(public, dir string) (*StreamHost, error) {
	h := &StreamHost{c: t.c, path: public}
	_, err := t.c.call(request{Op: opStreams, Path: public, Dir: dir})
	if err != nil {
		if strings.Contains(err.Error(), "unknown operation") {
			return nil, ErrStreamsUnsupported
		}
		return nil, err
	}
	return h, nil
}

// Bridges lists the bridges the supervisor holds for the socket: after a
// worker restart, the streams of the processes that run on.
func (h *StreamHost) Bridges() ([]Bridge, error) {
	var all []Bridge
	after := ""
	for {
		r, err := h.c.call(request{Op: opStreams, Path: h.path, After: after})
		if err != nil {
			return nil, err
		}
		all = append(all, r.resp.Bridges...)
		if len(r.resp.Bridges) < listPage {
			return all, nil
		}
		after = r.resp.Bridges[len(r.resp.Bridges)-1].ID
	}
}

// Bridge makes a FIFO bridged to each stream of bs (all or none) and
// returns them with their paths; a stream already opened is attached at
// once, one opened later when it comes.
func (h *StreamHost) Bridge(bs []Bridge) ([]Bridge, error) {
	r, err := h.c.call(request{Op: opBridge, Path: h.path, Bridges: bs})
	if err != nil {
		return nil, err
	}
	if len(r.resp.Bridges) != len(bs) {
		return nil, fmt.Errorf("supervisor: made %d bridges for %d streams", len(r.resp.Bridges), len(bs))
	}
	return r.resp.Bridges, nil
}

// Wait waits, at most timeout, until the named bridges have settled: an
// output bridge has sent everything up to the process's end of file, an
// input bridge has written what it received and no stream feeds it. It
// reports whether they did.
func (h *StreamHost) Wait(ids []string, timeout time.Duration) (bool, error) {
	r, err := h.c.call(request{Op: opBridgeWait, Path: h.path, IDs: ids, TimeoutMS: max(timeout.Milliseconds(), 1)})
	if err != nil {
		return false, err
	}
	return r.resp.Done, nil
}

// Unbridge removes the named bridges: their streams end and their FIFOs
// are removed.
func (h *StreamHost) Unbridge(ids []string) error {
	_, err := h.c.call(request{Op: opUnbridge, Path: h.path, IDs: ids})
	return err
}
