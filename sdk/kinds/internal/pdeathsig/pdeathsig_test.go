//go:build linux

package pdeathsig_test

import (
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/pdeathsig"
)

// TestChildOutlivesExitingThreads: goroutines that lock their thread and
// end (so that the runtime ends the thread) do not kill a child started
// with a parent-death signal. Without the lock held for the child's life
// the forking thread is reused by them and the child dies with it.
func TestChildOutlivesExitingThreads(t *testing.T) {
	r, w := pipe(t)
	outR, outW := pipe(t)
	cmd := exec.Command("sh", "-c", "echo ready; exec cat >/dev/null")
	cmd.Stdin, cmd.Stdout = r, outW
	done := make(chan error, 1)
	go func() { done <- pdeathsig.Run(cmd, syscall.SIGKILL) }()
	// The child runs once it said so.
	if _, err := outR.Read(make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	// Let many goroutines take threads and end them.
	for range 500 {
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				runtime.LockOSThread()
				runtime.Gosched()
			})
		}
		wg.Wait()
	}
	select {
	case err := <-done:
		t.Fatalf("the child ended while its parent lived: %v", err)
	default:
	}
	_ = w.Close()
	if err := <-done; err != nil {
		t.Fatalf("child: %v; want a normal exit at the end of its input", err)
	}
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func TestOutput(t *testing.T) {
	b, err := pdeathsig.Output(exec.Command("echo", "hi"), syscall.SIGKILL)
	if err != nil || string(b) != "hi\n" {
		t.Fatalf("Output = %q, %v", b, err)
	}
}
