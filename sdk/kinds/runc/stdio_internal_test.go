package runc

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
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

// holdOutputs holds what recoverIO holds; the result releases it.
func holdOutputs(h FIFOHolder, s backend.Stdio) func() error { return recoverIO(h, s).Close }

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

// TestStoreHolderHandsOver: the holds of a backend with an FDStore live in
// the store; the next process adopts them on recovery, the stdin hold
// included (until CloseStdin), and releasing them empties the store.
func TestStoreHolderHandsOver(t *testing.T) {
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	for _, p := range []string{in, out} {
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	store := backendfake.NewFDStore()
	defer store.Close()
	h := newStoreHolder(store)
	reader, err := unix.Open(in, unix.O_RDONLY|unix.O_NONBLOCK, 0) // the container's stdin
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(reader)
	relIn, err := h.Hold(in, unix.O_WRONLY|unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	relOut, err := h.Hold(out, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	relOut2, err := h.Hold(out, unix.O_RDONLY|unix.O_NONBLOCK) // a second hold of one FIFO
	if err != nil {
		t.Fatal(err)
	}
	if got := store.Names(); len(got) != 2 {
		t.Fatalf("store holds %v, want the stdin and stdout holds", got)
	}
	_ = relOut2()
	if got := store.Names(); len(got) != 2 {
		t.Fatalf("one of two holds released: store holds %v", got)
	}
	_, _ = relIn, relOut // the process goes away without releasing

	next := newStoreHolder(store)
	pio := recoverIO(next, backend.Stdio{Stdin: in, Stdout: out, Stderr: out})
	if pio.inHold == nil || len(pio.outHolds) != 1 {
		t.Fatalf("recovered holds: stdin %v, outputs %d; want both adopted", pio.inHold != nil, len(pio.outHolds))
	}
	if err := pio.closeStdin(); err != nil {
		t.Fatal(err)
	}
	if got := store.Names(); len(got) != 1 || got[0] != holdName(out, unix.O_RDONLY) {
		t.Fatalf("after CloseStdin the store holds %v", got)
	}
	if err := pio.Close(); err != nil {
		t.Fatal(err)
	}
	if got := store.Names(); len(got) != 0 {
		t.Fatalf("after Close the store holds %v", got)
	}
}
