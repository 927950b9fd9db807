package keptio

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// The copier child: the test binary re-executed copies descriptor 3 to
// descriptor 4 (as a worker resuming kept descriptors does) and, when
// keptioKillAfter is n > 0, kills itself with SIGKILL right after the
// n-th chunk left the source (for a copy through memory: after the read,
// before the write).
const (
	keptioChild     = "KEPTIO_TEST_COPIER"
	keptioKillAfter = "KEPTIO_TEST_KILL_AFTER"
)

func TestMain(m *testing.M) {
	if os.Getenv(keptioChild) == "1" {
		os.Exit(copierChild())
	}
	os.Exit(m.Run())
}

func copierChild() int {
	killAfter, _ := strconv.Atoi(os.Getenv(keptioKillAfter))
	moves := 0
	testHookMoved = func(int) {
		if moves++; moves == killAfter {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
	set := NewSet(nil, "child")
	if _, err := set.Add("src", os.NewFile(3, "src")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := set.Add("dst", os.NewFile(4, "dst")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	done, err := set.Copy("dst", "src", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	<-done
	return 0
}

// runCopier runs a copier child over src and dst until it ends: killed
// by itself after killAfter chunks (it must be: the source has more), or,
// with killAfter 0, at the end of the source.
func runCopier(t *testing.T, src, dst *os.File, killAfter int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), keptioChild+"=1", keptioKillAfter+"="+strconv.Itoa(killAfter))
	cmd.ExtraFiles = []*os.File{src, dst}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if killAfter == 0 {
		if err != nil {
			t.Fatalf("copier: %v\n%s", err, stderr.String())
		}
		return
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("copier with kill after %d chunks: %v (want killed: the source had more)\n%s", killAfter, err, stderr.String())
	}
}

// counterLines is "0\n1\n2\n...": what the process writes.
func counterLines(n int) []byte {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// killedCopies writes want to w (closed at the end) while copier children
// copy src to dst, each killed after a few chunks, then one runs to the
// end; it returns what reached read (until end of file).
func killedCopies(t *testing.T, want []byte, w io.WriteCloser, src, dst *os.File, read func() []byte) []byte {
	t.Helper()
	wrote := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(w, 4096)
		_, err := bw.Write(want)
		if err == nil {
			err = bw.Flush()
		}
		wrote <- errors.Join(err, w.Close())
	}()
	got := make(chan []byte, 1)
	go func() { got <- read() }()
	for _, k := range []int{1, 2, 3, 7} {
		runCopier(t, src, dst, k)
	}
	runCopier(t, src, dst, 0)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	dst.Close() // the last writer: the reader gets end of file
	src.Close()
	return <-got
}

// TestCopyKilledMidCopy: a terminal's output (pty master to a FIFO) and a
// pipe's (the gvisor kind's stdout pipe to a FIFO) are copied by
// processes killed with SIGKILL right after a chunk left the source, and
// the next one resumes from the same descriptors (as the store keeps
// them): the reader gets every byte once, in order.
func TestCopyKilledMidCopy(t *testing.T) {
	const lines = 200000
	want := counterLines(lines)
	readAll := func(r *os.File) func() []byte {
		return func() []byte { b, _ := io.ReadAll(r); r.Close(); return b }
	}
	t.Run("terminal", func(t *testing.T) {
		master, slavePath, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			t.Fatal(err)
		}
		r, w, err := os.Pipe() // stands for containerd's FIFO
		if err != nil {
			t.Fatal(err)
		}
		// A descriptor of its own (the console's is closed with it).
		mfd, err := unix.FcntlInt(master.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		master.Close()
		mf := os.NewFile(uintptr(mfd), "master")
		got := killedCopies(t, want, slave, mf, w, readAll(r))
		requireSame(t, got, bytes.ReplaceAll(want, []byte("\n"), []byte("\r\n"))) // the terminal's output processing
	})
	t.Run("pipe", func(t *testing.T) {
		pr, pw, err := os.Pipe() // the process's stdout pipe
		if err != nil {
			t.Fatal(err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		got := killedCopies(t, want, pw, pr, w, readAll(r))
		requireSame(t, got, want)
	})
}

// TestCopyKilledMidCopyBuffered: where splice cannot be used (here a
// destination file opened to append) the copy goes through memory, and
// a kill between a read and its write loses what was read: the harness
// above sees it.
func TestCopyKilledMidCopyBuffered(t *testing.T) {
	want := counterLines(200000)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "out")
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	killedCopies(t, want, pw, pr, dst, func() []byte { return nil })
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) >= len(want) {
		t.Fatalf("the buffered copy killed between reads and writes kept %d of %d bytes; want some lost", len(got), len(want))
	}
}

// requireSame fails unless got is want, saying where they part.
func requireSame(t *testing.T, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(0, i-40)
	t.Fatalf("got %d bytes, want %d; they differ at byte %d: got %q, want %q", len(got), len(want), i,
		got[lo:min(len(got), i+40)], want[lo:min(len(want), i+40)])
}
