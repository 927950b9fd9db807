package vm

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
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
	go p.copyOut(hostEnd, agentmux.Stdout, fifo, nil, 0)
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

// TestCopyOutRecordsAndAcks: each chunk the host copies to the caller's
// FIFO is then recorded in the stream's offset file and acknowledged to
// the agent, starting from the offset the copy resumes at.
func TestCopyOutRecordsAndAcks(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "stdout")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	rec, err := createOffsetRecord(filepath.Join(dir, "offsets", "init.stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	rec.delivered().Store(100) // as if 100 bytes went before a restart
	rec.received().Store(100)
	read := make(chan string, 1)
	go func() {
		f, err := os.Open(fifo)
		if err != nil {
			read <- err.Error()
			return
		}
		b, _ := io.ReadAll(f)
		f.Close()
		read <- string(b)
	}()
	p := &proc{abort: make(chan struct{})}
	hostEnd, guestEnd := net.Pipe()
	p.copies.Add(1)
	go p.copyOut(hostEnd, agentmux.Stdout, fifo, rec, 100)
	var acks []uint64
	for _, chunk := range []string{"hello ", "resumed ", "world"} {
		if _, err := guestEnd.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
		off, err := agentmux.ReadAck(guestEnd)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, off)
	}
	guestEnd.Close()
	p.copies.Wait()
	if got := <-read; got != "hello resumed world" {
		t.Errorf("caller read %q", got)
	}
	if fmt.Sprint(acks) != "[106 114 119]" {
		t.Errorf("acks %v, want [106 114 119]", acks)
	}
	r2, off, err := openOffsetRecord(filepath.Join(dir, "offsets", "init.stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if off != 119 || r2.delivered().Load() != 119 {
		t.Errorf("recorded offset %d (delivered %d), want 119", off, r2.delivered().Load())
	}
}

// readFIFO reads the FIFO at path to its end in the background.
func readFIFO(path string) <-chan string {
	read := make(chan string, 1)
	go func() {
		f, err := os.Open(path)
		if err != nil {
			read <- err.Error()
			return
		}
		b, _ := io.ReadAll(f)
		f.Close()
		read <- string(b)
	}()
	return read
}

// TestCopyOutDeliversJournal: bytes a killed process received from the
// agent (journaled and acknowledged) but had not delivered are delivered
// by the next one before what the agent sends on, once and in order; the
// stream's end received before the restart (no agent stream left) is
// delivered too; an offset file of the old format is taken over.
func TestCopyOutDeliversJournal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "offsets", "init.stdout")
	rec, err := createOffsetRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	// The killed process: received two chunks, delivered the first.
	if err := rec.receive([]byte("lost? "), 0); err != nil {
		t.Fatal(err)
	}
	rec.delivered().Store(6)
	if err := rec.receive([]byte("kept "), 6); err != nil {
		t.Fatal(err)
	}
	rec.Close()

	rec, off, err := openOffsetRecord(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	if off != 11 || rec.delivered().Load() != 6 {
		t.Fatalf("reopened at %d, delivered %d; want 11 and 6", off, rec.delivered().Load())
	}
	fifo := filepath.Join(dir, "stdout")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	read := readFIFO(fifo)
	p := &proc{abort: make(chan struct{})}
	hostEnd, guestEnd := net.Pipe()
	p.copies.Add(1)
	go p.copyOut(hostEnd, agentmux.Stdout, fifo, rec, off)
	if _, err := guestEnd.Write([]byte("and new")); err != nil {
		t.Fatal(err)
	}
	if ack, err := agentmux.ReadAck(guestEnd); err != nil || ack != 18 {
		t.Fatalf("ack %d, %v; want 18", ack, err)
	}
	guestEnd.Close()
	p.copies.Wait()
	if got := <-read; got != "kept and new" {
		t.Errorf("caller read %q, want %q", got, "kept and new")
	}

	// Received to the end before the restart: delivered without a stream.
	if err := rec.receive([]byte(" tail"), 18); err != nil {
		t.Fatal(err)
	}
	read = readFIFO(fifo)
	p = &proc{abort: make(chan struct{})}
	p.copies.Add(1)
	go p.copyOut(nil, agentmux.Stdout, fifo, rec, 23)
	p.copies.Wait()
	if got := <-read; got != " tail" {
		t.Errorf("caller read %q after the stream's end, want %q", got, " tail")
	}
	if rec.pending() {
		t.Error("journal still pending after delivery")
	}

	// The format before journals: 8 bytes, big-endian, delivered.
	old := filepath.Join(dir, "offsets", "exec.e.stdout")
	if err := os.WriteFile(old, []byte{0, 0, 0, 0, 0, 0, 0, 42}, 0o600); err != nil {
		t.Fatal(err)
	}
	r3, off, err := openOffsetRecord(old)
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	if off != 42 || r3.delivered().Load() != 42 || r3.pending() {
		t.Errorf("old offset file: resumes at %d, delivered %d", off, r3.delivered().Load())
	}
	if err := removeOffsetRecord(old); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(old + "*"); len(left) > 0 {
		t.Errorf("left after removal: %v", left)
	}
}

// TestReopenOwnsItsFile: the end handed to the VMM is a new open file, so
// that the VMM making it blocking leaves the host's pollable end alone.
func TestReopenOwnsItsFile(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "stdin")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := os.NewFile(uintptr(rfd), fifo)
	defer r.Close()
	own, err := reopen(r, unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	sc, _ := own.SyscallConn()
	_ = sc.Control(func(fd uintptr) { _ = unix.SetNonblock(int(fd), false) }) // as QEMU does
	fl, err := unix.FcntlInt(uintptr(rfd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		t.Error("the host's end turned blocking with the reopened one")
	}
}

// TestCopyOutJournalPunched: a long stream comes out byte for byte while
// the journal's delivered part is freed as it goes (the file stays
// sparse: far less allocated than the stream's length).
func TestCopyOutJournalPunched(t *testing.T) {
	dir := t.TempDir()
	rec, err := createOffsetRecord(filepath.Join(dir, "offsets", "init.stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	fifo := filepath.Join(dir, "stdout")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 12<<20)
	for i := range want {
		want[i] = byte(i*7 + i/4096)
	}
	read := readFIFO(fifo)
	p := &proc{abort: make(chan struct{})}
	hostEnd, guestEnd := net.Pipe()
	p.copies.Add(1)
	go p.copyOut(hostEnd, agentmux.Stdout, fifo, rec, 0)
	go func() {
		for off := 0; off < len(want); off += 5000 {
			if _, err := guestEnd.Write(want[off:min(off+5000, len(want))]); err != nil {
				return
			}
		}
		guestEnd.Close()
	}()
	go func() { // the acks
		for {
			if _, err := agentmux.ReadAck(guestEnd); err != nil {
				return
			}
		}
	}()
	p.copies.Wait()
	if got := <-read; got != string(want) {
		t.Fatalf("caller read %d bytes, not the %d sent (or not the same)", len(got), len(want))
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "offsets", "init.stdout.journal"), &st); err != nil {
		t.Fatal(err)
	}
	if allocated := st.Blocks * 512; allocated > 6<<20 {
		t.Errorf("journal holds %d bytes on disk after a %d-byte stream: not punched", allocated, len(want))
	}
}
