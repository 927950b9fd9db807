package agent

import (
	"context"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/sdk/engine"
)

func TestParseMeminfo(t *testing.T) {
	total, avail := parseMeminfo([]byte("MemTotal:         243712 kB\nMemFree:          200000 kB\nMemAvailable:     210000 kB\nBuffers: 1 kB\n"))
	if total != 243712*1024 || avail != 210000*1024 {
		t.Fatalf("total %d avail %d", total, avail)
	}
	if total, avail := parseMeminfo([]byte("garbage\n")); total != 0 || avail != 0 {
		t.Fatalf("garbage: %d %d", total, avail)
	}
}

func TestParseLoadavg(t *testing.T) {
	l1, l5, l15 := parseLoadavg([]byte("0.52 0.31 0.10 1/80 123\n"))
	if l1 != 0.52 || l5 != 0.31 || l15 != 0.10 {
		t.Fatalf("load %v %v %v", l1, l5, l15)
	}
}

func TestOOMEventQueued(t *testing.T) {
	hub := newEventHub(4)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	hub.publish(oomEvent(engine.Event{Topic: engine.TopicTaskOOM, ContainerID: "c1", Timestamp: at}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := hub.next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetOom().GetContainerId() != "c1" || !ev.GetTimestamp().AsTime().Equal(at) {
		t.Fatalf("event = %v", ev)
	}
}
