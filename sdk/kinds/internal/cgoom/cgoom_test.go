package cgoom

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFlush checks that a kill counted in memory.events is reported
// by flush (called before the cgroup goes away) exactly once, even when the
// poller has not run yet.
func TestFlush(t *testing.T) {
	events := filepath.Join(t.TempDir(), "memory.events")
	write := func(n string) {
		if err := os.WriteFile(events, []byte("low 0\nhigh 0\nmax 3\noom "+n+"\noom_kill "+n+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("0")
	var got int
	w := &Watch{stop: make(chan struct{}), events: events, onOOM: func() { got++ }}
	w.last = oomKills(events)
	w.Flush()
	if got != 0 {
		t.Fatalf("flush without a kill reported %d", got)
	}
	write("2")
	w.Flush()
	w.Flush()
	if got != 1 {
		t.Fatalf("flush after kills reported %d times, want 1", got)
	}
	var nilWatch *Watch
	nilWatch.Flush() // a container whose cgroup could not be watched
}
