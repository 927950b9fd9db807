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

// gapScript prints before, says it started (a file in the volume at /x),
// waits until the host creates go in the volume, prints after, says it is
// done and exits 7. Its processes live in a gVisor sandbox or a VM, where
// the host cannot see them: the volume is how the test paces them.
const gapScript = "echo before-$0; touch /x/started-$0; while [ ! -e /x/go-$0 ]; do sleep 0.1; done; echo after-$0; touch /x/done-$0; exit 7"

// TestSandboxedExecsSurviveRestart is TestExecsSurviveRestart for the
// kinds whose exec'd processes the host does not run itself: gvisor (a
// `runsc exec` process per exec) and vm (the guest's agent runs them),
// each with FIFO and streamed stdio. Execs running when the worker is
// killed (kill -9, the execs exiting while no worker runs) or
// live-upgraded (the execs exiting under the new worker) are recovered:
// CRI's ExecSync returns the process's own exit code 7 and all its
// output, an exec with a terminal (crictl exec -it) keeps its terminal
// and exit code, containerd publishes each exit once with code 7 (no 137
// or 255), and the containers keep running.
func TestSandboxedExecsSurviveRestart(t *testing.T) {
	e := setup(t)
	if _, err := exec.LookPath("script"); err != nil {
		testutil.SkipOrFail(t, "script (bsdutils) is needed to give crictl a terminal: %v", err)
	}
	type kind struct {
		name, handler string
		require       func(t *testing.T)
		p             *pod
		cid, vol      string
	}
	kinds := []*kind{
		{name: "gvisor", handler: gvisorHandler, require: func(t *testing.T) { requireRunsc(t) }},
		{name: "gvisor-streaming", handler: gvisorHandler + "-streaming", require: func(t *testing.T) { requireRunsc(t) }},
		{name: "vm", handler: "magnetar-vm", require: e.requireGuest},
		{name: "vm-streaming", handler: "magnetar-vm-streaming", require: e.requireGuest},
	}
	exits := e.watchTaskExits(t)
	for _, k := range kinds {
		k.require(t)
		k.p = e.runPodWith(t, k.handler, false)
		k.vol = t.TempDir()
		k.cid = e.start(t, k.p, &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: "host"},
			Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
			Command:  []string{"sh", "-c", "exec sleep 600"},
			LogPath:  "host.log",
			Mounts:   []*runtime.Mount{{ContainerPath: "/x", HostPath: k.vol}},
			Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
				NamespaceOptions: k.p.cfg.Linux.GetSecurityContext().GetNamespaceOptions(),
			}},
		})
	}
	sup := e.sandboxer.Process.Pid
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")
	exists := func(k *kind, name string) bool {
		_, err := os.Stat(filepath.Join(k.vol, name))
		return err == nil
	}
	// release lets the execs tagged tags of every kind go on.
	release := func(t *testing.T, tags ...string) {
		for _, k := range kinds {
			for _, tag := range tags {
				if err := os.WriteFile(filepath.Join(k.vol, "go-"+tag), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	restarts := []struct {
		name string
		// do restarts the worker old and lets the execs tagged tags end.
		do func(t *testing.T, old int, tags ...string)
	}{
		{"kill-9", func(t *testing.T, old int, tags ...string) {
			// Hold the supervisor still so that the execs exit while no
			// worker runs.
			if err := syscall.Kill(sup, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer syscall.Kill(sup, syscall.SIGCONT)
			if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 30*time.Second, func() bool { return !alive(old) }, "the worker is gone")
			release(t, tags...)
			testutil.Eventually(t, 60*time.Second, func() bool {
				for _, k := range kinds {
					for _, tag := range tags {
						if !exists(k, "done-"+tag) {
							return false
						}
					}
				}
				return true
			}, "the execs ending while no worker runs")
		}},
		{"upgrade", func(t *testing.T, old int, tags ...string) {
			installCopy(t, filepath.Join(e.binDir, "magnetar-sandboxer"))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, filepath.Join(e.binDir, "magnetar-sandboxer"), "upgrade", "--run-dir", e.runDir).CombinedOutput()
			if err != nil {
				t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
			}
			e.waitNewWorker(t, old, kinds[0].p)
			release(t, tags...) // they end under the new worker
		}},
	}
	want := 0
	for _, r := range restarts {
		t.Run(r.name, func(t *testing.T) {
			type result struct {
				kind, tag string
				out       string
				code      int32
				err       error
			}
			plainTag, ttyTag := "plain-"+r.name, "tty-"+r.name
			res := make(chan result, 2*len(kinds))
			for _, k := range kinds {
				go func() {
					resp, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: k.cid, Cmd: []string{"sh", "-c", gapScript, plainTag}, Timeout: 180})
					res <- result{k.name, plainTag, string(resp.GetStdout()), resp.GetExitCode(), err}
				}()
				go func() {
					cmd := exec.CommandContext(ctxT(t), "script", "-qec",
						fmt.Sprintf("%s --config %s exec -it %s sh -c '%s' %s", crictl, e.ctrd.CrictlConfig(), k.cid, gapScript, ttyTag), "/dev/null")
					out, _ := cmd.CombinedOutput()
					res <- result{k.name, ttyTag, string(out), int32(cmd.ProcessState.ExitCode()), nil}
				}()
			}
			testutil.Eventually(t, 60*time.Second, func() bool {
				for _, k := range kinds {
					if !exists(k, "started-"+plainTag) || !exists(k, "started-"+ttyTag) || exits.execsStarted(k.cid) < want+2 {
						return false
					}
				}
				return true
			}, "the execs run and containerd saw them start")
			old := e.workerPid(t)
			r.do(t, old, plainTag, ttyTag)
			e.waitNewWorker(t, old, kinds[0].p)

			for range 2 * len(kinds) {
				select {
				case got := <-res:
					switch {
					case got.tag == plainTag && got.err != nil:
						t.Errorf("%s: ExecSync across the %s: %v", got.kind, r.name, got.err)
					case got.tag == plainTag:
						if wantOut := fmt.Sprintf("before-%s\nafter-%s\n", plainTag, plainTag); got.code != 7 || got.out != wantOut {
							t.Errorf("%s: ExecSync across the %s = exit %d, stdout %q; want 7, %q", got.kind, r.name, got.code, got.out, wantOut)
						}
					default:
						// crictl reports the exit code in a message (and exits 1).
						if !strings.Contains(got.out, "before-"+ttyTag) || !strings.Contains(got.out, "after-"+ttyTag) || !strings.Contains(got.out, "exit code 7") {
							t.Errorf("%s: crictl exec -it across the %s = exit %d, output %q; want before, after and exit code 7", got.kind, r.name, got.code, got.out)
						}
					}
				case <-time.After(2 * time.Minute):
					t.Fatalf("execs across the %s did not all return", r.name)
				}
			}
			want += 2
			for _, k := range kinds {
				testutil.Eventually(t, 30*time.Second, func() bool { return len(exits.execExits(k.cid)) >= want },
					"%s: %d exec exits of %s on containerd's event stream (have %v)", k.name, want, k.cid, exits.execExits(k.cid))
				if got := exits.execExits(k.cid); len(got) != want || slices.ContainsFunc(got, func(c uint32) bool { return c != 7 }) {
					t.Errorf("%s: exec exits containerd published = %v, want %d times 7", k.name, got, want)
				}
			}
		})
	}
	for _, k := range kinds {
		e.requireRunning(t, k.cid)
		if _, ok := exits.exited(k.cid); ok {
			t.Errorf("%s: containerd saw the container %s exit", k.name, k.cid)
		}
		// An exec after the restarts works, and nothing of the execs
		// is left in the pod's state once they were deleted.
		if out, err := e.ctrd.Crictl(ctxT(t), "exec", k.cid, "echo", "exec-after"); err != nil || !strings.Contains(string(out), "exec-after") {
			t.Errorf("%s: crictl exec after the restarts: %q, %v", k.name, out, err)
		}
		dir := filepath.Join(e.stateDir, "sandboxes", k.p.id, "execs", k.cid)
		if !testutil.Poll(10*time.Second, func() bool { ents, _ := os.ReadDir(dir); return len(ents) == 0 }) {
			ents, _ := os.ReadDir(dir)
			t.Errorf("%s: exec records left after the execs were deleted: %v", k.name, ents)
		}
		e.removePod(t, k.p)
	}
}
