package engine_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

func newEngine(t *testing.T, f *backendfake.Backend, dir string) *engine.Engine {
	t.Helper()
	e, err := engine.New(context.Background(), engine.Config{StateDir: dir, Backends: []backend.Backend{f}, StopTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func ready(t *testing.T, e *engine.Engine, id string) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: id, Kind: backendfake.Kind, Labels: map[string]string{"app": "x"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.StartSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
}

func container(t *testing.T, e *engine.Engine, sb, id string) {
	t.Helper()
	if _, err := e.CreateContainer(context.Background(), sb, engine.ContainerSpec{ID: id, Bundle: "/bundles/" + id, Spec: &specs.Spec{}}); err != nil {
		t.Fatal(err)
	}
}

func TestLifecycleAndEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	events := e.Subscribe(ctx)
	ready(t, e, "sb1")
	container(t, e, "sb1", "c1")
	st, err := e.Start(ctx, "sb1", "c1", "")
	if err != nil || st.Pid < backendfake.MinPid || st.State != engine.ProcessRunning {
		t.Fatalf("start = %+v, %v", st, err)
	}
	if _, err := e.Delete(ctx, "sb1", "c1", ""); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("delete of a running container: %v, want failed precondition", err)
	}
	if err := e.Kill(ctx, "sb1", "c1", "", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	ex, err := e.Wait(ctx, "sb1", "c1", "")
	if err != nil || ex.Code != 137 {
		t.Fatalf("wait = %+v, %v; want 137", ex, err)
	}
	if _, err := e.Delete(ctx, "sb1", "c1", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	want := []string{engine.TopicSandboxCreate, engine.TopicSandboxStart, engine.TopicTaskCreate, engine.TopicTaskStart,
		engine.TopicTaskExit, engine.TopicTaskDelete, engine.TopicSandboxExit, engine.TopicSandboxDelete}
	for i, topic := range want {
		select {
		case ev := <-events:
			if ev.Topic != topic || ev.SandboxID != "sb1" {
				t.Fatalf("event %d = %s for %q, want %s", i, ev.Topic, ev.SandboxID, topic)
			}
			if topic == engine.TopicTaskExit && (ev.ExitCode != 137 || ev.ExecID != "" || ev.ContainerID != "c1") {
				t.Errorf("exit event = %+v", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("missing event %s", topic)
		}
	}
}

func TestStopEscalatesToKill(t *testing.T) {
	e := newEngine(t, backendfake.New(backendfake.Config{IgnoreSIGTERM: true}), t.TempDir())
	ready(t, e, "sb")
	container(t, e, "sb", "stubborn")
	if _, err := e.Start(context.Background(), "sb", "stubborn", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.StopSandbox(context.Background(), "sb", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	st, _ := e.State(context.Background(), "sb", "stubborn", "")
	if st.State != engine.ProcessStopped || st.ExitCode != 137 {
		t.Errorf("container after stop = %+v; want stopped by SIGKILL", st)
	}
	ex, err := e.WaitSandbox(context.Background(), "sb")
	if err != nil || ex.ExitedAt.IsZero() {
		t.Errorf("sandbox wait after stop = %+v, %v", ex, err)
	}
}

// TestDeleteKillsAtOnce: deleting a running sandbox (the API's force) and
// stopping it with KillNow give its processes no grace period: a container
// that ignores SIGTERM is killed although the default grace period is an
// hour.
func TestDeleteKillsAtOnce(t *testing.T) {
	e, err := engine.New(context.Background(), engine.Config{StateDir: t.TempDir(),
		Backends: []backend.Backend{backendfake.New(backendfake.Config{IgnoreSIGTERM: true})}, StopTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range []string{"stopped", "deleted"} {
		ready(t, e, id)
		container(t, e, id, id+"-c")
		if _, err := e.Start(ctx, id, id+"-c", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.StopSandbox(ctx, "stopped", engine.KillNow); err != nil {
		t.Fatal(err)
	}
	st, _ := e.State(ctx, "stopped", "stopped-c", "")
	if st.State != engine.ProcessStopped || st.ExitCode != 137 {
		t.Errorf("container after StopSandbox(KillNow) = %+v; want killed by SIGKILL", st)
	}
	if err := e.DeleteSandbox(ctx, "deleted"); err != nil {
		t.Fatalf("delete of a running sandbox whose container ignores SIGTERM: %v", err)
	}
	if _, err := e.Sandbox(ctx, "deleted"); !errdefs.IsNotFound(err) {
		t.Errorf("sandbox after delete: %v; want not found", err)
	}
}

func TestRecoverFromStateDir(t *testing.T) {
	dir := t.TempDir()
	f := backendfake.New(backendfake.Config{})
	e1, err := engine.New(context.Background(), engine.Config{StateDir: dir, Backends: []backend.Backend{f}})
	if err != nil {
		t.Fatal(err)
	}
	ready(t, e1, "keep")
	container(t, e1, "keep", "c")
	e1.Close()
	// A creation that crashed before its first record leaves only a dir.
	if err := os.MkdirAll(filepath.Join(dir, "sandboxes", "half-made"), 0o700); err != nil {
		t.Fatal(err)
	}

	f2 := backendfake.New(backendfake.Config{})
	e2 := newEngine(t, f2, dir)
	st, err := e2.Sandbox(context.Background(), "keep")
	if err != nil || st.State != engine.SandboxReady || st.Labels["app"] != "x" || len(st.Containers) != 1 {
		t.Fatalf("recovered = %+v, %v", st, err)
	}
	if rec := f2.Recovered(); len(rec) != 1 || rec[0] != "keep" {
		t.Errorf("backend recovered %v, want keep (from its saved state)", rec)
	}
	if _, err := os.Stat(filepath.Join(dir, "sandboxes", "half-made")); !os.IsNotExist(err) {
		t.Errorf("half-made sandbox dir not removed: %v", err)
	}
	if _, err := e2.Sandbox(context.Background(), "half-made"); !errdefs.IsNotFound(err) {
		t.Errorf("half-made sandbox: %v, want not found", err)
	}
}

func TestValidation(t *testing.T) {
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	ctx := context.Background()
	for _, id := range []string{"", "../x", "a/b", ".", "..", "-lead", string(make([]byte, 200))} {
		if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: id, Kind: backendfake.Kind}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("id %q: %v, want invalid argument", id, err)
		}
	}
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "ok", Kind: "nope"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown kind: %v", err)
	}
	ready(t, e, "ok")
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "ok", Kind: backendfake.Kind}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate: %v", err)
	}
	container(t, e, "ok", "c")
	ready(t, e, "other")
	if _, err := e.CreateContainer(ctx, "other", engine.ContainerSpec{ID: "c", Bundle: "/b", Spec: &specs.Spec{}}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("container id reused across sandboxes: %v", err)
	}
	if _, err := e.CreateContainer(ctx, "ok", engine.ContainerSpec{ID: "d", Bundle: "relative", Spec: &specs.Spec{}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative bundle: %v", err)
	}
	if _, err := e.CreateContainer(ctx, "ok", engine.ContainerSpec{ID: "d", Bundle: "/b", Spec: &specs.Spec{}, Stdio: backend.Stdio{Stdout: "/x/../../etc"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unclean stdio path: %v", err)
	}
	if _, err := e.State(ctx, "ok", "missing", ""); !errdefs.IsNotFound(err) {
		t.Errorf("missing container: %v", err)
	}
}

func TestSandboxLiveInfo(t *testing.T) {
	e := newEngine(t, backendfake.New(backendfake.Config{}), t.TempDir())
	ready(t, e, "live")
	ctx := context.Background()
	info, err := e.SandboxLiveInfo(ctx, "live")
	if err != nil || info["fake.containers"] != "0" {
		t.Fatalf("live info = %v, %v", info, err)
	}
	st, err := e.SandboxStats(ctx, "live")
	if err != nil || st.MemoryUsageBytes != backendfake.SandboxMemory {
		t.Fatalf("sandbox stats = %+v, %v; want the backend's own", st, err)
	}
	if _, err := e.SandboxLiveInfo(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("unknown sandbox: %v, want not found", err)
	}
}

// TestDeleteSandboxUnmountsFirst: a mount a backend left in the sandbox's
// directory (a bind of a host volume) is unmounted, not emptied, when the
// sandbox is deleted.
func TestDeleteSandboxUnmountsFirst(t *testing.T) {
	testutil.RequireRoot(t, "mounts")
	stateDir := t.TempDir()
	e := newEngine(t, backendfake.New(backendfake.Config{}), stateDir)
	ready(t, e, "vol")
	volume := t.TempDir()
	if err := os.WriteFile(filepath.Join(volume, "data"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(stateDir, "sandboxes", "vol", "left-behind")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(volume, target, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(target, syscall.MNT_DETACH) })
	if err := e.DeleteSandbox(context.Background(), "vol"); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(volume, "data")); err != nil || string(data) != "keep" {
		t.Errorf("volume content after delete: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "sandboxes", "vol")); !os.IsNotExist(err) {
		t.Errorf("sandbox dir left: %v", err)
	}
}
