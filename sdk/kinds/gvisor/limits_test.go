package gvisor_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/gvisor"
)

// oomSink records the OOM kills a backend reports.
type oomSink struct {
	mu  sync.Mutex
	ids []string
}

func (s *oomSink) OOM(sandboxID, containerID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids = append(s.ids, containerID)
}

func (s *oomSink) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.ids, id)
}

// sandboxMemoryBound reads the memory limit of sandbox id's host cgroup.
func sandboxMemoryBound(t *testing.T, id string) string {
	t.Helper()
	for _, f := range []string{
		"/sys/fs/cgroup/memory/magnetar-gvisor/gvisor-" + id + "/memory.limit_in_bytes",
		"/sys/fs/cgroup/magnetar-gvisor/gvisor-" + id + "/memory.max",
	} {
		if data, err := os.ReadFile(f); err == nil {
			return strings.TrimSpace(string(data))
		}
	}
	t.Fatalf("no memory cgroup of sandbox %s", id)
	return ""
}

// limitedContainer creates and starts a busybox container running script
// with a memory limit and the cgroup file system mounted, as CRI mounts
// it.
func limitedContainer(t *testing.T, sb backend.Sandbox, id, script string, memory int64) (backend.Container, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := testutil.BusyboxBundle(t, dir, script)
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &memory}}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}})
	c, err := sb.CreateContainer(ctx, backend.ContainerConfig{ID: id, Bundle: dir, Spec: spec, Stdio: backend.Stdio{Stdout: out, Stderr: out}})
	if err != nil {
		t.Fatalf("create container %s: %v", id, err)
	}
	if _, err := c.Init().Start(ctx); err != nil {
		t.Fatalf("start container %s: %v", id, err)
	}
	return c, out
}

// execOutput runs script in c and returns what it printed.
func execOutput(t *testing.T, c backend.Container, id, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, out := startExec(t, c, id, script)
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		data, _ := os.ReadFile(out)
		t.Fatalf("exec %s: %+v, %v: %s", id, st, err, data)
	}
	_ = p.Delete(ctx)
	data, _ := os.ReadFile(out)
	return strings.TrimSpace(string(data))
}

// TestLimitsBoundSandboxAndOOM: the containers' memory limits bound the
// sandbox's host cgroup together (plus the sentry's overhead), an update
// bounds it anew and is what the container reads from its cgroup file
// system, the bound and the OOM watch survive a restart of the backend,
// and an OOM kill of the sandbox is reported for each container it ended.
func TestLimitsBoundSandboxAndOOM(t *testing.T) {
	testutil.RequireRunsc(t)
	const mib = 1 << 20
	ctx := context.Background()
	cfg := backend.SandboxConfig{ID: "lim-" + filepath.Base(t.TempDir()), Namespace: "test", Dir: t.TempDir(), PrivateNetwork: true, Events: &oomSink{}}
	r := startRestartable(t, gvisor.Config{Root: t.TempDir(), MemoryOverhead: 64 * mib}, cfg)
	sb := r.sb
	if got := sandboxMemoryBound(t, cfg.ID); got != "9223372036854771712" && got != "max" {
		t.Errorf("bound of a sandbox without limits = %s, want none", got)
	}
	a, _ := limitedContainer(t, sb, "a", "exec sleep 600", 64*mib)
	if got := sandboxMemoryBound(t, cfg.ID); got != fmt.Sprint(128*mib) {
		t.Errorf("bound with a 64 MiB container = %s, want %d (64 MiB + 64 MiB overhead)", got, 128*mib)
	}
	if got := execOutput(t, a, "see1", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"); got != fmt.Sprint(64*mib) {
		t.Errorf("limit the container reads = %q, want %d", got, 64*mib)
	}
	limit := int64(96 * mib)
	if err := a.(backend.Updater).Update(ctx, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if got := sandboxMemoryBound(t, cfg.ID); got != fmt.Sprint(160*mib) {
		t.Errorf("bound after the update = %s, want %d", got, 160*mib)
	}
	if got := execOutput(t, a, "see2", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"); got != fmt.Sprint(96*mib) {
		t.Errorf("limit the container reads after the update = %q, want %d", got, 96*mib)
	}
	if st, err := a.(backend.Stater).Stats(ctx); err != nil || st.MemoryLimitBytes != uint64(96*mib) {
		t.Errorf("stats after the update = %+v, %v; want the 96 MiB limit", st, err)
	}

	// A restarted backend re-attaches: the next bound still counts a.
	sink := &oomSink{}
	cfg.Events = sink
	sb2 := r.restart(cfg)
	spec := &specs.Spec{Mounts: []specs.Mount{{Destination: "/sys/fs/cgroup", Type: "cgroup"}}}
	a2, err := sb2.(backend.ContainerRecoverer).RecoverContainer(ctx, backend.ContainerConfig{ID: "a", Bundle: t.TempDir(), Spec: spec}, 0)
	if err != nil {
		t.Fatalf("recover container: %v", err)
	}
	// The hog's shell variable doubles until the bound is reached: the
	// host's OOM killer ends the stub process of the hog's address space,
	// and with it the hog (exit code 1 in runsc 20240729, 137 where the
	// sentry was killed); the pod and its other container go on.
	hog, hogOut := limitedContainer(t, sb2, "hog", `x=a; while true; do x="$x$x"; done`, 32*mib)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if st, err := hog.Init().Wait(wctx); err != nil || st.Code == 0 {
		data, _ := os.ReadFile(hogOut)
		t.Errorf("exit of the hog: %+v, %v; want a failure; output %q", st, err, data)
	}
	if !sink.has("hog") {
		t.Errorf("OOM kills reported for %q, want the hog", sink.ids)
	}
	if got := execOutput(t, a2, "alive", "echo alive"); got != "alive" || sink.has("a") {
		t.Errorf("the other container after the OOM kill: exec printed %q, OOM kills reported for %q", got, sink.ids)
	}
}

// restartable is a started sandbox and its backend, stopped, deleted and
// closed when the test ends.
type restartable struct {
	t   *testing.T
	cfg gvisor.Config
	b   *gvisor.Backend
	sb  backend.Sandbox
}

// startRestartable creates and starts a sandbox with sc on a backend with
// cfg.
func startRestartable(t *testing.T, cfg gvisor.Config, sc backend.SandboxConfig) *restartable {
	t.Helper()
	b, err := gvisor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &restartable{t: t, cfg: cfg, b: b}
	t.Cleanup(func() {
		if r.sb != nil {
			_ = r.sb.Stop(context.Background(), time.Second)
			if err := r.sb.Delete(context.Background()); err != nil {
				t.Errorf("delete sandbox: %v", err)
			}
		}
		r.b.Close()
	})
	sb, err := b.Create(context.Background(), sc)
	if err != nil {
		t.Fatal(err)
	}
	r.sb = sb
	if _, err := sb.Start(context.Background()); err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	return r
}

// restart closes the backend and re-attaches a new one on the same root to
// the sandbox (sc as its engine would pass it again), which it returns.
func (r *restartable) restart(sc backend.SandboxConfig) backend.Sandbox {
	r.t.Helper()
	state, err := r.sb.State()
	if err != nil {
		r.t.Fatal(err)
	}
	r.b.Close()
	if r.b, err = gvisor.New(r.cfg); err != nil {
		r.t.Fatal(err)
	}
	sb, err := r.b.Recover(context.Background(), sc, state)
	if err != nil {
		r.t.Fatalf("recover: %v", err)
	}
	r.sb = sb
	return sb
}
