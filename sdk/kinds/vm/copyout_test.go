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
	if err := rec.store(100); err != nil {
		t.Fatal(err)
	}
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
	r2.Close()
	if off != 119 {
		t.Errorf("recorded offset %d, want 119", off)
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
