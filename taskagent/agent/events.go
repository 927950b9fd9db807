package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// eventHub queues guest events for the Events stream. Events that happen
// while no stream is open are kept, up to a limit (the oldest are dropped).
type eventHub struct {
	mu     sync.Mutex
	queue  []*agentv1.EventsResponse
	limit  int
	notify chan struct{}
}

func newEventHub(limit int) *eventHub {
	return &eventHub{limit: limit, notify: make(chan struct{}, 1)}
}

// publish queues ev without blocking.
func (h *eventHub) publish(ev *agentv1.EventsResponse) {
	h.mu.Lock()
	if len(h.queue) >= h.limit {
		h.queue = h.queue[1:]
	}
	h.queue = append(h.queue, ev)
	h.mu.Unlock()
	select {
	case h.notify <- struct{}{}:
	default:
	}
}

// next takes the next event, waiting until there is one or ctx is done.
// A consumer that fails to deliver it puts it back with unshift.
func (h *eventHub) next(ctx context.Context) (*agentv1.EventsResponse, error) {
	for {
		h.mu.Lock()
		if len(h.queue) > 0 {
			ev := h.queue[0]
			h.queue = h.queue[1:]
			h.mu.Unlock()
			return ev, nil
		}
		h.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-h.notify:
		}
	}
}

// unshift puts ev back at the head of the queue.
func (h *eventHub) unshift(ev *agentv1.EventsResponse) {
	h.mu.Lock()
	h.queue = append([]*agentv1.EventsResponse{ev}, h.queue...)
	if len(h.queue) > h.limit {
		h.queue = h.queue[:h.limit]
	}
	h.mu.Unlock()
}

// teeHandler logs to the console and also queues every record at or above
// the level (set by Setup) as a LogLine event.
type teeHandler struct {
	slog.Handler
	hub   *eventHub
	level slog.Leveler
	attrs []slog.Attr
}

func newTeeHandler(h slog.Handler, hub *eventHub, level slog.Leveler) *teeHandler {
	return &teeHandler{Handler: h, hub: hub, level: level}
}

func (t *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= t.level.Level() {
		attrs := map[string]string{}
		for _, a := range t.attrs {
			attrs[a.Key] = a.Value.String()
		}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		t.hub.publish(&agentv1.EventsResponse{
			Timestamp: timestamppb.New(r.Time),
			Event: &agentv1.EventsResponse_Log{Log: &agentv1.LogLine{
				Level: int32(r.Level), Message: r.Message, Attrs: attrs,
			}},
		})
	}
	return t.Handler.Handle(ctx, r)
}

func (t *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &teeHandler{Handler: t.Handler.WithAttrs(as), hub: t.hub, level: t.level, attrs: append(append([]slog.Attr{}, t.attrs...), as...)}
}

func (t *teeHandler) WithGroup(name string) slog.Handler {
	return &teeHandler{Handler: t.Handler.WithGroup(name), hub: t.hub, level: t.level, attrs: t.attrs}
}

// forwardTaskEvents queues the in-guest engine's OOM events as OOMEvent
// for the host until ctx ends. Process exits are not forwarded: the host
// learns them from the Task API's Wait. It returns at once when the Task
// API did not start.
func (a *Agent) forwardTaskEvents(ctx context.Context) {
	if a.tasks == nil {
		return
	}
	for {
		evs := a.tasks.eng.Subscribe(ctx)
		for ev := range evs {
			if ev.Topic != engine.TopicTaskOOM {
				continue
			}
			a.events.publish(oomEvent(ev))
		}
		// The channel closes when ctx ends or when this subscriber fell
		// behind (then events were lost, but later ones still count).
		if ctx.Err() != nil {
			return
		}
	}
}

// oomEvent converts an engine OOM event.
func oomEvent(ev engine.Event) *agentv1.EventsResponse {
	ts := ev.Timestamp
	if ts.IsZero() {
		ts = time.Now()
	}
	return &agentv1.EventsResponse{
		Timestamp: timestamppb.New(ts),
		Event:     &agentv1.EventsResponse_Oom{Oom: &agentv1.OOMEvent{ContainerId: ev.ContainerID}},
	}
}
