// Package backendtest is the conformance suite every sandbox kind runs: it
// drives a [backend.Backend] through Magnetar's engine and checks the
// outcomes users see (output, exit codes, signals, exec, cleanup).
//
// A backend's test calls [Run] with a constructor and a [Workload] that
// knows how to build a runnable bundle for that kind.
package backendtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// Workload builds containers for the kind under test.
type Workload interface {
	// Bundle writes an OCI bundle into dir whose process runs a shell-like
	// command line: the suite uses "echo", "exit N" and "sleep N" phrased
	// as sh -c scripts. It returns the spec (also written to
	// dir/config.json).
	Bundle(t *testing.T, dir, script string) *specs.Spec
	// Process returns a process spec for exec running script.
	Process(script string) *specs.Process
}

// ShellWorkload is a Workload whose scripts run in a POSIX shell with
// cat, tty and stty (busybox): the stdin and terminal cases need them.
type ShellWorkload interface {
	Workload
	// HasShell reports whether the shell and tools are there.
	HasShell() bool
}

var seq atomic.Int64

func uniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
}

// Run runs the conformance suite. newBackend is called once per subtest.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend, w Workload) {
	t.Helper()
	var info backend.Info
	setup := func(t *testing.T) (*engine.Engine, string, string) {
		b := newBackend(t)
		info = b.Info()
		ctx := context.Background()
		if err := b.Check(ctx); err != nil {
			t.Skipf("kind %s not available here: %v", b.Info().Kind, err)
		}
		stateDir := t.TempDir()
		e, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		id := uniqueID("sb")
		if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: id, Kind: b.Info().Kind, Hostname: "conformance"}); err != nil {
			t.Fatalf("create sandbox: %v", err)
		}
		st, err := e.StartSandbox(ctx, id)
		if err != nil {
			t.Fatalf("start sandbox: %v", err)
		}
		if st.State != engine.SandboxReady {
			t.Fatalf("sandbox state after start = %s, want ready", st.State)
		}
		t.Cleanup(func() {
			if err := e.DeleteSandbox(context.Background(), id); err != nil && !errdefs.IsNotFound(err) {
				t.Errorf("delete sandbox: %v", err)
			}
		})
		return e, id, stateDir
	}
	run := func(t *testing.T, e *engine.Engine, sb, script string) (string, *capture) {
		t.Helper()
		dir := t.TempDir()
		id := uniqueID("c")
		spec := w.Bundle(t, dir, script)
		out := newCapture(t, t.TempDir(), "stdout")
		if _, err := e.CreateContainer(context.Background(), sb, engine.ContainerSpec{
			ID: id, Bundle: dir, Spec: spec, Stdio: backend.Stdio{Stdout: out.path},
		}); err != nil {
			t.Fatalf("create container: %v", err)
		}
		if _, err := e.Start(context.Background(), sb, id, ""); err != nil {
			t.Fatalf("start container: %v", err)
		}
		return id, out
	}
	wait := func(t *testing.T, e *engine.Engine, sb, id, exec string) backend.ExitStatus {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		st, err := e.Wait(ctx, sb, id, exec)
		if err != nil {
			t.Fatalf("wait %s/%s: %v", id, exec, err)
		}
		return st
	}

	t.Run("Info", func(t *testing.T) {
		b := newBackend(t)
		info := b.Info()
		if info.Kind == "" || info.Description == "" || info.Isolation == backend.IsolationUnspecified {
			t.Fatalf("incomplete info: %+v", info)
		}
	})

	t.Run("OutputAndExitCode", func(t *testing.T) {
		e, sb, _ := setup(t)
		id, out := run(t, e, sb, "echo hello from conformance; exit 3")
		st := wait(t, e, sb, id, "")
		if st.Code != 3 {
			t.Errorf("exit code = %d, want 3", st.Code)
		}
		if st.ExitedAt.IsZero() {
			t.Error("exited_at not set")
		}
		if got := readEventually(out, "hello from conformance"); !strings.Contains(got, "hello from conformance") {
			t.Errorf("stdout = %q", got)
		}
		ps, err := e.State(context.Background(), sb, id, "")
		if err != nil || ps.State != engine.ProcessStopped || ps.ExitCode != 3 {
			t.Errorf("state = %+v, %v; want stopped with 3", ps, err)
		}
		if _, err := e.Delete(context.Background(), sb, id, ""); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := e.State(context.Background(), sb, id, ""); !errdefs.IsNotFound(err) {
			t.Errorf("state after delete: %v, want not found", err)
		}
	})

	t.Run("KillRunning", func(t *testing.T) {
		e, sb, _ := setup(t)
		id, _ := run(t, e, sb, "sleep 600")
		if err := e.Kill(context.Background(), sb, id, "", syscall.SIGKILL, false); err != nil {
			t.Fatalf("kill: %v", err)
		}
		st := wait(t, e, sb, id, "")
		if st.Code != 128+uint32(syscall.SIGKILL) {
			t.Errorf("exit code = %d, want %d", st.Code, 128+syscall.SIGKILL)
		}
		if _, err := e.Delete(context.Background(), sb, id, ""); err != nil {
			t.Fatalf("delete: %v", err)
		}
	})

	t.Run("Exec", func(t *testing.T) {
		e, sb, _ := setup(t)
		if !info.Capabilities.Exec {
			t.Skip("kind has no exec")
		}
		id, _ := run(t, e, sb, "sleep 600")
		out := newCapture(t, t.TempDir(), "exec")
		if _, err := e.Exec(context.Background(), sb, engine.ExecSpec{
			ContainerID: id, ExecID: "probe", Process: w.Process("echo from exec; exit 7"), Stdio: backend.Stdio{Stdout: out.path},
		}); err != nil {
			t.Fatalf("exec: %v", err)
		}
		if _, err := e.Start(context.Background(), sb, id, "probe"); err != nil {
			t.Fatalf("start exec: %v", err)
		}
		st := wait(t, e, sb, id, "probe")
		if st.Code != 7 {
			t.Errorf("exec exit code = %d, want 7", st.Code)
		}
		if got := readEventually(out, "from exec"); !strings.Contains(got, "from exec") {
			t.Errorf("exec stdout = %q", got)
		}
		if _, err := e.Delete(context.Background(), sb, id, "probe"); err != nil {
			t.Fatalf("delete exec: %v", err)
		}
		if err := e.StopSandbox(context.Background(), sb, time.Second); err != nil {
			t.Fatalf("stop sandbox: %v", err)
		}
		if ps, _ := e.State(context.Background(), sb, id, ""); ps.State != engine.ProcessStopped {
			t.Errorf("container after sandbox stop: %s, want stopped", ps.State)
		}
	})

	t.Run("StdinAndTerminal", func(t *testing.T) {
		e, sb, _ := setup(t)
		if sw, ok := w.(ShellWorkload); !ok || !sw.HasShell() || !info.Capabilities.Stdin {
			t.Skip("kind has no stdin or the workload no shell")
		}
		ctx := context.Background()
		start := func(t *testing.T, script string, stdio backend.Stdio) (string, *os.File) {
			t.Helper()
			dir := t.TempDir()
			id := uniqueID("c")
			if err := syscall.Mkfifo(stdio.Stdin, 0o600); err != nil {
				t.Fatal(err)
			}
			spec := w.Bundle(t, dir, script)
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
			if _, err := e.CreateContainer(ctx, sb, engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec, Stdio: stdio}); err != nil {
				t.Fatalf("create container: %v", err)
			}
			// The backend holds the FIFO open from create on, so
			// this open does not wait.
			in, err := os.OpenFile(stdio.Stdin, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { in.Close() })
			if _, err := e.Start(ctx, sb, id, ""); err != nil {
				t.Fatalf("start container: %v", err)
			}
			return id, in
		}

		// Stdin: everything written arrives, then end of file after
		// CloseStdin.
		out := newCapture(t, t.TempDir(), "stdout")
		id, in := start(t, "cat; echo '<eof>'; exit 4", backend.Stdio{Stdin: filepath.Join(t.TempDir(), "stdin"), Stdout: out.path})
		data := strings.Repeat("0123456789abcdef", 8192) // 128 KiB: more than a pipe holds
		if _, err := io.WriteString(in, data+"\n"); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := e.CloseStdin(ctx, sb, id, ""); err != nil {
			t.Fatalf("close stdin: %v", err)
		}
		if st := wait(t, e, sb, id, ""); st.Code != 4 {
			t.Errorf("exit code = %d, want 4", st.Code)
		}
		if got := out.until("<eof>\n", 10*time.Second); got != data+"\n<eof>\n" {
			t.Errorf("stdout has %d bytes ending %q, want %d bytes and <eof>", len(got), got[max(0, len(got)-20):], len(data)+7)
		}
		if _, err := e.Delete(ctx, sb, id, ""); err != nil {
			t.Fatalf("delete: %v", err)
		}

		if !info.Capabilities.Terminal {
			return
		}
		// A terminal: stdin and stdout are the pty, which takes its size
		// from ResizePTY.
		tout := newCapture(t, t.TempDir(), "tty")
		id, in = start(t, "read line; stty size; tty; echo got $line", backend.Stdio{Stdin: filepath.Join(t.TempDir(), "stdin"), Stdout: tout.path, Terminal: true})
		if err := e.ResizePTY(ctx, sb, id, "", 100, 30); err != nil {
			t.Fatalf("resize: %v", err)
		}
		if _, err := io.WriteString(in, "hello\n"); err != nil {
			t.Fatal(err)
		}
		if st := wait(t, e, sb, id, ""); st.Code != 0 {
			t.Errorf("exit code = %d, want 0", st.Code)
		}
		got := tout.until("got hello", 10*time.Second)
		for _, want := range []string{"30 100", "/dev/pts/", "got hello"} {
			if !strings.Contains(got, want) {
				t.Errorf("terminal output %q lacks %q", got, want)
			}
		}
		if _, err := e.Delete(ctx, sb, id, ""); err != nil {
			t.Fatalf("delete: %v", err)
		}
	})

	t.Run("DeleteLeavesNothing", func(t *testing.T) {
		e, sb, stateDir := setup(t)
		id, _ := run(t, e, sb, "sleep 600")
		ps, err := e.State(context.Background(), sb, id, "")
		if err != nil || ps.Pid == 0 && info.Isolation == backend.IsolationProcess {
			t.Fatalf("state: %+v, %v", ps, err)
		}
		if err := e.DeleteSandbox(context.Background(), sb); err != nil {
			t.Fatalf("delete sandbox: %v", err)
		}
		if ps.Pid != 0 {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", ps.Pid)); err == nil {
				t.Errorf("container process %d still exists after sandbox delete", ps.Pid)
			}
		}
		if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), stateDir) {
			t.Errorf("mounts under the state dir remain:\n%s", mi)
		}
		if _, err := e.Sandbox(context.Background(), sb); !errdefs.IsNotFound(err) {
			t.Errorf("sandbox after delete: %v, want not found", err)
		}
		if _, err := os.Stat(filepath.Join(stateDir, "sandboxes", sb)); !os.IsNotExist(err) {
			t.Errorf("sandbox state dir remains: %v", err)
		}
	})

	t.Run("RecoverAfterRestart", func(t *testing.T) {
		ctx := context.Background()
		b1 := newBackend(t)
		closer, ok := b1.(io.Closer)
		if !ok {
			t.Skip("backend cannot be closed, so a restart cannot be simulated")
		}
		if err := b1.Check(ctx); err != nil {
			t.Skipf("kind not available: %v", err)
		}
		info = b1.Info()
		stateDir := t.TempDir()
		e1, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b1}})
		if err != nil {
			t.Fatal(err)
		}
		sb := uniqueID("sb")
		if _, err := e1.CreateSandbox(ctx, engine.SandboxSpec{ID: sb, Kind: info.Kind}); err != nil {
			t.Fatal(err)
		}
		if _, err := e1.StartSandbox(ctx, sb); err != nil {
			t.Fatal(err)
		}
		id, _ := run(t, e1, sb, "sleep 600")
		e1.Close()
		closer.Close()

		b2 := newBackend(t)
		e2, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b2}, StopTimeout: time.Second})
		if err != nil {
			t.Fatalf("engine restart: %v", err)
		}
		defer e2.Close()
		st, err := e2.Sandbox(ctx, sb)
		if err != nil || st.State != engine.SandboxReady || len(st.Containers) != 1 {
			t.Fatalf("recovered sandbox = %+v, %v; want ready with 1 container", st, err)
		}
		ps, err := e2.State(ctx, sb, id, "")
		if err != nil || ps.State != engine.ProcessRunning {
			t.Fatalf("recovered container = %+v, %v; want running", ps, err)
		}
		if err := e2.Kill(ctx, sb, id, "", syscall.SIGKILL, true); err != nil {
			t.Fatalf("kill recovered container: %v", err)
		}
		wait(t, e2, sb, id, "")
		if err := e2.DeleteSandbox(ctx, sb); err != nil {
			t.Fatalf("delete recovered sandbox: %v", err)
		}
		if ps.Pid != 0 {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", ps.Pid)); err == nil {
				t.Errorf("container process %d survives", ps.Pid)
			}
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		e, sb, _ := setup(t)
		for _, bad := range []string{"../x", "a/b", "", ".", strings.Repeat("x", 300)} {
			if _, err := e.CreateSandbox(context.Background(), engine.SandboxSpec{ID: bad, Kind: info.Kind}); !errdefs.IsInvalidArgument(err) {
				t.Errorf("sandbox id %q: err = %v, want invalid argument", bad, err)
			}
		}
		if _, err := e.CreateSandbox(context.Background(), engine.SandboxSpec{ID: sb, Kind: info.Kind}); !errdefs.IsAlreadyExists(err) {
			t.Errorf("duplicate sandbox: err = %v, want already exists", err)
		}
		if _, err := e.CreateContainer(context.Background(), sb, engine.ContainerSpec{ID: "../evil", Bundle: "/tmp"}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("container id ../evil: err = %v, want invalid argument", err)
		}
	})
}

// readEventually reads c until it contains want or a few seconds pass:
// output copying may trail the exit by a moment.
func readEventually(c *capture, want string) string {
	for range 100 {
		if s := c.String(); strings.Contains(s, want) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c.String()
}
