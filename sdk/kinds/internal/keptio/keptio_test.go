package keptio

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
)

func fifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTerminalSurvivesDetach: a terminal's copies are detached (the
// sandboxer stops) while the process keeps writing to its terminal and a
// client to its stdin; a new Set over the same store resumes them and
// nothing written is lost; after the process exits the reader sees end of
// file and Close leaves nothing in the store.
func TestTerminalSurvivesDetach(t *testing.T) {
	dir := t.TempDir()
	stdin, stdout := fifo(t, dir, "in"), fifo(t, dir, "out")
	// containerd's ends: the reader of stdout, the writer of stdin.
	out, err := os.OpenFile(stdout, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := os.OpenFile(stdin, os.O_RDWR, 0) // RDWR: opens without a reader
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	if c, err := console.ConsoleFromFile(slave); err == nil {
		_ = c.SetRaw() // no echo of the input read below
	}
	store := backendfake.NewFDStore()
	defer store.Close()
	mf := os.NewFile(master.Fd(), "master")
	term, err := StartTerminal(NewSet(store, "k/c1"), mf, stdin, stdout)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(int(out.Fd()), false); err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(out)
	line := func(want string) {
		t.Helper()
		done := make(chan string, 1)
		go func() { l, _ := rd.ReadString('\n'); done <- l }()
		select {
		case l := <-done:
			if strings.TrimSpace(l) != want {
				t.Fatalf("read %q, want %q", l, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %q on stdout", want)
		}
	}
	slave.WriteString("one\n")
	line("one")

	term.Detach()
	// The gap: output waits in the pty, input in the FIFO.
	slave.WriteString("two\n")
	in.WriteString("typed\n")

	term, err = ResumeTerminal(NewSet(store, "k/c1"))
	if err != nil || term == nil {
		t.Fatalf("ResumeTerminal: %v, %v", term, err)
	}
	line("two")
	got := make(chan string, 1)
	go func() { l, _ := bufio.NewReader(slave).ReadString('\n'); got <- l }()
	select {
	case l := <-got:
		if strings.TrimSpace(l) != "typed" {
			t.Fatalf("terminal read %q, want typed", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("input typed during the gap did not reach the terminal")
	}
	if err := term.Resize(100, 40); err != nil {
		t.Fatal(err)
	}
	ws, err := unix.IoctlGetWinsize(int(slave.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col != 100 || ws.Row != 40 {
		t.Fatalf("size %+v, %v", ws, err)
	}

	// The process exits: its terminal closes, the reader gets EOF.
	slave.WriteString("last\n")
	slave.Close()
	line("last")
	term.Exited(5 * time.Second)
	if _, err := rd.ReadString('\n'); err == nil {
		t.Fatal("stdout did not end after the exit")
	}
	if err := term.Close(); err != nil {
		t.Fatal(err)
	}
	if n := store.Names(); len(n) != 0 {
		t.Fatalf("store keeps %v after Close", n)
	}
}
