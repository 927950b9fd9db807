package e2e

import (
	"context"
	"sync"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	eventsv1 "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// taskExits records the TaskExit events containerd publishes (its event
// stream, as kubelet's CRI sees it) from now until the test ends.
type taskExits struct {
	mu  sync.Mutex
	ids map[string]uint32 // container ID -> exit status of its init
}

// watchTaskExits subscribes to containerd's /tasks/exit events.
func (e *env) watchTaskExits(t testing.TB) *taskExits {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.ctrd.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := eventsv1.NewEventsClient(conn).Subscribe(ctx, &eventsv1.SubscribeRequest{Filters: []string{`topic=="/tasks/exit"`}})
	if err != nil {
		cancel()
		conn.Close()
		t.Fatalf("subscribe to containerd's events: %v", err)
	}
	x := &taskExits{ids: map[string]uint32{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			v, err := typeurl.UnmarshalAny(env.GetEvent())
			if ev, ok := v.(*eventsapi.TaskExit); err == nil && ok && ev.ID == ev.ContainerID {
				x.mu.Lock()
				x.ids[ev.ContainerID] = ev.ExitStatus
				x.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; conn.Close() })
	return x
}

// exited reports whether containerd published the exit of container id
// (and its status).
func (x *taskExits) exited(id string) (uint32, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	code, ok := x.ids[id]
	return code, ok
}
