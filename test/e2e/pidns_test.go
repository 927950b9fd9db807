package e2e

import (
	"os"
	"strconv"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sharePID makes a pod share one PID namespace between its containers
// (Kubernetes' shareProcessNamespace).
func sharePID(cfg *runtime.PodSandboxConfig) {
	cfg.Linux.SecurityContext.NamespaceOptions.Pid = runtime.NamespaceMode_POD
}

// TestSharedPIDNamespace: in a pod that shares its PID namespace, the
// first container's exit leaves the others running (the namespace is held
// by an init of Magnetar's own, not by the first container, as pause holds
// it for stock runc), and every container sees the others' processes.
func TestSharedPIDNamespace(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	e := setup(t)
	for _, rh := range []string{"magnetar-runc", "magnetar-vm"} {
		t.Run(rh, func(t *testing.T) {
			if rh == "magnetar-vm" {
				e.requireGuest(t)
			}
			p := e.runPodWith(t, rh, false, sharePID)
			// The first container runs until it sees the second one's
			// process, then exits: while it ran, it was the first.
			short := e.startContainer(t, p, "short", "until pidof sleep >/dev/null; do sleep 0.1; done; echo saw the sleeper; exit 3")
			long := e.startContainer(t, p, "long", "exec sleep 600")
			if st := e.waitExited(t, short); st.ExitCode != 3 {
				t.Fatalf("short container: exit %d, want 3 (log: %q)", st.ExitCode, e.logOf(t, p, "short", "saw the sleeper"))
			}
			ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: long, Cmd: []string{"sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; pidof sleep"}, Timeout: 60})
			if err != nil || ex.ExitCode != 0 {
				t.Fatalf("exec in the long container after the short one exited: %v (exit %d, %s)", err, ex.GetExitCode(), ex.GetStderr())
			}
			lines := strings.Split(strings.TrimSpace(string(ex.Stdout)), "\n")
			if len(lines) != 2 || strings.Contains(lines[0], "sleep") || strings.Contains(lines[0], "sh -c") || lines[1] == "1" {
				t.Errorf("PID 1 of the pod and the sleeper: %q; want an init that is no container's process", ex.Stdout)
			}
			resp, err := e.rt.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: long})
			if err != nil || resp.Status.State != runtime.ContainerState_CONTAINER_RUNNING {
				t.Errorf("long container after the short one exited: %v, %v; want running", resp.GetStatus().GetState(), err)
			}
		})
	}
}

// TestHostPIDPod: a hostPID pod's containers run in the host's PID
// namespace (they see this test's process), and no pod init is started.
func TestHostPIDPod(t *testing.T) {
	e := setup(t)
	p := e.runPodWith(t, handler, false, func(cfg *runtime.PodSandboxConfig) {
		cfg.Linux.SecurityContext.NamespaceOptions.Pid = runtime.NamespaceMode_NODE
	})
	cid := e.startContainer(t, p, "hostpid", "exec sleep 600")
	self := strconv.Itoa(os.Getpid())
	ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "test -d /proc/" + self + " && echo sees-host"}, Timeout: 60})
	if err != nil || ex.ExitCode != 0 || !strings.Contains(string(ex.Stdout), "sees-host") {
		t.Errorf("a hostPID container does not see host process %s: %v (exit %d, %s%s)", self, err, ex.GetExitCode(), ex.GetStdout(), ex.GetStderr())
	}
}
