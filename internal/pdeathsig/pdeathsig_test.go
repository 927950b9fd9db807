//go:build linux

package pdeathsig_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestChildOutlivesExitingThreads: goroutines that lock their thread and
// end (so that the runtime ends the thread) do not kill a child started
// with a parent-death signal, whether the starter waits for it (Run: the
// lock held for the child's life) or not (Start: forked from the thread
// kept for the process's life). Without either the forking thread is
// reused by them and the child dies with it.
func TestChildOutlivesExitingThreads(t *testing.T) {
	for name, start := range map[string]func(*exec.Cmd) <-chan error{
		"Run": func(cmd *exec.Cmd) <-chan error {
			done := make(chan error, 1)
			go func() { done <- pdeathsig.Run(cmd, syscall.SIGKILL) }()
			return done
		},
		"Start": func(cmd *exec.Cmd) <-chan error {
			// Started by a goroutine that ends, waited for by another,
			// as daemons are.
			done := make(chan error, 1)
			started := make(chan error)
			go func() { started <- pdeathsig.Start(cmd, syscall.SIGKILL) }()
			if err := <-started; err != nil {
				done <- err
				return done
			}
			go func() { done <- cmd.Wait() }()
			return done
		},
	} {
		t.Run(name, func(t *testing.T) {
			r, w := testutil.Pipe(t)
			outR, outW := testutil.Pipe(t)
			cmd := exec.Command("sh", "-c", "echo ready; exec cat >/dev/null")
			cmd.Stdin, cmd.Stdout = r, outW
			done := start(cmd)
			// The child runs once it said so.
			if _, err := outR.Read(make([]byte, 6)); err != nil {
				t.Fatal(err)
			}
			endThreads(500)
			select {
			case err := <-done:
				t.Fatalf("the child ended while its parent lived: %v", err)
			default:
			}
			_ = w.Close()
			if err := <-done; err != nil {
				t.Fatalf("child: %v; want a normal exit at the end of its input", err)
			}
		})
	}
}

func TestOutput(t *testing.T) {
	b, err := pdeathsig.Output(exec.Command("echo", "hi"), syscall.SIGKILL)
	if err != nil || string(b) != "hi\n" {
		t.Fatalf("Output = %q, %v", b, err)
	}
}

// TestForkKeepsItsThread: Fork runs every function on one thread, which
// lives on while goroutines that lock their threads end them — the
// thread a parent-death signal is bound to.
func TestForkKeepsItsThread(t *testing.T) {
	tid := func() int {
		var id int
		if err := pdeathsig.Fork(func() error { id = syscall.Gettid(); return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	first := tid()
	for range 200 {
		endThreads(1)
		if got := tid(); got != first {
			t.Fatalf("Fork ran on thread %d, earlier on %d", got, first)
		}
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", first)); err != nil {
		t.Fatalf("Fork's thread ended: %v", err)
	}
}

// endThreads lets rounds of 16 goroutines take threads and end them (a
// goroutine that ends with its thread locked ends the thread).
func endThreads(rounds int) {
	for range rounds {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				runtime.LockOSThread()
				runtime.Gosched()
			})
		}
		wg.Wait()
	}
}
