package runc

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	gorunc "github.com/containerd/go-runc"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestQuickStatus: the status read from runc's state files is the one
// `runc state` reports, for a created, running, paused and stopped
// container, and an unknown container is left to runc.
func TestQuickStatus(t *testing.T) {
	testutil.RequireRunc(t)
	root, bundle := t.TempDir(), filepath.Join(t.TempDir(), "b")
	testutil.BusyboxBundle(t, bundle, "sleep 600")
	rt := &gorunc.Runc{Root: root}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const id = "quick"
	nio, err := gorunc.NewNullIO()
	if err != nil {
		t.Fatal(err)
	}
	defer nio.Close()
	if err := rt.Create(ctx, id, bundle, &gorunc.CreateOpts{IO: nio}); err != nil {
		t.Fatal(err)
	}
	defer rt.Delete(context.Background(), id, &gorunc.DeleteOpts{Force: true})
	check := func(want string) {
		t.Helper()
		st, err := rt.State(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := quickStatus(root, id)
		if !ok || got != st.Status || got != want {
			t.Errorf("quickStatus = %q, %v; runc state says %q, want %q", got, ok, st.Status, want)
		}
	}
	check("created")
	if err := rt.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	check("running")
	if err := rt.Pause(ctx, id); err != nil {
		t.Fatal(err)
	}
	check("paused")
	if err := rt.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	check("running")
	if err := rt.Kill(ctx, id, int(syscall.SIGKILL), &gorunc.KillOpts{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		st, err := rt.State(ctx, id)
		return err == nil && st.Status == "stopped"
	}, "the container stops")
	check("stopped")
	if s, ok := quickStatus(root, "nope"); ok {
		t.Errorf("quickStatus of an unknown container = %q, true; want it left to runc", s)
	}
}
