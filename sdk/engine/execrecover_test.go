package engine_test

import (
	"context"
	"encoding/json"
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

func execSpec(cid, id, script string) engine.ExecSpec {
	return engine.ExecSpec{ContainerID: cid, ExecID: id, Process: &specs.Process{Args: []string{"sh", "-c", script}}}
}

func startExec(t *testing.T, e *engine.Engine, sb, cid, id, script string) engine.ProcessStatus {
	t.Helper()
	ctx := context.Background()
	if _, err := e.Exec(ctx, sb, execSpec(cid, id, script)); err != nil {
		t.Fatal(err)
	}
	st, err := e.Start(ctx, sb, cid, id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// exits returns the exit codes the event log holds for exec id.
func exits(t *testing.T, e *engine.Engine, id string) []uint32 {
	t.Helper()
	evs, err := e.EventsAfter(0, e.LastEventSeq(), 10000)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, ev := range evs {
		if ev.Topic == engine.TopicTaskExit && ev.ExecID == id {
			out = append(out, ev.ExitCode)
		}
	}
	return out
}

func execRecordPath(dir, sb, cid, id string) string {
	return filepath.Join(dir, "sandboxes", sb, "execs", cid, id+".json")
}

// TestExecsRecovered: the exec'd processes of a container survive a
// restart of the engine: one that exits across the restart reports its
// own exit code once, one still running can be signalled and waited for,
// one that exited before keeps its status without a second exit event,
// one only created can still be started, and a deleted one is gone.
func TestExecsRecovered(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	host := backendfake.NewHost()
	e1, err := engine.New(ctx, engine.Config{StateDir: dir, Backends: []backend.Backend{backendfake.New(backendfake.Config{Host: host})}})
	if err != nil {
		t.Fatal(err)
	}
	ready(t, e1, "sb")
	container(t, e1, "sb", "c")
	if _, err := e1.Start(ctx, "sb", "c", ""); err != nil {
		t.Fatal(err)
	}
	gap := startExec(t, e1, "sb", "c", "gap", "sleep 0.3; exit 7")
	run := startExec(t, e1, "sb", "c", "run", "sleep 1000")
	startExec(t, e1, "sb", "c", "done", "exit 3")
	if ex, err := e1.Wait(ctx, "sb", "c", "done"); err != nil || ex.Code != 3 {
		t.Fatalf("wait done = %+v, %v", ex, err)
	}
	startExec(t, e1, "sb", "c", "gone", "exit 5")
	if _, err := e1.Wait(ctx, "sb", "c", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.Delete(ctx, "sb", "c", "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.Exec(ctx, "sb", execSpec("c", "created", "exit 4")); err != nil {
		t.Fatal(err)
	}
	e1.Close()

	e2 := newEngine(t, backendfake.New(backendfake.Config{Host: host}), dir)
	ex, err := e2.Wait(ctx, "sb", "c", "gap")
	if err != nil || ex.Code != 7 {
		t.Fatalf("wait gap after restart = %+v, %v; want 7", ex, err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(exits(t, e2, "gap")) > 0 }, "no exit event for gap")
	if got := exits(t, e2, "gap"); len(got) != 1 || got[0] != 7 {
		t.Errorf("exit events of gap = %v, want [7]", got)
	}
	if st, _ := e2.State(ctx, "sb", "c", "gap"); st.Pid != gap.Pid || st.State != engine.ProcessStopped {
		t.Errorf("gap = %+v, want stopped with pid %d", st, gap.Pid)
	}

	st, err := e2.State(ctx, "sb", "c", "run")
	if err != nil || st.State != engine.ProcessRunning || st.Pid != run.Pid {
		t.Fatalf("run after restart = %+v, %v", st, err)
	}
	if _, err := e2.Delete(ctx, "sb", "c", "run"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("delete of running exec: %v, want failed precondition", err)
	}
	if err := e2.Kill(ctx, "sb", "c", "run", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if ex, err := e2.Wait(ctx, "sb", "c", "run"); err != nil || ex.Code != 137 {
		t.Fatalf("wait run = %+v, %v; want 137", ex, err)
	}

	if st, err := e2.State(ctx, "sb", "c", "done"); err != nil || st.State != engine.ProcessStopped || st.ExitCode != 3 {
		t.Errorf("done after restart = %+v, %v; want stopped, 3", st, err)
	}
	if got := exits(t, e2, "done"); len(got) != 1 {
		t.Errorf("exit events of done = %v, want the one before the restart", got)
	}
	if _, err := e2.State(ctx, "sb", "c", "gone"); !errdefs.IsNotFound(err) {
		t.Errorf("deleted exec after restart: %v, want not found", err)
	}
	if st, err := e2.State(ctx, "sb", "c", "created"); err != nil || st.State != engine.ProcessCreated {
		t.Fatalf("created after restart = %+v, %v", st, err)
	}
	if _, err := e2.Start(ctx, "sb", "c", "created"); err != nil {
		t.Fatal(err)
	}
	if ex, err := e2.Wait(ctx, "sb", "c", "created"); err != nil || ex.Code != 4 {
		t.Fatalf("wait created = %+v, %v; want 4", ex, err)
	}

	for _, id := range []string{"gap", "run", "done", "created"} {
		if _, err := os.Stat(execRecordPath(dir, "sb", "c", id)); err != nil {
			t.Errorf("record of %s: %v", id, err)
		}
		if _, err := e2.Delete(ctx, "sb", "c", id); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(execRecordPath(dir, "sb", "c", id)); !os.IsNotExist(err) {
			t.Errorf("record of deleted exec %s: %v, want none", id, err)
		}
	}
	// A third engine finds none of them.
	e2.Close()
	e3 := newEngine(t, backendfake.New(backendfake.Config{Host: host}), dir)
	if _, err := e3.State(ctx, "sb", "c", "gap"); !errdefs.IsNotFound(err) {
		t.Errorf("deleted exec after a second restart: %v, want not found", err)
	}
	if err := e3.Kill(ctx, "sb", "c", "", syscall.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e3.Wait(ctx, "sb", "c", ""); err != nil {
		t.Fatal(err)
	}
	if err := e3.DeleteSandbox(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
}

// TestExecRecordsBadOrStale: records that cannot be used are removed when
// the engine starts, and one whose process is not the recorded one (a
// pid reused by another process) is reported exited with an unknown
// status, never signalled.
func TestExecRecordsBadOrStale(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	host := backendfake.NewHost()
	e1, err := engine.New(ctx, engine.Config{StateDir: dir, Backends: []backend.Backend{backendfake.New(backendfake.Config{Host: host})}})
	if err != nil {
		t.Fatal(err)
	}
	ready(t, e1, "sb")
	container(t, e1, "sb", "c")
	if _, err := e1.Start(ctx, "sb", "c", ""); err != nil {
		t.Fatal(err)
	}
	startExec(t, e1, "sb", "c", "reused", "sleep 1000")
	e1.Close()

	// The record of "reused" names another start of its pid.
	path := execRecordPath(dir, "sb", "c", "reused")
	var rec map[string]any
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	rec["backendState"] = []byte(`{"pid":1,"start":0}`)
	data, _ = json.Marshal(rec)
	write := func(p string, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(path, string(data))
	execs := filepath.Join(dir, "sandboxes", "sb", "execs")
	bad := map[string]string{
		"c/torn.json":        `{"version":1,"id":"torn"`,
		"c/other.json":       `{"version":1,"id":"else","containerId":"c","process":{"args":["x"]},"state":"created"}`,
		"c/nospec.json":      `{"version":1,"id":"nospec","containerId":"c","state":"created"}`,
		"c/noexit.json":      `{"version":1,"id":"noexit","containerId":"c","process":{"args":["x"]},"state":"stopped"}`,
		"c/nopid.json":       `{"version":1,"id":"nopid","containerId":"c","process":{"args":["x"]},"state":"running"}`,
		"c/badstate.json":    `{"version":1,"id":"badstate","containerId":"c","process":{"args":["x"]},"state":"odd"}`,
		"c/relpath.json":     `{"version":1,"id":"relpath","containerId":"c","process":{"args":["x"]},"state":"created","stdio":{"Stdout":"../x"}}`,
		"c/.reused.json1234": `half-written`,
		"gone/x.json":        `{"version":1,"id":"x","containerId":"gone","process":{"args":["x"]},"state":"created"}`,
	}
	for name, data := range bad {
		write(filepath.Join(execs, name), data)
	}

	e2 := newEngine(t, backendfake.New(backendfake.Config{Host: host}), dir)
	for name := range bad {
		if _, err := os.Stat(filepath.Join(execs, name)); !os.IsNotExist(err) {
			t.Errorf("%s kept: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(execs, "gone")); !os.IsNotExist(err) {
		t.Errorf("records of an unknown container kept: %v", err)
	}
	for _, id := range []string{"torn", "else", "other", "nospec", "noexit", "nopid", "badstate", "relpath"} {
		if _, err := e2.State(ctx, "sb", "c", id); !errdefs.IsNotFound(err) {
			t.Errorf("exec %s: %v, want not found", id, err)
		}
	}
	ex, err := e2.Wait(ctx, "sb", "c", "reused")
	if err != nil || ex.Code != 255 {
		t.Fatalf("wait of an exec whose pid is another process = %+v, %v; want 255", ex, err)
	}
	if err := e2.Kill(ctx, "sb", "c", "reused", syscall.SIGKILL, false); !errdefs.IsNotFound(err) {
		t.Errorf("kill of a lost exec: %v, want not found", err)
	}
	// End the container (and the fake process the record named).
	if err := e2.Kill(ctx, "sb", "c", "", syscall.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.Wait(ctx, "sb", "c", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.Delete(ctx, "sb", "c", "reused"); err != nil {
		t.Fatal(err)
	}
	if err := e2.DeleteSandbox(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
}
