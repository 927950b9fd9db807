package runc_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

// recordingHolder is a FIFOHolder that stands for a supervisor: it holds
// the FIFO ends in this process, and the test can look at them and let
// them go.
type recordingHolder struct {
	mu  sync.Mutex
	fds map[int]string // fd -> path
}

func (h *recordingHolder) Hold(path string, flag int) (func() error, error) {
	fd, err := unix.Open(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.fds[fd] = path
	h.mu.Unlock()
	return func() error { return h.release(fd) }, nil
}

func (h *recordingHolder) release(fd int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.fds[fd]; !ok {
		return nil
	}
	delete(h.fds, fd)
	return unix.Close(fd)
}

// held returns the fds held for path.
func (h *recordingHolder) held(path string) []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	var fds []int
	for fd, p := range h.fds {
		if p == path {
			fds = append(fds, fd)
		}
	}
	return fds
}

// lineReader reads a FIFO the way containerd does, and can go away and
// come back; what it read is kept across.
type lineReader struct {
	path string
	mu   sync.Mutex
	buf  bytes.Buffer
	f    io.ReadCloser
	done chan struct{}
}

func (r *lineReader) open(t *testing.T) {
	t.Helper()
	// As containerd opens it: the open completes once there is a
	// writer, so that reading does not end before the first one.
	f, err := fifo.OpenFifo(context.Background(), r.path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.f, r.done = f, make(chan struct{})
	go func() {
		defer close(r.done)
		b := make([]byte, 512)
		for {
			n, err := f.Read(b)
			r.mu.Lock()
			r.buf.Write(b[:n])
			r.mu.Unlock()
			if err != nil {
				return // closed (or every writer gone)
			}
		}
	}()
}

// close closes the reader (containerd is away).
func (r *lineReader) close() {
	if r.f != nil {
		r.f.Close()
		<-r.done
		r.f = nil
	}
}

// numbers returns the complete lines read, as numbers.
func (r *lineReader) numbers(t *testing.T) []int {
	r.mu.Lock()
	s := r.buf.String()
	r.mu.Unlock()
	lines := strings.Split(s, "\n")
	var out []int
	for _, l := range lines[:len(lines)-1] { // the last one is incomplete
		n, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("line %q in output %q", l, s)
		}
		out = append(out, n)
	}
	return out
}

// fdsOn counts this process's descriptors open on the file at path for
// reading or writing (not O_PATH handles, which containerd's fifo package
// keeps too).
func fdsOn(t *testing.T, path string) int {
	t.Helper()
	want, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		st, err := os.Stat(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || !os.SameFile(st, want) {
			continue
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue
		}
		var flags uint64
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				flags, _ = strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			}
		}
		if flags&unix.O_PATH == 0 {
			n++
		}
	}
	return n
}

// counterRuns checks that the container's init and its counter still run.
func counterRuns(t *testing.T, pid int) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatalf("container init %d: %v", pid, err)
	}
	children := strings.Fields(string(data))
	if len(children) == 0 {
		t.Fatalf("container init %d has no counter process", pid)
	}
	for _, c := range append([]string{strconv.Itoa(pid)}, children[0]) {
		n, _ := strconv.Atoi(c)
		if s := procState(n); s == "" || s == "Z" {
			t.Fatalf("container process %d is %q", n, s)
		}
	}
}

// procState is the state letter of pid in /proc ("" if it is gone).
func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+3 <= len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// TestOutputSurvivesTheSandboxer: a container's stdout is the FIFO
// containerd reads, not a pipe to the sandboxer. When the sandboxer lets
// go of everything but what its FIFOHolder holds (the backend is closed,
// and containerd's reader is away meanwhile), the container keeps running
// and writing, and once a reader is back its output goes on with no line
// lost. Without the held read end the same counter dies of SIGPIPE.
func TestOutputSurvivesTheSandboxer(t *testing.T) {
	testutil.RequireRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := t.TempDir()
	holder := &recordingHolder{fds: map[int]string{}}
	b, err := runc.New(runc.Config{Root: root, FIFOHolder: holder})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sb, err := b.Create(ctx, backend.SandboxConfig{ID: "survive", Namespace: "test", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Delete(context.Background()); err != nil {
			t.Errorf("delete sandbox: %v", err)
		}
	})

	fifo := filepath.Join(t.TempDir(), "stdout")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &lineReader{path: fifo}
	r.open(t)
	defer r.close()

	const id = "counter"
	bundle := t.TempDir()
	// The counter runs in a child of the container's init: as PID 1 of
	// its namespace the init would not die of SIGPIPE (it would lose its
	// output instead). The init ends as the counter does.
	spec := testutil.BusyboxBundle(t, bundle, "(i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done) & wait $!")
	c, err := sb.CreateContainer(ctx, backend.ContainerConfig{ID: id, Bundle: bundle, Spec: spec, Stdio: backend.Stdio{Stdout: fifo}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The backend is closed by then: remove the container with runc.
		out, err := exec.Command("runc", "--root", filepath.Join(root, "test"), "delete", "--force", id).CombinedOutput()
		if err != nil {
			t.Errorf("runc delete: %v: %s", err, out)
		}
	})
	pid32, err := c.Init().Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(pid32)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(r.numbers(t)) >= 5 }, "5 lines of output")

	// The container's stdout is the FIFO itself.
	st, err := os.Stat(fmt.Sprintf("/proc/%d/fd/1", pid))
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := os.Stat(fifo); !os.SameFile(st, want) {
		t.Fatalf("the container's stdout is %v, not the FIFO", st.Mode())
	}
	if n := len(holder.held(fifo)); n != 1 {
		t.Fatalf("%d held ends of the FIFO, want 1 (its read end)", n)
	}

	// The sandboxer lets go: the backend stops (and with it every
	// watcher); nothing but the holder's and the test reader's ends of
	// the FIFO is open in this process.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := fdsOn(t, fifo); n != 2 {
		t.Fatalf("this process has %d descriptors on the FIFO, want 2 (the held read end and the test's reader)", n)
	}

	// containerd is away: the container's output waits in the FIFO.
	seen := len(r.numbers(t))
	r.close()
	heldFd := holder.held(fifo)[0]
	testutil.Eventually(t, 10*time.Second, func() bool {
		n, err := unix.IoctlGetInt(heldFd, unix.TIOCINQ) // FIONREAD
		return err == nil && n >= 30
	}, "output written while no one reads")
	counterRuns(t, pid)

	// containerd is back: the output goes on where it stopped.
	r.open(t)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(r.numbers(t)) >= seen+20 }, "20 more lines")
	for i, n := range r.numbers(t) {
		if n != i {
			t.Fatalf("line %d is %d: output lost or reordered: %v", i, n, r.numbers(t))
		}
	}
	counterRuns(t, pid)

	// Without the held end, a FIFO with no reader kills the writer.
	r.close()
	if err := holder.release(heldFd); err != nil {
		t.Fatal(err)
	}
	exited := make(chan unix.WaitStatus, 1)
	go func() {
		// This process is the subreaper the container's init was left to.
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, 0, nil)
		exited <- ws
	}()
	select {
	case ws := <-exited:
		if ws.ExitStatus() != 128+int(unix.SIGPIPE) {
			t.Errorf("without a reader the container ended with %v, want its counter killed by SIGPIPE (exit 141)", ws)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the counter still runs with no reader on its stdout")
	}
}

// TestStdoutAndStderrOnOnePath: one FIFO as both stdout and stderr (as
// for combined output) gets both streams, and a plain file is appended to.
func TestStdoutAndStderrOnOnePath(t *testing.T) {
	testutil.RequireRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sb, err := b.Create(ctx, backend.SandboxConfig{ID: "onepath", Namespace: "test", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sb.Delete(context.Background()); err != nil {
			t.Errorf("delete sandbox: %v", err)
		}
	}()
	run := func(id string, stdio backend.Stdio) {
		t.Helper()
		bundle := t.TempDir()
		spec := testutil.BusyboxBundle(t, bundle, "echo out; echo err >&2")
		c, err := sb.CreateContainer(ctx, backend.ContainerConfig{ID: id, Bundle: bundle, Spec: spec, Stdio: stdio})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Init().Start(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := c.Init().Wait(ctx); err != nil || st.Code != 0 {
			t.Fatalf("wait: %+v, %v", st, err)
		}
		if err := c.Init().Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}

	fifoPath := filepath.Join(t.TempDir(), "combined")
	if err := unix.Mkfifo(fifoPath, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &lineReader{path: fifoPath}
	r.open(t)
	run("combined", backend.Stdio{Stdout: fifoPath, Stderr: fifoPath})
	select {
	case <-r.done: // every writer is gone: end of file
	case <-time.After(30 * time.Second):
		t.Fatal("no end of file on the combined FIFO")
	}
	r.close()
	if got := r.buf.String(); got != "out\nerr\n" {
		t.Errorf("combined output = %q, want out and err", got)
	}

	file := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(file, []byte("before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run("file", backend.Stdio{Stdout: file, Stderr: file})
	if got, _ := os.ReadFile(file); string(got) != "before\nout\nerr\n" {
		t.Errorf("file output = %q, want it appended", got)
	}
}
