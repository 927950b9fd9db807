// Package backendtest is the conformance suite every sandbox kind runs: it
// drives a [backend.Backend] through Magnetar's engine and checks the
// outcomes users see (output, exit codes, signals, exec, cleanup) and, for
// each optional capability the kind has, that it does what it says.
//
// A backend's test calls [Run] with a constructor and a [Workload] that
// knows how to build a runnable bundle for that kind. The suite is a list
// of named checks, each run as a subtest (like containerd's snapshotter
// suite), so `go test -run 'Conformance/Pause'` runs one of them.
package backendtest

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// Workload builds containers for the kind under test.
type Workload interface {
	// Bundle writes an OCI bundle into dir whose process runs a shell-like
	// command line: the suite uses "echo WORD...", "exit N", "sleep N" and
	// "cat" (stdin to stdout), `;`-separated, phrased as sh -c scripts. It
	// returns the spec (also written to dir/config.json).
	Bundle(t *testing.T, dir, script string) *specs.Spec
	// Process returns a process spec for exec running script.
	Process(script string) *specs.Process
}

// ShellWorkload is a Workload whose scripts run in a POSIX shell with
// read, tty and stty (busybox): the terminal check needs them.
type ShellWorkload interface {
	Workload
	// HasShell reports whether the shell and tools are there.
	HasShell() bool
}

// TickWorkload is a Workload that can run a process printing a line every
// tenth of a second until it is killed: the pause check watches its output
// stop. Without it the check only asserts the states.
type TickWorkload interface {
	Workload
	// Tick returns the script.
	Tick() string
}

var seq atomic.Int64

func uniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
}

// check is one named conformance check.
type check struct {
	name string
	run  func(t *testing.T, s *suite)
}

// checks are the suite, in the order they run.
var checks = []check{
	{"Info", checkInfo},
	{"CapabilitiesMatchInterfaces", checkCapabilities},
	{"OutputAndExitCode", checkOutputAndExitCode},
	{"KillRunning", checkKillRunning},
	{"Exec", checkExec},
	{"Stdin", checkStdin},
	{"Terminal", checkTerminal},
	{"Stats", checkStats},
	{"Update", checkUpdate},
	{"PauseResume", checkPauseResume},
	{"Pids", checkPids},
	{"SandboxStats", checkSandboxStats},
	{"DeleteLeavesNothing", checkDeleteLeavesNothing},
	{"RecoverAfterRestart", checkRecoverAfterRestart},
	{"RecoverExecAfterRestart", checkRecoverExecAfterRestart},
	{"BadInput", checkBadInput},
}

// suite is what every check gets.
type suite struct {
	newBackend func(t *testing.T) backend.Backend
	w          Workload
}

// Run runs the conformance suite. newBackend is called once per check (or
// twice, to simulate a restart). A kind whose Check fails here is skipped,
// or fails with MAGNETAR_E2E_REQUIRED=1.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend, w Workload, opts ...Option) {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	s := &suite{newBackend: newBackend, w: w}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if o.parallel {
				t.Parallel()
			}
			c.run(t, s)
		})
	}
}

// Option changes how [Run] runs the suite.
type Option func(*options)

type options struct {
	parallel bool
}

// Parallel runs the checks in parallel with each other, as many at once
// as go test's -parallel allows. Every check has its own backend, engine
// and sandbox, so a kind whose sandboxes are independent and slow to
// start (microVMs under emulation, where each uses about one core) can
// use it; newBackend is then called concurrently.
func Parallel() Option {
	return func(o *options) { o.parallel = true }
}

// env is an engine over a fresh backend with one ready sandbox.
type env struct {
	e        *engine.Engine
	sb       string
	stateDir string
	info     backend.Info
	w        Workload
}

// available returns a backend from newBackend, or skips unless it can run
// here.
func (s *suite) available(t *testing.T) backend.Backend {
	t.Helper()
	b := s.newBackend(t)
	if err := b.Check(context.Background()); err != nil {
		testutil.SkipOrFail(t, "kind %s not available here: %v", b.Info().Kind, err)
	}
	return b
}

// setup starts an engine over a new backend and a sandbox in it; both go
// when the test ends.
func (s *suite) setup(t *testing.T) *env {
	t.Helper()
	b := s.available(t)
	ctx := context.Background()
	x := &env{stateDir: t.TempDir(), info: b.Info(), w: s.w}
	e, err := engine.New(ctx, engine.Config{StateDir: x.stateDir, Backends: []backend.Backend{b}, StopTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	x.e = e
	x.sb = uniqueID("sb")
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: x.sb, Kind: x.info.Kind, Hostname: "conformance", PrivateNetwork: true}); err != nil {
		t.Fatalf("create sandbox: %v", err)
	}
	st, err := e.StartSandbox(ctx, x.sb)
	if err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	if st.State != engine.SandboxReady {
		t.Fatalf("sandbox state after start = %s, want ready", st.State)
	}
	t.Cleanup(func() {
		if err := e.DeleteSandbox(context.Background(), x.sb); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("delete sandbox: %v", err)
		}
	})
	return x
}

// run creates and starts a container running script with its stdout
// captured.
func (x *env) run(t *testing.T, script string) (string, *testutil.Capture) {
	t.Helper()
	return x.runIn(t, x.sb, script)
}

func (x *env) runIn(t *testing.T, sb, script string) (string, *testutil.Capture) {
	t.Helper()
	dir := t.TempDir()
	id := uniqueID("c")
	spec := x.w.Bundle(t, dir, script)
	out := testutil.NewCapture(t, t.TempDir(), "stdout")
	if _, err := x.e.CreateContainer(context.Background(), sb, engine.ContainerSpec{
		ID: id, Bundle: dir, Spec: spec, Stdio: backend.Stdio{Stdout: out.Path()},
	}); err != nil {
		t.Fatalf("create container: %v", err)
	}
	if _, err := x.e.Start(context.Background(), sb, id, ""); err != nil {
		t.Fatalf("start container: %v", err)
	}
	return id, out
}

// exec adds a process running script to container id and starts it.
func (x *env) exec(t *testing.T, id, execID, script string) *testutil.Capture {
	t.Helper()
	out := testutil.NewCapture(t, t.TempDir(), "exec")
	if _, err := x.e.Exec(context.Background(), x.sb, engine.ExecSpec{
		ContainerID: id, ExecID: execID, Process: x.w.Process(script), Stdio: backend.Stdio{Stdout: out.Path()},
	}); err != nil {
		t.Fatalf("exec: %v", err)
	}
	if _, err := x.e.Start(context.Background(), x.sb, id, execID); err != nil {
		t.Fatalf("start exec: %v", err)
	}
	return out
}

// wait waits a minute at most for a process to exit.
func (x *env) wait(t *testing.T, id, exec string) backend.ExitStatus {
	t.Helper()
	return waitExit(t, x.e, x.sb, id, exec)
}

func waitExit(t *testing.T, e *engine.Engine, sb, id, exec string) backend.ExitStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := e.Wait(ctx, sb, id, exec)
	if err != nil {
		t.Fatalf("wait %s/%s: %v", id, exec, err)
	}
	return st
}

// hostPids reports whether the pids the kind reports are host processes
// of the container's own, so that /proc tells whether it still runs. A
// wasm container's pid is the runner that hosts the instances of many
// containers and outlives any one of them (the wasm kind's own tests
// check that its instances go).
func (x *env) hostPids() bool {
	return x.info.Isolation == backend.IsolationProcess
}
