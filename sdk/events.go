package sdk

import (
	"context"
	"errors"
	"io"
	"iter"
	"time"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
)

// Event is a sandbox, container or process lifecycle event.
type Event struct {
	// Type is what happened: "sandbox-created", "sandbox-started",
	// "sandbox-exited", "sandbox-deleted", "container-created",
	// "container-started", "container-deleted", "process-started",
	// "process-exited" or "process-oom".
	Type string `json:"type"`
	// Topic is the containerd topic of the same event, for example
	// "/tasks/exit".
	Topic string `json:"topic"`
	// Timestamp is when it happened.
	Timestamp time.Time `json:"timestamp"`
	// SandboxID, ContainerID and ExecID name what the event is about.
	SandboxID   string `json:"sandboxId"`
	ContainerID string `json:"containerId,omitempty"`
	ExecID      string `json:"execId,omitempty"`
	// PID is the process's PID in the sandbox, when it applies.
	PID uint32 `json:"pid,omitempty"`
	// ExitStatus and ExitedAt are set for exit events.
	ExitStatus int       `json:"exitStatus,omitempty"`
	ExitedAt   time.Time `json:"exitedAt,omitzero"`
}

// Events streams lifecycle events as they happen (past events are not
// replayed) until ctx ends or the consumer stops; [InSandbox] narrows them
// to some sandboxes. An error ends the sequence; the end of ctx is not
// reported as one.
func (c *Client) Events(ctx context.Context, fs ...Filter) iter.Seq2[Event, error] {
	f := makeFilters(fs)
	return func(yield func(Event, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.sandboxes.WatchEvents(ctx, &sandboxv1.WatchEventsRequest{SandboxIds: f.sandboxIDs})
		if err != nil {
			if ctx.Err() == nil {
				yield(Event{}, fromAPI(err))
			}
			return
		}
		defer stream.Close()
		for {
			msg, err := stream.Receive()
			if err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() == nil {
					yield(Event{}, fromAPI(err))
				}
				return
			}
			e := msg.GetEvent()
			if !yield(Event{
				Type: enumName(e.GetType().String(), "EVENT_TYPE_"), Topic: e.GetTopic(), Timestamp: timeOf(e.GetTimestamp()),
				SandboxID: e.GetSandboxId(), ContainerID: e.GetContainerId(), ExecID: e.GetExecId(), PID: e.GetPid(),
				ExitStatus: int(e.GetExitStatus()), ExitedAt: timeOf(e.GetExitedAt()),
			}, nil) {
				return
			}
		}
	}
}
