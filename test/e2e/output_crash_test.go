package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// counterLines returns the numbers a container logged, one per line of
// its CRI log ("<time> stdout F <text>"), in order.
func counterLines(t *testing.T, path string) []int {
	t.Helper()
	data, _ := os.ReadFile(path)
	var out []int
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[1] != "stdout" {
			continue
		}
		n, err := strconv.Atoi(f[3])
		if err != nil {
			t.Fatalf("log line %q", l)
		}
		out = append(out, n)
	}
	return out
}

// TestSandboxerCrashKeepsOutput kills the sandboxer's worker (kill -9)
// while a container writes a line every 50 ms: the runc kind passes
// containerd's FIFO to the container as its stdout, so nothing of the
// output goes through the worker. The counter (a child of the container's
// init, so that SIGPIPE would kill it) keeps running, and its log has
// every line, in order, across the crash.
func TestSandboxerCrashKeepsOutput(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	id := e.startContainer(t, p, "counter", "(i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done) & wait $!")
	log := filepath.Join(p.cfg.LogDirectory, "counter.log")
	testutil.Eventually(t, 30*time.Second, func() bool { return len(counterLines(t, log)) >= 5 }, "the counter's first lines in its log")

	old := e.workerPid(t)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return !alive(old) }, "the worker is gone")
	atCrash := len(counterLines(t, log))
	e.waitNewWorker(t, old, p)

	testutil.Eventually(t, 30*time.Second, func() bool { return len(counterLines(t, log)) >= atCrash+20 }, "20 more lines after the crash")
	for i, n := range counterLines(t, log) {
		if n != i {
			t.Fatalf("log line %d is %d: output lost across the crash (lines at the crash: %d): %v", i, n, atCrash, counterLines(t, log))
		}
	}
	e.requireRunning(t, id)
	e.removePod(t, p)
}
