package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

const gvisorHandler = "magnetar-gvisor"

// requireRunsc skips (fails under MAGNETAR_E2E_REQUIRED=1) unless runsc is
// installed.
func requireRunsc(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("runsc"); err != nil {
		testutil.SkipOrFail(t, "runsc not installed (hack/install-deps.sh): %v", err)
	}
}

// gvisorPod runs a pod of the gvisor kind.
func (e *env) gvisorPod(t *testing.T, hostNetwork bool, opts ...func(*runtime.PodSandboxConfig)) *pod {
	t.Helper()
	requireRunsc(t)
	return e.runPodWith(t, gvisorHandler, hostNetwork, opts...)
}

// runscProcesses lists the runsc processes (sandbox, gofer, exec) whose
// command line mentions id.
func runscProcesses(id string) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		cmd, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		s := strings.ReplaceAll(string(cmd), "\x00", " ")
		if strings.HasPrefix(s, "runsc") && strings.Contains(s, id) {
			out = append(out, ent.Name()+": "+s)
		}
	}
	return out
}

// TestGVisorPod: a gvisor pod through CRI: ready with a CNI address, its
// containers run in gVisor's kernel (dmesg), output and hostname in the CRI
// log, ExecSync output and exit code, exit codes, the pod's CNI interface
// inside, and no pause container or shim process.
func TestGVisorPod(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if ps.Status.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod state = %s, want ready", ps.Status.State)
	}
	ip := ps.Status.Network.GetIp()
	if ip == "" {
		t.Fatal("pod has no IP from CNI")
	}
	assertNoPodProcesses(t)
	if procs := runscProcesses(p.id); len(procs) == 0 {
		t.Errorf("no runsc sandbox process for pod %s", p.id)
	}

	cid := e.startContainer(t, p, "hello", "echo hello from gvisor; hostname; sleep 600")
	if got := e.logOf(t, p, "hello", p.cfg.Hostname); !strings.Contains(got, "hello from gvisor") || !strings.Contains(got, p.cfg.Hostname) {
		t.Errorf("container log = %q, want the greeting and hostname %q", got, p.cfg.Hostname)
	}
	ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if ex.ExitCode != 5 || strings.TrimSpace(string(ex.Stdout)) != "exec-out" || strings.TrimSpace(string(ex.Stderr)) != "exec-err" {
		t.Errorf("ExecSync = code %d stdout %q stderr %q; want 5, exec-out, exec-err", ex.ExitCode, ex.Stdout, ex.Stderr)
	}
	// gVisor's kernel, and the pod's CNI address on its netstack.
	ex, err = e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "dmesg | head -1; ip addr"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if !strings.Contains(string(ex.Stdout), "gVisor") || !strings.Contains(string(ex.Stdout), ip+"/") {
		t.Errorf("dmesg and ip addr in the container = %q; want gVisor's banner and the pod address %s", ex.Stdout, ip)
	}

	exitID := e.startContainer(t, p, "exiter", "echo bye; exit 42")
	if st := e.waitExited(t, exitID); st.ExitCode != 42 {
		t.Errorf("exit code = %d, want 42", st.ExitCode)
	}
	// Stop with a grace period: the shell ignores nothing, TERM ends it.
	if _, err := e.rt.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: cid, Timeout: 5}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.waitExited(t, cid); st.ExitCode != 128+15 && st.ExitCode != 128+9 {
		t.Errorf("stopped container: exit %d, want 143 or 137", st.ExitCode)
	}
	assertNoPodProcesses(t)
}

// TestGVisorContainersShareLocalhost: two containers of one gVisor sandbox
// share its network stack.
func TestGVisorContainersShareLocalhost(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	e.startContainer(t, p, "server", "nc -l -p 8080")
	client := e.startContainer(t, p, "client", "for i in $(seq 1 100); do echo ping-over-localhost | nc 127.0.0.1 8080 && exit 0; sleep 0.1; done; exit 1")
	if st := e.waitExited(t, client); st.ExitCode != 0 {
		t.Fatalf("client exit code = %d, want 0; log: %s", st.ExitCode, e.logOf(t, p, "client", "-"))
	}
	if got := e.logOf(t, p, "server", "ping-over-localhost"); !strings.Contains(got, "ping-over-localhost") {
		t.Errorf("server log = %q, want the client's message", got)
	}
}

// TestGVisorHostNetworkPod: a hostNetwork pod runs with runsc
// --network=host and sees the host's interfaces.
func TestGVisorHostNetworkPod(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, true)
	cid := e.startContainer(t, p, "hostnet", "cat /proc/net/dev")
	e.waitExited(t, cid)
	if got := e.logOf(t, p, "hostnet", e.ctrd.Bridge()); !strings.Contains(got, e.ctrd.Bridge()) {
		t.Errorf("host-network container does not see host interface %s: %q", e.ctrd.Bridge(), got)
	}
}

// TestGVisorExecTTYAndAttach: crictl exec -i and -it, and attach.
func TestGVisorExecTTYAndAttach(t *testing.T) {
	e := setup(t)
	if _, err := exec.LookPath("script"); err != nil {
		testutil.SkipOrFail(t, "script (bsdutils) is needed to give crictl a terminal: %v", err)
	}
	p := e.gvisorPod(t, false)
	cid := e.startContainer(t, p, "tty", "sleep 600")
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")
	cmd := exec.CommandContext(ctxT(t), "script", "-qec",
		fmt.Sprintf("%s --config %s exec -it %s sh -c 'test -t 0 && echo stdin-is-a-tty; stty size'", crictl, e.ctrd.CrictlConfig(), cid), "/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("crictl exec -it: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "stdin-is-a-tty") {
		t.Errorf("exec with a terminal printed %q; want stdin-is-a-tty", out)
	}
	cmd = exec.CommandContext(ctxT(t), crictl, "--config", e.ctrd.CrictlConfig(), "exec", "-i", cid, "sh", "-c", "read l; echo got:$l; test -t 0 || echo no-tty")
	cmd.Stdin = strings.NewReader("over-stdin\n")
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "got:over-stdin") || !strings.Contains(string(out), "no-tty") {
		t.Errorf("crictl exec -i: %q, %v; want got:over-stdin and no-tty", out, err)
	}
	e.checkAttach(t, p)
}

// TestGVisorVolume: a host directory mounted read-write and one read-only
// (through the gofer).
func TestGVisorVolume(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	rw, ro := t.TempDir(), t.TempDir()
	write(t, filepath.Join(ro, "in.txt"), "from the host\n")
	cid := e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "writer"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", "cat /ro/in.txt; echo written in gvisor > /data/out.txt; echo x > /ro/nope.txt || echo ro-refused"},
		LogPath:  "writer.log",
		Mounts:   []*runtime.Mount{{ContainerPath: "/data", HostPath: rw}, {ContainerPath: "/ro", HostPath: ro, Readonly: true}},
	})
	if st := e.waitExited(t, cid); st.ExitCode != 0 {
		t.Fatalf("writer exit code = %d, log %q", st.ExitCode, e.logOf(t, p, "writer", "-"))
	}
	data, err := os.ReadFile(filepath.Join(rw, "out.txt"))
	if err != nil || string(data) != "written in gvisor\n" {
		t.Errorf("file on the host = %q, %v; want the container's line", data, err)
	}
	if got := e.logOf(t, p, "writer", "ro-refused"); !strings.Contains(got, "from the host") || !strings.Contains(got, "ro-refused") {
		t.Errorf("writer log = %q; want the host file read and the read-only write refused", got)
	}
	if _, err := os.Stat(filepath.Join(ro, "nope.txt")); err == nil {
		t.Error("a file was written into the read-only volume")
	}
}

// TestGVisorStats: container stats come from runsc events --stats, and
// pod stats (Controller.Metrics) have usage too; a resource update bounds
// the sandbox anew and is the limit the container reads from its cgroup
// file system (runsc has no update command: see sdk/kinds/gvisor/limits.go).
func TestGVisorStats(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	cid := e.startContainer(t, p, "busy", "while true; do x=$((x+1)); done")
	ctx := ctxT(t)
	var stats *runtime.ContainerStats
	if !testutil.Poll(20*time.Second, func() bool { // CRI collects stats asynchronously
		resp, err := e.rt.ContainerStats(ctx, &runtime.ContainerStatsRequest{ContainerId: cid})
		if err != nil {
			t.Fatalf("ContainerStats: %v", err)
		}
		stats = resp.Stats
		return stats.GetMemory().GetWorkingSetBytes().GetValue() > 0 && stats.GetCpu().GetUsageCoreNanoSeconds().GetValue() > 0
	}) {
		t.Errorf("container stats have no usage: %v", stats)
	}
	var pst *runtime.PodSandboxStats
	if !testutil.Poll(20*time.Second, func() bool {
		resp, err := e.rt.PodSandboxStats(ctx, &runtime.PodSandboxStatsRequest{PodSandboxId: p.id})
		if err != nil {
			t.Fatalf("PodSandboxStats: %v", err)
		}
		pst = resp.Stats
		return pst.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() > 0
	}) {
		t.Errorf("pod stats (Controller.Metrics) have no memory usage: %v", pst)
	}
	if _, err := e.rt.UpdateContainerResources(ctx, &runtime.UpdateContainerResourcesRequest{
		ContainerId: cid, Linux: &runtime.LinuxContainerResources{MemoryLimitInBytes: 96 << 20},
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	ex, err := e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if got := strings.TrimSpace(string(ex.Stdout)); got != fmt.Sprint(96<<20) {
		t.Errorf("memory limit seen in the container after the update = %q (%s), want %d", got, ex.Stderr, 96<<20)
	}
}

// TestGVisorUnsupportedSyscall: a syscall gVisor does not implement fails
// in the container with its error in the log and status, without a hang;
// a missing executable fails StartContainer with runsc's error.
func TestGVisorUnsupportedSyscall(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	cid := e.startContainer(t, p, "swapon", "swapon /dev/null; echo swapon-exit:$?")
	e.waitExited(t, cid)
	got := e.logOf(t, p, "swapon", "swapon-exit:")
	if !strings.Contains(got, "swapon-exit:") || strings.Contains(got, "swapon-exit:0") {
		t.Errorf("swapon in gVisor logged %q; want an error and a failing exit", got)
	}
	ctx := ctxT(t)
	resp, err := e.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: p.id, SandboxConfig: p.cfg, Config: &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: "missing"},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"/no/such/binary"},
		LogPath:  "missing.log",
	}})
	if err == nil {
		_, err = e.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: resp.ContainerId})
	}
	if err == nil || !strings.Contains(err.Error(), "/no/such/binary") {
		t.Errorf("a missing executable: %v; want runsc's error naming it", err)
	}
	// The pod still serves containers.
	ok := e.startContainer(t, p, "after", "echo still serving")
	e.waitExited(t, ok)
	if got := e.logOf(t, p, "after", "still serving"); !strings.Contains(got, "still serving") {
		t.Errorf("container after the failures logged %q", got)
	}
}

// TestGVisorSandboxerRestart: the pod survives a sandboxer restart (its
// runsc sandbox is re-attached by runsc's state) and serves new containers;
// removing it then leaves nothing.
func TestGVisorSandboxerRestart(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	cid := e.startContainer(t, p, "survivor", "sleep 600")
	e.stopSandboxer()
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	// containerd reports the old container ended (its task connection
	// closed) and has it removed.
	if st := e.waitExited(t, cid); st.ExitCode != 137 && st.ExitCode != 255 {
		t.Errorf("container after the sandboxer restart: exit %d, want 137 or 255", st.ExitCode)
	}
	ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil || ps.Status.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after the sandboxer restart: %v, %v; want ready", ps.GetStatus().GetState(), err)
	}
	next := e.startContainer(t, p, "after-restart", "echo served after restart")
	e.waitExited(t, next)
	if got := e.logOf(t, p, "after-restart", "served after restart"); !strings.Contains(got, "served after restart") {
		t.Errorf("container started after the restart logged %q", got)
	}
	e.removePod(t, p)
	if procs := runscProcesses(p.id); len(procs) > 0 {
		t.Errorf("runsc processes of the removed pod remain: %q", procs)
	}
}

// TestGVisorRemoveLeavesNothing: removing a pod leaves no runsc process
// (sandbox, gofer), no runsc state, no cgroup, mount, netns or state file.
func TestGVisorRemoveLeavesNothing(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	cid := e.startContainer(t, p, "sleeper", "sleep 600")
	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	netns := sb.GetSandbox().GetNetnsPath()
	if len(runscProcesses(p.id)) == 0 {
		t.Fatalf("no runsc process for pod %s", p.id)
	}
	e.removePod(t, p)
	if procs := runscProcesses(p.id); len(procs) > 0 {
		t.Errorf("runsc processes of the removed pod remain: %q", procs)
	}
	if _, err := os.Stat(netns); netns == "" || !os.IsNotExist(err) {
		t.Errorf("pod netns %q remains: %v", netns, err)
	}
	left, _ := filepath.Glob(filepath.Join(e.runDir, "runsc", "*", "*"+p.id+"*"))
	if len(left) > 0 {
		t.Errorf("runsc state of the pod remains: %q", left)
	}
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", e.ctrd.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{p.id, cid} {
		if strings.Contains(string(mounts), id) {
			t.Errorf("a mount of %s remains:\n%s", id, grepLines(string(mounts), id))
		}
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, "sandboxes", p.id)); !os.IsNotExist(err) {
		t.Errorf("sandboxer state of the pod remains: %v", err)
	}
	for _, ctrl := range []string{"memory", "cpu", "pids", "unified", ""} {
		for _, name := range []string{"gvisor-" + p.id, cid} {
			dir := filepath.Join("/sys/fs/cgroup", ctrl, "magnetar-e2e", name)
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgroup %s remains", dir)
			}
		}
	}
	if _, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id}); status.Code(err) != codes.NotFound {
		t.Errorf("pod status after removal: %v, want NotFound", err)
	}
}

// TestGVisorSharedPIDNamespace: a shareProcessNamespace pod's containers
// share the root container's PID namespace in the sandbox (its init is
// Magnetar's own), so the first container's exit leaves the others running.
func TestGVisorSharedPIDNamespace(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false, sharePID)
	short := e.startContainer(t, p, "short", "until pidof sleep >/dev/null; do sleep 0.1; done; echo saw the sleeper; exit 3")
	long := e.startContainer(t, p, "long", "exec sleep 600")
	if st := e.waitExited(t, short); st.ExitCode != 3 {
		t.Fatalf("short container: exit %d, want 3 (log: %q)", st.ExitCode, e.logOf(t, p, "short", "saw the sleeper"))
	}
	ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: long, Cmd: []string{"sh", "-c", "pidof sleep"}, Timeout: 60})
	if err != nil || ex.ExitCode != 0 || strings.TrimSpace(string(ex.Stdout)) == "1" {
		t.Fatalf("exec in the long container: %v (exit %d, %q %s); want the sleeper, not PID 1", err, ex.GetExitCode(), ex.GetStdout(), ex.GetStderr())
	}
	resp, err := e.rt.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: long})
	if err != nil || resp.Status.State != runtime.ContainerState_CONTAINER_RUNNING {
		t.Errorf("long container after the short one exited: %v, %v; want running", resp.GetStatus().GetState(), err)
	}
}

// TestGVisorStreaming: the streaming io type on a gvisor pod (logs, exec
// with stdin, exit codes).
func TestGVisorStreaming(t *testing.T) {
	e := setup(t)
	requireRunsc(t)
	p := e.runPodWith(t, gvisorHandler+"-streaming", false)
	cid := e.startContainer(t, p, "hello", "echo hello-streaming; echo to-stderr >&2; sleep 600")
	if got := e.logOf(t, p, "hello", "to-stderr"); !strings.Contains(got, "hello-streaming") || !strings.Contains(got, "to-stderr") {
		t.Errorf("container log = %q, want stdout and stderr lines", got)
	}
	if fifos, _ := filepath.Glob(filepath.Join(e.runDir, "s", "*", cid+"-stdout")); len(fifos) == 0 {
		t.Errorf("no stream FIFOs under %s/s: the container's stdio was not streamed", e.runDir)
	}
	bin, _ := harness.DefaultBinDir()
	cmd := exec.CommandContext(ctxT(t), filepath.Join(bin, "crictl"), "--config", e.ctrd.CrictlConfig(), "exec", "-i", cid, "sh", "-c", "wc -c; echo done")
	cmd.Stdin = strings.NewReader(strings.Repeat("x", 100000))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "100000") || !strings.Contains(string(out), "done") {
		t.Errorf("crictl exec -i = %q, %v; want 100000 bytes counted, then done", out, err)
	}
	exitID := e.startContainer(t, p, "exiter", "echo bye; exit 42")
	if st := e.waitExited(t, exitID); st.ExitCode != 42 {
		t.Errorf("exit code = %d, want 42", st.ExitCode)
	}
}

// TestGVisorWorkerCrash kills the sandboxer's worker (kill -9) under a
// running gvisor pod: the new worker re-attaches to the runsc sandbox and
// its containers by runsc's state: a running container keeps running and
// is stopped through runsc afterwards (its exit seen by runsc wait), and
// the pod serves new containers and is removed cleanly.
func TestGVisorWorkerCrash(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	survivor := e.startContainer(t, p, "survivor", "exec sleep 600")
	old := e.workerPid(t)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitNewWorker(t, old, p)
	e.requireRunning(t, survivor)
	if procs := runscProcesses(p.id); len(procs) == 0 {
		t.Fatalf("the pod's runsc sandbox is gone after the worker crash")
	}
	if _, err := e.rt.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: survivor, Timeout: 1}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.waitExited(t, survivor); st.ExitCode != 137 && st.ExitCode != 143 {
		t.Errorf("re-attached container stopped: exit %d, want 137 or 143", st.ExitCode)
	}
	next := e.startContainer(t, p, "after-crash", "echo served after the crash")
	e.waitExited(t, next)
	if got := e.logOf(t, p, "after-crash", "served after the crash"); !strings.Contains(got, "served after the crash") {
		t.Errorf("container started after the crash logged %q", got)
	}
	e.removePod(t, p)
	if procs := runscProcesses(p.id); len(procs) > 0 {
		t.Errorf("runsc processes of the removed pod remain: %q", procs)
	}
}

// TestGVisorSandboxDeathReported: a runsc sandbox process that dies (a
// crash of the sentry) is reported: the pod becomes NOTREADY, its
// container exited, and removing the pod leaves no runsc process.
func TestGVisorSandboxDeathReported(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false)
	cid := e.startContainer(t, p, "victim", "exec sleep 600")
	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	pid := int(sb.GetSandbox().GetPid())
	if pid <= 0 {
		t.Fatalf("gvisor sandbox reports no runsc sandbox pid: %v", sb.GetSandbox())
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the runsc sandbox %d: %v", pid, err)
	}
	if state := e.waitPodNotReady(t, p, 30*time.Second); state != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("pod state after the sandbox was killed = %s, want NOTREADY", state)
	}
	if st := e.waitExited(t, cid); st.ExitCode == 0 {
		t.Errorf("container of the killed sandbox: exit %d, want a failure", st.ExitCode)
	}
	e.removePod(t, p)
	if procs := runscProcesses(p.id); len(procs) > 0 {
		t.Errorf("runsc processes of the removed pod remain: %q", procs)
	}
}

// TestGVisorPodMemoryLimit: the pod's memory limit bounds its gVisor
// sandbox (plus the sentry's overhead): a container growing past it is
// ended (the host's OOM killer ends its stub process; runsc reports exit
// code 1), CRI reports it OOMKilled, and the pod keeps serving.
func TestGVisorPodMemoryLimit(t *testing.T) {
	e := setup(t)
	p := e.gvisorPod(t, false, func(cfg *runtime.PodSandboxConfig) {
		cfg.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 128 << 20}
	})
	cid := e.startContainer(t, p, "hog", `x=a; while true; do x="$x$x"; done`)
	if st := e.waitExited(t, cid); st.ExitCode == 0 || st.Reason != "OOMKilled" {
		t.Errorf("memory hog: exit %d reason %q; want a failure, OOMKilled", st.ExitCode, st.Reason)
	}
	ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil || ps.Status.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod after the hog: %v, %v; want ready", ps.GetStatus().GetState(), err)
	}
	next := e.startContainer(t, p, "after", "echo still serving")
	e.waitExited(t, next)
	if got := e.logOf(t, p, "after", "still serving"); !strings.Contains(got, "still serving") {
		t.Errorf("container after the hog logged %q", got)
	}
}
