package keptio

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// memStore is a backend.FDStore in this process: it keeps copies.
type memStore struct {
	mu  sync.Mutex
	fds map[string]int
}

func newMemStore() *memStore { return &memStore{fds: map[string]int{}} }

func (m *memStore) Store(name string, f *os.File) error {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.fds[name]; ok {
		unix.Close(old)
	}
	m.fds[name] = fd
	return nil
}

func (m *memStore) Take(name string) *os.File {
	m.mu.Lock()
	defer m.mu.Unlock()
	fd, ok := m.fds[name]
	if !ok {
		return nil
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(nfd), name)
}

func (m *memStore) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if fd, ok := m.fds[name]; ok {
		unix.Close(fd)
		delete(m.fds, name)
	}
	return nil
}

func (m *memStore) names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for n := range m.fds {
		out = append(out, n)
	}
	return out
}

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
	store := newMemStore()
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
	if n := store.names(); len(n) != 0 {
		t.Fatalf("store keeps %v after Close", n)
	}
}
