package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"strconv"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
)

// Event is a sandbox, container or process lifecycle event.
type Event struct {
	// Type is what happened: "sandbox-created", "sandbox-started",
	// "sandbox-exited", "sandbox-deleted", "container-created",
	// "container-started", "container-deleted", "process-started",
	// "process-exited", "process-oom", "sandbox-expired", "sandbox-paused"
	// or "sandbox-resumed".
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
	// Sequence numbers the sandboxer's events, one by one (events other
	// filters left out leave gaps); [Client.EventsAfter] resumes after it.
	Sequence uint64 `json:"sequence,omitempty"`
	// Reason says why, for "sandbox-expired": "deadline" or "idle".
	Reason string `json:"reason,omitempty"`
}

// Events streams lifecycle events as they happen (past events are not
// replayed; see [EventsAfter]) until ctx ends or the consumer stops;
// [InSandbox] narrows them to some sandboxes. An error ends the sequence;
// the end of ctx is not reported as one. While the sandboxer restarts, the
// stream resumes by itself after the last event received (see
// [WithRetryTimeout]): no event is lost or repeated.
func (c *Client) Events(ctx context.Context, fs ...Filter) iter.Seq2[Event, error] {
	return c.events(ctx, nil, fs)
}

// EventsAfter is Events that first replays the events the sandboxer kept
// whose sequence number is greater than after (see Event.Sequence; 0 for
// every event kept). Events no longer kept fail with
// errdefs.ErrOutOfRange.
func (c *Client) EventsAfter(ctx context.Context, after uint64, fs ...Filter) iter.Seq2[Event, error] {
	return c.events(ctx, &after, fs)
}

func (c *Client) events(ctx context.Context, after *uint64, fs []Filter) iter.Seq2[Event, error] {
	f := makeFilters(fs)
	return func(yield func(Event, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		b := newBackoff(c.retry)
		for {
			stop, err := c.watchOnce(ctx, f, &after, b, yield)
			if stop || ctx.Err() != nil {
				return
			}
			if unavailable(err) {
				err = b.wait(ctx, err)
			}
			if err != nil {
				if ctx.Err() == nil {
					yield(Event{}, err)
				}
				return
			}
		}
	}
}

// watchOnce is one WatchEvents stream of events: it yields until the
// consumer stops (stop) or the stream fails (err); after advances with
// each event, and is set from the stream's header when it was nil.
func (c *Client) watchOnce(ctx context.Context, f filters, after **uint64, b *backoff, yield func(Event, error) bool) (stop bool, err error) {
	ctx, info := connect.NewClientContext(ctx)
	stream, err := c.sandboxes.WatchEvents(ctx, &sandboxv1.WatchEventsRequest{SandboxIds: f.sandboxIDs, AfterSequence: *after})
	if err != nil {
		return false, fromAPI(err)
	}
	defer stream.Close()
	for {
		msg, err := stream.Receive()
		if *after == nil {
			// Where a live stream starts: resume from there.
			if n, perr := strconv.ParseUint(info.ResponseHeader().Get(eventSequenceHeader), 10, 64); perr == nil {
				*after = &n
			}
		}
		if errors.Is(err, io.EOF) {
			return false, fmt.Errorf("event stream ended: %w", errdefs.ErrUnavailable)
		}
		if err != nil {
			return false, fromAPI(err)
		}
		b.reset()
		e := msg.GetEvent()
		seq := e.GetSequence()
		if *after != nil && seq != 0 && seq <= **after {
			continue
		}
		*after = &seq
		if !yield(Event{
			Type: enumName(e.GetType().String(), "EVENT_TYPE_"), Topic: e.GetTopic(), Timestamp: timeOf(e.GetTimestamp()),
			SandboxID: e.GetSandboxId(), ContainerID: e.GetContainerId(), ExecID: e.GetExecId(), PID: e.GetPid(),
			ExitStatus: int(e.GetExitStatus()), ExitedAt: timeOf(e.GetExitedAt()), Sequence: seq, Reason: e.GetReason(),
		}, nil) {
			return true, nil
		}
	}
}

// eventSequenceHeader is apiserver.EventSequenceHeader (the client does
// not link the server).
const eventSequenceHeader = "Magnetar-Event-Sequence"
