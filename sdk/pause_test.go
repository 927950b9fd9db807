package sdk_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
)

// TestSandboxPauseStopsCPU pauses a runc sandbox whose two containers
// burn CPU: while it is paused they use none at all and nothing new runs
// in it; after Resume they burn again.
func TestSandboxPauseStopsCPU(t *testing.T) {
	sock := apitest.Serve(t, runcBackend(t))
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dial(t, sock)
	sb, err := c.CreateSandbox(ctx, "runc", sdk.WithID("burn"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(context.Background(), sdk.Force())
	var ctrs []*sdk.Container
	for _, id := range []string{"burn1", "burn2"} {
		ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.WithContainerID(id), sdk.Args("sh", "-c", "while :; do :; done"))
		if err != nil {
			t.Fatal(err)
		}
		ctrs = append(ctrs, ctr)
	}
	usage := func() uint64 {
		t.Helper()
		var sum uint64
		for _, ctr := range ctrs {
			st, err := ctr.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sum += st.CPU.UsageNS
		}
		return sum
	}
	start := usage()
	testutil.Eventually(t, 30*time.Second, func() bool { return usage() > start }, "the containers burn CPU")

	if err := sb.Pause(ctx); err != nil || sb.State != sdk.SandboxPaused {
		t.Fatalf("Pause: %v, state %s", err, sb.State)
	}
	if list, err := c.Sandboxes(ctx, sdk.InState(sdk.SandboxPaused)); err != nil || len(list) != 1 {
		t.Errorf("Sandboxes(paused) = %v, %v", list, err)
	}
	frozen := usage()
	// The measuring window: a frozen cgroup's usage does not move at all.
	select {
	case <-ctx.Done():
	case <-time.After(500 * time.Millisecond):
	}
	if now := usage(); now != frozen {
		t.Errorf("paused containers used %v of CPU in 500ms", time.Duration(now-frozen))
	}
	if _, err := ctrs[0].Exec(ctx, sdk.Args("true")); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("exec in a paused sandbox: %v, want failed precondition", err)
	}
	if err := sb.Pause(ctx); err != nil {
		t.Errorf("pausing a paused sandbox: %v", err)
	}

	if err := sb.Resume(ctx); err != nil || sb.State != sdk.SandboxReady {
		t.Fatalf("Resume: %v, state %s", err, sb.State)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return usage() > frozen }, "the containers burn CPU again")
	if _, err := ctrs[0].Exec(ctx, sdk.Args("true")); err != nil {
		t.Errorf("exec after resume: %v", err)
	}
}

// TestSandboxUsage reads a runc sandbox's usage once and as a stream: its
// CPU time grows under a burner, a too short interval is refused, and the
// stream ends NOT_FOUND when the sandbox goes.
func TestSandboxUsage(t *testing.T) {
	sock := apitest.Serve(t, runcBackend(t))
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dial(t, sock)
	sb, err := c.CreateSandbox(ctx, "runc", sdk.WithID("use"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(context.Background(), sdk.Force())
	if _, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.WithContainerID("busy"), sdk.Args("sh", "-c", "while :; do :; done")); err != nil {
		t.Fatal(err)
	}
	u, err := sb.Usage(ctx)
	if err != nil || u.Timestamp.IsZero() || u.Pids == 0 || u.MemoryBytes == 0 {
		t.Fatalf("Usage = %+v, %v", u, err)
	}
	var samples []sdk.Usage
	for u, err := range sb.WatchUsage(ctx, 100*time.Millisecond) {
		if err != nil {
			t.Fatal(err)
		}
		samples = append(samples, u)
		if len(samples) == 3 {
			break
		}
	}
	if !samples[2].Timestamp.After(samples[0].Timestamp) || samples[2].CPU <= samples[0].CPU {
		t.Errorf("samples do not advance: %+v", samples)
	}
	for _, err := range sb.WatchUsage(ctx, time.Millisecond) {
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("WatchUsage(1ms): %v, want invalid argument", err)
		}
		break
	}
	// The stream ends when the sandbox is deleted.
	done := make(chan error, 1)
	go func() {
		for _, err := range sb.WatchUsage(ctx, 100*time.Millisecond) {
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := sb.Delete(ctx, sdk.Force()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errdefs.IsNotFound(err) {
		t.Errorf("usage stream of a deleted sandbox ended with %v, want not found", err)
	}
}
