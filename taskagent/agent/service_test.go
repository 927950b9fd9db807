package agent

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// The AgentService returns errdefs errors: the server's unary interceptor
// maps those of unary methods, StreamError those of Events, to the codes
// the host expects.
func TestServiceErrorsOverTTRPC(t *testing.T) {
	a := &Agent{events: newEventHub(4), started: time.Now()}
	a.logp.Store(slog.New(slog.DiscardHandler))
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(taskservice.UnaryServerInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	agentv1.RegisterTTRPCAgentServiceService(srv, &service{a: a})
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(context.Background(), ln) })
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	conn, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() { client.Close() })
	c := agentv1.NewTTRPCAgentServiceClient(client)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Unary: an invalid time is refused before the clock is touched.
	_, err = c.SyncClock(ctx, &agentv1.SyncClockRequest{HostTime: &timestamppb.Timestamp{Nanos: -1}})
	if status.Code(err) != codes.InvalidArgument || !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("SyncClock(invalid time) = %v, want InvalidArgument", err)
	}

	// Stream: a second Events stream while one is open.
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	first, err := c.Events(sctx, &agentv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a.events.publish(oomEvent(engine.Event{Topic: engine.TopicTaskOOM, ContainerID: "c1"}))
	if ev, err := first.Recv(); err != nil || ev.GetOom().GetContainerId() != "c1" {
		t.Fatalf("first stream: %v, %v", ev, err)
	}
	second, err := c.Events(ctx, &agentv1.EventsRequest{})
	if err == nil {
		_, err = second.Recv()
	}
	if status.Code(err) != codes.AlreadyExists || !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
		t.Errorf("second Events stream = %v, want AlreadyExists", err)
	}
}
