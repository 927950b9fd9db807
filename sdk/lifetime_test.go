package sdk_test

import (
	"context"
	"iter"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
)

// TestSandboxLifetimes: a sandbox's deadline and idle timeout, set at
// creation and with SetTimeout, end it through the API with an expiry
// event first; bad durations change nothing.
func TestSandboxLifetimes(t *testing.T) {
	sock := apitest.Serve(t, apitest.Stub{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dial(t, sock)

	if _, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithIdleTimeout(-time.Second)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative idle timeout: %v, want invalid argument", err)
	}

	// Every event kept, from the first: the stream starts at the first
	// next().
	next, stop := iter.Pull2(c.EventsAfter(ctx, 0))
	defer stop()

	const idle = 300 * time.Millisecond
	idler, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("idler"), sdk.WithIdleTimeout(idle))
	if err != nil {
		t.Fatal(err)
	}
	if idler.IdleTimeout != idle || !idler.ExpiresAt.IsZero() {
		t.Errorf("created: idle timeout %v, expires at %v; want %v and none", idler.IdleTimeout, idler.ExpiresAt, idle)
	}
	held, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("held"), sdk.WithTimeoutAfter(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(held.ExpiresAt); d < 59*time.Minute || d > time.Hour {
		t.Errorf("ExpiresAt %v, want an hour from now", held.ExpiresAt)
	}
	if err := held.SetTimeout(ctx, -time.Second, 0); !errdefs.IsInvalidArgument(err) {
		t.Errorf("SetTimeout(negative): %v, want invalid argument", err)
	}
	if err := held.Refresh(ctx); err != nil || held.ExpiresAt.IsZero() {
		t.Errorf("after a refused SetTimeout: expires at %v (%v), want unchanged", held.ExpiresAt, err)
	}
	// Brought forward to (almost) now.
	if err := held.SetTimeout(ctx, time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}

	expired := map[string]string{}
	deleted := map[string]bool{}
	for len(deleted) < 2 {
		ev, err, ok := next()
		if ok && err == nil && ev.SandboxID == "" {
			continue
		}
		if !ok || err != nil {
			t.Fatalf("events: %v", err)
		}
		switch ev.Type {
		case "sandbox-expired":
			expired[ev.SandboxID] = ev.Reason
		case "sandbox-deleted":
			if _, ok := expired[ev.SandboxID]; !ok {
				t.Fatalf("%s deleted without an expiry event", ev.SandboxID)
			}
			deleted[ev.SandboxID] = true
		}
	}
	if expired["idler"] != "idle" || expired["held"] != "deadline" {
		t.Errorf("expiry reasons %v, want idler: idle, held: deadline", expired)
	}
	for _, id := range []string{"idler", "held"} {
		if _, err := c.Sandbox(ctx, id); !errdefs.IsNotFound(err) {
			t.Errorf("%s after expiry: %v, want not found", id, err)
		}
	}
}
