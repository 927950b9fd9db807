package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
)

// apiSandboxer is a magnetar-sandboxer of its own (supervisor and worker)
// serving Magnetar's API in direct mode, without containerd.
type apiSandboxer struct {
	bin, dir, runDir string
	cmd              *exec.Cmd
	log              *testutil.Buffer
	done             chan struct{}
}

func startAPISandboxer(t *testing.T, extraArgs ...string) *apiSandboxer {
	t.Helper()
	binDir, err := harness.DefaultBinDir()
	if err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	bin := filepath.Join(binDir, "magnetar-sandboxer")
	if _, err := os.Stat(bin); err != nil {
		testutil.SkipOrFail(t, "magnetar-sandboxer not built (make build): %v", err)
	}
	testutil.RequireRunc(t)
	// Short: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "mgn-api-")
	if err != nil {
		t.Fatal(err)
	}
	s := &apiSandboxer{bin: bin, dir: dir, runDir: filepath.Join(dir, "run"), log: &testutil.Buffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(bin, "--listen", filepath.Join(s.runDir, "sandboxer.sock"),
		"--state-dir", filepath.Join(dir, "state"), "--run-dir", s.runDir, "--log-level", "debug", "--api-allow-host-access",
		"--vm-guest-dir", guestDir())
	s.cmd.Args = append(s.cmd.Args, extraArgs...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("sandboxer log:\n%s", s.log)
		}
		if err := harness.RemoveTree(dir); err != nil {
			t.Error(err)
		}
	})
	if err := waitSocket(filepath.Join(s.runDir, "api.sock"), 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, s.log)
	}
	return s
}

// worker returns the pid of the supervisor's worker (0: none now).
func (s *apiSandboxer) worker() int {
	pid, _ := workerOf(s.cmd.Process.Pid)
	return pid
}

// newWorker waits for a worker other than old.
func (s *apiSandboxer) newWorker(t *testing.T, old int) int {
	t.Helper()
	var pid int
	testutil.Eventually(t, time.Minute, func() bool { pid = s.worker(); return pid != 0 && pid != old }, "a new worker after %d", old)
	return pid
}

// TestAPIStreamsSurviveRestart runs a container printing a counter through
// the Go SDK with an Output stream and an Events stream open, then kills
// the sandboxer's worker (kill -9) and live-upgrades it (`magnetar-sandboxer
// upgrade`): the streams resume by themselves, the output (of the
// container, and of a process exec'd into it) has every number once and
// in order, and the events are those the sandboxer kept, each
// once, in order, the container's exit included; a WatchUsage stream goes
// on sampling through both.
func TestAPIStreamsSurviveRestart(t *testing.T) {
	s := startAPISandboxer(t)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(s.dir, "rootfs"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, "unix://"+filepath.Join(s.runDir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sb, err := c.CreateSandbox(ctx, "runc")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sb.Delete(context.Background(), sdk.Force()) }()

	// Events of the sandbox, from before the container on.
	evctx, evcancel := context.WithCancel(ctx)
	defer evcancel()
	var (
		mu     sync.Mutex
		events []sdk.Event
		evErr  error
	)
	evStarted := make(chan struct{})
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		once := sync.OnceFunc(func() { close(evStarted) })
		defer once()
		for ev, err := range c.Events(evctx, sdk.InSandbox(sb.ID)) {
			once()
			mu.Lock()
			if err != nil {
				evErr = err
			} else {
				events = append(events, ev)
			}
			mu.Unlock()
			if err != nil || ev.Type == "process-exited" && ev.ExecID == "" {
				return
			}
		}
	}()

	// The sandbox's usage, sampled every 100 ms across the restarts.
	usctx, uscancel := context.WithCancel(ctx)
	defer uscancel()
	var (
		samples  int
		usageErr error
	)
	usDone := make(chan struct{})
	go func() {
		defer close(usDone)
		for _, err := range sb.WatchUsage(usctx, 100*time.Millisecond) {
			mu.Lock()
			if err != nil {
				usageErr = err
			} else {
				samples++
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	usage := func() int {
		mu.Lock()
		defer mu.Unlock()
		return samples
	}

	ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args("sh", "-c", "trap 'exit 7' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done"))
	if err != nil {
		t.Fatal(err)
	}
	// Output: every chunk, each starting where the previous ended.
	var (
		out    bytes.Buffer
		outErr error
	)
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		var next int64
		for ch, err := range ctr.Output(ctx) {
			if err != nil {
				mu.Lock()
				outErr = err
				mu.Unlock()
				return
			}
			if ch.Offset != next {
				outErr = fmt.Errorf("chunk at offset %d, want %d", ch.Offset, next)
				return
			}
			next += int64(len(ch.Data))
			mu.Lock()
			out.Write(ch.Data)
			mu.Unlock()
		}
	}()
	lines := func() int {
		mu.Lock()
		defer mu.Unlock()
		return bytes.Count(out.Bytes(), []byte("\n"))
	}
	<-evStarted
	testutil.Eventually(t, 30*time.Second, func() bool { return lines() >= 20 }, "20 lines of output")
	// An exec'd process printing a counter too, its output followed
	// across the restarts as well.
	ex, err := ctr.Exec(ctx, sdk.Args("sh", "-c", "trap 'exit 9' TERM; i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done"))
	if err != nil {
		t.Fatal(err)
	}
	var (
		exOut    bytes.Buffer
		exOutErr error
	)
	exOutDone := make(chan struct{})
	go func() {
		defer close(exOutDone)
		var next int64
		for ch, err := range ex.Output(ctx) {
			mu.Lock()
			switch {
			case err != nil:
				exOutErr = err
			case ch.Offset != next:
				exOutErr = fmt.Errorf("exec output chunk at offset %d, want %d", ch.Offset, next)
			default:
				next += int64(len(ch.Data))
				exOut.Write(ch.Data)
			}
			failed := exOutErr != nil
			mu.Unlock()
			if failed {
				return
			}
		}
	}()
	exLines := func() int {
		mu.Lock()
		defer mu.Unlock()
		return bytes.Count(exOut.Bytes(), []byte("\n"))
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return exLines() >= 20 }, "20 lines of the exec's output")

	// kill -9 of the worker.
	old := s.worker()
	if old == 0 {
		t.Fatalf("no worker\n%s", s.log)
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// A call that changes nothing, made during the gap, is answered.
	if got, err := c.Container(ctx, ctr.ID); err != nil || got.State != sdk.ContainerRunning {
		t.Fatalf("Container during the restart: %+v, %v", got, err)
	}
	old = s.newWorker(t, old)
	n, m := lines(), exLines()
	testutil.Eventually(t, 30*time.Second, func() bool { return lines() >= n+20 }, "output after the crash")
	testutil.Eventually(t, 30*time.Second, func() bool { return exLines() >= m+20 }, "exec output after the crash")
	k := usage()
	testutil.Eventually(t, 30*time.Second, func() bool { return usage() >= k+3 }, "usage samples after the crash")

	// Live upgrade.
	if out, err := exec.CommandContext(ctx, s.bin, "upgrade", "--run-dir", s.runDir).CombinedOutput(); err != nil {
		t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
	}
	s.newWorker(t, old)
	n, m = lines(), exLines()
	testutil.Eventually(t, 30*time.Second, func() bool { return lines() >= n+20 }, "output after the upgrade")
	testutil.Eventually(t, 30*time.Second, func() bool { return exLines() >= m+20 }, "exec output after the upgrade")
	k = usage()
	testutil.Eventually(t, 30*time.Second, func() bool { return usage() >= k+3 }, "usage samples after the upgrade")
	uscancel()
	<-usDone
	if usageErr != nil {
		t.Fatalf("WatchUsage across the restarts: %v", usageErr)
	}

	// The exec ends: its output stream ends, its own exit code.
	if err := ex.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-exOutDone
	if exOutErr != nil {
		t.Fatalf("Output of the exec: %v", exOutErr)
	}
	if exit, err := ex.Wait(ctx); err != nil || exit.Code != 9 {
		t.Fatalf("Wait of the exec = %+v, %v; want 9", exit, err)
	}
	for i, l := range strings.Split(strings.TrimSuffix(exOut.String(), "\n"), "\n") {
		if l != strconv.Itoa(i) {
			t.Fatalf("exec output line %d is %q: bytes lost or repeated across the restarts", i, l)
		}
	}

	// The container ends: the output stream ends with its exit, the event
	// stream sees it.
	if err := ctr.Signal(ctx, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-outDone
	if outErr != nil {
		t.Fatalf("Output: %v", outErr)
	}
	if exit, err := ctr.Wait(ctx); err != nil || exit.Code != 7 {
		t.Fatalf("Wait = %+v, %v", exit, err)
	}
	select {
	case <-evDone:
	case <-ctx.Done():
		t.Fatal("no process-exited event")
	}
	if evErr != nil {
		t.Fatalf("Events: %v", evErr)
	}
	for i, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if l != strconv.Itoa(i) {
			t.Fatalf("output line %d is %q: bytes lost or repeated across the restarts", i, l)
		}
	}
	// What the stream delivered is what the sandboxer kept: replayed from
	// before the first event, filtered alike.
	var kept []sdk.Event
	for ev, err := range c.EventsAfter(ctx, events[0].Sequence-1, sdk.InSandbox(sb.ID)) {
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, ev)
		if ev.Sequence == events[len(events)-1].Sequence {
			break
		}
	}
	if len(kept) != len(events) {
		t.Fatalf("live stream had %d events, the log %d:\nlive %+v\nkept %+v", len(events), len(kept), events, kept)
	}
	var types []string
	for i := range events {
		if events[i].Sequence != kept[i].Sequence || events[i].Type != kept[i].Type || (i > 0 && events[i].Sequence <= events[i-1].Sequence) {
			t.Fatalf("event %d: live %+v, kept %+v", i, events[i], kept[i])
		}
		if events[i].ExecID == "" { // the exec's own are checked below
			types = append(types, events[i].Type)
		}
	}
	if !slices.ContainsFunc(events, func(ev sdk.Event) bool {
		return ev.Type == "process-exited" && ev.ExecID == ex.ExecID && ev.ExitStatus == 9
	}) {
		t.Errorf("no process-exited event of the exec with its exit 9 in %+v", events)
	}
	if want := "container-created container-started process-exited"; !strings.HasSuffix(strings.Join(types, " "), want) {
		t.Errorf("event types %v, want them to end with %s", types, want)
	}
	if last := events[len(events)-1]; last.ExitStatus != 7 || last.ContainerID != ctr.ID {
		t.Errorf("exit event %+v, want exit 7 of %s", last, ctr.ID)
	}
}
