package wasm_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/internal/testutil/wasmtest"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendtest"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
)

// TestMain makes the test binary a wasm runner when the backend re-executes
// it.
func TestMain(m *testing.M) {
	if wasm.RunnerMain() {
		return
	}
	os.Exit(m.Run())
}

// requireRoot skips tests that run modules: runners need root for their
// cgroup and mount namespace.
func requireRoot(t testing.TB) {
	t.Helper()
	testutil.RequireRoot(t, "the wasm kind: cgroups, mount namespaces")
}

func newBackend(t testing.TB, cfg wasm.Config) *wasm.Backend {
	t.Helper()
	if cfg.Root == "" {
		// One compilation cache for all tests and runs: modules compile
		// once (a cold compile under the race detector takes seconds).
		cfg.Root = wasmtest.CacheRoot(t)
	}
	b, err := wasm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	requireRoot(t)
	mod := wasmtest.Build(t, "minish")
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return newBackend(t, wasm.Config{})
	}, wasmtest.Shell{Module: mod})
}

// harness is an engine with the wasm backend.
type harness struct {
	t *testing.T
	e *engine.Engine
	b *wasm.Backend
}

func newHarness(t *testing.T, cfg wasm.Config) *harness {
	t.Helper()
	requireRoot(t)
	b := newBackend(t, cfg)
	e, err := engine.New(context.Background(), engine.Config{StateDir: t.TempDir(), Backends: []backend.Backend{b}, StopTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &harness{t: t, e: e, b: b}
}

func (h *harness) sandbox(id string) string {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.e.CreateSandbox(ctx, engine.SandboxSpec{ID: id, Kind: wasm.Kind}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.e.StartSandbox(ctx, id); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		if err := h.e.DeleteSandbox(context.Background(), id); err != nil && !errdefs.IsNotFound(err) {
			h.t.Errorf("delete sandbox %s: %v", id, err)
		}
	})
	return id
}

// run creates and starts a container of sandbox sb running spec from dir,
// with stdout and stderr to files; it returns the stdout file's path.
func (h *harness) run(sb, id, dir string, spec *specs.Spec, stdio backend.Stdio) {
	h.t.Helper()
	ctx := context.Background()
	if _, err := h.e.CreateContainer(ctx, sb, engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec, Stdio: stdio}); err != nil {
		h.t.Fatalf("create %s: %v", id, err)
	}
	if _, err := h.e.Start(ctx, sb, id, ""); err != nil {
		h.t.Fatalf("start %s: %v", id, err)
	}
}

func (h *harness) wait(sb, id string, d time.Duration) backend.ExitStatus {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	st, err := h.e.Wait(ctx, sb, id, "")
	if err != nil {
		h.t.Fatalf("wait %s: %v", id, err)
	}
	return st
}

func fileStdio(t *testing.T) (backend.Stdio, func() string) {
	dir := t.TempDir()
	s := backend.Stdio{Stdout: filepath.Join(dir, "stdout"), Stderr: filepath.Join(dir, "stderr")}
	return s, func() string {
		out, _ := os.ReadFile(s.Stdout)
		errOut, _ := os.ReadFile(filepath.Join(dir, "stderr"))
		return string(out) + string(errOut)
	}
}

// TestRunawayIsolation runs a busy loop under a CPU quota and a memory bomb
// under a memory limit, each in its own sandbox, next to a well-behaved
// module (all three instances of the same runner): the well-behaved one
// finishes with its output, the bomb is stopped at its limit (with an OOM
// event), the busy loop stops on SIGTERM, and this process stays
// responsive throughout.
func TestRunawayIsolation(t *testing.T) {
	h := newHarness(t, wasm.Config{})
	minish := wasmtest.Build(t, "minish")
	busy := wasmtest.Build(t, "busyloop")
	bomb := wasmtest.Build(t, "membomb")
	// Compile both runaways once without limits (a cold compile under a
	// 0.2 CPU quota and the race detector takes minutes).
	h.warm(busy, "/busyloop.wasm", "busyloop started")
	h.warm(bomb, "/membomb.wasm", "membomb started")
	events := h.e.Subscribe(t.Context())

	// Watch this process's own latency.
	stopLat := make(chan struct{})
	latDone := make(chan time.Duration)
	go func() {
		var worst time.Duration
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		last := time.Now()
		for {
			select {
			case <-stopLat:
				latDone <- worst
				return
			case now := <-tk.C:
				worst = max(worst, now.Sub(last))
				last = now
			}
		}
	}()

	busyDir := t.TempDir()
	busySpec := wasmtest.Bundle(t, busyDir, busy, "/busyloop.wasm")
	quota, period := int64(20000), uint64(100000) // 0.2 CPU
	busySpec.Linux.Resources = &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}
	busyIO, busyOut := fileStdio(t)
	h.run(h.sandbox("busy"), "busy", busyDir, busySpec, busyIO)

	bombDir := t.TempDir()
	bombSpec := wasmtest.Bundle(t, bombDir, bomb, "/membomb.wasm")
	limit := int64(256 << 20)
	bombSpec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	bombIO, bombOut := fileStdio(t)
	h.run(h.sandbox("bomb"), "bomb", bombDir, bombSpec, bombIO)

	okDir := t.TempDir()
	okSpec := wasmtest.Shell{Module: minish}.Bundle(t, okDir, "echo all is well; exit 0")
	okIO, okOut := fileStdio(t)
	h.run(h.sandbox("ok"), "ok", okDir, okSpec, okIO)

	if st := h.wait("ok", "ok", time.Minute); st.Code != 0 {
		t.Errorf("well-behaved module exited %d, want 0; output %q", st.Code, okOut())
	}
	if got := okOut(); !strings.Contains(got, "all is well") {
		t.Errorf("well-behaved module output = %q", got)
	}

	st := h.wait("bomb", "bomb", 2*time.Minute)
	if st.Code == 0 {
		t.Errorf("memory bomb exited 0, want a failure")
	}
	t.Logf("memory bomb exited %d: %q", st.Code, lastLines(bombOut(), 3))
	{ // its memory limit refused a growth: reported as an OOM
		oom := false
		for !oom {
			select {
			case ev := <-events:
				oom = ev.Topic == engine.TopicTaskOOM && ev.ContainerID == "bomb"
			case <-time.After(5 * time.Second):
				t.Fatal("no OOM event for the memory bomb")
			}
		}
	}
	if !eventually(func() bool { return strings.Contains(busyOut(), "busyloop started") }) {
		t.Errorf("busy loop never ran: %q", busyOut())
	}

	// The busy loop is still spinning; its cgroup shows CPU use bounded by
	// the quota.
	if ps, err := h.e.State(context.Background(), "busy", "busy", ""); err != nil || ps.State != engine.ProcessRunning {
		t.Fatalf("busy loop state = %+v, %v; want running", ps, err)
	}
	if err := h.e.Kill(context.Background(), "busy", "busy", "", syscall.SIGTERM, false); err != nil {
		t.Fatalf("SIGTERM busy loop: %v", err)
	}
	if st := h.wait("busy", "busy", 30*time.Second); st.Code != 128+uint32(syscall.SIGTERM) {
		t.Errorf("busy loop exited %d after SIGTERM, want %d; output %q", st.Code, 128+syscall.SIGTERM, busyOut())
	}
	close(stopLat)
	if worst := <-latDone; worst > 2*time.Second {
		t.Errorf("test process stalled for %s while the runaways ran", worst)
	}
}

// warm runs module once in a sandbox of its own until it printed
// started, then kills it: its compiled code is then in the cache.
func (h *harness) warm(module, path, started string) {
	h.t.Helper()
	sb := h.sandbox("warm-" + strings.TrimSuffix(filepath.Base(path), ".wasm"))
	dir := h.t.TempDir()
	spec := wasmtest.Bundle(h.t, dir, module, path)
	io, out := fileStdio(h.t)
	h.run(sb, sb, dir, spec, io)
	testutil.Poll(3*time.Minute, func() bool { return strings.Contains(out(), started) })
	if err := h.e.Kill(context.Background(), sb, sb, "", syscall.SIGKILL, false); err != nil {
		h.t.Logf("kill warm-up: %v", err)
	}
	h.wait(sb, sb, time.Minute)
}

// eventually polls cond for a few seconds.
func eventually(cond func() bool) bool { return testutil.Poll(10*time.Second, cond) }

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// TestStdinAndCloseStdin feeds a module through a stdin FIFO; it sees end
// of file only once the client closed its end and CloseStdin was called.
func TestStdinAndCloseStdin(t *testing.T) {
	h := newHarness(t, wasm.Config{})
	minish := wasmtest.Build(t, "minish")
	sb := h.sandbox("stdin")
	dir := t.TempDir()
	spec := wasmtest.Shell{Module: minish}.Bundle(t, dir, "tr a-z A-Z; exit 5")
	fifoDir := t.TempDir()
	in := filepath.Join(fifoDir, "stdin")
	ctx := context.Background()
	w, err := fifo.OpenFifo(ctx, in, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	io, out := fileStdio(t)
	io.Stdin = in
	h.run(sb, "tr", dir, spec, io)
	if _, err := w.Write([]byte("hello wasm\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	time.Sleep(200 * time.Millisecond) // the observation: no end of file in this while
	if ps, _ := h.e.State(ctx, sb, "tr", ""); ps.State != engine.ProcessRunning {
		t.Errorf("module stopped before CloseStdin: %+v", ps)
	}
	if err := h.e.CloseStdin(ctx, sb, "tr", ""); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(sb, "tr", time.Minute); st.Code != 5 {
		t.Errorf("exit code = %d, want 5; output %q", st.Code, out())
	}
	if got := out(); !strings.Contains(got, "HELLO WASM") {
		t.Errorf("output = %q, want HELLO WASM", got)
	}
}

// TestFilesystem checks the module's view: the rootfs at "/" and nothing
// above it, bind mounts preopened at their destinations, PWD from cwd.
func TestFilesystem(t *testing.T) {
	h := newHarness(t, wasm.Config{})
	minish := wasmtest.Build(t, "minish")
	sb := h.sandbox("fs")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "in"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A symlink in the image pointing at the host's secret by absolute
	// path resolves inside the rootfs.
	spec := wasmtest.Shell{Module: minish}.Bundle(t, dir,
		"read /data/in; write /data/out written by wasm; ls /; pwd; read /../secret; read /tmp/link; echo done")
	if err := os.Symlink(filepath.Join(dir, "secret"), filepath.Join(dir, "rootfs", "tmp", "link")); err != nil {
		t.Fatal(err)
	}
	spec.Process.Cwd = "/tmp"
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}})
	wasmtest.WriteSpec(t, dir, spec)
	io, out := fileStdio(t)
	h.run(sb, "fs", dir, spec, io)
	h.wait(sb, "fs", time.Minute)
	got := out()
	for _, want := range []string{"from the host", "bin\n", "/tmp\n", "done"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "host secret") {
		t.Errorf("the module read a host file outside its rootfs:\n%s", got)
	}
	if b, err := os.ReadFile(filepath.Join(data, "out")); err != nil || !strings.Contains(string(b), "written by wasm") {
		t.Errorf("bind mount write: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rootfs", "data")); err != nil {
		t.Logf("mount point: %v", err)
	}
}

// TestCRISpec runs a module from a spec shaped like the ones containerd's
// CRI writes: containerd's default mounts, file bind mounts, a read-only
// rootfs, a cgroups path.
func TestCRISpec(t *testing.T) {
	h := newHarness(t, wasm.Config{})
	minish := wasmtest.Build(t, "minish")
	sb := h.sandbox("cri")
	dir := t.TempDir()
	wasmtest.Bundle(t, dir, minish, wasmtest.ShellModule)
	nsCtx := namespaces.WithNamespace(context.Background(), "k8s.io")
	spec, err := oci.GenerateSpec(nsCtx, nil, &containers.Container{ID: "cri-c"})
	if err != nil {
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: "rootfs", Readonly: true}
	spec.Process.Args = []string{wasmtest.ShellModule, "-c", "env; ls /; write /out x; exit 3"}
	spec.Process.Env = append(spec.Process.Env, "GREETING=hi from CRI")
	spec.Linux.CgroupsPath = "/magnetar-test/cri-c"
	t.Cleanup(func() { // the parent, as CRI's /k8s.io, is not the backend's
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/magnetar-test")
		dirs = append(dirs, "/sys/fs/cgroup/magnetar-test")
		for _, d := range dirs {
			_ = os.Remove(d)
		}
	})
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind", "rprivate", "rw"}},
		specs.Mount{Destination: "/dev/shm", Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "rprivate", "rw"}})
	wasmtest.WriteSpec(t, dir, spec)
	io, out := fileStdio(t)
	h.run(sb, "cri-c", dir, spec, io)
	if st := h.wait(sb, "cri-c", time.Minute); st.Code != 3 {
		t.Errorf("exit code = %d, want 3; output:\n%s", st.Code, out())
	}
	got := out()
	for _, want := range []string{"GREETING=hi from CRI", "PWD=/", "dev\n", "write:"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory/magnetar-test/cri-c"); err != nil && !os.IsNotExist(err) {
		t.Log(err)
	}
	if _, err := h.e.Delete(context.Background(), sb, "cri-c", ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/sys/fs/cgroup/memory/magnetar-test/cri-c", "/sys/fs/cgroup/magnetar-test/cri-c"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("cgroup %s remains after delete", p)
		}
	}
}

// TestBadModules checks that Create refuses modules it cannot run.
func TestBadModules(t *testing.T) {
	h := newHarness(t, wasm.Config{})
	minish := wasmtest.Build(t, "minish")
	sb := h.sandbox("bad")
	ctx := context.Background()
	for i, tc := range []struct {
		arg0  string
		check func(error) bool
	}{
		{"../../bin/minish.wasm", errdefs.IsInvalidArgument},
		{"/missing.wasm", errdefs.IsNotFound},
		{"/tmp", errdefs.IsInvalidArgument},
		{"/notwasm", errdefs.IsInvalidArgument},
		{"", errdefs.IsInvalidArgument},
	} {
		dir := t.TempDir()
		spec := wasmtest.Shell{Module: minish}.Bundle(t, dir, "exit 0")
		if err := os.WriteFile(filepath.Join(dir, "rootfs", "notwasm"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		spec.Process.Args[0] = tc.arg0
		id := "bad" + string(rune('a'+i))
		_, err := h.e.CreateContainer(ctx, sb, engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec})
		if !tc.check(err) {
			t.Errorf("module %q: err = %v", tc.arg0, err)
		}
	}
	dir := t.TempDir()
	spec := wasmtest.Shell{Module: minish}.Bundle(t, dir, "exit 0")
	spec.Process.Terminal = true
	if _, err := h.e.CreateContainer(ctx, sb, engine.ContainerSpec{ID: "tty", Bundle: dir, Spec: spec, Stdio: backend.Stdio{Terminal: true}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("terminal: err = %v, want not implemented", err)
	}
}

// TestCompilationCache checks that runners fill the shared on-disk cache.
// BenchmarkContainerStart shows what it saves.
func TestCompilationCache(t *testing.T) {
	root := t.TempDir()
	h := newHarness(t, wasm.Config{Root: root})
	minish := wasmtest.Build(t, "minish")
	sb := h.sandbox("cache")
	var codes []uint32
	var took []time.Duration
	for i, id := range []string{"first", "second"} {
		dir := t.TempDir()
		spec := wasmtest.Shell{Module: minish}.Bundle(t, dir, "exit 4")
		begin := time.Now()
		h.run(sb, id, dir, spec, backend.Stdio{})
		codes = append(codes, h.wait(sb, id, 2*time.Minute).Code)
		took = append(took, time.Since(begin))
		if i == 0 {
			n := 0
			_ = filepath.Walk(h.b.CacheDir(), func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode().IsRegular() {
					n++
				}
				return nil
			})
			if n == 0 {
				t.Fatalf("compilation cache %s is empty after a run", h.b.CacheDir())
			}
		}
	}
	if codes[0] != 4 || codes[1] != 4 {
		t.Errorf("exit codes = %v, want 4 and 4", codes)
	}
	t.Logf("cold start+run %s, warm %s", took[0], took[1])
}

// TestStatsAndPids reads a running container's cgroup.
func TestStatsAndPids(t *testing.T) {
	h := newHarness(t, wasm.Config{DefaultMemoryLimit: 512 << 20})
	minish := wasmtest.Build(t, "minish")
	sb := h.sandbox("stats")
	dir := t.TempDir()
	spec := wasmtest.Shell{Module: minish}.Bundle(t, dir, "sleep 600")
	h.run(sb, "s", dir, spec, backend.Stdio{})
	ctx := context.Background()
	st, err := h.e.Stats(ctx, sb, "s")
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if st.MemoryLimitBytes != 512<<20 || st.Pids == 0 {
		t.Errorf("stats = %+v; want memory limit 512 MiB and a pid", st)
	}
	pids, err := h.e.Pids(ctx, sb, "s")
	if err != nil || len(pids) != 1 {
		t.Errorf("pids = %v, %v", pids, err)
	}
	if err := h.e.Kill(ctx, sb, "s", "", syscall.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(sb, "s", 30*time.Second); st.Code != 128+uint32(syscall.SIGTERM) {
		t.Errorf("exit after SIGTERM = %d", st.Code)
	}
}

// TestRecoveredExitCode restarts the backend while a module runs and
// checks that the re-attached container reports the module's exit code.
func TestRecoveredExitCode(t *testing.T) {
	requireRoot(t)
	minish := wasmtest.Build(t, "minish")
	ctx := context.Background()
	stateDir := t.TempDir()
	b1 := newBackend(t, wasm.Config{})
	e1, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e1.CreateSandbox(ctx, engine.SandboxSpec{ID: "rec", Kind: wasm.Kind}); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.StartSandbox(ctx, "rec"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := wasmtest.Shell{Module: minish}.Bundle(t, dir, "sleep 1; exit 7")
	if _, err := e1.CreateContainer(ctx, "rec", engine.ContainerSpec{ID: "rec-c", Bundle: dir, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.Start(ctx, "rec", "rec-c", ""); err != nil {
		t.Fatal(err)
	}
	e1.Close()
	b1.Close()

	b2 := newBackend(t, wasm.Config{})
	e2, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b2}})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	defer e2.DeleteSandbox(ctx, "rec")
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := e2.Wait(wctx, "rec", "rec-c", "")
	if err != nil || st.Code != 7 {
		t.Errorf("recovered container exit = %+v, %v; want 7", st, err)
	}
}

// BenchmarkContainerStart measures create+start+wait+delete of a tiny
// module with a warm compilation cache.
func BenchmarkContainerStart(b *testing.B) {
	requireRoot(b)
	bk := newBackend(b, wasm.Config{})
	minish := wasmtest.Build(b, "minish")
	ctx := context.Background()
	e, err := engine.New(ctx, engine.Config{StateDir: b.TempDir(), Backends: []backend.Backend{bk}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "bench", Kind: wasm.Kind}); err != nil {
		b.Fatal(err)
	}
	if _, err := e.StartSandbox(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	defer e.DeleteSandbox(ctx, "bench")
	i := 0
	runOne := func() {
		dir := b.TempDir()
		spec := wasmtest.Bundle(b, dir, minish, wasmtest.ShellModule, "-c", "exit 0")
		id := "c" + string(rune('a'+i%26)) + time.Now().Format("150405.000000000")
		i++
		if _, err := e.CreateContainer(ctx, "bench", engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.Start(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
		if st, err := e.Wait(ctx, "bench", id, ""); err != nil || st.Code != 0 {
			b.Fatalf("wait: %+v, %v", st, err)
		}
		if _, err := e.Delete(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
	}
	runOne() // warm the cache
	for b.Loop() {
		runOne()
	}
}

// TestSharedRunner runs containers of two sandboxes in one runner: they
// share its process, a signal ends one of them only, and once every
// sandbox is deleted the runner exits after its idle time, leaving no
// socket behind.
func TestSharedRunner(t *testing.T) {
	root := t.TempDir()
	h := newHarness(t, wasm.Config{Root: root, RunnerIdleExit: 300 * time.Millisecond})
	hello := wasmtest.HelloWAT(t)
	ctx := context.Background()
	type ctr struct{ sb, id string }
	var ctrs []ctr
	outs := map[string]func() string{}
	for _, sb := range []string{"shared-a", "shared-b"} {
		h.sandbox(sb)
		for _, n := range []string{"1", "2"} {
			id := sb + "-" + n
			dir := t.TempDir()
			spec := wasmtest.Bundle(t, dir, hello, "/hello.wasm", "sleep")
			io, out := fileStdio(t)
			h.run(sb, id, dir, spec, io)
			ctrs = append(ctrs, ctr{sb, id})
			outs[id] = out
		}
	}
	pid := 0
	for _, c := range ctrs {
		ps, err := h.e.State(ctx, c.sb, c.id, "")
		if err != nil || ps.State != engine.ProcessRunning || ps.Pid == 0 {
			t.Fatalf("%s: state %+v, %v; want running", c.id, ps, err)
		}
		if pid == 0 {
			pid = int(ps.Pid)
		} else if int(ps.Pid) != pid {
			t.Errorf("%s runs in process %d, the others in %d: want one runner", c.id, ps.Pid, pid)
		}
		testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(outs[c.id](), "Hello from WebAssembly (WAT)!") }, "output of %s", c.id)
	}
	if err := h.e.Kill(ctx, "shared-a", "shared-a-1", "", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if st := h.wait("shared-a", "shared-a-1", 10*time.Second); st.Code != 137 {
		t.Errorf("killed instance exited %d, want 137", st.Code)
	}
	for _, c := range ctrs[1:] {
		if ps, err := h.e.State(ctx, c.sb, c.id, ""); err != nil || ps.State != engine.ProcessRunning {
			t.Errorf("%s after its neighbour was killed: %+v, %v; want running", c.id, ps, err)
		}
	}
	for _, sb := range []string{"shared-a", "shared-b"} {
		if err := h.e.DeleteSandbox(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	}, "runner %d to exit once idle", pid)
	if socks, _ := filepath.Glob(filepath.Join(root, "*.sock")); len(socks) > 0 {
		t.Errorf("runner sockets remain: %v", socks)
	}
	// The next container starts a new runner.
	h.sandbox("shared-c")
	dir := t.TempDir()
	io, out := fileStdio(t)
	h.run("shared-c", "again", dir, wasmtest.Bundle(t, dir, hello, "/hello.wasm"), io)
	if st := h.wait("shared-c", "again", 10*time.Second); st.Code != 0 || !strings.Contains(out(), "Hello from WebAssembly (WAT)!") {
		t.Errorf("container in a new runner: exit %d, output %q", st.Code, out())
	}
}

// BenchmarkFirstOutput measures create+start of examples/hello-wat in a
// running runner until its output is in its stdout file (direct mode, no
// containerd), and reports the runner's PSS per extra running instance.
func BenchmarkFirstOutput(b *testing.B) {
	requireRoot(b)
	bk := newBackend(b, wasm.Config{Root: b.TempDir()})
	hello := wasmtest.HelloWAT(b)
	ctx := context.Background()
	e, err := engine.New(ctx, engine.Config{StateDir: b.TempDir(), Backends: []backend.Backend{bk}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "bench", Kind: wasm.Kind}); err != nil {
		b.Fatal(err)
	}
	if _, err := e.StartSandbox(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	defer e.DeleteSandbox(ctx, "bench")
	n := 0
	var createT, startT time.Duration
	start := func(args ...string) (string, string) {
		n++
		id := fmt.Sprintf("c%d", n)
		dir := b.TempDir()
		spec := wasmtest.Bundle(b, dir, hello, "/hello.wasm", args...)
		out := filepath.Join(dir, "stdout")
		t0 := time.Now()
		if _, err := e.CreateContainer(ctx, "bench", engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec, Stdio: backend.Stdio{Stdout: out}}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := e.Start(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
		createT += t1.Sub(t0)
		startT += time.Since(t1)
		return id, out
	}
	// A sleeping instance keeps the runner up; its PSS is the baseline.
	first, _ := start("sleep")
	ps, err := e.State(ctx, "bench", first, "")
	if err != nil {
		b.Fatal(err)
	}
	runner := int(ps.Pid)
	for b.Loop() {
		id, out := start()
		for {
			if st, err := os.Stat(out); err == nil && st.Size() > 0 {
				break
			}
		}
		b.StopTimer()
		if _, err := e.Wait(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
		if _, err := e.Delete(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(createT.Microseconds())/float64(n)/1000, "create-ms")
	b.ReportMetric(float64(startT.Microseconds())/float64(n)/1000, "start-ms")
	const extra = 20
	before := pssKiB(runner)
	for range extra {
		start("sleep")
	}
	after := pssKiB(runner)
	b.ReportMetric(float64(after-before)/extra, "runner-pss-KiB/instance")
	b.ReportMetric(float64(after), "runner-pss-KiB")
}

// pssKiB is a process's proportional set size in KiB.
func pssKiB(pid int) uint64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "Pss:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// TestGoModuleMemory checks the stats of a Go-built module (minish,
// sleeping): its linear memory's size as the usage and the part of it in
// RAM as the working set.
func TestGoModuleMemory(t *testing.T) {
	h := newHarness(t, wasm.Config{})
	mod := wasmtest.Build(t, "minish")
	sb := h.sandbox("gomem")
	dir := t.TempDir()
	spec := wasmtest.Shell{Module: mod}.Bundle(t, dir, "echo up; sleep 600")
	io, out := fileStdio(t)
	h.run(sb, "m", dir, spec, io)
	testutil.Eventually(t, 30*time.Second, func() bool { return strings.Contains(out(), "up") }, "output")
	st, err := h.e.Stats(context.Background(), sb, "m")
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryUsageBytes == 0 || st.MemoryWorkingBytes == 0 || st.MemoryWorkingBytes > st.MemoryUsageBytes {
		t.Errorf("stats = %+v; want a linear memory size and a working set within it", st)
	}
	t.Logf("Go module (minish): linear memory %d KiB, in RAM %d KiB", st.MemoryUsageBytes>>10, st.MemoryWorkingBytes>>10)
}
