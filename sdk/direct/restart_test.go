package direct_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

// TestRestartResumesOutputAndEvents closes the service and the engine under
// a running container that prints a counter (as a sandboxer worker does on
// a live upgrade; the runc backend, which holds the FIFOs' read ends, stays
// as a supervisor's descriptor store would keep them) and opens new ones on
// the same state dir: the output resumes from the offset reached, without
// gap or repeat, and the events from the last sequence seen.
func TestRestartResumesOutputAndEvents(t *testing.T) {
	testutil.RequireRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	stateDir := t.TempDir()
	open := func() (*engine.Engine, *direct.Service) {
		e, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return e, direct.New(e, direct.WithHostAccess(true))
	}
	e, s := open()
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	sb, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: "runc"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.DeleteSandbox(context.Background(), sb.ID) }()
	if _, err := s.StartSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	var after uint64
	evctx, evcancel := context.WithCancel(ctx)
	events := make(chan engine.Event, 100)
	go func() {
		_ = s.WatchEvents(evctx, direct.EventFilter{}, &after, func(ev engine.Event) error {
			events <- ev
			return nil
		})
	}()
	c, err := s.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: sb.ID, RootfsPath: rootfs,
		Process: direct.Process{Args: []string{"sh", "-c", "i=0; while [ $i -lt 300 ]; do echo $i; i=$((i+1)); usleep 10000; done; exit 3"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cid := c.Status.ContainerID
	if _, err := s.StartContainer(ctx, cid); err != nil {
		t.Fatal(err)
	}
	// Read some output, then "restart".
	var got strings.Builder
	var next int64
	out, err := s.Output(ctx, cid, "")
	if err != nil {
		t.Fatal(err)
	}
	fctx, fcancel := context.WithCancel(ctx)
	_, err = out.Follow(fctx, -1, func(ch direct.Chunk) error {
		if ch.Offset != next {
			t.Errorf("chunk at %d, want %d", ch.Offset, next)
		}
		got.Write(ch.Data)
		next = ch.Offset + int64(len(ch.Data))
		if strings.Count(got.String(), "\n") >= 20 {
			fcancel()
		}
		return nil
	})
	if err != nil && ctx.Err() != nil {
		t.Fatal(err)
	}
	var seen []engine.Event
	for len(seen) < 4 { // sandbox create, start; task create, start
		seen = append(seen, <-events)
	}
	evcancel()
	last := seen[len(seen)-1].Seq
	s.Close()
	e.Close()

	e, s = open()
	defer func() { s.Close(); e.Close() }()
	out, err = s.Output(ctx, cid, "")
	if err != nil {
		t.Fatal(err)
	}
	exit, err := out.Follow(ctx, next, func(ch direct.Chunk) error {
		if ch.Offset != next {
			t.Errorf("chunk at %d, want %d", ch.Offset, next)
		}
		got.Write(ch.Data)
		next = ch.Offset + int64(len(ch.Data))
		return nil
	})
	// (The exit code is the container's own only with a supervisor that
	// reaps for the next worker; in one process the old backend's reaper
	// took it: not checked here.)
	if err != nil {
		t.Fatalf("Follow after restart: %+v, %v", exit, err)
	}
	var want strings.Builder
	for i := range 300 {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if got.String() != want.String() {
		t.Fatalf("output across the restart differs from the counter:\n%q", got.String())
	}
	// Events resume after the last one seen, with the exit.
	var evs []engine.Event
	_ = s.WatchEvents(ctx, direct.EventFilter{}, &last, func(ev engine.Event) error {
		evs = append(evs, ev)
		if ev.Topic == engine.TopicTaskExit {
			return errStop
		}
		return nil
	})
	if len(evs) == 0 || evs[0].Seq != last+1 || evs[len(evs)-1].Topic != engine.TopicTaskExit {
		t.Fatalf("events after %d: %+v", last, evs)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq != evs[i-1].Seq+1 {
			t.Fatalf("events not consecutive: %+v", evs)
		}
	}
	if _, err := s.Output(ctx, "nope", ""); !errdefs.IsNotFound(err) {
		t.Errorf("Output of an unknown container: %v", err)
	}
}

var errStop = errors.New("stop")

// TestRestartResumesExecOutput: the output ring of an exec'd process made
// through the API is taken over by the next service too (the engine
// recovers the process): Output serves it after the restart, and a
// follower resumes from the offset it reached without gap or repeat.
func TestRestartResumesExecOutput(t *testing.T) {
	testutil.RequireRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	stateDir := t.TempDir()
	open := func() (*engine.Engine, *direct.Service) {
		e, err := engine.New(ctx, engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return e, direct.New(e, direct.WithHostAccess(true))
	}
	e, s := open()
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	sb, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: "runc"})
	if err != nil {
		t.Fatal(err)
	}
	// The engine and service open at the end (the container still runs:
	// the sandbox is deleted before they close).
	defer func() { _ = e.DeleteSandbox(context.Background(), sb.ID); s.Close(); e.Close() }()
	if _, err := s.StartSandbox(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	c, err := s.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: sb.ID, RootfsPath: rootfs,
		Process: direct.Process{Args: []string{"sleep", "600"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cid := c.Status.ContainerID
	if _, err := s.StartContainer(ctx, cid); err != nil {
		t.Fatal(err)
	}
	const n = 300
	ex, err := s.Exec(ctx, direct.ExecRequest{ContainerID: cid, ExecID: "counter", Process: direct.Process{
		Args: []string{"sh", "-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do echo $i; i=$((i+1)); usleep 10000; done; echo done >&2", n)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	var next int64
	follow := func(ctx context.Context, stop func()) error {
		out, err := s.Output(ctx, cid, ex.ExecID)
		if err != nil {
			return err
		}
		_, err = out.Follow(ctx, next, func(ch direct.Chunk) error {
			if ch.Offset != next {
				t.Errorf("chunk at %d, want %d", ch.Offset, next)
			}
			got.Write(ch.Data)
			next = ch.Offset + int64(len(ch.Data))
			if stop != nil && strings.Count(got.String(), "\n") >= 20 {
				stop()
			}
			return nil
		})
		return err
	}
	fctx, fcancel := context.WithCancel(ctx)
	if err := follow(fctx, fcancel); err != nil && ctx.Err() != nil {
		t.Fatal(err)
	}
	s.Close()
	e.Close()

	e, s = open()
	if err := follow(ctx, nil); err != nil {
		t.Fatalf("Follow of the exec's output after the restart: %v", err)
	}
	var want strings.Builder
	for i := range n {
		fmt.Fprintf(&want, "%d\n", i)
	}
	want.WriteString("done\n")
	if got.String() != want.String() {
		t.Fatalf("exec output across the restart differs from the counter:\n%q", got.String())
	}
	if _, err := s.Output(ctx, cid, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("Output of an unknown exec: %v", err)
	}
}
