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
	Topic     string
	Timestamp time.Time
	// Namespace is the sandbox's containerd namespace.
	Namespace   string
	SandboxID   string
	ContainerID string
	// ExecID is set for exec'd processes; empty for a container's init
	// (containerd's TaskExit.ID is the container ID then).
	ExecID string
	Pid    uint32
	// ExitCode and ExitedAt are set for exit events.
	ExitCode uint32
	ExitedAt time.Time
	// Bundle, Stdio and Terminal are set for task create events.
	Bundle   string
	Stdin    string
	Stdout   string
	Stderr   string
	Terminal bool
}

// subscriberBuffer is how many events a slow subscriber may lag behind
// before it is dropped.
const subscriberBuffer = 1024

// bus fans events out to subscribers. A subscriber that does not keep up is
// closed rather than blocking the engine.
type bus struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

func newBus() *bus { return &bus{subs: map[chan Event]struct{}{}} }

func (b *bus) publish(ev Event) {
	if ev.Timestamp.IsZero() {
		ev.Timestamp = time.Now().UTC()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
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
// subscriber falls too far behind.
func (b *bus) subscribe(ctx context.Context) <-chan Event {
	ch := make(chan Event, subscriberBuffer)
	b.mu.Lock()
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
	return ch
}

func (b *bus) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		delete(b.subs, ch)
		close(ch)
	}
}
