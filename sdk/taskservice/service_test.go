package taskservice_test

import (
	"context"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// TestReplayedStart: a Start that the supervisor sends again to a new
// worker (marked ReplayedMetadataKey) starts a process still created and
// answers one already started with its pid; an unmarked second Start
// still fails.
func TestReplayedStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := engine.New(ctx, engine.Config{StateDir: t.TempDir(), Backends: []backend.Backend{backendfake.New(backendfake.Config{})}, StopTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "sb", Kind: backendfake.Kind}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.StartSandbox(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateContainer(ctx, "sb", engine.ContainerSpec{ID: "c1", Bundle: "/bundles/c1", Spec: &specs.Spec{}}); err != nil {
		t.Fatal(err)
	}
	s := taskservice.New(e, "sb", "test")
	replayed := ttrpc.WithMetadata(ctx, ttrpc.MD{taskservice.ReplayedMetadataKey: []string{"1"}})

	first, err := s.Start(replayed, &taskapi.StartRequest{ID: "c1"})
	if err != nil || first.GetPid() < backendfake.MinPid {
		t.Fatalf("replayed Start of a created container = %v, %v; want it started", first, err)
	}
	if st, _ := e.State(ctx, "sb", "c1", ""); st.State != engine.ProcessRunning || st.Pid != first.GetPid() {
		t.Fatalf("after the replayed Start: %+v, want running with pid %d", st, first.GetPid())
	}
	again, err := s.Start(replayed, &taskapi.StartRequest{ID: "c1"})
	if err != nil || again.GetPid() != first.GetPid() {
		t.Errorf("replayed Start of a running container = %v, %v; want its pid %d", again, err, first.GetPid())
	}
	if _, err := s.Start(ctx, &taskapi.StartRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second Start, not a replay = %v, want FailedPrecondition", err)
	}
	if _, err := s.Start(replayed, &taskapi.StartRequest{ID: "missing"}); !errdefs.IsNotFound(err) {
		t.Errorf("replayed Start of an unknown container = %v, want NotFound", err)
	}
}
