package runc

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// countingHolder counts the ends it holds.
type countingHolder struct{ held map[string]int }

func (h *countingHolder) Hold(path string, flag int) (func() error, error) {
	release, err := LocalFIFOHolder{}.Hold(path, flag)
	if err != nil {
		return nil, err
	}
	h.held[path]++
	return func() error { h.held[path]--; return release() }, nil
}

// TestHoldOutputsOnRecovery: a recovered container's output FIFOs are held
// again only where someone still reads them; stdout and stderr on one
// FIFO are held once; terminals and missing paths are skipped.
func TestHoldOutputsOnRecovery(t *testing.T) {
	dir := t.TempDir()
	read, orphan := filepath.Join(dir, "read"), filepath.Join(dir, "orphan")
	for _, p := range []string{read, orphan} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reader, err := unix.Open(read, unix.O_RDONLY|unix.O_NONBLOCK, 0) // containerd
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(reader)

	h := &countingHolder{held: map[string]int{}}
	release := holdOutputs(h, backend.Stdio{Stdout: read, Stderr: orphan})
	if h.held[read] != 1 || h.held[orphan] != 0 {
		t.Errorf("held %v, want the read FIFO once and not the orphan", h.held)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil { // once only
		t.Fatal(err)
	}
	if h.held[read] != 0 {
		t.Errorf("after release: held %v", h.held)
	}

	release = holdOutputs(h, backend.Stdio{Stdout: read, Stderr: read})
	if h.held[read] != 1 {
		t.Errorf("one FIFO as stdout and stderr held %d times, want 1", h.held[read])
	}
	_ = release()
	release = holdOutputs(h, backend.Stdio{Stdout: read, Terminal: true})
	release2 := holdOutputs(h, backend.Stdio{Stdout: filepath.Join(dir, "gone")})
	for p, n := range h.held {
		if n != 0 {
			t.Errorf("terminal or missing FIFO: %s held %d times", p, n)
		}
	}
	_, _ = release(), release2()
}
