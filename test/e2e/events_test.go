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
	mu    sync.Mutex
	ids   map[string]uint32   // container ID -> exit status of its init
	execs map[string][]uint32 // container ID -> exit statuses of its exec'd processes, in order
	// execStarts counts the exec'd processes started in each container.
	execStarts map[string]int
}

// watchTaskExits subscribes to containerd's /tasks/exit (and
// /tasks/exec-started) events.
func (e *env) watchTaskExits(t testing.TB) *taskExits {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.ctrd.Address(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := eventsv1.NewEventsClient(conn).Subscribe(ctx, &eventsv1.SubscribeRequest{Filters: []string{`topic=="/tasks/exit"`, `topic=="/tasks/exec-started"`}})
	if err != nil {
		cancel()
		conn.Close()
		t.Fatalf("subscribe to containerd's events: %v", err)
	}
	x := &taskExits{ids: map[string]uint32{}, execs: map[string][]uint32{}, execStarts: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			env, err := stream.Recv()
			if err != nil {
				return
			}
			v, err := typeurl.UnmarshalAny(env.GetEvent())
			if ev, ok := v.(*eventsapi.TaskExecStarted); err == nil && ok {
				x.mu.Lock()
				x.execStarts[ev.ContainerID]++
				x.mu.Unlock()
			}
			if ev, ok := v.(*eventsapi.TaskExit); err == nil && ok {
				x.mu.Lock()
				if ev.ID == ev.ContainerID {
					x.ids[ev.ContainerID] = ev.ExitStatus
				} else {
					x.execs[ev.ContainerID] = append(x.execs[ev.ContainerID], ev.ExitStatus)
				}
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

// execExits returns the exit statuses containerd published for the exec'd
// processes of container id, in order.
func (x *taskExits) execExits(id string) []uint32 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return append([]uint32(nil), x.execs[id]...)
}

// execsStarted returns how many exec'd processes containerd saw start in
// container id.
func (x *taskExits) execsStarted(id string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.execStarts[id]
}
