package vm

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCopyOutAbort: a caller whose output FIFO is open but never read
// must not hold a process's output copy (and so its exit and delete)
// forever: an abort ends the copy.
func TestCopyOutAbort(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "stdout")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd) // a reader that never reads

	p := &proc{abort: make(chan struct{})}
	hostEnd, guestEnd := net.Pipe()
	p.copies.Add(1)
	go p.copyOut(hostEnd, fifo)
	go func() { // more than a pipe buffer holds
		buf := make([]byte, 32<<10)
		for range 16 {
			if _, err := guestEnd.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // the copy fills the FIFO and blocks
	close(p.abort)
	_ = guestEnd.Close()
	done := make(chan struct{})
	go func() { p.copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("output copy still blocked on a FIFO nobody reads after abort")
	}
	_ = os.Remove(fifo)
}
