package gvisor_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/gvisor"
)

func TestUnknownPlatform(t *testing.T) {
	_, err := gvisor.New(gvisor.Config{Root: t.TempDir(), Platform: "warp"})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), `"warp"`) {
		t.Fatalf("New with an unknown platform: %v, want InvalidArgument naming it", err)
	}
}

// run starts a sandbox of b with cfg, runs script in one container and
// returns its output, the container and the sandbox (deleted at cleanup).
func run(t *testing.T, b *gvisor.Backend, cfg backend.SandboxConfig, script string) (string, backend.Container, backend.Sandbox) {
	t.Helper()
	return runWith(t, b, cfg, script, nil)
}

// runWith is run with the container's spec (and bundle) changed by edit
// first.
func runWith(t *testing.T, b *gvisor.Backend, cfg backend.SandboxConfig, script string, edit func(spec *specs.Spec, bundle string)) (string, backend.Container, backend.Sandbox) {
	t.Helper()
	ctx := context.Background()
	cfg.ID = filepath.Base(t.TempDir())
	cfg.Namespace = "test"
	cfg.Dir = t.TempDir()
	sb, err := b.Create(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	info, err := sb.Start(ctx)
	if err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	t.Cleanup(func() {
		_ = sb.Stop(context.Background(), time.Second)
		if err := sb.Delete(context.Background()); err != nil {
			t.Errorf("delete sandbox: %v", err)
		}
	})
	if p, _ := b.Platform(); info.Info["platform"] != p || info.Pid == 0 {
		t.Errorf("start info = %+v, want the platform %s and the sandbox pid", info, p)
	}
	dir := t.TempDir()
	spec := testutil.BusyboxBundle(t, dir, script)
	if edit != nil {
		edit(spec, dir)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := sb.CreateContainer(ctx, backend.ContainerConfig{ID: "c-" + cfg.ID, Bundle: dir, Spec: spec, Stdio: backend.Stdio{Stdout: out, Stderr: out}})
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	if _, err := c.Init().Start(ctx); err != nil {
		t.Fatalf("start container: %v", err)
	}
	return out, c, sb
}

// TestPrivateNetworkIsLoopbackOnly: a direct-mode sandbox without a
// network (runsc --network=none) has loopback only.
func TestPrivateNetworkIsLoopbackOnly(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	out, c, _ := run(t, b, backend.SandboxConfig{PrivateNetwork: true, Hostname: "private"}, "cat /proc/net/dev; hostname")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if st, err := c.Init().Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("wait: %+v, %v", st, err)
	}
	data, _ := os.ReadFile(out)
	var ifaces []string
	for _, l := range strings.Split(string(data), "\n") {
		if i := strings.Index(l, ":"); i > 0 && !strings.Contains(l, "|") {
			ifaces = append(ifaces, strings.TrimSpace(l[:i]))
		}
	}
	if len(ifaces) != 1 || ifaces[0] != "lo" || !strings.Contains(string(data), "private") {
		t.Errorf("interfaces %q in %q; want lo only and the hostname", ifaces, data)
	}
}

// TestPauseAndStats: pause and resume (runsc pause/resume) and stats
// (runsc events --stats) of a running container, on a configured platform.
func TestPauseAndStats(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir(), Platform: gvisor.PlatformPtrace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if p, reason := b.Platform(); p != gvisor.PlatformPtrace || reason != "configured" {
		t.Fatalf("platform %q (%s), want ptrace, configured", p, reason)
	}
	_, c, _ := run(t, b, backend.SandboxConfig{}, "while true; do x=$((x+1)); done")
	ctx := context.Background()
	st, err := c.(backend.Stater).Stats(ctx)
	if err != nil || st.CPUUsageNanos == 0 || st.MemoryUsageBytes == 0 {
		t.Fatalf("stats = %+v, %v; want CPU and memory usage", st, err)
	}
	pauser := c.(backend.Pauser)
	if err := pauser.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if err := pauser.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if err := c.Init().Kill(ctx, 9, true); err != nil {
		t.Fatalf("kill: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if st, err := c.Init().Wait(wctx); err != nil || st.Code != 137 {
		t.Errorf("wait after kill: %+v, %v; want 137", st, err)
	}
	if err := c.Init().Delete(ctx); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("delete: %v", err)
	}
}

// TestHungRunscIsBounded: a runsc that hangs (here: a wrapper whose
// "start" never returns) fails the sandbox's start after CommandTimeout
// instead of hanging, and leaves no runsc process or state behind.
func TestHungRunscIsBounded(t *testing.T) {
	testutil.RequireRunsc(t)
	real, err := exec.LookPath("runsc")
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(t.TempDir(), "runsc")
	script := "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = start ] && exec sleep 3600; done\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	b, err := gvisor.New(gvisor.Config{Binary: wrapper, Root: root, Platform: gvisor.PlatformPtrace, CommandTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	id := "hung-" + filepath.Base(t.TempDir())
	sb, err := b.Create(ctx, backend.SandboxConfig{ID: id, Namespace: "test", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = sb.Start(ctx)
	if err == nil || !errdefs.IsUnavailable(err) || time.Since(start) > 30*time.Second {
		t.Fatalf("start with a hung runsc: %v after %v; want Unavailable after about 2s", err, time.Since(start))
	}
	if err := sb.Delete(ctx); err != nil {
		t.Errorf("delete: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(root, "test", "*"+id+"*"))
	if len(left) > 0 {
		t.Errorf("runsc state left: %q", left)
	}
	if out, _ := exec.Command("pgrep", "-f", id).Output(); len(out) > 0 {
		t.Errorf("processes of the sandbox left: %s", out)
	}
}

// TestExecKillEndsProcessInSandbox: a SIGKILL of an exec'd process (what
// an ExecSync's timeout sends) ends the process in the sandbox, not only
// its `runsc exec` process: no such process is left, and its exit is 137.
func TestExecKillEndsProcessInSandbox(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_, c, _ := run(t, b, backend.SandboxConfig{PrivateNetwork: true}, "exec tail -f /dev/null")
	ctx := context.Background()
	exec := func(id, script string) (backend.Process, string) {
		t.Helper()
		return startExec(t, c, id, script)
	}
	wait := func(p backend.Process) uint32 {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		st, err := p.Wait(wctx)
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
		return st.Code
	}
	sleeper, _ := exec("sleeper", "exec sleep 4321")
	if err := sleeper.Kill(ctx, syscall.SIGKILL, false); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if code := wait(sleeper); code != 137 {
		t.Errorf("exit of the killed exec: %d, want 137", code)
	}
	if err := sleeper.Delete(ctx); err != nil {
		t.Errorf("delete exec: %v", err)
	}
	check, out := exec("check", "cat /proc/[0-9]*/comm | grep -c '^sleep$'; echo done")
	if code := wait(check); code != 0 {
		t.Fatalf("check exec: exit %d", code)
	}
	if data, _ := os.ReadFile(out); strings.TrimSpace(string(data)) != "0\ndone" {
		t.Errorf("processes named sleep in the container after the kill: %q, want none (0)", data)
	}
}

// startExec starts script in c as exec id and returns it and the file it
// writes its output to.
func startExec(t *testing.T, c backend.Container, id, script string) (backend.Process, string) {
	t.Helper()
	ctx := context.Background()
	out := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(out, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := c.Exec(ctx, backend.ExecConfig{ID: id, Process: &specs.Process{Args: []string{"/bin/sh", "-c", script}, Cwd: "/", Env: []string{"PATH=/bin"}}, Stdio: backend.Stdio{Stdout: out, Stderr: out}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Start(ctx); err != nil {
		t.Fatalf("start exec %s: %v", id, err)
	}
	return p, out
}

// TestReadOnlyBindMounts: a read-only bind mount of a host directory with
// a tmpfs mounted below it keeps the tmpfs writable, as with runc; a
// recursive read-only one ("rro", which runsc alone ignores) makes both
// read-only.
func TestReadOnlyBindMounts(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	host := t.TempDir()
	sub := filepath.Join(host, "tmpfs")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(sub, unix.MNT_DETACH) })
	script := "touch /ro/top 2>&1; touch /ro/tmpfs/sub && echo sub-ok; touch /rro/top 2>&1; touch /rro/tmpfs/sub 2>&1; echo end"
	out, c, _ := runWith(t, b, backend.SandboxConfig{PrivateNetwork: true}, script, func(s *specs.Spec, _ string) {
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/ro", Type: "bind", Source: host, Options: []string{"rbind", "rprivate", "ro"}},
			specs.Mount{Destination: "/rro", Type: "bind", Source: host, Options: []string{"rbind", "rprivate", "rro"}})
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if st, err := c.Init().Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("wait: %+v, %v", st, err)
	}
	data, _ := os.ReadFile(out)
	want := "touch: /ro/top: Read-only file system\nsub-ok\ntouch: /rro/top: Read-only file system\ntouch: /rro/tmpfs/sub: Read-only file system\nend\n"
	if string(data) != want {
		t.Errorf("container output:\n%s\nwant:\n%s", data, want)
	}
	if _, err := os.Stat(filepath.Join(sub, "sub")); err != nil {
		t.Errorf("the file written in the tmpfs below the read-only mount is not on the host: %v", err)
	}
}

// TestReadonlyPaths: the spec's readonlyPaths (which runsc alone ignores)
// are read-only in the container: a directory of the root file system, a
// mount's destination, a directory in a bind mount; a mount below one
// stays writable, and the defaults in /proc and a missing path are fine.
func TestReadonlyPaths(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	vol := t.TempDir()
	if err := os.MkdirAll(filepath.Join(vol, "sub", "w"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "touch /bin/x 2>&1; touch /data/x 2>&1; touch /vol/sub/x 2>&1; touch /vol/y && echo vol-ok; touch /vol/sub/w/x && echo w-ok; echo end"
	out, c, _ := runWith(t, b, backend.SandboxConfig{PrivateNetwork: true}, script, func(s *specs.Spec, _ string) {
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/data", Type: "tmpfs", Source: "tmpfs"},
			specs.Mount{Destination: "/vol", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}},
			specs.Mount{Destination: "/vol/sub/w", Type: "tmpfs", Source: "tmpfs"})
		s.Linux.ReadonlyPaths = append(s.Linux.ReadonlyPaths, "/bin", "/data", "/vol/sub", "/nope")
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if st, err := c.Init().Wait(ctx); err != nil || st.Code != 0 {
		data, _ := os.ReadFile(out)
		t.Fatalf("wait: %+v, %v: %s", st, err, data)
	}
	data, _ := os.ReadFile(out)
	want := "touch: /bin/x: Read-only file system\ntouch: /data/x: Read-only file system\ntouch: /vol/sub/x: Read-only file system\nvol-ok\nw-ok\nend\n"
	if string(data) != want {
		t.Errorf("container output:\n%s\nwant:\n%s", data, want)
	}
}

// TestCutShortCreateLeavesNothing (issue #11): a `runsc create` cut short
// after it started the sandbox and gofer processes but before runsc saved
// its state (here: a wrapper that runs the real create, removes runsc's
// state files, then hangs until CommandTimeout kills it) fails the start,
// and leaves no runsc process, cgroup or state of the sandbox: `runsc
// delete --force` cannot find them, the kind kills them by their command
// line and cgroup.
func TestCutShortCreateLeavesNothing(t *testing.T) {
	testutil.RequireRunsc(t)
	real, err := exec.LookPath("runsc")
	if err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(t.TempDir(), "runsc")
	script := `#!/bin/sh
root= create= prev=
for a in "$@"; do
	[ "$prev" = --root ] && root=$a
	[ "$a" = create ] && create=1
	prev=$a
done
[ -z "$create" ] && exec ` + real + ` "$@"
` + real + ` "$@" || exit $?
rm -f "$root"/*.state
exec sleep 3600
`
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	b, err := gvisor.New(gvisor.Config{Binary: wrapper, Root: root, Platform: gvisor.PlatformSystrap, CommandTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx := context.Background()
	id := "cut-" + filepath.Base(t.TempDir())
	dir := t.TempDir()
	sb, err := b.Create(ctx, backend.SandboxConfig{ID: id, Namespace: "test", Dir: dir, PrivateNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Start(ctx); err == nil || !errdefs.IsUnavailable(err) {
		t.Fatalf("start with a create cut short: %v; want Unavailable", err)
	}
	if out, _ := exec.Command("pgrep", "-a", "-f", dir).Output(); len(out) > 0 {
		t.Errorf("processes of the sandbox left after the failed start: %s", out)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/magnetar-gvisor/gvisor-" + id); len(left) > 0 {
		t.Errorf("cgroups of the sandbox left: %q", left)
	}
	if left, _ := filepath.Glob("/sys/fs/cgroup/magnetar-gvisor/gvisor-" + id); len(left) > 0 {
		t.Errorf("cgroup of the sandbox left: %q", left)
	}
	if err := sb.Delete(ctx); err != nil {
		t.Errorf("delete: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "test", "*"+id+"*")); len(left) > 0 {
		t.Errorf("runsc state left: %q", left)
	}
}

// TestSeccompProfile: a container's seccomp profile applies in the
// sandbox (runsc --oci-seccomp; runsc alone ignores it) to its init and to
// processes exec'd in it (which runsc exec leaves unfiltered: the
// seccompexec helper installs the profile): the system calls it refuses
// fail, the others work.
func TestSeccompProfile(t *testing.T) {
	testutil.RequireRunsc(t)
	b, err := gvisor.New(gvisor.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	script := "mkdir /tmp/made 2>&1; echo mkdir=$?; touch /tmp/file && echo touch=ok; touch /tmp/done; exec tail -f /dev/null"
	out, c, sb := runWith(t, b, backend.SandboxConfig{PrivateNetwork: true}, script, func(s *specs.Spec, _ string) {
		s.Linux.Seccomp = &specs.LinuxSeccomp{
			DefaultAction: specs.ActAllow,
			Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchAARCH64},
			Syscalls:      []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno}},
		}
		// The helper's mount points are made under a read-only root too.
		s.Root.Readonly = true
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs"})
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The exec waits for the init's /tmp/done, written after its output.
	p, execOut := startExec(t, c, "check", "until [ -e /tmp/done ]; do :; done; mkdir /tmp/made2 2>&1; echo mkdir=$?; grep Seccomp: /proc/self/status; touch /tmp/file2 && echo touch=ok")
	if st, err := p.Wait(ctx); err != nil || st.Code != 0 {
		t.Fatalf("wait exec: %+v, %v", st, err)
	}
	data, _ := os.ReadFile(execOut)
	if want := "mkdir: can't create directory '/tmp/made2': Operation not permitted\nmkdir=1\nSeccomp:\t2\ntouch=ok\n"; string(data) != want {
		t.Errorf("exec output:\n%s\nwant:\n%s", data, want)
	}
	data, _ = os.ReadFile(out)
	if want := "mkdir: can't create directory '/tmp/made': Operation not permitted\nmkdir=1\ntouch=ok\n"; string(data) != want {
		t.Errorf("container output:\n%s\nwant:\n%s", data, want)
	}
	if err := c.Init().Kill(ctx, syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Init().Wait(ctx); err != nil {
		t.Fatal(err)
	}

	// A shared (bidirectional) mount is refused with a clear error: the
	// sentry's mounts never reach the host.
	dir := t.TempDir()
	spec := testutil.BusyboxBundle(t, dir, "true")
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/mnt", Type: "bind", Source: t.TempDir(), Options: []string{"rbind", "rshared"}})
	_, err = sb.CreateContainer(ctx, backend.ContainerConfig{ID: "shared", Bundle: dir, Spec: spec})
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "/mnt is shared") {
		t.Errorf("container with an rshared mount: %v; want NotImplemented naming the mount", err)
	}
}

// TestKillJustAfterExit: a signal sent after the container's init exited
// but before its exit was reported (here runsc wait is held back) is "not
// found", which containerd's stop takes as already gone; it is not a
// failure (critest saw RemoveContainer fail with runsc's "no such
// process"). The exit is then reported with its real code.
func TestKillJustAfterExit(t *testing.T) {
	testutil.RequireRunsc(t)
	real, err := exec.LookPath("runsc")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	exited, gate := filepath.Join(dir, "exited"), filepath.Join(dir, "gate")
	for _, f := range []string{exited, gate} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The wrapper's wait of the test container returns only once the
	// test has seen the exit and opened the gate.
	wrapper := filepath.Join(dir, "runsc")
	script := "#!/bin/sh\nlast=; for a in \"$@\"; do last=$a; done\n" +
		"case \" $* \" in *\" wait \"*) case $last in c-*)\n" +
		"  out=$(" + real + " \"$@\"); rc=$?\n" +
		"  echo exited > " + exited + "\n" +
		"  cat " + gate + " >/dev/null\n" +
		"  printf '%s' \"$out\"; exit $rc;;\n" +
		"esac;; esac\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := gvisor.New(gvisor.Config{Binary: wrapper, Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_, c, _ := run(t, b, backend.SandboxConfig{}, "exit 3")

	seen := make(chan error, 1)
	go func() {
		_, err := os.ReadFile(exited) // until the wrapper's write
		seen <- err
	}()
	select {
	case err := <-seen:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the container's exit was not seen by runsc wait")
	}
	ctx := context.Background()
	if err := c.Init().Kill(ctx, syscall.SIGKILL, false); err != nil && !errdefs.IsNotFound(err) {
		t.Errorf("kill after the exit: %v; want nil or not found", err)
	}
	g, err := os.OpenFile(gate, os.O_WRONLY, 0) // the wrapper reads it
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if st, err := c.Init().Wait(wctx); err != nil || st.Code != 3 {
		t.Errorf("wait: %+v, %v; want exit 3", st, err)
	}
}

// TestSeccompExecAfterRestart: a restarted backend that re-attaches to a
// sandbox still starts a container's exec'd processes under its seccomp
// profile (what they need is kept in the container's bundle).
func TestSeccompExecAfterRestart(t *testing.T) {
	testutil.RequireRunsc(t)
	ctx := context.Background()
	cfg := backend.SandboxConfig{ID: "sc-" + filepath.Base(t.TempDir()), Namespace: "test", Dir: t.TempDir(), PrivateNetwork: true}
	r := startRestartable(t, gvisor.Config{Root: t.TempDir()}, cfg)
	sb := r.sb
	bundle := t.TempDir()
	spec := testutil.BusyboxBundle(t, bundle, "exec tail -f /dev/null")
	spec.Linux.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Syscalls:      []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno}},
	}
	c, err := sb.CreateContainer(ctx, backend.ContainerConfig{ID: "c", Bundle: bundle, Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Init().Start(ctx); err != nil {
		t.Fatal(err)
	}
	const check = "grep Seccomp: /proc/self/status; mkdir /made 2>/dev/null && echo made || echo refused"
	const want = "Seccomp:\t2\nrefused"
	if got := execOutput(t, c, "before", check); got != want {
		t.Errorf("exec before the restart printed %q, want %q", got, want)
	}
	sb2 := r.restart(cfg)
	c2, err := sb2.(backend.ContainerRecoverer).RecoverContainer(ctx, backend.ContainerConfig{ID: "c", Bundle: bundle, Spec: spec}, 0)
	if err != nil {
		t.Fatalf("recover container: %v", err)
	}
	if got := execOutput(t, c2, "after", check); got != want {
		t.Errorf("exec after the restart printed %q, want %q", got, want)
	}
}
