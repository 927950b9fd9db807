package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// StreamSockets is implemented by TaskSockets whose task sockets answer
// containerd's Streaming calls (the `streaming` io type) themselves: the
// supervisor does, so that the streams outlive the worker. Each stream is
// then bridged to a FIFO that the worker gives the engine as it gives
// containerd's FIFOs of the default io type.
type StreamSockets interface {
	// Streams makes the task socket at public (listening already) bridge
	// its streams to FIFOs under dir and returns the host of those
	// bridges. An error matching errdefs.ErrNotImplemented means it
	// cannot (an older supervisor): the task server answers the streams.
	Streams(public, dir string) (StreamHost, error)
}

// StreamHost holds the stream bridges of one task socket.
type StreamHost interface {
	// Bridges lists the bridges held, those of processes that ran before
	// this worker started among them.
	Bridges() ([]StreamBridge, error)
	// Bridge makes a FIFO bridged to each stream (all or none) and
	// returns them with their paths.
	Bridge(bridges []StreamBridge) ([]StreamBridge, error)
	// Wait waits at most timeout until the named bridges settled (output
	// sent up to the process's end of file; input written, no stream
	// feeding it) and reports whether they did.
	Wait(ids []string, timeout time.Duration) (bool, error)
	// Unbridge removes bridges: their streams end, their FIFOs go.
	Unbridge(ids []string) error
}

// StreamBridge is one stream bridged to a FIFO.
type StreamBridge struct {
	// ID is the stream's ID (its StreamInit).
	ID string
	// Out is set for output (the process writes the FIFO, the stream
	// carries it to containerd); input otherwise.
	Out bool
	// Note is the worker's record of the process, kept with the bridge.
	Note string
	// Path is the FIFO, set by the host.
	Path string
}

// stdioBridge is what a task server bridges stdio with: streams it answers
// itself (streamIO) or streams a StreamHost answers (hostedStreams).
type stdioBridge interface {
	taskservice.StdioBridge
	// closeAll forgets or ends every bridge, as the task server closes.
	closeAll() error
}

var (
	_ stdioBridge = (*streamIO)(nil)
	_ stdioBridge = (*hostedStreams)(nil)
)

// hostedStdinWait bounds how long CloseIO waits for hosted stdin to be
// written (taskservice bounds its own wait likewise).
const hostedStdinWait = 30 * time.Second

// hostedStreams bridges the streamed stdio of one sandbox's processes
// through a StreamHost: the streams and FIFOs live in the host, so a
// process's stdio does not depend on this worker, and a worker started
// later finds each process's streams in the host's bridge notes.
type hostedStreams struct {
	host   StreamHost
	socket string

	mu    sync.Mutex
	procs map[string]*hostedProc
}

// hostedProc is the bridged stdio of one process.
type hostedProc struct {
	// orig is the stdio containerd named.
	orig backend.Stdio
	// ids are the stream IDs of stdin, stdout and stderr ("": not a
	// stream).
	ids [3]string
	// settled is closed once the output has been sent and had
	// streamSettle to be read (made on first use).
	settled chan struct{}
}

// bridgeNote is the note a bridge keeps: the process and which of its
// stdio the stream is, and the stdio slots that are not streams, so that
// a later worker reports what containerd named.
type bridgeNote struct {
	Container string    `json:"c"`
	Exec      string    `json:"e,omitempty"`
	Slot      int       `json:"s"`
	Paths     [3]string `json:"p,omitzero"`
}

func newHostedStreams(host StreamHost, socket string) *hostedStreams {
	return &hostedStreams{host: host, socket: socket, procs: map[string]*hostedProc{}}
}

// streamURI is the stdio URI of stream id on socket, as CRI writes it.
func streamURI(socket, id string) string {
	return "ttrpc+unix://" + socket + "?streaming_id=" + id
}

// recover loads the bridges the host holds: the processes that run on
// from an earlier worker.
func (h *hostedStreams) recover() error {
	bs, err := h.host.Bridges()
	if err != nil {
		return fmt.Errorf("list stream bridges: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range bs {
		var n bridgeNote
		if err := json.Unmarshal([]byte(b.Note), &n); err != nil || n.Container == "" || n.Slot < 0 || n.Slot > 2 {
			continue // not one of ours; goes with the sandbox
		}
		key := procKey(n.Container, n.Exec)
		p := h.procs[key]
		if p == nil {
			p = &hostedProc{orig: backend.Stdio{Stdin: n.Paths[0], Stdout: n.Paths[1], Stderr: n.Paths[2]}}
			h.procs[key] = p
		}
		p.ids[n.Slot] = b.ID
		uri := streamURI(h.socket, b.ID)
		switch n.Slot {
		case 0:
			p.orig.Stdin = uri
		case 1:
			p.orig.Stdout = uri
		case 2:
			p.orig.Stderr = uri
		}
	}
	return nil
}

// Open bridges the stream URIs of stdio to FIFOs of the host's.
func (h *hostedStreams) Open(_ context.Context, containerID, execID string, stdio backend.Stdio) (backend.Stdio, error) {
	slots := [3]string{stdio.Stdin, stdio.Stdout, stdio.Stderr}
	var ids [3]string
	streams := false
	for i, s := range slots {
		id, err := parseStreamURI(h.socket, s)
		if err != nil {
			return stdio, err
		}
		ids[i] = id
		streams = streams || id != ""
	}
	if !streams {
		return stdio, nil
	}
	key := procKey(containerID, execID)
	p := &hostedProc{orig: stdio, ids: ids}
	h.mu.Lock()
	if _, ok := h.procs[key]; ok {
		h.mu.Unlock()
		return stdio, fmt.Errorf("process %q/%q already has streams: %w", containerID, execID, errdefs.ErrAlreadyExists)
	}
	h.procs[key] = p
	h.mu.Unlock()
	note := bridgeNote{Container: containerID, Exec: execID}
	for i, id := range ids {
		if id == "" {
			note.Paths[i] = slots[i]
		}
	}
	var bs []StreamBridge
	for i, id := range ids {
		if id == "" {
			continue
		}
		n := note
		n.Slot = i
		data, err := json.Marshal(n)
		if err != nil {
			h.forget(key)
			return stdio, err
		}
		bs = append(bs, StreamBridge{ID: id, Out: i > 0, Note: string(data)})
	}
	made, err := h.host.Bridge(bs)
	if err != nil {
		h.forget(key)
		var code error = errdefs.ErrUnavailable
		if strings.Contains(err.Error(), "already bridged") || strings.Contains(err.Error(), "named twice") {
			code = errdefs.ErrAlreadyExists
		}
		return stdio, fmt.Errorf("bridge the streams of %q/%q: %v: %w", containerID, execID, err, code)
	}
	out := stdio
	for _, b := range made {
		switch b.ID {
		case ids[0]:
			out.Stdin = b.Path
		case ids[1]:
			out.Stdout = b.Path
		case ids[2]:
			out.Stderr = b.Path
		}
	}
	return out, nil
}

func (h *hostedStreams) forget(key string) *hostedProc {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.procs[key]
	delete(h.procs, key)
	return p
}

func (h *hostedStreams) proc(containerID, execID string) *hostedProc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.procs[procKey(containerID, execID)]
}

// Original returns the stdio containerd named.
func (h *hostedStreams) Original(containerID, execID string) (backend.Stdio, bool) {
	p := h.proc(containerID, execID)
	if p == nil {
		return backend.Stdio{}, false
	}
	return p.orig, true
}

// StdinDone is closed once the host has written what the stdin stream
// carried and no stream feeds it.
func (h *hostedStreams) StdinDone(containerID, execID string) <-chan struct{} {
	p := h.proc(containerID, execID)
	if p == nil || p.ids[0] == "" {
		return nil
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		_, _ = h.host.Wait([]string{p.ids[0]}, hostedStdinWait)
	}()
	return ch
}

// OutputDone is closed once the host has sent the process's output up to
// its end of file, and streamSettle later.
func (h *hostedStreams) OutputDone(containerID, execID string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.procs[procKey(containerID, execID)]
	if p == nil {
		return nil
	}
	outs := p.outIDs()
	if len(outs) == 0 {
		return nil
	}
	if p.settled == nil {
		settled := make(chan struct{})
		p.settled = settled
		go func() {
			defer close(settled)
			if ok, err := h.host.Wait(outs, drainTimeout); ok && err == nil {
				t := time.NewTimer(streamSettle)
				defer t.Stop()
				<-t.C
			}
		}()
	}
	return p.settled
}

func (p *hostedProc) outIDs() []string {
	var ids []string
	for _, id := range p.ids[1:] {
		if id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

func (p *hostedProc) allIDs() []string {
	var ids []string
	for _, id := range p.ids {
		if id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// Remove removes a process's bridges; with drain, once its output was
// sent (bounded).
func (h *hostedStreams) Remove(containerID, execID string, drain bool) error {
	p := h.forget(procKey(containerID, execID))
	if p == nil {
		return nil
	}
	if outs := p.outIDs(); drain && len(outs) > 0 {
		_, _ = h.host.Wait(outs, drainTimeout)
	}
	if err := h.host.Unbridge(p.allIDs()); err != nil {
		return fmt.Errorf("remove the stream bridges of %q/%q: %w", containerID, execID, err)
	}
	return nil
}

// RemoveExecs removes the bridges of every exec of containerID.
func (h *hostedStreams) RemoveExecs(containerID string) error {
	prefix := procKey(containerID, "")
	var ids []string
	h.mu.Lock()
	for k, p := range h.procs {
		if strings.HasPrefix(k, prefix) && k != prefix {
			ids = append(ids, p.allIDs()...)
			delete(h.procs, k)
		}
	}
	h.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	return h.host.Unbridge(ids)
}

// closeAll forgets the bridges: they stay with the host, which ends them
// with the task socket.
func (h *hostedStreams) closeAll() error {
	h.mu.Lock()
	h.procs = map[string]*hostedProc{}
	h.mu.Unlock()
	return nil
}
