package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// Environment of the fake worker (this test binary, started by Run).
const (
	envSocket    = "MAGNETAR_TEST_SOCKET"     // the socket it serves
	envVersionOK = "MAGNETAR_TEST_VERSION_OK" // a file whose existence makes --version succeed
	envGarbage   = "MAGNETAR_TEST_GARBAGE"    // send garbage on the control channel first
)

// TestMain makes the test binary a fake worker when a supervisor starts
// it: it takes its listener from the supervisor and answers every
// connection with its pid.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "--version" {
		if _, err := os.Stat(os.Getenv(envVersionOK)); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(EnvFD) != "" {
		os.Exit(fakeWorkerMain())
	}
	os.Exit(m.Run())
}

func fakeWorkerMain() int {
	c, err := Connect()
	if err != nil {
		return 3
	}
	if os.Getenv(envGarbage) != "" {
		_, _, _ = c.conn.WriteMsgUnix([]byte("{not json"), nil, nil)
		// The supervisor drops the channel: calls fail from now on.
		if _, err := c.Listen(os.Getenv(envSocket)); err == nil {
			return 4
		}
		return 5
	}
	l, err := c.Listen(os.Getenv(envSocket))
	if err != nil {
		return 6
	}
	for {
		conn, err := l.Accept()
		if err != nil {
			return 7
		}
		conn.Write([]byte(strconv.Itoa(os.Getpid()) + "\n"))
		conn.Close()
	}
}

// ask connects to the worker's socket and returns the pid it answers.
func ask(t *testing.T, path string) int {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect while the supervisor holds the socket: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer from a worker: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestSupervisor runs a supervisor over the fake worker: a connection made
// while no worker runs waits for the next one, a killed worker is
// replaced, an upgrade to a binary that does not start leaves the worker
// serving, one that starts replaces it, and stopping the supervisor stops
// the worker and removes the socket.
func TestSupervisor(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "api.sock")
	versionOK := filepath.Join(dir, "version-ok")
	t.Setenv(envSocket, sock)
	t.Setenv(envVersionOK, versionOK)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Exe: exe, PIDFile: filepath.Join(dir, "run", "sandboxer.pid")}, hclog.NewNullLogger())
	}()
	stopped := false
	defer func() {
		if !stopped {
			cancel()
			<-done
		}
	}()
	testutil.Eventually(t, time.Minute, func() bool { _, err := os.Stat(sock); return err == nil }, "the supervisor listens")

	first := ask(t, sock)
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	second := ask(t, sock) // made during the gap or after: answered either way
	if second == first {
		t.Fatalf("the killed worker %d still answers", first)
	}

	// An upgrade whose binary fails --version is refused.
	if _, err := Upgrade(filepath.Join(dir, "run", "sandboxer.pid")); err != nil {
		t.Fatal(err)
	}
	if got := ask(t, sock); got != second {
		t.Fatalf("after a refused upgrade the worker is %d, want %d still serving", got, second)
	}
	if !alive(second) {
		t.Fatal("the worker stopped after a refused upgrade")
	}
	// One whose binary starts replaces the worker.
	if err := os.WriteFile(versionOK, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Upgrade(filepath.Join(dir, "run", "sandboxer.pid")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Minute, func() bool { return !alive(second) }, "the old worker stops")
	if third := ask(t, sock); third == second {
		t.Fatalf("the upgraded worker is still %d", third)
	}

	cancel()
	stopped = true
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after the supervisor stopped: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "run", "sandboxer.pid")); !os.IsNotExist(err) {
		t.Errorf("pid file left after the supervisor stopped: %v", err)
	}
}

// TestGarbageOnControlChannel: a worker that sends garbage loses its
// control channel (its calls fail); the supervisor keeps running and
// starts a new worker when it exits.
func TestGarbageOnControlChannel(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(envSocket, filepath.Join(dir, "api.sock"))
	t.Setenv(envGarbage, "1")
	s := &supervisor{cfg: Config{Exe: mustExe(t)}, log: hclog.NewNullLogger(), reaper: newReaper(), listeners: map[string]*net.UnixListener{}, relays: map[string]*Relay{}}
	defer s.reaper.close()
	defer s.closeAll()
	w, err := s.start()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-w.exit:
		if e.Code != 5 {
			t.Errorf("fake worker exit code %d, want 5 (its call failed after the garbage)", e.Code)
		}
	case <-time.After(time.Minute):
		t.Fatal("worker still runs")
	}
	s.gone(w)
	if len(s.listeners) != 0 {
		t.Errorf("the supervisor made a listener for a worker that sent garbage")
	}
}

func TestRequestJSON(t *testing.T) {
	data, err := json.Marshal(request{ID: 1, Op: opRelay, Path: "/a", Backend: "/b"})
	if err != nil || !strings.Contains(string(data), `"backend":"/b"`) {
		t.Fatalf("%s, %v", data, err)
	}
	s := &supervisor{log: hclog.NewNullLogger(), listeners: map[string]*net.UnixListener{}, relays: map[string]*Relay{}}
	for _, bad := range []string{"", "relative/x.sock", "/a/../b.sock"} {
		if _, err := s.listener(bad); err == nil {
			t.Errorf("listener(%q) accepted", bad)
		}
		if err := s.relay(bad, "/x"); err == nil {
			t.Errorf("relay(%q) accepted", bad)
		}
	}
}

func mustExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// alive reports whether pid runs (a zombie counts as gone).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	return i < 0 || !strings.HasPrefix(strings.TrimSpace(string(data[i+1:])), "Z")
}
