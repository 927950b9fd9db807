package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// seqLines returns the numbers a container logged as lines "<prefix><n>"
// in its CRI log ("<time> stdout F <text>"; a terminal's lines end in
// \r), in order.
func seqLines(t *testing.T, path, prefix string) []int {
	t.Helper()
	data, _ := os.ReadFile(path)
	var out []int
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 || f[1] != "stdout" || !strings.HasPrefix(f[3], prefix) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(f[3], "\r")[len(prefix):])
		if err != nil {
			continue // a terminal's echo of typed input, say
		}
		out = append(out, n)
	}
	return out
}

// requireSequence fails unless the log has 0, 1, 2, ... with no gap and no
// duplicate, and at least min lines.
func requireSequence(t *testing.T, path, prefix string, min int) int {
	t.Helper()
	return sequence(t, path, prefix, min, -1)
}

// maxHeldByContainerd bounds the lines requireSequenceAcrossKill lets
// containerd take with it.
const maxHeldByContainerd = 2

// requireSequenceAcrossKill is requireSequence for a log that containerd
// was writing when it was killed (-9), with killedAt lines: the line or
// two it had received and not yet written die with it (as with its own
// FIFOs: what its log copier has read is in its memory only, here also
// what a stream carried to its socket), so at most maxHeldByContainerd
// lines may be missing, right after the first killedAt. Everything printed
// later (the container went on printing while containerd was down, for
// seconds) must be there, once and in order.
func requireSequenceAcrossKill(t *testing.T, path string, killedAt, min int) {
	t.Helper()
	sequence(t, path, "", min, killedAt)
}

// sequence waits for at least min lines "<prefix><n>" in the log at path
// and fails unless they are 0, 1, 2, ... in order, once each, but for at
// most maxHeldByContainerd missing right after the first killedAt (-1:
// none); it returns how many there are.
func sequence(t *testing.T, path, prefix string, min, killedAt int) int {
	t.Helper()
	var got []int
	testutil.Eventually(t, 30*time.Second, func() bool { got = seqLines(t, path, prefix); return len(got) >= min }, "%d lines %q... in %s", min, prefix, path)
	skip := 0
	for i, n := range got {
		if n == i+skip {
			continue
		}
		if i == killedAt && n > i && n-i <= maxHeldByContainerd {
			skip = n - i
			t.Logf("%s: lines %d to %d were held by containerd when it was killed", filepath.Base(path), i, n-1)
			continue
		}
		t.Fatalf("%s: line %d is %s%d: output lost or repeated across the restart (containerd killed after line %d, -1: not killed): %v", filepath.Base(path), i, prefix, n, killedAt, got)
	}
	return len(got)
}

// restartKind is a sandbox kind under TestRestartKeepsContainers.
type restartKind struct {
	name    string
	require func(t *testing.T)
	pod     func(t *testing.T) *pod
	// counter starts a container printing 0, 1, 2, ... every 100 ms.
	counter func(t *testing.T, p *pod) string
	// exec: the kind runs exec'd processes and terminals.
	exec bool

	p              *pod
	counterID      string
	counterLog     string
	ttyID, ttyLg   string
	fastID, fastLg string // a terminal printing a fast counter
}

// TestRestartKeepsContainers runs a pod of each kind with a container
// printing a counter every 100 ms (and, where the kind has terminals, a
// container with a terminal printing one too and echoing its input, and a
// terminal printing a fast counter in bursts), then
// kills the sandboxer's worker (kill -9) and live-upgrades it. After each:
// the containers still run, containerd saw no exit of them on its event
// stream, their CRI logs have every number once, in order; crictl exec
// (plain, -i and -it) and attach work on the containers that ran before
// the restart, and the terminal's output and input work on.
func TestRestartKeepsContainers(t *testing.T) {
	e := setup(t)
	counterScript := "(i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done) & wait $!"
	ttyScript := "(i=0; while :; do echo t$i; i=$((i+1)); sleep 0.1; done) & while read l; do echo got:$l; done"
	// Bursts of 200 lines (a few KiB) every 20 ms: the terminal's output
	// is being copied most of the time, so the kill lands in a copy.
	fastScript := "i=0; while :; do j=0; while [ $j -lt 200 ]; do echo f$i; i=$((i+1)); j=$((j+1)); done; usleep 20000; done"
	kinds := []*restartKind{
		{name: "runc", pod: func(t *testing.T) *pod { return e.runPod(t, false) }, exec: true,
			counter: func(t *testing.T, p *pod) string { return e.startContainer(t, p, "counter", counterScript) }},
		{name: "gvisor", require: func(t *testing.T) { requireRunsc(t) }, pod: func(t *testing.T) *pod { return e.gvisorPod(t, false) }, exec: true,
			counter: func(t *testing.T, p *pod) string { return e.startContainer(t, p, "counter", counterScript) }},
		{name: "wasm", require: func(t *testing.T) { e.importHelloWasm(t) }, pod: func(t *testing.T) *pod { return e.runPodWith(t, "magnetar-wasm", false) },
			counter: func(t *testing.T, p *pod) string { return e.startWasm(t, p, "counter", "-count", "100ms") }},
	}
	if _, err := exec.LookPath("script"); err != nil {
		testutil.SkipOrFail(t, "script (bsdutils) is needed to give crictl a terminal: %v", err)
	}
	exits := e.watchTaskExits(t)
	sup := e.sandboxer.Process.Pid
	for _, k := range kinds {
		if k.require != nil {
			k.require(t)
		}
		k.p = k.pod(t)
		k.counterID = k.counter(t, k.p)
		k.counterLog = filepath.Join(k.p.cfg.LogDirectory, "counter.log")
		if k.exec {
			k.ttyID = e.start(t, k.p, &runtime.ContainerConfig{
				Metadata: &runtime.ContainerMetadata{Name: "tty"},
				Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
				Command:  []string{"sh", "-c", ttyScript},
				LogPath:  "tty.log",
				Tty:      true,
				Stdin:    true,
			})
			k.ttyLg = filepath.Join(k.p.cfg.LogDirectory, "tty.log")
			k.fastID = e.start(t, k.p, &runtime.ContainerConfig{
				Metadata: &runtime.ContainerMetadata{Name: "ttyfast"},
				Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
				Command:  []string{"sh", "-c", fastScript},
				LogPath:  "ttyfast.log",
				Tty:      true,
			})
			k.fastLg = filepath.Join(k.p.cfg.LogDirectory, "ttyfast.log")
		}
	}
	for _, k := range kinds {
		requireSequence(t, k.counterLog, "", 5)
	}

	restarts := []struct {
		name string
		do   func(t *testing.T)
	}{
		{"kill-9", func(t *testing.T) {
			if err := syscall.Kill(e.workerPid(t), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}},
		{"upgrade", func(t *testing.T) {
			// Install a "new" binary (a copy: a new file at the same
			// path): the supervisor re-executes it in the upgrade.
			installCopy(t, filepath.Join(e.binDir, "magnetar-sandboxer"))
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", sup)); !strings.HasSuffix(exe, " (deleted)") {
				t.Fatalf("supervisor's executable after installing a new binary: %q", exe)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, filepath.Join(e.binDir, "magnetar-sandboxer"), "upgrade", "--run-dir", e.runDir).CombinedOutput()
			if err != nil {
				t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
			}
		}},
	}
	for _, r := range restarts {
		old := e.workerPid(t)
		before, beforeTTY, beforeFast := map[string]int{}, map[string]int{}, map[string]int{}
		for _, k := range kinds {
			before[k.name] = len(seqLines(t, k.counterLog, ""))
			beforeTTY[k.name] = len(seqLines(t, k.ttyLg, "t"))
			beforeFast[k.name] = len(seqLines(t, k.fastLg, "f"))
		}
		r.do(t)
		e.waitNewWorker(t, old, kinds[0].p)
		// The same supervisor (re-executed by the upgrade: the new binary).
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sup)); err != nil || strings.HasSuffix(exe, " (deleted)") {
			var why []string
			for _, l := range strings.Split(e.sbLog.String(), "\n") {
				if strings.Contains(l, "supervisor") && (strings.Contains(l, "WARN") || strings.Contains(l, "ERROR") || strings.Contains(l, "re-execut")) {
					why = append(why, l)
				}
			}
			t.Errorf("after %s the supervisor %d runs %q (%v), want the binary installed; the supervisor said:\n%s", r.name, sup, exe, err, strings.Join(why[max(0, len(why)-10):], "\n"))
		}
		for _, k := range kinds {
			t.Run(r.name+"/"+k.name, func(t *testing.T) {
				requireSequence(t, k.counterLog, "", before[k.name]+10)
				e.requireRunning(t, k.counterID)
				if !k.exec {
					return
				}
				e.requireRunning(t, k.ttyID)
				requireSequence(t, k.ttyLg, "t", beforeTTY[k.name]+10)
				// The fast terminal: every line once, in order, across
				// the kill in the middle of its output.
				requireSequence(t, k.fastLg, "f", beforeFast[k.name]+2000)
				e.checkRecoveredExec(t, k.counterID, r.name)
				// Input to the terminal, through containerd's attach.
				bin, _ := harness.DefaultBinDir()
				cmd := exec.CommandContext(ctxT(t), filepath.Join(bin, "crictl"), "--config", e.ctrd.CrictlConfig(), "attach", "-i", k.ttyID)
				cmd.Stdin = strings.NewReader("typed-after-" + r.name + "\n")
				out, _ := cmd.CombinedOutput() // ends when stdin closes
				want := "got:typed-after-" + r.name
				if !testutil.Poll(30*time.Second, func() bool { data, _ := os.ReadFile(k.ttyLg); return strings.Contains(string(data), want) }) {
					t.Errorf("input attached to the terminal did not reach the container: no %q in its log (crictl: %q)", want, out)
				}
			})
		}
	}
	for _, k := range kinds {
		for _, id := range []string{k.counterID, k.ttyID, k.fastID} {
			if id == "" {
				continue
			}
			if code, ok := exits.exited(id); ok {
				t.Errorf("%s: containerd saw the container %s exit (%d)", k.name, id, code)
			}
		}
	}
	// The pods serve new containers after the restarts.
	next := e.startContainer(t, kinds[0].p, "after-restarts", "echo served after the restarts")
	e.waitExited(t, next)
	// (The event stream does show exits.)
	testutil.Eventually(t, 30*time.Second, func() bool { _, ok := exits.exited(next); return ok }, "the exit of %s on containerd's event stream", next)
	if got := e.logOf(t, kinds[0].p, "after-restarts", "served after the restarts"); !strings.Contains(got, "served after the restarts") {
		t.Errorf("container started after the restarts logged %q", got)
	}
}

// checkRecoveredExec: crictl exec, exec -i and exec -it work in a
// container that ran before a restart.
func (e *env) checkRecoveredExec(t *testing.T, cid, tag string) {
	t.Helper()
	out, err := e.ctrd.Crictl(ctxT(t), "exec", cid, "echo", "exec-after-"+tag)
	if err != nil || !strings.Contains(string(out), "exec-after-"+tag) {
		t.Errorf("crictl exec: %q, %v", out, err)
	}
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")
	cmd := exec.CommandContext(ctxT(t), crictl, "--config", e.ctrd.CrictlConfig(), "exec", "-i", cid, "sh", "-c", "read l; echo got:$l")
	cmd.Stdin = strings.NewReader("over-stdin\n")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "got:over-stdin") {
		t.Errorf("crictl exec -i: %q, %v", out, err)
	}
	cmd = exec.CommandContext(ctxT(t), "script", "-qec",
		fmt.Sprintf("%s --config %s exec -it %s sh -c 'test -t 0 && echo stdin-is-a-tty'", crictl, e.ctrd.CrictlConfig(), cid), "/dev/null")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "stdin-is-a-tty") {
		t.Errorf("crictl exec -it: %q, %v", out, err)
	}
}
