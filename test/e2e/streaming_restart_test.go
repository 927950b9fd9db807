package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestStreamingSurvivesRestart runs a streamed-stdio pod through a kill -9
// of the sandboxer's worker and then a live upgrade: the supervisor answers
// containerd's streams itself, so a counter container's CRI log has every
// line once, a container's stdin stays attached (input sent after each
// restart arrives), containerd sees no task exit, and an exec with stdin
// works afterwards.
func TestStreamingSurvivesRestart(t *testing.T) {
	e := setup(t)
	p := e.runPodWith(t, streamingRunc, false)
	ctx := ctxT(t)

	// containerd's event stream: no task may exit.
	exits := e.watchTaskExits(t)

	counter := e.startContainer(t, p, "counter", "(i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done) & wait $!")
	echo := e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "echo"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "while read line; do echo got:$line; done"},
		LogPath:  "echo.log",
		Stdin:    true,
	})
	// One attach for the whole test: its stdin stream crosses both
	// restarts.
	attach := exec.CommandContext(ctx, filepath.Join(e.binDir, "crictl"), "--config", e.ctrd.CrictlConfig(), "attach", "-i", echo)
	stdin, err := attach.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := attach.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = attach.Process.Kill(); _ = attach.Wait() }()
	say := func(word string) {
		t.Helper()
		// crictl may not have attached yet: say it again until it shows.
		testutil.Eventually(t, 30*time.Second, func() bool {
			if _, err := io.WriteString(stdin, word+"\n"); err != nil {
				t.Fatalf("attach stdin: %v", err)
			}
			return testutil.Poll(time.Second, func() bool {
				data, _ := os.ReadFile(filepath.Join(p.cfg.LogDirectory, "echo.log"))
				return strings.Contains(string(data), "got:"+word)
			})
		}, "%q through the attached stdin", word)
	}
	say("before")

	log := filepath.Join(p.cfg.LogDirectory, "counter.log")
	testutil.Eventually(t, 30*time.Second, func() bool { return len(seqLines(t, log, "")) >= 5 }, "the counter's first lines")
	for _, how := range []string{"kill", "upgrade"} {
		old := e.workerPid(t)
		switch how {
		case "kill":
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 30*time.Second, func() bool { return !alive(old) }, "the worker is gone")
		case "upgrade":
			// A "new" binary (a copy at the same path): the supervisor,
			// which bridges the streams, re-executes it too.
			installCopy(t, filepath.Join(e.binDir, "magnetar-sandboxer"))
			out, err := exec.CommandContext(ctx, filepath.Join(e.binDir, "magnetar-sandboxer"), "upgrade", "--run-dir", e.runDir).CombinedOutput()
			if err != nil {
				t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
			}
		}
		at := len(seqLines(t, log, ""))
		e.waitNewWorker(t, old, p)
		if how == "upgrade" {
			sup := e.sandboxer.Process.Pid
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", sup)); err != nil || strings.HasSuffix(exe, " (deleted)") {
				t.Errorf("after the upgrade the supervisor %d runs %q (%v), want the binary installed: it did not re-execute with the streams bridged", sup, exe, err)
			}
		}
		testutil.Eventually(t, 30*time.Second, func() bool { return len(seqLines(t, log, "")) >= at+10 }, "10 more lines after the %s", how)
		say("after-" + how)
	}
	lines := seqLines(t, log, "")
	for i, n := range lines {
		if n != i {
			t.Fatalf("log line %d is %d: output lost or repeated across the restarts: %v", i, n, lines)
		}
	}
	e.requireRunning(t, counter)
	e.requireRunning(t, echo)

	// New processes stream too: an exec with stdin, to its end of file.
	late := e.startContainer(t, p, "late", "sleep 600")
	cmd := exec.CommandContext(ctx, filepath.Join(e.binDir, "crictl"), "--config", e.ctrd.CrictlConfig(), "exec", "-i", late, "wc", "-c")
	cmd.Stdin = strings.NewReader(strings.Repeat("x", 100000))
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "100000" {
		t.Errorf("crictl exec -i after the restarts = %q, %v; want 100000", out, err)
	}

	for _, id := range []string{counter, echo} {
		if code, ok := exits.exited(id); ok {
			t.Errorf("containerd saw the task %s exit (%d)", id, code)
		}
	}
	e.removePod(t, p)
	if ents, err := os.ReadDir(filepath.Join(e.runDir, "s")); err != nil && !os.IsNotExist(err) || len(ents) != 0 {
		t.Errorf("stream dirs left after the pod was removed: %v %v", ents, err)
	}
}
