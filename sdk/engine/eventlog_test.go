package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestEventLogNumbersKeepsAndResumes(t *testing.T) {
	dir := t.TempDir()
	l, err := openEventLog(dir, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	b := newBus(l)
	ch, cut := b.subscribe(context.Background())
	if cut != 0 {
		t.Fatalf("cut of an empty log = %d", cut)
	}
	for i := range 500 {
		b.publish(Event{Topic: TopicTaskStart, SandboxID: "sb", ContainerID: fmt.Sprint(i)})
		if ev := <-ch; ev.Seq != uint64(i+1) || ev.ContainerID != fmt.Sprint(i) {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	// Bounded: two segments, the oldest events gone.
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("%d segments, want 2", len(ents))
	}
	if _, err := l.read(0, 500, 10); !errdefs.IsOutOfRange(err) {
		t.Fatalf("read from 0: %v, want OutOfRange", err)
	}
	if _, err := l.read(501, 600, 10); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("read beyond the newest: %v, want InvalidArgument", err)
	}
	evs, err := l.read(490, 495, 100)
	if err != nil || len(evs) != 5 || evs[0].Seq != 491 || evs[4].ContainerID != "494" {
		t.Fatalf("read(490, 495) = %+v, %v", evs, err)
	}
	b.closeAll()

	// A restart, after a crash that tore the last line.
	seg := l.segs[len(l.segs)-1]
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%016x.log", seg.first)), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":501,"topic":"/tasks/st`)
	f.Close()
	l2, err := openEventLog(dir, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	b2 := newBus(l2)
	defer b2.closeAll()
	if last := l2.lastSeq(); last != 500 {
		t.Fatalf("last after reopen = %d, want 500", last)
	}
	b2.publish(Event{Topic: TopicTaskExit, SandboxID: "sb", ContainerID: "c"})
	evs, err = l2.read(499, 1000, 100)
	if err != nil || len(evs) != 2 || evs[0].Seq != 500 || evs[1].Seq != 501 || evs[1].Topic != TopicTaskExit {
		t.Fatalf("after reopen: %+v, %v", evs, err)
	}
}

func TestEventsAfterClose(t *testing.T) {
	l, err := openEventLog(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	b := newBus(l)
	b.publish(Event{Topic: TopicSandboxCreate, SandboxID: "sb"})
	b.closeAll()
	if _, err := l.read(0, 1, 1); !errdefs.IsUnavailable(err) {
		t.Fatalf("read after close: %v, want Unavailable", err)
	}
	ch, cut := b.subscribe(context.Background())
	if _, ok := <-ch; ok || cut != 1 {
		t.Fatalf("subscribe after close: open channel or cut %d", cut)
	}
}
