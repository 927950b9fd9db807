package vm

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
)

const (
	// logRingSize is how many agent log lines a sandbox keeps, and
	// maxLogLine how many bytes of each (the guest is not trusted).
	logRingSize = 32
	maxLogLine  = 1024
	// eventsRetry is the pause before the event stream is reopened.
	eventsRetry = time.Second
)

// runEvents streams the guest's events until ctx ends, reopening the
// stream (on whatever agent session is current) when it breaks. OOM kills
// go to the sandbox's EventSink; the agent's log lines at warning level
// and above are kept in a small ring shown by SandboxStats (a backend does
// not log); process exits are ignored (the Task API's Wait reports them).
func (s *sandbox) runEvents(ctx context.Context) {
	for {
		if c := s.agentClient(); c != nil {
			s.streamEvents(ctx, c)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(eventsRetry):
		}
	}
}

// streamEvents handles one Events stream until it ends.
func (s *sandbox) streamEvents(ctx context.Context, c agentv1.TTRPCAgentServiceClient) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.Events(ctx, &agentv1.EventsRequest{})
	if err != nil {
		return
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			return
		}
		s.handleEvent(ev)
	}
}

// handleEvent acts on one guest event.
func (s *sandbox) handleEvent(ev *agentv1.EventsResponse) {
	switch e := ev.GetEvent().(type) {
	case *agentv1.EventsResponse_Oom:
		cid := e.Oom.GetContainerId()
		s.mu.Lock()
		_, known := s.ctrs[cid] // the guest names only containers the host made
		s.mu.Unlock()
		if known && s.cfg.Events != nil {
			s.cfg.Events.OOM(s.cfg.ID, cid)
		}
	case *agentv1.EventsResponse_Log:
		if e.Log.GetLevel() >= int32(slog.LevelWarn) {
			s.mon.addLog(formatLogLine(ev.GetTimestamp().AsTime(), e.Log))
		}
	}
}

// formatLogLine renders a log line as "time LEVEL message k=v ...".
func formatLogLine(at time.Time, l *agentv1.LogLine) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", at.UTC().Format(time.RFC3339), slog.Level(l.GetLevel()), l.GetMessage())
	attrs := l.GetAttrs()
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		fmt.Fprintf(&b, " %s=%q", k, attrs[k])
		if b.Len() > maxLogLine {
			break
		}
	}
	if b.Len() > maxLogLine {
		return strings.ToValidUTF8(b.String()[:maxLogLine], "") + "…"
	}
	return b.String()
}

func (m *monitors) addLog(line string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.logs.add(line)
}

// logRing keeps the last max lines; the caller locks.
type logRing struct {
	max   int
	lines []string
}

func (r *logRing) add(line string) {
	if len(r.lines) >= r.max {
		r.lines = append(r.lines[:0], r.lines[1:]...)
	}
	r.lines = append(r.lines, line)
}
