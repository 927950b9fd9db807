package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

const handler = "magnetar-runc"

var podSeq atomic.Int64

type pod struct {
	id  string
	cfg *runtime.PodSandboxConfig
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// runPod runs a pod with the magnetar-runc handler and removes it when the
// test ends.
func (e *env) runPod(t testing.TB, hostNetwork bool) *pod {
	t.Helper()
	return e.runPodWith(t, handler, hostNetwork)
}

// runPodWith runs a pod with runtime handler rh; opts change its config.
func (e *env) runPodWith(t testing.TB, rh string, hostNetwork bool, opts ...func(*runtime.PodSandboxConfig)) *pod {
	t.Helper()
	n := podSeq.Add(1)
	name := fmt.Sprintf("%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), n)
	netMode := runtime.NamespaceMode_POD
	if hostNetwork {
		netMode = runtime.NamespaceMode_NODE
	}
	cfg := &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: name, Namespace: "e2e", Uid: name + "-uid"},
		LogDirectory: filepath.Join(e.logDir, name),
		Linux: &runtime.LinuxPodSandboxConfig{
			CgroupParent: "/magnetar-e2e",
			SecurityContext: &runtime.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtime.NamespaceOption{Network: netMode, Pid: runtime.NamespaceMode_CONTAINER, Ipc: runtime.NamespaceMode_POD},
			},
		},
	}
	if !hostNetwork {
		cfg.Hostname = name
	}
	for _, o := range opts {
		o(cfg)
	}
	if err := os.MkdirAll(cfg.LogDirectory, 0o755); err != nil {
		t.Fatal(err)
	}
	resp, err := e.rt.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg, RuntimeHandler: rh})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	p := &pod{id: resp.PodSandboxId, cfg: cfg}
	t.Cleanup(func() { e.removePod(t, p) })
	return p
}

func (e *env) removePod(t testing.TB, p *pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("StopPodSandbox: %v", err)
	}
	if _, err := e.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("RemovePodSandbox: %v", err)
	}
}

// startContainer creates and starts a busybox container running script.
func (e *env) startContainer(t testing.TB, p *pod, name, script string) string {
	t.Helper()
	return e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: name},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", script},
		LogPath:  name + ".log",
		Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
			NamespaceOptions: p.cfg.Linux.GetSecurityContext().GetNamespaceOptions(),
		}},
	})
}

// start creates and starts a container of pod p and returns its ID.
func (e *env) start(t testing.TB, p *pod, cfg *runtime.ContainerConfig) string {
	t.Helper()
	ctx := ctxT(t)
	resp, err := e.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.cfg})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.GetMetadata().GetName(), err)
	}
	if _, err := e.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s: %v", cfg.GetMetadata().GetName(), err)
	}
	return resp.ContainerId
}

// waitExited polls until the container exited and returns its status.
func (e *env) waitExited(t testing.TB, id string) *runtime.ContainerStatus {
	t.Helper()
	var st *runtime.ContainerStatus
	if !testutil.Poll(60*time.Second, func() bool {
		resp, err := e.rt.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("ContainerStatus: %v", err)
		}
		st = resp.Status
		return st.State == runtime.ContainerState_CONTAINER_EXITED
	}) {
		t.Fatalf("container %s still %s after 60s", id, st.State)
	}
	return st
}

// logOf returns the CRI log of a container, waiting for want to appear.
func (e *env) logOf(t *testing.T, p *pod, name, want string) string {
	t.Helper()
	path := filepath.Join(p.cfg.LogDirectory, name+".log")
	var data []byte
	testutil.Poll(10*time.Second, func() bool {
		data, _ = os.ReadFile(path)
		return strings.Contains(string(data), want)
	})
	return string(data)
}

func TestPodOutputExecAndExitCode(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)

	// Pod status through CRI comes from the sandboxer's Controller.Status.
	ps, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if ps.Status.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod state = %s, want ready", ps.Status.State)
	}
	if ps.Status.Network.GetIp() == "" {
		t.Error("pod has no IP from CNI")
	}

	// No pause container and no shim per pod.
	assertNoPodProcesses(t)

	cid := e.startContainer(t, p, "hello", "echo hello from magnetar; hostname; sleep 600")
	if got := e.logOf(t, p, "hello", "hello from magnetar"); !strings.Contains(got, "hello from magnetar") || !strings.Contains(got, p.cfg.Hostname) {
		t.Errorf("container log = %q, want the greeting and hostname %q", got, p.cfg.Hostname)
	}

	ex, err := e.rt.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c", "echo exec-out; echo exec-err >&2; exit 5"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if ex.ExitCode != 5 || strings.TrimSpace(string(ex.Stdout)) != "exec-out" || strings.TrimSpace(string(ex.Stderr)) != "exec-err" {
		t.Errorf("ExecSync = code %d stdout %q stderr %q; want 5, exec-out, exec-err", ex.ExitCode, ex.Stdout, ex.Stderr)
	}

	exitID := e.startContainer(t, p, "exiter", "echo bye; exit 42")
	st := e.waitExited(t, exitID)
	if st.ExitCode != 42 {
		t.Errorf("exit code = %d, want 42", st.ExitCode)
	}
	assertNoPodProcesses(t)
}

func TestContainersShareLocalhost(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	e.startContainer(t, p, "server", "nc -l -p 8080")
	client := e.startContainer(t, p, "client", "for i in $(seq 1 100); do echo ping-over-localhost | nc 127.0.0.1 8080 && exit 0; sleep 0.1; done; exit 1")
	if st := e.waitExited(t, client); st.ExitCode != 0 {
		t.Fatalf("client exit code = %d, want 0; log: %s", st.ExitCode, e.logOf(t, p, "client", "-"))
	}
	if got := e.logOf(t, p, "server", "ping-over-localhost"); !strings.Contains(got, "ping-over-localhost") {
		t.Errorf("server log = %q, want the client's message", got)
	}
}

func TestHostNetworkPod(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, true)
	host, _ := os.Hostname()
	cid := e.startContainer(t, p, "hostnet", "hostname; cat /proc/net/dev")
	e.waitExited(t, cid)
	got := e.logOf(t, p, "hostnet", host)
	if !strings.Contains(got, host) {
		t.Errorf("host-network container log = %q, want the host's hostname %q", got, host)
	}
	// The harness's CNI bridge is a host interface: visible only with the
	// host's network.
	if !strings.Contains(got, e.ctrd.Bridge()) {
		t.Errorf("host-network container does not see host interface %s: %q", e.ctrd.Bridge(), got)
	}
}

func TestRemoveLeavesNothing(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	cid := e.startContainer(t, p, "sleeper", "sleep 600")
	pid := e.containerPid(t, cid)
	sb, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatal(err)
	}
	netns := sb.GetSandbox().GetNetnsPath()
	if _, err := os.Stat(netns); netns == "" || err != nil {
		t.Fatalf("pod netns %s: %v", netns, err)
	}
	e.removePod(t, p)
	if _, err := os.Stat(netns); !os.IsNotExist(err) {
		t.Errorf("pod netns %s remains: %v", netns, err)
	}

	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("container process %d still runs after the pod was removed", pid)
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
		dir := filepath.Join("/sys/fs/cgroup", ctrl, "magnetar-e2e", cid)
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("cgroup %s remains", dir)
		}
	}
	if _, err := e.rt.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: p.id}); status.Code(err) != codes.NotFound {
		t.Errorf("pod status after removal: %v, want NotFound", err)
	}
}

func TestBadInput(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	_, err := e.rt.CreateContainer(ctxT(t), &runtime.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: "noimage"},
			Image:    &runtime.ImageSpec{Image: "example.invalid/does-not-exist:1"},
			Command:  []string{"true"},
		},
		SandboxConfig: p.cfg,
	})
	if err == nil || !strings.Contains(err.Error(), "does-not-exist") {
		t.Errorf("unknown image: err = %v, want an error naming the image", err)
	}
	// A handler whose kind the sandboxer does not implement fails clearly
	// and leaves no pod behind.
	_, err = e.rt.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{
		Config: &runtime.PodSandboxConfig{
			Metadata: &runtime.PodSandboxMetadata{Name: "badkind", Namespace: "e2e", Uid: "badkind-uid"},
		},
		RuntimeHandler: harness.UnknownKindHandler, // declared in containerd, not a kind of the sandboxer
	})
	if err == nil {
		t.Error("RunPodSandbox with an unimplemented kind succeeded")
	}
	pods, err := e.rt.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{Filter: &runtime.PodSandboxFilter{LabelSelector: map[string]string{}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range pods.Items {
		if s.Metadata.Name == "badkind" && s.State == runtime.PodSandboxState_SANDBOX_READY {
			t.Errorf("failed pod %s is ready", s.Id)
		}
	}
}

func TestCrictlSmoke(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	dir := t.TempDir()
	podJSON := filepath.Join(dir, "pod.json")
	ctrJSON := filepath.Join(dir, "ctr.json")
	write(t, podJSON, fmt.Sprintf(`{"metadata":{"name":"crictl-pod","namespace":"e2e","uid":"crictl-uid"},"hostname":"crictl-pod","log_directory":%q,"linux":{"cgroup_parent":"/magnetar-e2e"}}`, filepath.Join(dir, "logs")))
	write(t, ctrJSON, fmt.Sprintf(`{"metadata":{"name":"hi"},"image":{"image":%q},"command":["sh","-c","echo crictl says hi"],"log_path":"hi.log"}`, harness.BusyboxImage))
	out, err := e.ctrd.Crictl(ctx, "runp", "--runtime", handler, podJSON)
	if err != nil {
		t.Fatalf("crictl runp: %v", err)
	}
	podID := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		_, _ = e.ctrd.Crictl(context.Background(), "stopp", podID)
		_, _ = e.ctrd.Crictl(context.Background(), "rmp", podID)
	})
	out, err = e.ctrd.Crictl(ctx, "create", podID, ctrJSON, podJSON)
	if err != nil {
		t.Fatalf("crictl create: %v", err)
	}
	cid := strings.TrimSpace(string(out))
	if _, err := e.ctrd.Crictl(ctx, "start", cid); err != nil {
		t.Fatalf("crictl start: %v", err)
	}
	e.waitExited(t, cid)
	out, err = e.ctrd.Crictl(ctx, "logs", cid)
	if err != nil || !strings.Contains(string(out), "crictl says hi") {
		t.Errorf("crictl logs = %q, %v", out, err)
	}
	if _, err := e.ctrd.Crictl(ctx, "stopp", podID); err != nil {
		t.Errorf("crictl stopp: %v", err)
	}
	if _, err := e.ctrd.Crictl(ctx, "rmp", podID); err != nil {
		t.Errorf("crictl rmp: %v", err)
	}
}

// assertNoPodProcesses checks that no pause container and no
// containerd-shim process runs for magnetar pods.
func assertNoPodProcesses(t *testing.T) {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		if _, err := strconv.Atoi(ent.Name()); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		if len(args) == 0 {
			continue
		}
		base := filepath.Base(args[0])
		if strings.HasPrefix(base, "containerd-shim") || base == "pause" {
			t.Errorf("unexpected per-pod process %s: %q", ent.Name(), args)
		}
	}
}

// containerPid is the host pid of container cid's init, from CRI's verbose
// status.
func (e *env) containerPid(t *testing.T, cid string) int {
	t.Helper()
	resp, err := e.rt.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: cid, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	return infoPid(t, resp.Info["info"])
}

func infoPid(t *testing.T, info string) int {
	t.Helper()
	i := strings.Index(info, `"pid":`)
	if i < 0 {
		t.Fatalf("no pid in verbose container status: %s", info)
	}
	rest := strings.TrimLeft(info[i+len(`"pid":`):], " ")
	end := strings.IndexAny(rest, ",}")
	pid, err := strconv.Atoi(strings.TrimSpace(rest[:end]))
	if err != nil || pid <= 0 {
		t.Fatalf("bad pid in verbose container status: %q", rest[:end])
	}
	return pid
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
