package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// findShell returns the pid of the host process running `sh -c ... tag`
// (0: none).
func findShell(tag string) int {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(strings.TrimSuffix(string(cmd), "\x00"), "\x00")
		if len(args) == 4 && args[0] == "sh" && args[1] == "-c" && args[3] == tag {
			return pid
		}
	}
	return 0
}

// execScript prints before, sleeps 2 s, prints after and exits 7.
const execScript = "echo before-$0; sleep 2; echo after-$0; exit 7"

// TestExecsSurviveRestart: exec'd processes running when the sandboxer's
// worker is killed (kill -9, the process exiting while no worker runs) or
// live-upgraded are recovered by the next worker: CRI's ExecSync (whose
// Task API Wait the supervisor hands to the next worker) returns the
// process's own exit code 7 and all its output, an exec with a terminal
// (crictl exec -it) keeps its terminal and exit code, and containerd
// publishes each exit once, with code 7 (no 137 or 255).
func TestExecsSurviveRestart(t *testing.T) {
	e := setup(t)
	if _, err := exec.LookPath("script"); err != nil {
		testutil.SkipOrFail(t, "script (bsdutils) is needed to give crictl a terminal: %v", err)
	}
	exits := e.watchTaskExits(t)
	p := e.runPod(t, false)
	cid := e.startContainer(t, p, "host", "exec sleep 600")
	sup := e.sandboxer.Process.Pid
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")

	restarts := []struct {
		name string
		// do restarts the worker; plain and tty are the pids of the
		// exec'd shells.
		do func(t *testing.T, old, plain, tty int)
	}{
		{"kill-9", func(t *testing.T, old, plain, tty int) {
			// Hold the supervisor still so that the execs exit while no
			// worker runs: their exits are the supervisor's to record.
			if err := syscall.Kill(sup, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(sup, syscall.SIGCONT)
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 30*time.Second, func() bool { return !alive(old) && !alive(plain) && !alive(tty) },
				"the worker is gone and the execs exited")
		}},
		{"upgrade", func(t *testing.T, old, plain, tty int) {
			installCopy(t, filepath.Join(e.binDir, "magnetar-sandboxer"))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, filepath.Join(e.binDir, "magnetar-sandboxer"), "upgrade", "--run-dir", e.runDir).CombinedOutput()
			if err != nil {
				t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
			}
		}},
	}
	want := 0
	for _, r := range restarts {
		t.Run(r.name, func(t *testing.T) {
			type result struct {
				resp *runtime.ExecSyncResponse
				err  error
			}
			plainTag, ttyTag := "plain-"+r.name, "tty-"+r.name
			res := make(chan result, 1)
			go func() {
				resp, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", execScript, plainTag}, Timeout: 120})
				res <- result{resp, err}
			}()
			type ttyResult struct {
				out  []byte
				code int
			}
			ttyRes := make(chan ttyResult, 1)
			go func() {
				cmd := exec.CommandContext(ctxT(t), "script", "-qec",
					fmt.Sprintf("%s --config %s exec -it %s sh -c '%s' %s", crictl, e.ctrd.CrictlConfig(), cid, execScript, ttyTag), "/dev/null")
				out, _ := cmd.CombinedOutput()
				ttyRes <- ttyResult{out, cmd.ProcessState.ExitCode()}
			}()
			var plain, tty int
			testutil.Eventually(t, 30*time.Second, func() bool { plain, tty = findShell(plainTag), findShell(ttyTag); return plain != 0 && tty != 0 },
				"the exec'd shells run")
			// Their starts are answered (the Task API's Start is not
			// resent to the next worker: one in flight fails).
			testutil.Eventually(t, 30*time.Second, func() bool { return exits.execsStarted(cid) >= want+2 },
				"containerd saw the execs start")
			old := e.workerPid(t)
			r.do(t, old, plain, tty)
			e.waitNewWorker(t, old, p)

			select {
			case got := <-res:
				if got.err != nil {
					t.Fatalf("ExecSync across the %s: %v", r.name, got.err)
				}
				if wantOut := fmt.Sprintf("before-%s\nafter-%s\n", plainTag, plainTag); got.resp.ExitCode != 7 || string(got.resp.Stdout) != wantOut {
					t.Errorf("ExecSync across the %s = exit %d, stdout %q; want 7, %q", r.name, got.resp.ExitCode, got.resp.Stdout, wantOut)
				}
			case <-time.After(time.Minute):
				t.Fatalf("ExecSync across the %s did not return", r.name)
			}
			select {
			case got := <-ttyRes:
				// crictl reports the exit code in a message (and exits 1).
				out := string(got.out)
				if !strings.Contains(out, "before-"+ttyTag) || !strings.Contains(out, "after-"+ttyTag) || !strings.Contains(out, "exit code 7") {
					t.Errorf("crictl exec -it across the %s = exit %d, output %q; want before, after and exit code 7", r.name, got.code, out)
				}
			case <-time.After(time.Minute):
				t.Fatalf("crictl exec -it across the %s did not return", r.name)
			}
			want += 2
			testutil.Eventually(t, 30*time.Second, func() bool { return len(exits.execExits(cid)) >= want },
				"%d exec exits of %s on containerd's event stream (have %v)", want, cid, exits.execExits(cid))
			if got := exits.execExits(cid); len(got) != want || slices.ContainsFunc(got, func(c uint32) bool { return c != 7 }) {
				t.Errorf("exec exits containerd published = %v, want %d times 7", got, want)
			}
		})
	}
	e.requireRunning(t, cid)
	if _, ok := exits.exited(cid); ok {
		t.Errorf("containerd saw the container %s exit", cid)
	}
	// Nothing of the execs is left in the pod's state.
	if ents, _ := os.ReadDir(filepath.Join(e.stateDir, "sandboxes", p.id, "execs", cid)); len(ents) != 0 {
		t.Errorf("exec records left after the execs were deleted: %v", ents)
	}
	e.removePod(t, p)
}
