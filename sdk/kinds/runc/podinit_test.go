package runc_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

// TestMain lets the test binary serve as a pod's PID namespace init.
func TestMain(m *testing.M) {
	if runc.PodInitMain() {
		return
	}
	os.Exit(m.Run())
}

// sharePodPID makes a spec join the pod's PID namespace, as CRI writes it
// for shareProcessNamespace pods (the sandbox pid is 0 for the runc kind).
func sharePodPID(spec *specs.Spec) {
	for i, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			spec.Linux.Namespaces[i].Path = "/proc/0/ns/pid"
			return
		}
	}
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace, Path: "/proc/0/ns/pid"})
}

// TestSharedPIDNamespace: containers of a pod that shares its PID
// namespace run in one namespace held by Magnetar's init (PID 1 there),
// so the exit of the first container does not end the others; removing the
// pod ends the init. The same holds after the engine restarts.
func TestSharedPIDNamespace(t *testing.T) {
	testutil.RequireRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root, stateDir := t.TempDir(), t.TempDir()
	open := func() (*runc.Backend, *engine.Engine) {
		b, err := runc.New(runc.Config{Root: root})
		if err != nil {
			t.Fatal(err)
		}
		e, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: 2 * time.Second})
		if err != nil {
			b.Close()
			t.Fatal(err)
		}
		return b, e
	}
	b, e := open()
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "pidpod", Kind: runc.Kind, Hostname: "pidpod"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.StartSandbox(ctx, "pidpod"); err != nil {
		t.Fatal(err)
	}
	create := func(e *engine.Engine, id, script string) uint32 {
		t.Helper()
		dir := filepath.Join(t.TempDir(), id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		spec := testutil.BusyboxBundle(t, dir, script)
		sharePodPID(spec)
		if _, err := e.CreateContainer(ctx, "pidpod", engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec}); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		st, err := e.Start(ctx, "pidpod", id, "")
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		return st.Pid
	}
	// The first container exits at once; the second runs on.
	shortPid := create(e, "short", "read x </proc/self/stat; exit 7")
	longPid := create(e, "long", "exec sleep 300")
	if st, err := e.Wait(ctx, "pidpod", "short", ""); err != nil || st.Code != 7 {
		t.Fatalf("short container: %+v, %v", st, err)
	}
	_ = shortPid
	initPid := nsInit(t, longPid)
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", initPid)); len(cmd) == 0 {
		t.Fatalf("PID 1 of the pod's namespace (host pid %d) has no command line", initPid)
	}
	if st, err := e.State(ctx, "pidpod", "long", ""); err != nil || st.State != engine.ProcessRunning {
		t.Fatalf("long container after the short one exited: %+v, %v", st, err)
	}
	if initPid == int(longPid) {
		t.Fatalf("the long container is PID 1 of the pod's namespace")
	}

	// A restart of the engine keeps the pod's init and lets a new
	// container join the same namespace.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	b, e = open()
	defer b.Close()
	defer e.Close()
	third := create(e, "third", "exec sleep 300")
	if got := nsInit(t, third); got != initPid {
		t.Fatalf("after a restart a new container's namespace init is %d, want %d", got, initPid)
	}

	if err := e.DeleteSandbox(ctx, "pidpod"); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{initPid, int(longPid), int(third)} {
		if alive(pid) {
			t.Errorf("process %d still runs after the pod was removed", pid)
		}
	}
}

// nsInit returns the host pid of PID 1 of pid's PID namespace: the process
// whose NSpid line ends in 1 and whose namespace is pid's.
func nsInit(t *testing.T, pid uint32) int {
	t.Helper()
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		var p int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &p); err != nil {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p)); err != nil || ns != want {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "NSpid:" && f[len(f)-1] == "1" {
				return p
			}
		}
	}
	t.Fatalf("no PID 1 in the PID namespace of %d", pid)
	return 0
}

// alive reports whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(string(data[i+1:])), "Z")
}
