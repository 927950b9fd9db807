package engine

import (
	"context"
	"sync"
	"time"
)

// Event topics. Task topics are the ones containerd's runc shim publishes;
// sandbox topics follow containerd's sandbox service.
const (
	TopicSandboxCreate = "/sandboxes/create"
	TopicSandboxStart  = "/sandboxes/start"
	TopicSandboxExit   = "/sandboxes/exit"
	TopicSandboxDelete = "/sandboxes/delete"
	TopicTaskCreate    = "/tasks/create"
	TopicTaskStart     = "/tasks/start"
	TopicTaskExit      = "/tasks/exit"
	TopicTaskDelete    = "/tasks/delete"
	TopicTaskOOM       = "/tasks/oom"
	TopicExecAdded     = "/tasks/exec-added"
	TopicExecStarted   = "/tasks/exec-started"
	TopicTaskPaused    = "/tasks/paused"
	TopicTaskResumed   = "/tasks/resumed"
)

// Event is something that happened to a sandbox, container or process.
type Event struct {
	// Seq is the event's sequence number: one more than the engine's
	// previous event's, across restarts of the engine on the same state
	// dir (the event log keeps it).
	Seq       uint64    `json:"seq"`
	Topic     string    `json:"topic"`
	Timestamp time.Time `json:"timestamp"`
	// Namespace is the sandbox's containerd namespace.
	Namespace   string `json:"namespace,omitempty"`
	SandboxID   string `json:"sandboxId"`
	ContainerID string `json:"containerId,omitempty"`
	// ExecID is set for exec'd processes; empty for a container's init
	// (containerd's TaskExit.ID is the container ID then).
	ExecID string `json:"execId,omitempty"`
	Pid    uint32 `json:"pid,omitempty"`
	// ExitCode and ExitedAt are set for exit events.
	ExitCode uint32    `json:"exitCode,omitempty"`
	ExitedAt time.Time `json:"exitedAt,omitzero"`
	// Bundle, Stdio and Terminal are set for task create events.
	Bundle   string `json:"bundle,omitempty"`
	Stdin    string `json:"stdin,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	Terminal bool   `json:"terminal,omitempty"`
	// Reason says why, for TopicSandboxExpired: "deadline" or "idle".
	Reason string `json:"reason,omitempty"`
}

// subscriberBuffer is how many events a slow subscriber may lag behind
// before it is dropped.
const subscriberBuffer = 1024

// bus fans events out to subscribers. A subscriber that does not keep up is
// closed rather than blocking the engine.
type bus struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
	// log numbers and keeps the events (nil: numbered from 1, not kept).
	log    *eventLog
	last   uint64
	closed bool
}

func newBus(log *eventLog) *bus { return &bus{subs: map[chan Event]struct{}{}, log: log} }

// publish numbers ev, writes it to the log and sends it to the
// subscribers, in this order, so that a subscriber never sees an event
// the log does not have.
func (b *bus) publish(ev Event) {
	if ev.Timestamp.IsZero() {
		ev.Timestamp = time.Now().UTC()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.log != nil {
		b.log.append(&ev)
	} else {
		b.last++
		ev.Seq = b.last
	}
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			delete(b.subs, ch)
			close(ch)
		}
	}
}

// subscribe returns a channel of events, closed when ctx ends or when the
// subscriber falls too far behind, and the sequence number of the last
// event before the first it gets.
func (b *bus) subscribe(ctx context.Context) (<-chan Event, uint64) {
	ch := make(chan Event, subscriberBuffer)
	b.mu.Lock()
	last := b.last
	if b.log != nil {
		last = b.log.lastSeq()
	}
	if b.closed {
		close(ch)
		b.mu.Unlock()
		return ch, last
	}
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
	})
	return ch, last
}

func (b *bus) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		delete(b.subs, ch)
		close(ch)
	}
	b.closed = true
	if b.log != nil {
		b.log.close()
	}
}
