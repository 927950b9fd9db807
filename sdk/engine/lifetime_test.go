package engine_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// expiry waits for the expiry event of sandbox id and then its delete.
func expiry(t *testing.T, events <-chan engine.Event, id string) engine.Event {
	t.Helper()
	var exp engine.Event
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("event stream ended")
			}
			if ev.SandboxID != id {
				continue
			}
			switch ev.Topic {
			case engine.TopicSandboxExpired:
				exp = ev
			case engine.TopicSandboxDelete:
				if exp.Topic == "" {
					t.Fatalf("sandbox %s deleted without an expiry event first", id)
				}
				return exp
			}
		case <-timeout:
			t.Fatalf("sandbox %s did not expire", id)
		}
	}
}

func TestLifetimeDeadline(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	e := newEngine(t, backendfake.New(backendfake.Config{}), dir)
	events := e.Subscribe(ctx)
	deadline := time.Now().Add(300 * time.Millisecond)
	st, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "sb", Kind: backendfake.Kind, Lifetime: engine.Lifetime{Deadline: deadline}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Lifetime.Deadline.Equal(deadline) {
		t.Errorf("status deadline %v, want %v", st.Lifetime.Deadline, deadline)
	}
	if _, err := e.StartSandbox(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	container(t, e, "sb", "c")
	if _, err := e.Start(ctx, "sb", "c", ""); err != nil {
		t.Fatal(err)
	}
	// A running process does not hold off a deadline.
	if ev := expiry(t, events, "sb"); ev.Reason != "deadline" {
		t.Errorf("expiry reason %q, want deadline", ev.Reason)
	}
	if time.Now().Before(deadline) {
		t.Errorf("expired before its deadline")
	}
	if _, err := e.Sandbox(ctx, "sb"); !errdefs.IsNotFound(err) {
		t.Errorf("sandbox after expiry: %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sandboxes", "sb")); !os.IsNotExist(err) {
		t.Errorf("state of the expired sandbox remains: %v", err)
	}
}

func TestLifetimeIdle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	events := e.Subscribe(ctx)
	ready(t, e, "sb")
	container(t, e, "sb", "c")
	if _, err := e.Start(ctx, "sb", "c", ""); err != nil {
		t.Fatal(err)
	}
	const idle = 200 * time.Millisecond
	if _, err := e.SetLifetime(ctx, "sb", engine.Lifetime{IdleTimeout: idle}); err != nil {
		t.Fatal(err)
	}
	// The process runs for several idle periods: the sandbox stays.
	busyUntil := time.Now().Add(4 * idle)
	for time.Now().Before(busyUntil) {
		select {
		case ev := <-events:
			if ev.Topic == engine.TopicSandboxExpired {
				t.Fatalf("expired while its process runs: %+v", ev)
			}
		case <-time.After(idle / 4):
		}
	}
	exited := time.Now()
	if err := e.Kill(ctx, "sb", "c", "", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if ev := expiry(t, events, "sb"); ev.Reason != "idle" {
		t.Errorf("expiry reason %q, want idle", ev.Reason)
	}
	if since := time.Since(exited); since < idle {
		t.Errorf("expired %v after its last process exited, want at least %v", since, idle)
	}
}

func TestLifetimeTouchPostponesIdle(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	events := e.Subscribe(ctx)
	const idle = 200 * time.Millisecond
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "sb", Kind: backendfake.Kind, Lifetime: engine.Lifetime{IdleTimeout: idle}}); err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for end := time.Now().Add(4 * idle); time.Now().Before(end); {
		e.Touch("sb")
		last = time.Now()
		select {
		case ev := <-events:
			if ev.Topic == engine.TopicSandboxExpired {
				t.Fatalf("expired although it was touched every %v: %+v", idle/4, ev)
			}
		case <-time.After(idle / 4):
		}
	}
	expiry(t, events, "sb")
	if since := time.Since(last); since < idle {
		t.Errorf("expired %v after the last activity, want at least %v", since, idle)
	}
}

func TestLifetimeSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	f := backendfake.New(backendfake.Config{})
	e := newEngine(t, f, dir)
	ready(t, e, "sb")
	deadline := time.Now().Add(time.Hour)
	if _, err := e.SetLifetime(ctx, "sb", engine.Lifetime{Deadline: deadline}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e2 := newEngine(t, f, dir)
	st, err := e2.Sandbox(ctx, "sb")
	if err != nil || !st.Lifetime.Deadline.Equal(deadline) {
		t.Fatalf("recovered sandbox: lifetime %+v, %v; want deadline %v", st.Lifetime, err, deadline)
	}
	// Brought forward: it ends now, in the recovered engine.
	events := e2.Subscribe(ctx)
	if _, err := e2.SetLifetime(ctx, "sb", engine.Lifetime{Deadline: time.Now()}); err != nil {
		t.Fatal(err)
	}
	expiry(t, events, "sb")
	e2.Close()
	// A deadline that passed while no engine ran ends the sandbox at
	// recovery (the record is moved back in time, as if the engine had
	// been down for an hour).
	e3 := newEngine(t, f, dir)
	ready(t, e3, "sb2")
	if _, err := e3.SetLifetime(ctx, "sb2", engine.Lifetime{Deadline: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	e3.Close()
	rec := filepath.Join(dir, "sandboxes", "sb2", "sandbox.json")
	data, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["deadline"] = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	if data, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e4 := newEngine(t, f, dir)
	testutil.Eventually(t, 30*time.Second, func() bool {
		_, err := e4.Sandbox(ctx, "sb2")
		return errdefs.IsNotFound(err)
	}, "the sandbox whose deadline passed during the restart is removed")
	if _, err := os.Stat(filepath.Dir(rec)); !os.IsNotExist(err) {
		t.Errorf("state of the expired sandbox remains: %v", err)
	}
}

func TestLifetimeBadInput(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "sb", Kind: backendfake.Kind, Lifetime: engine.Lifetime{IdleTimeout: -time.Second}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative idle timeout: %v, want invalid argument", err)
	}
	if _, err := e.Sandbox(ctx, "sb"); !errdefs.IsNotFound(err) {
		t.Errorf("a refused sandbox exists: %v", err)
	}
	ready(t, e, "ok")
	if _, err := e.SetLifetime(ctx, "ok", engine.Lifetime{IdleTimeout: engine.MaxIdleTimeout + 1}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("idle timeout over the maximum: %v, want invalid argument", err)
	}
	if st, err := e.Sandbox(ctx, "ok"); err != nil || !st.Lifetime.IsZero() {
		t.Errorf("refused SetLifetime changed the sandbox: %+v, %v", st.Lifetime, err)
	}
	if _, err := e.SetLifetime(ctx, "missing", engine.Lifetime{}); !errdefs.IsNotFound(err) {
		t.Errorf("SetLifetime of a missing sandbox: %v", err)
	}
}
