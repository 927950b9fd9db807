package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestContainerdRestartKeepsContainers kills containerd (kill -9) under
// running pods of the runc kind (FIFO and streamed stdio), the wasm, gvisor
// and vm kinds, each with a container printing a counter every
// 100 ms, lets a container exit with code 7 while containerd is down, and
// starts containerd again. Afterwards: the counters are still running with
// the same processes, their CRI logs have every number once and in order
// (what was printed during the gap waited in the pipes; only the line or
// two containerd held when it was killed may be missing), the container
// that exited in the gap reports 7, exec works, and the pods stop and are
// removed cleanly.
func TestContainerdRestartKeepsContainers(t *testing.T) {
	e := setup(t)
	counterScript := "(i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done) & wait $!"
	type kind struct {
		name    string
		require func(t *testing.T)
		pod     func(t *testing.T) *pod
		counter func(t *testing.T, p *pod) string
		exec    bool
		hostPid bool // the container's pid is a host process

		p   *pod
		cid string
		log string
	}
	kinds := []*kind{
		{name: "runc", pod: func(t *testing.T) *pod { return e.runPod(t, false) }, exec: true, hostPid: true,
			counter: func(t *testing.T, p *pod) string { return e.startContainer(t, p, "counter", counterScript) }},
		{name: "runc-streaming", pod: func(t *testing.T) *pod { return e.runPodWith(t, streamingRunc, false) }, exec: true, hostPid: true,
			counter: func(t *testing.T, p *pod) string { return e.startContainer(t, p, "counter", counterScript) }},
		{name: "wasm", require: func(t *testing.T) { e.importHelloWasm(t) }, pod: func(t *testing.T) *pod { return e.runPodWith(t, "magnetar-wasm", false) },
			counter: func(t *testing.T, p *pod) string { return e.startWasm(t, p, "counter", "-count", "100ms") }},
		{name: "gvisor", require: func(t *testing.T) { requireRunsc(t) }, pod: func(t *testing.T) *pod { return e.gvisorPod(t, false) }, exec: true, hostPid: true,
			counter: func(t *testing.T, p *pod) string { return e.startContainer(t, p, "counter", counterScript) }},
		{name: "vm", require: func(t *testing.T) { e.requireGuest(t) }, pod: func(t *testing.T) *pod { return e.runPodWith(t, "magnetar-vm", false) }, exec: true,
			counter: func(t *testing.T, p *pod) string { return e.startContainer(t, p, "counter", counterScript) }},
	}
	for _, k := range kinds {
		if k.require != nil {
			k.require(t)
		}
		k.p = k.pod(t)
		k.cid = k.counter(t, k.p)
		k.log = filepath.Join(k.p.cfg.LogDirectory, "counter.log")
	}
	gapper := e.startContainer(t, kinds[0].p, "gapper", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
	gapperPid := e.containerPid(t, gapper)
	pids := map[string]int{}
	for _, k := range kinds {
		requireSequence(t, k.log, "", 5)
		if k.hostPid {
			pids[k.name] = e.containerPid(t, k.cid)
		}
	}

	if err := e.ctrd.Kill(); err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	for _, k := range kinds {
		before[k.name] = len(seqLines(t, k.log, ""))
	}
	// While containerd is down: a container exits, and the counters go on
	// writing (into their FIFOs' pipes, or to the supervisor's streams).
	if err := syscall.Kill(gapperPid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return !alive(gapperPid) }, "the container exits during the gap")
	if err := e.ctrd.Restart(ctxT(t)); err != nil {
		t.Fatalf("restart containerd: %v", err)
	}

	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			e.requireRunning(t, k.cid)
			if pid, ok := pids[k.name]; ok {
				if got := e.containerPid(t, k.cid); got != pid || !alive(pid) {
					t.Errorf("counter: pid %d (alive %v), want %d still running", got, alive(pid), pid)
				}
			}
			requireSequenceAcrossKill(t, k.log, before[k.name], before[k.name]+10)
			if k.exec {
				out, err := exec.CommandContext(ctxT(t), filepath.Join(e.binDir, "crictl"), "--config", e.ctrd.CrictlConfig(),
					"exec", k.cid, "echo", "exec-after-restart").CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != "exec-after-restart" {
					t.Errorf("crictl exec after containerd's restart = %q, %v", out, err)
				}
			}
		})
	}
	st := e.waitExited(t, gapper)
	if st.ExitCode != 7 {
		t.Errorf("the container that exited while containerd was down reports %d (%s), want 7", st.ExitCode, st.Reason)
	}
	// New containers start in the old pods.
	next := e.startContainer(t, kinds[0].p, "after", "echo served after the restart of containerd")
	if got := e.logOf(t, kinds[0].p, "after", "served after"); !strings.Contains(got, "served after the restart of containerd") {
		t.Errorf("container started after the restart logged %q", got)
	}
	e.waitExited(t, next)
	for _, k := range kinds {
		e.removePod(t, k.p)
		resp, err := e.rt.ListContainers(ctxT(t), &runtime.ListContainersRequest{Filter: &runtime.ContainerFilter{PodSandboxId: k.p.id}})
		if err != nil || len(resp.Containers) != 0 {
			t.Errorf("%s: containers left after the pod's removal: %v, %v", k.name, resp.GetContainers(), err)
		}
	}
	for name, pid := range pids {
		if alive(pid) {
			t.Errorf("%s: the counter (pid %d) still runs after its pod was removed", name, pid)
		}
	}
}
