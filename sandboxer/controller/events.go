package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// EventSource is where a [Forwarder] gets events from; *engine.Engine is
// one.
type EventSource interface {
	Subscribe(ctx context.Context) <-chan engine.Event
}

// ReplaySource is an EventSource that keeps its events (*engine.Engine
// does): the Forwarder then also forwards the events published before it
// subscribed, from StartEventSeq on (those the engine published while it
// recovered: exits that happened while no sandboxer ran), and, when it
// subscribes again after being dropped, those it missed meanwhile.
type ReplaySource interface {
	EventSource
	SubscribeAfter(ctx context.Context) (<-chan engine.Event, uint64)
	EventsAfter(after, upTo uint64, max int) ([]engine.Event, error)
	StartEventSeq() uint64
}

// Forwarder forwards the engine's task events to containerd's ttrpc events
// service (containerd.services.events.ttrpc.v1.Events/Forward), as a shim
// does, so that `ctr events`, CRI's OOM handling and other subscribers see
// them. It does what containerd's pkg/shim RemoteEventsPublisher does
// (queue, retries, reconnect) with goroutines that end with Run; that
// publisher's queue goroutines are never stopped, which is fine in a shim
// but not in a long-lived daemon.
type Forwarder struct {
	address string
	log     hclog.Logger
	// queue bounds the events waiting to be sent.
	queue int
	// attempts is how often one event is tried before it is dropped.
	attempts int
	// backoff is the first retry delay; it doubles up to maxBackoff.
	backoff, maxBackoff time.Duration
	// callTimeout bounds one Forward call.
	callTimeout time.Duration

	// Hold, when set, may return a channel that a task exit event waits
	// for (at most holdTimeout) before it is sent; later events wait
	// behind it, so their order is kept.
	Hold        func(engine.Event) <-chan struct{}
	holdTimeout time.Duration
}

// queued is an envelope waiting to be sent, and what it waits for first.
type queued struct {
	env  *types.Envelope
	hold <-chan struct{}
	// until bounds the hold from when the event was queued, so that the
	// holds of several queued exits overlap instead of adding up.
	until time.Time
}

// NewForwarder returns a forwarder to containerd's ttrpc socket at address
// (a path or "unix://path"). log may be nil.
func NewForwarder(address string, log hclog.Logger) *Forwarder {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Forwarder{
		address: address, log: log,
		queue: 2048, attempts: 6,
		backoff: 100 * time.Millisecond, maxBackoff: 5 * time.Second,
		callTimeout: 5 * time.Second, holdTimeout: taskservice.ExitOutputWait,
	}
}

// Run forwards events from src until ctx ends. Events that containerd does
// not take after several attempts, or that overflow the queue while
// containerd is away, are dropped with an error log. It returns nil when ctx
// ends.
func (f *Forwarder) Run(ctx context.Context, src EventSource) error {
	ctx, cancel := context.WithCancel(ctx)
	queue := make(chan queued, f.queue)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { f.send(ctx, queue) })

	rs, replays := src.(ReplaySource)
	var last uint64 // the newest event queued
	if replays {
		last = rs.StartEventSeq()
	}
	enqueue := func(ev engine.Event) {
		if ev.Seq > last {
			last = ev.Seq
		}
		env, err := envelope(ev)
		if err != nil {
			f.log.Error("encode event", "topic", ev.Topic, "sandbox_id", ev.SandboxID, "error", err)
			return
		}
		if env == nil {
			return // not a task event
		}
		q := queued{env: env}
		if f.Hold != nil && ev.Topic == engine.TopicTaskExit {
			q.hold, q.until = f.Hold(ev), time.Now().Add(f.holdTimeout)
		}
		select {
		case queue <- q:
		default:
			f.log.Error("event queue full, dropping event", "topic", env.Topic, "namespace", env.Namespace)
		}
	}
	for ctx.Err() == nil {
		var events <-chan engine.Event
		if replays {
			var cut uint64
			events, cut = rs.SubscribeAfter(ctx)
			f.replay(rs, last, cut, enqueue)
		} else {
			events = src.Subscribe(ctx)
		}
		for ev := range events {
			if replays && ev.Seq <= last {
				continue // replayed
			}
			enqueue(ev)
		}
		if ctx.Err() == nil {
			// The engine dropped us for lagging behind, or is closing.
			f.log.Warn("event subscription ended; events may have been lost, resubscribing")
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// replay queues the kept events after from up to upTo.
func (f *Forwarder) replay(src ReplaySource, from, upTo uint64, enqueue func(engine.Event)) {
	for from < upTo {
		evs, err := src.EventsAfter(from, upTo, 1000)
		if err != nil || len(evs) == 0 {
			if err != nil {
				f.log.Error("replay events, some are lost", "after", from, "up_to", upTo, "error", err)
			}
			return
		}
		for _, ev := range evs {
			enqueue(ev)
		}
		from = evs[len(evs)-1].Seq
	}
}

// send forwards queued envelopes in order until ctx ends.
func (f *Forwarder) send(ctx context.Context, queue <-chan queued) {
	c := &eventsClient{address: f.address}
	defer c.close()
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-queue:
			if q.hold != nil {
				t := time.NewTimer(time.Until(q.until))
				select {
				case <-q.hold:
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
			f.forward(ctx, c, q.env)
		}
	}
}

// forward sends one envelope, retrying with backoff.
func (f *Forwarder) forward(ctx context.Context, c *eventsClient, env *types.Envelope) {
	delay := f.backoff
	var err error
	for attempt := 1; attempt <= f.attempts; attempt++ {
		if err = c.forward(ctx, env, f.callTimeout); err == nil {
			return
		}
		if ctx.Err() != nil {
			return
		}
		c.close() // reconnect on the next attempt
		if attempt == f.attempts {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, f.maxBackoff)
	}
	f.log.Error("forward event to containerd, dropping it", "topic", env.Topic, "namespace", env.Namespace,
		"address", f.address, "attempts", f.attempts, "error", err)
}

// eventsClient is a lazily (re)connected ttrpc events client. It is used by
// one goroutine only.
type eventsClient struct {
	address string
	client  *ttrpc.Client
}

func (c *eventsClient) forward(ctx context.Context, env *types.Envelope, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if c.client == nil {
		conn, err := dialer.ContextDialer(ctx, c.address)
		if err != nil {
			return fmt.Errorf("connect to containerd at %s: %w", c.address, err)
		}
		c.client = ttrpc.NewClient(conn)
	}
	ctx = namespaces.WithNamespace(ctx, env.Namespace)
	_, err := ttrpcevents.NewTTRPCEventsClient(c.client).Forward(ctx, &ttrpcevents.ForwardRequest{Envelope: env})
	return err
}

func (c *eventsClient) close() {
	if c.client != nil {
		_ = c.client.Close()
		c.client = nil
	}
}

// envelope converts an engine event to the envelope containerd's events
// service takes; nil for events containerd does not get from shims
// (sandbox events, exec deletes).
func envelope(ev engine.Event) (*types.Envelope, error) {
	msg := taskEvent(ev)
	if msg == nil {
		return nil, nil
	}
	if ev.Namespace == "" {
		return nil, errors.New("event has no namespace")
	}
	a, err := typeurl.MarshalAnyToProto(msg)
	if err != nil {
		return nil, err
	}
	ts := ev.Timestamp
	if ts.IsZero() {
		ts = time.Now()
	}
	return &types.Envelope{Timestamp: timestamppb.New(ts), Namespace: ev.Namespace, Topic: ev.Topic, Event: a}, nil
}

// taskEvent builds the containerd event message for a task topic, with the
// fields containerd-shim-runc-v2 fills.
func taskEvent(ev engine.Event) any {
	switch ev.Topic {
	case engine.TopicTaskCreate:
		return &eventsapi.TaskCreate{
			ContainerID: ev.ContainerID, Bundle: ev.Bundle, Pid: ev.Pid,
			IO: &eventsapi.TaskIO{Stdin: ev.Stdin, Stdout: ev.Stdout, Stderr: ev.Stderr, Terminal: ev.Terminal},
		}
	case engine.TopicTaskStart:
		return &eventsapi.TaskStart{ContainerID: ev.ContainerID, Pid: ev.Pid}
	case engine.TopicTaskExit:
		id := ev.ExecID
		if id == "" {
			id = ev.ContainerID
		}
		return &eventsapi.TaskExit{ContainerID: ev.ContainerID, ID: id, Pid: ev.Pid, ExitStatus: ev.ExitCode, ExitedAt: timestamppb.New(ev.ExitedAt)}
	case engine.TopicTaskDelete:
		if ev.ExecID != "" {
			return nil // the runc shim publishes deletes of containers only
		}
		return &eventsapi.TaskDelete{ContainerID: ev.ContainerID, Pid: ev.Pid, ExitStatus: ev.ExitCode, ExitedAt: timestamppb.New(ev.ExitedAt)}
	case engine.TopicTaskOOM:
		return &eventsapi.TaskOOM{ContainerID: ev.ContainerID}
	case engine.TopicExecAdded:
		return &eventsapi.TaskExecAdded{ContainerID: ev.ContainerID, ExecID: ev.ExecID}
	case engine.TopicExecStarted:
		return &eventsapi.TaskExecStarted{ContainerID: ev.ContainerID, ExecID: ev.ExecID, Pid: ev.Pid}
	case engine.TopicTaskPaused:
		return &eventsapi.TaskPaused{ContainerID: ev.ContainerID}
	case engine.TopicTaskResumed:
		return &eventsapi.TaskResumed{ContainerID: ev.ContainerID}
	}
	return nil
}
