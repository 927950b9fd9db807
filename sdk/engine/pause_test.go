package engine_test

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

func TestPauseSandbox(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	f := backendfake.New(backendfake.Config{})
	e := newEngine(t, f, dir)
	events := e.Subscribe(ctx)
	ready(t, e, "sb")
	for _, id := range []string{"a", "b", "idle"} {
		container(t, e, "sb", id)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := e.Start(ctx, "sb", id, ""); err != nil {
			t.Fatal(err)
		}
	}
	st, err := e.PauseSandbox(ctx, "sb")
	if err != nil || !st.Paused || st.State != engine.SandboxReady {
		t.Fatalf("PauseSandbox = %+v, %v", st, err)
	}
	state := func(e *engine.Engine, id string) engine.ProcessState {
		t.Helper()
		ps, err := e.State(ctx, "sb", id, "")
		if err != nil {
			t.Fatal(err)
		}
		return ps.State
	}
	for id, want := range map[string]engine.ProcessState{"a": engine.ProcessPaused, "b": engine.ProcessPaused, "idle": engine.ProcessCreated} {
		if got := state(e, id); got != want {
			t.Errorf("container %s is %s, want %s", id, got, want)
		}
	}
	// Nothing new runs in a paused sandbox.
	if _, err := e.Start(ctx, "sb", "idle", ""); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Start in a paused sandbox: %v, want failed precondition", err)
	}
	if _, err := e.CreateContainer(ctx, "sb", engine.ContainerSpec{ID: "new", Bundle: "/bundles/new", Spec: &specs.Spec{}}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("CreateContainer in a paused sandbox: %v, want failed precondition", err)
	}
	if _, err := e.PauseSandbox(ctx, "sb"); err != nil {
		t.Errorf("pausing a paused sandbox: %v", err)
	}

	// The pause holds across a restart of the engine.
	e.Close()
	e = newEngine(t, f, dir)
	if st, err := e.Sandbox(ctx, "sb"); err != nil || !st.Paused {
		t.Fatalf("recovered sandbox: paused %v, %v", st.Paused, err)
	}
	if got := state(e, "a"); got != engine.ProcessPaused {
		t.Errorf("recovered container a is %s, want paused", got)
	}
	events = e.Subscribe(ctx)
	st, err = e.ResumeSandbox(ctx, "sb")
	if err != nil || st.Paused {
		t.Fatalf("ResumeSandbox = %+v, %v", st, err)
	}
	for id, want := range map[string]engine.ProcessState{"a": engine.ProcessRunning, "b": engine.ProcessRunning, "idle": engine.ProcessCreated} {
		if got := state(e, id); got != want {
			t.Errorf("after resume container %s is %s, want %s", id, got, want)
		}
	}
	var topics []string
	for len(topics) < 3 {
		ev := <-events
		if ev.SandboxID == "sb" {
			topics = append(topics, ev.Topic)
		}
	}
	if topics[2] != engine.TopicSandboxResumed {
		t.Errorf("events after ResumeSandbox: %v, want two task resumes then %s", topics, engine.TopicSandboxResumed)
	}
	if _, err := e.Start(ctx, "sb", "idle", ""); err != nil {
		t.Errorf("Start after resume: %v", err)
	}
	if _, err := e.ResumeSandbox(ctx, "sb"); err != nil {
		t.Errorf("resuming a running sandbox: %v", err)
	}
	if _, err := e.PauseSandbox(ctx, "missing"); !errdefs.IsNotFound(err) {
		t.Errorf("PauseSandbox of a missing sandbox: %v", err)
	}
	// A paused sandbox stops (thawed first) and is deleted.
	if _, err := e.PauseSandbox(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteSandbox(ctx, "sb"); err != nil {
		t.Errorf("DeleteSandbox of a paused sandbox: %v", err)
	}
}

func TestPauseSandboxNotReady(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "sb", Kind: backendfake.Kind}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.PauseSandbox(ctx, "sb"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("pausing a created sandbox: %v, want failed precondition", err)
	}
	if st, _ := e.Sandbox(ctx, "sb"); st.Paused {
		t.Errorf("a refused pause left the sandbox paused")
	}
}
