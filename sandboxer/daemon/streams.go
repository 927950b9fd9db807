package daemon

import (
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sandboxer/controller"
	"github.com/magnetar-io/magnetar/sandboxer/supervisor"
)

// supervisedSockets are task sockets served by the supervisor, which also
// answers containerd's Streaming calls on them (controller.StreamSockets):
// streamed stdio outlives the worker.
type supervisedSockets struct {
	*supervisor.TaskSockets
}

var _ controller.StreamSockets = supervisedSockets{}

// Streams implements controller.StreamSockets.
func (s supervisedSockets) Streams(public, dir string) (controller.StreamHost, error) {
	h, err := s.TaskSockets.Streams(public, dir)
	if errors.Is(err, supervisor.ErrStreamsUnsupported) {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrNotImplemented)
	}
	if err != nil {
		return nil, err
	}
	return streamHost{h}, nil
}

// streamHost converts between the supervisor's bridges and the
// controller's.
type streamHost struct {
	h *supervisor.StreamHost
}

// Bridges implements controller.StreamHost.
func (s streamHost) Bridges() ([]controller.StreamBridge, error) {
	bs, err := s.h.Bridges()
	return fromSupervisor(bs), err
}

// Bridge implements controller.StreamHost.
func (s streamHost) Bridge(bs []controller.StreamBridge) ([]controller.StreamBridge, error) {
	in := make([]supervisor.Bridge, 0, len(bs))
	for _, b := range bs {
		in = append(in, supervisor.Bridge{ID: b.ID, Out: b.Out, Note: b.Note})
	}
	made, err := s.h.Bridge(in)
	return fromSupervisor(made), err
}

// Wait implements controller.StreamHost.
func (s streamHost) Wait(ids []string, timeout time.Duration) (bool, error) {
	return s.h.Wait(ids, timeout)
}

// Unbridge implements controller.StreamHost.
func (s streamHost) Unbridge(ids []string) error { return s.h.Unbridge(ids) }

func fromSupervisor(bs []supervisor.Bridge) []controller.StreamBridge {
	out := make([]controller.StreamBridge, 0, len(bs))
	for _, b := range bs {
		out = append(out, controller.StreamBridge{ID: b.ID, Out: b.Out, Note: b.Note, Path: b.Path})
	}
	return out
}
