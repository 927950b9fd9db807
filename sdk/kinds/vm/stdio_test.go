package vm

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
)

// TestPollableStdin: the caller's stdin FIFO, as the host copies it to
// the guest, delivers what is written, reads end of file once the held
// write end and the writer are closed (CloseStdin), and a read blocked on
// it ends when the proc closes it (Delete while a client keeps its end).
func TestPollableStdin(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "stdin")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	r, held, err := hoststdio.OpenInput(path)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := pollable(r)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	held.Close()
	b, err := io.ReadAll(pr)
	if err != nil || string(b) != "data" {
		t.Fatalf("read %q, %v; want data then EOF", b, err)
	}
	pr.Close()

	// A client that keeps its end open: Close ends the blocked read.
	r, held, err = hoststdio.OpenInput(path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if pr, err = pollable(r); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := pr.Read(make([]byte, 8))
		done <- err
	}()
	pr.Close()
	if err := <-done; err == nil {
		t.Fatal("read on a closed stdin succeeded")
	}
}
