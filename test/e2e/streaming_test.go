package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
)

// streamingRunc is the runc handler with containerd's `streaming` io type:
// CRI opens the container's stdio as streams on the sandbox's task socket.
const streamingRunc = "magnetar-runc-streaming"

// TestStreamingIO runs a runc pod whose stdio goes through containerd's
// streaming API instead of FIFOs: container logs, exec with stdin, exec
// with a terminal, attach, exit codes, and no stream FIFO left behind.
func TestStreamingIO(t *testing.T) {
	e := setup(t)
	p := e.runPodWith(t, streamingRunc, false)
	ctx := ctxT(t)

	cid := e.startContainer(t, p, "hello", "echo hello-streaming; echo to-stderr >&2; sleep 600")
	if got := e.logOf(t, p, "hello", "to-stderr"); !strings.Contains(got, "hello-streaming") || !strings.Contains(got, "to-stderr") {
		t.Errorf("container log = %q, want stdout and stderr lines", got)
	}
	// The stdio really is streamed: the sandboxer's supervisor bridges
	// the streams to FIFOs of its own, <run dir>/s/<sandbox>/<stream ID>.
	if fifos, _ := filepath.Glob(filepath.Join(e.runDir, "s", "*", cid+"-stdout")); len(fifos) == 0 {
		t.Errorf("no stream FIFOs under %s/s: the container's stdio was not streamed", e.runDir)
	}
	out, err := e.ctrd.Crictl(ctx, "logs", cid)
	if err != nil || !strings.Contains(string(out), "hello-streaming") {
		t.Errorf("crictl logs = %q, %v", out, err)
	}

	// exec with stdin: the input arrives and its EOF ends the process.
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")
	cmd := exec.CommandContext(ctx, crictl, "--config", e.ctrd.CrictlConfig(), "exec", "-i", cid, "sh", "-c", "wc -c; echo done")
	cmd.Stdin = strings.NewReader(strings.Repeat("x", 100000))
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "100000") || !strings.Contains(string(out), "done") {
		t.Errorf("crictl exec -i = %q, %v; want 100000 bytes counted, then done", out, err)
	}

	ex, err := e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if ex.ExitCode != 5 || strings.TrimSpace(string(ex.Stdout)) != "exec-out" || strings.TrimSpace(string(ex.Stderr)) != "exec-err" {
		t.Errorf("ExecSync = code %d stdout %q stderr %q; want 5, exec-out, exec-err", ex.ExitCode, ex.Stdout, ex.Stderr)
	}
	// Output written right before the exit is not lost.
	ex, err = e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "seq 1 20000"}, Timeout: 30})
	if err != nil || ex.ExitCode != 0 || !strings.HasSuffix(string(ex.Stdout), "\n19999\n20000\n") {
		t.Errorf("ExecSync seq: code %d, %d bytes, %v; want all of 1..20000", ex.GetExitCode(), len(ex.GetStdout()), err)
	}

	if _, err := exec.LookPath("script"); err == nil {
		// script gives crictl a pseudo-terminal, as a user's shell would.
		cmd := exec.CommandContext(ctx, "script", "-qec",
			fmt.Sprintf("%s --config %s exec -it %s sh -c 'tty; test -t 0 && echo stdin-is-a-tty'", crictl, e.ctrd.CrictlConfig(), cid), "/dev/null")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "stdin-is-a-tty") {
			t.Errorf("crictl exec -it = %q, %v; want a /dev/pts/N and stdin-is-a-tty", out, err)
		}
	} else {
		t.Logf("no script(1): exec -it not checked: %v", err)
	}

	// attach: stdin of a container created with Stdin reaches it.
	e.checkAttach(t, p)

	// Exit code, and the last output before the exit is in the log.
	exitID := e.startContainer(t, p, "exiter", "seq 1 5000; echo bye; exit 42")
	if st := e.waitExited(t, exitID); st.ExitCode != 42 {
		t.Errorf("exit code = %d, want 42", st.ExitCode)
	}
	if got := e.logOf(t, p, "exiter", "bye"); !strings.Contains(got, " 5000\n") || !strings.Contains(got, "bye") {
		t.Errorf("exiter log lacks its last lines: %d bytes", len(got))
	}

	// Removing the pod removes every stream FIFO.
	e.removePod(t, p)
	ents, err := os.ReadDir(filepath.Join(e.runDir, "s"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("stream dirs left after the pod was removed: %v", ents)
	}
}

// TestStreamingVM runs one VM pod under the streaming handler: the
// sandboxer bridges the streams to the host FIFOs the vm backend carries
// through the guest agent. stdin over the agent is another feature's; this
// checks output, exec and exit codes.
func TestStreamingVM(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	e.requireGuest(t)
	p := e.runPodWith(t, "magnetar-vm-streaming", false)
	ctx := ctxT(t)

	cid := e.startContainer(t, p, "hello", "echo hello from the streamed vm; seq 1 3000; exit 3")
	if st := e.waitExited(t, cid); st.ExitCode != 3 {
		t.Errorf("exit code = %d, want 3", st.ExitCode)
	}
	if got := e.logOf(t, p, "hello", " 3000\n"); !strings.Contains(got, "hello from the streamed vm") || !strings.Contains(got, " 3000\n") {
		t.Errorf("container log lacks the output: %d bytes", len(got))
	}
	long := e.startContainer(t, p, "sleeper", "sleep 600")
	ex, err := e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: long, Cmd: []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}, Timeout: 60})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if ex.ExitCode != 5 || strings.TrimSpace(string(ex.Stdout)) != "exec-out" || strings.TrimSpace(string(ex.Stderr)) != "exec-err" {
		t.Errorf("ExecSync = code %d stdout %q stderr %q; want 5, exec-out, exec-err", ex.ExitCode, ex.Stdout, ex.Stderr)
	}
	// stdin over a stream, through the guest agent, to end of file.
	bin, _ := harness.DefaultBinDir()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "crictl"), "--config", e.ctrd.CrictlConfig(), "exec", "-i", long, "wc", "-c")
	cmd.Stdin = strings.NewReader(strings.Repeat("x", 50000))
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "50000" {
		t.Errorf("crictl exec -i wc -c in the VM = %q, %v; want 50000", out, err)
	}
	e.removePod(t, p)
	if ents, _ := os.ReadDir(filepath.Join(e.runDir, "s")); len(ents) != 0 {
		t.Errorf("stream dirs left after the pod was removed: %v", ents)
	}
}
