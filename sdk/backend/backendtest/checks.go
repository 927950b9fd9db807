package backendtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// outputTimeout bounds how long output may trail what caused it.
const outputTimeout = 10 * time.Second

func checkInfo(t *testing.T, s *suite) {
	info := s.newBackend(t).Info()
	if info.Kind == "" || info.Description == "" || info.Isolation == backend.IsolationUnspecified {
		t.Fatalf("incomplete info: %+v", info)
	}
}

// checkCapabilities: every flag of Info.Capabilities that stands for an
// optional interface or for exec agrees with what the kind's containers
// do: the call works where the flag is set and fails with
// errdefs.ErrNotImplemented where it is not.
func checkCapabilities(t *testing.T, s *suite) {
	x := s.setup(t)
	ctx := context.Background()
	caps := x.info.Capabilities
	id, _ := x.run(t, "sleep 600")
	agree := func(name string, flag bool, err error) {
		t.Helper()
		switch {
		case flag && errdefs.IsNotImplemented(err):
			t.Errorf("%s is advertised, but the call is not implemented: %v", name, err)
		case !flag && !errdefs.IsNotImplemented(err):
			t.Errorf("%s is not advertised, but the call returned %v, want ErrNotImplemented", name, err)
		}
	}
	_, err := x.e.Stats(ctx, x.sb, id)
	agree("Stats", caps.Stats, err)
	agree("UpdateResources", caps.UpdateResources, x.e.Update(ctx, x.sb, id, &specs.LinuxResources{}))
	err = x.e.Pause(ctx, x.sb, id)
	agree("Pause", caps.Pause, err)
	if err == nil {
		if err := x.e.Resume(ctx, x.sb, id); err != nil {
			t.Errorf("resume: %v", err)
		}
	}
	_, err = x.e.Exec(ctx, x.sb, engine.ExecSpec{ContainerID: id, ExecID: "probe", Process: x.w.Process("exit 0")})
	agree("Exec", caps.Exec, err)
	if err == nil {
		if _, err := x.e.Delete(ctx, x.sb, id, "probe"); err != nil {
			t.Errorf("delete the exec never started: %v", err)
		}
	}
}

func checkOutputAndExitCode(t *testing.T, s *suite) {
	x := s.setup(t)
	ctx := context.Background()
	id, out := x.run(t, "echo hello from conformance; exit 3")
	st := x.wait(t, id, "")
	if st.Code != 3 {
		t.Errorf("exit code = %d, want 3", st.Code)
	}
	if st.ExitedAt.IsZero() {
		t.Error("exited_at not set")
	}
	if got := out.Until("hello from conformance", outputTimeout); !strings.Contains(got, "hello from conformance") {
		t.Errorf("stdout = %q", got)
	}
	ps, err := x.e.State(ctx, x.sb, id, "")
	if err != nil || ps.State != engine.ProcessStopped || ps.ExitCode != 3 {
		t.Errorf("state = %+v, %v; want stopped with 3", ps, err)
	}
	if _, err := x.e.Delete(ctx, x.sb, id, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := x.e.State(ctx, x.sb, id, ""); !errdefs.IsNotFound(err) {
		t.Errorf("state after delete: %v, want not found", err)
	}
}

func checkKillRunning(t *testing.T, s *suite) {
	x := s.setup(t)
	id, _ := x.run(t, "sleep 600")
	if err := x.e.Kill(context.Background(), x.sb, id, "", syscall.SIGKILL, false); err != nil {
		t.Fatalf("kill: %v", err)
	}
	st := x.wait(t, id, "")
	if st.Code != 128+uint32(syscall.SIGKILL) {
		t.Errorf("exit code = %d, want %d", st.Code, 128+syscall.SIGKILL)
	}
	if _, err := x.e.Delete(context.Background(), x.sb, id, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

func checkExec(t *testing.T, s *suite) {
	x := s.setup(t)
	if !x.info.Capabilities.Exec {
		t.Skip("kind has no exec")
	}
	ctx := context.Background()
	id, _ := x.run(t, "sleep 600")
	out := x.exec(t, id, "probe", "echo from exec; exit 7")
	st := x.wait(t, id, "probe")
	if st.Code != 7 {
		t.Errorf("exec exit code = %d, want 7", st.Code)
	}
	if got := out.Until("from exec", outputTimeout); !strings.Contains(got, "from exec") {
		t.Errorf("exec stdout = %q", got)
	}
	if _, err := x.e.Delete(ctx, x.sb, id, "probe"); err != nil {
		t.Fatalf("delete exec: %v", err)
	}
	if err := x.e.StopSandbox(ctx, x.sb, time.Second); err != nil {
		t.Fatalf("stop sandbox: %v", err)
	}
	if ps, _ := x.e.State(ctx, x.sb, id, ""); ps.State != engine.ProcessStopped {
		t.Errorf("container after sandbox stop: %s, want stopped", ps.State)
	}
}

// startWithStdin creates and starts a container whose stdin is a FIFO the
// test writes to.
func (x *env) startWithStdin(t *testing.T, script string, stdio backend.Stdio) (string, io.WriteCloser) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	id := uniqueID("c")
	if err := syscall.Mkfifo(stdio.Stdin, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := x.w.Bundle(t, dir, script)
	if stdio.Terminal {
		spec.Process.Terminal = true
		data, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := x.e.CreateContainer(ctx, x.sb, engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec, Stdio: stdio}); err != nil {
		t.Fatalf("create container: %v", err)
	}
	// Some backends open the FIFO at create, others at start: this open
	// does not wait for them, the first write does.
	in, err := fifo.OpenFifo(ctx, stdio.Stdin, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	if _, err := x.e.Start(ctx, x.sb, id, ""); err != nil {
		t.Fatalf("start container: %v", err)
	}
	return id, in
}

// checkStdin: everything written arrives, then end of file after
// CloseStdin.
func checkStdin(t *testing.T, s *suite) {
	x := s.setup(t)
	if !x.info.Capabilities.Stdin {
		t.Skip("kind has no stdin")
	}
	ctx := context.Background()
	out := testutil.NewCapture(t, t.TempDir(), "stdout")
	id, in := x.startWithStdin(t, "cat; echo EOF-MARK; exit 4", backend.Stdio{Stdin: filepath.Join(t.TempDir(), "stdin"), Stdout: out.Path()})
	data := strings.Repeat("0123456789abcdef", 8192) // 128 KiB: more than a pipe holds
	if _, err := io.WriteString(in, data+"\n"); err != nil {
		t.Fatal(err)
	}
	in.Close()
	if err := x.e.CloseStdin(ctx, x.sb, id, ""); err != nil {
		t.Fatalf("close stdin: %v", err)
	}
	if st := x.wait(t, id, ""); st.Code != 4 {
		t.Errorf("exit code = %d, want 4", st.Code)
	}
	if got := out.Until("EOF-MARK\n", outputTimeout); got != data+"\nEOF-MARK\n" {
		t.Errorf("stdout has %d bytes ending %q, want %d bytes and EOF-MARK", len(got), got[max(0, len(got)-20):], len(data)+10)
	}
	if _, err := x.e.Delete(ctx, x.sb, id, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

// checkTerminal: stdin and stdout are the pty, which takes its size from
// ResizePTY.
func checkTerminal(t *testing.T, s *suite) {
	x := s.setup(t)
	if sw, ok := s.w.(ShellWorkload); !ok || !sw.HasShell() || !x.info.Capabilities.Terminal || !x.info.Capabilities.Stdin {
		t.Skip("kind has no terminal or the workload no shell")
	}
	ctx := context.Background()
	out := testutil.NewCapture(t, t.TempDir(), "tty")
	id, in := x.startWithStdin(t, "read line; stty size; tty; echo got $line", backend.Stdio{Stdin: filepath.Join(t.TempDir(), "stdin"), Stdout: out.Path(), Terminal: true})
	if err := x.e.ResizePTY(ctx, x.sb, id, "", 100, 30); err != nil {
		t.Fatalf("resize: %v", err)
	}
	if _, err := io.WriteString(in, "hello\n"); err != nil {
		t.Fatal(err)
	}
	if st := x.wait(t, id, ""); st.Code != 0 {
		t.Errorf("exit code = %d, want 0", st.Code)
	}
	got := out.Until("got hello", outputTimeout)
	for _, want := range []string{"30 100", "/dev/pts/", "got hello"} {
		if !strings.Contains(got, want) {
			t.Errorf("terminal output %q lacks %q", got, want)
		}
	}
	if _, err := x.e.Delete(ctx, x.sb, id, ""); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

// checkStats: a running container uses memory and has used CPU time.
func checkStats(t *testing.T, s *suite) {
	x := s.setup(t)
	if !x.info.Capabilities.Stats {
		t.Skip("kind has no stats")
	}
	id, _ := x.run(t, "sleep 600")
	var st *backend.Stats
	var err error
	ok := testutil.Poll(outputTimeout, func() bool {
		st, err = x.e.Stats(context.Background(), x.sb, id)
		return err == nil && st.MemoryUsageBytes > 0 && st.CPUUsageNanos > 0
	})
	if !ok {
		t.Fatalf("stats of a running container = %+v, %v; want memory and CPU usage", st, err)
	}
	if st.Timestamp.IsZero() {
		t.Errorf("stats without a timestamp: %+v", st)
	}
}

// checkUpdate: a new memory limit takes, and stats report it.
func checkUpdate(t *testing.T, s *suite) {
	x := s.setup(t)
	if !x.info.Capabilities.UpdateResources {
		t.Skip("kind cannot update resources")
	}
	ctx := context.Background()
	id, _ := x.run(t, "sleep 600")
	limit := int64(200 << 20)
	if err := x.e.Update(ctx, x.sb, id, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if !x.info.Capabilities.Stats {
		return
	}
	var st *backend.Stats
	var err error
	ok := testutil.Poll(outputTimeout, func() bool {
		st, err = x.e.Stats(ctx, x.sb, id)
		return err == nil && st.MemoryLimitBytes == uint64(limit)
	})
	if !ok {
		t.Errorf("stats after update = %+v, %v; want memory limit %d", st, err, limit)
	}
}

// checkPauseResume: a paused container is reported paused and, where the
// workload can tick, stops printing; resumed, it goes on.
func checkPauseResume(t *testing.T, s *suite) {
	x := s.setup(t)
	if !x.info.Capabilities.Pause {
		t.Skip("kind cannot pause")
	}
	ctx := context.Background()
	tw, ticks := s.w.(TickWorkload)
	script := "sleep 600"
	if ticks {
		script = tw.Tick()
	}
	id, out := x.run(t, script)
	lines := func() int { return strings.Count(out.String(), "\n") }
	if ticks {
		if !testutil.Poll(outputTimeout, func() bool { return lines() >= 2 }) {
			t.Fatalf("no ticks before pause: %q", out.String())
		}
	}
	if err := x.e.Pause(ctx, x.sb, id); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if ps, err := x.e.State(ctx, x.sb, id, ""); err != nil || ps.State != engine.ProcessPaused {
		t.Errorf("state after pause = %+v, %v; want paused", ps, err)
	}
	if ticks {
		// One tick on its way when the freeze came may still land; no more
		// may in the second watched. The wait is the observation itself.
		n := lines()
		time.Sleep(time.Second)
		if got := lines(); got > n+1 {
			t.Errorf("paused container goes on printing: %d lines, a second later %d", n, got)
		}
	}
	if err := x.e.Resume(ctx, x.sb, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if ps, err := x.e.State(ctx, x.sb, id, ""); err != nil || ps.State != engine.ProcessRunning {
		t.Errorf("state after resume = %+v, %v; want running", ps, err)
	}
	if ticks {
		n := lines()
		if !testutil.Poll(outputTimeout, func() bool { return lines() >= n+2 }) {
			t.Errorf("resumed container prints nothing more: %q", out.String())
		}
	}
	if err := x.e.Kill(ctx, x.sb, id, "", syscall.SIGKILL, false); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if st := x.wait(t, id, ""); st.Code != 128+uint32(syscall.SIGKILL) {
		t.Errorf("exit code after kill = %d", st.Code)
	}
}

// checkPids: the list has the init and, where the kind can exec, the
// exec'd process under its exec ID.
func checkPids(t *testing.T, s *suite) {
	x := s.setup(t)
	ctx := context.Background()
	id, _ := x.run(t, "sleep 600")
	_, err := x.e.Pids(ctx, x.sb, id)
	if errdefs.IsNotImplemented(err) {
		t.Skip("kind cannot list processes")
	}
	ps, err := x.e.State(ctx, x.sb, id, "")
	if err != nil {
		t.Fatal(err)
	}
	if x.info.Capabilities.Exec {
		x.exec(t, id, "side", "sleep 600")
	}
	var infos []backend.ProcessInfo
	ok := testutil.Poll(outputTimeout, func() bool {
		infos, err = x.e.Pids(ctx, x.sb, id)
		if err != nil {
			return false
		}
		hasInit := ps.Pid == 0 && len(infos) > 0 || slices.ContainsFunc(infos, func(p backend.ProcessInfo) bool { return p.Pid == ps.Pid })
		hasExec := !x.info.Capabilities.Exec || slices.ContainsFunc(infos, func(p backend.ProcessInfo) bool { return p.ExecID == "side" })
		return hasInit && hasExec
	})
	if !ok {
		t.Errorf("pids = %+v, %v; want init pid %d and (with exec) the exec \"side\"", infos, err, ps.Pid)
	}
}

// checkSandboxStats: with a container running, the sandbox reports usage,
// its own (a [backend.SandboxStater]) or the sum of its containers'.
func checkSandboxStats(t *testing.T, s *suite) {
	x := s.setup(t)
	ctx := context.Background()
	info, err := x.e.SandboxLiveInfo(ctx, x.sb)
	if err != nil {
		t.Fatalf("sandbox live info: %v", err)
	}
	if info == nil && !x.info.Capabilities.Stats {
		t.Skip("kind has no sandbox or container stats")
	}
	x.run(t, "sleep 600")
	var st *backend.Stats
	ok := testutil.Poll(outputTimeout, func() bool {
		st, err = x.e.SandboxStats(ctx, x.sb)
		return err == nil && st.MemoryUsageBytes > 0
	})
	if !ok {
		t.Errorf("sandbox stats = %+v, %v; want memory usage", st, err)
	}
}

func checkDeleteLeavesNothing(t *testing.T, s *suite) {
	x := s.setup(t)
	ctx := context.Background()
	id, _ := x.run(t, "sleep 600")
	ps, err := x.e.State(ctx, x.sb, id, "")
	if err != nil || ps.Pid == 0 && x.info.Isolation == backend.IsolationProcess {
		t.Fatalf("state: %+v, %v", ps, err)
	}
	if err := x.e.DeleteSandbox(ctx, x.sb); err != nil {
		t.Fatalf("delete sandbox: %v", err)
	}
	if ps.Pid != 0 && x.hostPids() {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", ps.Pid)); err == nil {
			t.Errorf("container process %d still exists after sandbox delete", ps.Pid)
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), x.stateDir) {
		t.Errorf("mounts under the state dir remain:\n%s", mi)
	}
	if _, err := x.e.Sandbox(ctx, x.sb); !errdefs.IsNotFound(err) {
		t.Errorf("sandbox after delete: %v, want not found", err)
	}
	if _, err := os.Stat(filepath.Join(x.stateDir, "sandboxes", x.sb)); !os.IsNotExist(err) {
		t.Errorf("sandbox state dir remains: %v", err)
	}
}

// checkRecoverAfterRestart: a container survives its engine and backend
// (closed, then made anew over the same state).
func checkRecoverAfterRestart(t *testing.T, s *suite) {
	ctx := context.Background()
	b1 := s.available(t)
	closer, ok := b1.(io.Closer)
	if !ok {
		t.Skip("backend cannot be closed, so a restart cannot be simulated")
	}
	info := b1.Info()
	x := &env{stateDir: t.TempDir(), info: info, w: s.w}
	e1, err := engine.New(ctx, engine.Config{StateDir: x.stateDir, Backends: []backend.Backend{b1}})
	if err != nil {
		t.Fatal(err)
	}
	x.e, x.sb = e1, uniqueID("sb")
	if _, err := e1.CreateSandbox(ctx, engine.SandboxSpec{ID: x.sb, Kind: info.Kind, PrivateNetwork: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.StartSandbox(ctx, x.sb); err != nil {
		t.Fatal(err)
	}
	id, _ := x.run(t, "sleep 600")
	e1.Close()
	closer.Close()

	b2 := s.newBackend(t)
	e2, err := engine.New(ctx, engine.Config{StateDir: x.stateDir, Backends: []backend.Backend{b2}, StopTimeout: time.Second})
	if err != nil {
		t.Fatalf("engine restart: %v", err)
	}
	defer e2.Close()
	st, err := e2.Sandbox(ctx, x.sb)
	if err != nil || st.State != engine.SandboxReady || len(st.Containers) != 1 {
		t.Fatalf("recovered sandbox = %+v, %v; want ready with 1 container", st, err)
	}
	ps, err := e2.State(ctx, x.sb, id, "")
	if err != nil || ps.State != engine.ProcessRunning {
		t.Fatalf("recovered container = %+v, %v; want running", ps, err)
	}
	if err := e2.Kill(ctx, x.sb, id, "", syscall.SIGKILL, true); err != nil {
		t.Fatalf("kill recovered container: %v", err)
	}
	waitExit(t, e2, x.sb, id, "")
	if err := e2.DeleteSandbox(ctx, x.sb); err != nil {
		t.Fatalf("delete recovered sandbox: %v", err)
	}
	if ps.Pid != 0 && x.hostPids() {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", ps.Pid)); err == nil {
			t.Errorf("container process %d survives", ps.Pid)
		}
	}
}

// checkRecoverExecAfterRestart: exec'd processes survive their engine and
// backend too: one that exits across the restart reports its own exit
// code and all its output, one still running is the same process and can
// be killed.
func checkRecoverExecAfterRestart(t *testing.T, s *suite) {
	ctx := context.Background()
	b1 := s.available(t)
	closer, ok := b1.(io.Closer)
	if !ok {
		t.Skip("backend cannot be closed, so a restart cannot be simulated")
	}
	info := b1.Info()
	if !info.Capabilities.Exec || !info.Capabilities.RecoverExecs {
		t.Skip("kind does not recover exec'd processes")
	}
	x := &env{stateDir: t.TempDir(), info: info, w: s.w}
	e1, err := engine.New(ctx, engine.Config{StateDir: x.stateDir, Backends: []backend.Backend{b1}})
	if err != nil {
		t.Fatal(err)
	}
	x.e, x.sb = e1, uniqueID("sb")
	if _, err := e1.CreateSandbox(ctx, engine.SandboxSpec{ID: x.sb, Kind: info.Kind, PrivateNetwork: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.StartSandbox(ctx, x.sb); err != nil {
		t.Fatal(err)
	}
	id, _ := x.run(t, "sleep 600")
	out := x.exec(t, id, "gap", "echo before; sleep 1; echo after; exit 7")
	x.exec(t, id, "run", "sleep 600")
	run, err := e1.State(ctx, x.sb, id, "run")
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Until("before", outputTimeout); !strings.Contains(got, "before") {
		t.Fatalf("exec stdout before the restart = %q", got)
	}
	e1.Close()
	closer.Close()

	b2 := s.newBackend(t)
	e2, err := engine.New(ctx, engine.Config{StateDir: x.stateDir, Backends: []backend.Backend{b2}, StopTimeout: time.Second})
	if err != nil {
		t.Fatalf("engine restart: %v", err)
	}
	defer e2.Close()
	if st := waitExit(t, e2, x.sb, id, "gap"); st.Code != 7 {
		t.Errorf("exit code of the exec across the restart = %d, want 7", st.Code)
	}
	if got := out.Until("after", outputTimeout); !strings.Contains(got, "before\nafter") {
		t.Errorf("exec stdout = %q, want before and after", got)
	}
	ps, err := e2.State(ctx, x.sb, id, "run")
	if err != nil || ps.State != engine.ProcessRunning || ps.Pid != run.Pid {
		t.Fatalf("recovered exec = %+v, %v; want running with pid %d", ps, err, run.Pid)
	}
	if err := e2.Kill(ctx, x.sb, id, "run", syscall.SIGKILL, false); err != nil {
		t.Fatalf("kill recovered exec: %v", err)
	}
	if st := waitExit(t, e2, x.sb, id, "run"); st.Code != 137 {
		t.Errorf("exit code of the killed recovered exec = %d, want 137", st.Code)
	}
	for _, exec := range []string{"gap", "run"} {
		if _, err := e2.Delete(ctx, x.sb, id, exec); err != nil {
			t.Errorf("delete recovered exec %s: %v", exec, err)
		}
	}
	if err := e2.Kill(ctx, x.sb, id, "", syscall.SIGKILL, true); err != nil {
		t.Fatalf("kill recovered container: %v", err)
	}
	waitExit(t, e2, x.sb, id, "")
	if err := e2.DeleteSandbox(ctx, x.sb); err != nil {
		t.Fatalf("delete recovered sandbox: %v", err)
	}
}

func checkBadInput(t *testing.T, s *suite) {
	x := s.setup(t)
	ctx := context.Background()
	for _, bad := range []string{"../x", "a/b", "", ".", strings.Repeat("x", 300)} {
		if _, err := x.e.CreateSandbox(ctx, engine.SandboxSpec{ID: bad, Kind: x.info.Kind, PrivateNetwork: true}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("sandbox id %q: err = %v, want invalid argument", bad, err)
		}
	}
	if _, err := x.e.CreateSandbox(ctx, engine.SandboxSpec{ID: x.sb, Kind: x.info.Kind, PrivateNetwork: true}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate sandbox: err = %v, want already exists", err)
	}
	if _, err := x.e.CreateContainer(ctx, x.sb, engine.ContainerSpec{ID: "../evil", Bundle: "/tmp"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("container id ../evil: err = %v, want invalid argument", err)
	}
}
