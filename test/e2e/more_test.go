package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/testutil"
)

// startLimited starts a busybox container with a memory limit.
func (e *env) startLimited(t *testing.T, p *pod, name, script string, memory int64) string {
	t.Helper()
	return e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: name},
		Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
		Command:  []string{"sh", "-c", script},
		LogPath:  name + ".log",
		Linux:    &runtime.LinuxContainerConfig{Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: memory}},
	})
}

func TestOOMKillReported(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	// The shell variable grows until the 32 MiB limit kills the shell.
	cid := e.startLimited(t, p, "hog", `x=a; while true; do x="$x$x"; done`, 32<<20)
	st := e.waitExited(t, cid)
	if st.ExitCode != 137 || st.Reason != "OOMKilled" {
		t.Errorf("OOM container: exit %d reason %q; want 137 OOMKilled", st.ExitCode, st.Reason)
	}
}

func TestUpdateResourcesAndStats(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	cid := e.startLimited(t, p, "limited", "sleep 600", 64<<20)
	ctx := ctxT(t)
	if _, err := e.rt.UpdateContainerResources(ctx, &runtime.UpdateContainerResourcesRequest{
		ContainerId: cid, Linux: &runtime.LinuxContainerResources{MemoryLimitInBytes: 96 << 20},
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	// The container reads its own limit from its cgroup.
	ex, err := e.rt.ExecSync(ctx, &runtime.ExecSyncRequest{ContainerId: cid, Cmd: []string{"sh", "-c",
		"cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max"}, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if got := strings.TrimSpace(string(ex.Stdout)); got != fmt.Sprint(96<<20) {
		t.Errorf("memory limit seen in the container = %q, want %d", got, 96<<20)
	}
	var stats *runtime.ContainerStats
	testutil.Poll(10*time.Second, func() bool { // CRI collects stats asynchronously
		resp, err := e.rt.ContainerStats(ctx, &runtime.ContainerStatsRequest{ContainerId: cid})
		if err != nil {
			t.Fatalf("ContainerStats: %v", err)
		}
		stats = resp.Stats
		return stats.GetMemory().GetWorkingSetBytes().GetValue() > 0 && stats.GetCpu().GetUsageCoreNanoSeconds().GetValue() > 0
	})
	if stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 || stats.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Errorf("container stats have no usage: %v", stats)
	}
	var pst *runtime.PodSandboxStats
	testutil.Poll(10*time.Second, func() bool {
		resp, err := e.rt.PodSandboxStats(ctx, &runtime.PodSandboxStatsRequest{PodSandboxId: p.id})
		if err != nil {
			t.Fatalf("PodSandboxStats: %v", err)
		}
		pst = resp.Stats
		return pst.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() > 0
	})
	if pst.GetLinux().GetMemory().GetWorkingSetBytes().GetValue() == 0 {
		t.Errorf("pod stats (Controller.Metrics) have no memory usage: %v", pst)
	}
}

func TestExecWithTTY(t *testing.T) {
	e := setup(t)
	if _, err := exec.LookPath("script"); err != nil {
		testutil.SkipOrFail(t, "script (bsdutils) is needed to give crictl a terminal: %v", err)
	}
	p := e.runPod(t, false)
	cid := e.startContainer(t, p, "tty", "sleep 600")
	e.checkExecTerminal(t, cid)
}

func TestAttach(t *testing.T) {
	e := setup(t)
	e.checkAttach(t, e.runPod(t, false))
}

// checkAttach runs a container that echoes its stdin in pod p, attaches to
// it with crictl and checks that a line sent reaches its CRI log.
func (e *env) checkAttach(t *testing.T, p *pod) {
	t.Helper()
	ctx := ctxT(t)
	resp, err := e.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: "attach"},
			Image:    &runtime.ImageSpec{Image: harness.BusyboxImage},
			Command:  []string{"sh", "-c", "while read line; do echo got:$line; done"},
			LogPath:  "attach.log",
			Stdin:    true,
		},
		SandboxConfig: p.cfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: resp.ContainerId}); err != nil {
		t.Fatal(err)
	}
	bin, _ := harness.DefaultBinDir()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "crictl"), "--config", e.ctrd.CrictlConfig(), "attach", "-i", resp.ContainerId)
	cmd.Stdin = strings.NewReader("hello-attach\n")
	out, _ := cmd.CombinedOutput() // ends when stdin closes
	if got := e.logOf(t, p, "attach", "got:hello-attach"); !strings.Contains(got, "got:hello-attach") {
		t.Errorf("attached stdin did not reach the container: log %q, crictl %q", got, out)
	}
}

// TestControllerRejectsBadInput talks to the sandboxer's Controller
// directly, as containerd would, with requests CRI never sends.
func TestControllerRejectsBadInput(t *testing.T) {
	e := setup(t)
	conn, err := grpc.NewClient("unix://"+e.ctrd.SandboxerSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := sandboxapi.NewControllerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, _ := os.ReadDir(filepath.Join(e.stateDir, "sandboxes"))
	for _, tc := range []struct {
		name string
		req  *sandboxapi.ControllerCreateRequest
		want codes.Code
	}{
		{"path-like id", &sandboxapi.ControllerCreateRequest{SandboxID: "../x"}, codes.InvalidArgument},
		{"empty id", &sandboxapi.ControllerCreateRequest{}, codes.InvalidArgument},
		{"oversized", &sandboxapi.ControllerCreateRequest{SandboxID: "big", Annotations: map[string]string{"x": strings.Repeat("x", 20<<20)}}, codes.ResourceExhausted},
	} {
		_, err := c.Create(ctx, tc.req)
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	// A duplicate ID is refused, and the first sandbox is untouched.
	dup := &sandboxapi.ControllerCreateRequest{SandboxID: "e2e-dup", Annotations: map[string]string{"magnetar.io/kind": "runc"}}
	if _, err := c.Create(ctx, dup); err != nil {
		t.Fatalf("create e2e-dup: %v", err)
	}
	if _, err := c.Create(ctx, dup); status.Code(err) != codes.AlreadyExists {
		t.Errorf("duplicate id: %v, want AlreadyExists", err)
	}
	if st, err := c.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: "e2e-dup"}); err != nil || st.GetSandboxID() != "e2e-dup" {
		t.Errorf("first e2e-dup after the duplicate: %v, %v", st, err)
	}
	if _, err := c.Shutdown(ctx, &sandboxapi.ControllerShutdownRequest{SandboxID: "e2e-dup"}); err != nil {
		t.Errorf("shutdown e2e-dup: %v", err)
	}
	if _, err := c.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: "no-such-sandbox"}); status.Code(err) != codes.NotFound {
		t.Errorf("status of a missing sandbox: %v, want NotFound", err)
	}
	after, _ := os.ReadDir(filepath.Join(e.stateDir, "sandboxes"))
	if len(after) != len(before) {
		t.Errorf("rejected requests left state behind: %d entries before, %d after", len(before), len(after))
	}
}

// TestSandboxerRestart restarts magnetar-sandboxer under a running pod.
// containerd 2.4 treats a closed task connection as a dead shim: it runs
// containerd-shim-magnetar-v2 delete and reports the container exited. The shim makes that true (no container keeps running unseen), and
// the pod itself survives: the restarted sandboxer still knows it, serves
// new containers in it, and removes it completely.
func TestSandboxerRestart(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	cid := e.startContainer(t, p, "survivor", "sleep 600")
	pid := e.containerPid(t, cid)

	e.stopSandboxer()
	if err := e.startSandboxer(); err != nil {
		t.Fatal(err)
	}
	st := e.waitExited(t, cid)
	// 137 when containerd's dead-shim cleanup reports first, 255 (status
	// unknown) when the restarted sandboxer's watch of the re-attached
	// container does.
	if st.ExitCode != 137 && st.ExitCode != 255 {
		t.Errorf("container after the sandboxer restart: exit %d, want 137 or 255", st.ExitCode)
	}
	testutil.Poll(5*time.Second, func() bool { _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); return err != nil })
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		t.Errorf("container process %d reported exited but still runs", pid)
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
	if _, err := os.Stat(filepath.Join(e.stateDir, "sandboxes", p.id)); !os.IsNotExist(err) {
		t.Errorf("state of the pod remains after removal: %v", err)
	}
}

// TestAPISeesCRIPods reads the pods CRI made through Magnetar's own API
// (Connect over the sandboxer's API socket).
func TestAPISeesCRIPods(t *testing.T) {
	e := setup(t)
	p := e.runPod(t, false)
	sock := filepath.Join(e.runDir, "api.sock")
	got, err := e.api().GetSandbox(ctxT(t), &sandboxv1.GetSandboxRequest{SandboxId: p.id})
	if err != nil {
		t.Fatalf("GetSandbox over the API: %v", err)
	}
	if got.GetSandbox().GetKind() != "runc" || got.GetSandbox().GetState() != sandboxv1.SandboxState_SANDBOX_STATE_READY ||
		got.GetSandbox().GetNetnsPath() == "" {
		t.Errorf("API view of a CRI pod = %v; want a ready runc sandbox with a netns", got.GetSandbox())
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("API socket mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
}

// api returns a client of Magnetar's sandbox service on the API socket.
func (e *env) api() sandboxv1connect.SandboxServiceClient {
	sock := filepath.Join(e.runDir, "api.sock")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return sandboxv1connect.NewSandboxServiceClient(connect.NewClient(connecthttp.NewTransport(hc, "http://magnetar")))
}

// checkExecTerminal: crictl exec -it gives the process a pty as its stdin
// (script gives crictl a pseudo-terminal, as a user's shell would), and
// without -t there is none.
func (e *env) checkExecTerminal(t *testing.T, cid string) {
	t.Helper()
	bin, _ := harness.DefaultBinDir()
	crictl := filepath.Join(bin, "crictl")
	cmd := exec.CommandContext(ctxT(t), "script", "-qec",
		fmt.Sprintf("%s --config %s exec -it %s sh -c 'tty; test -t 0 && echo stdin-is-a-tty'", crictl, e.ctrd.CrictlConfig(), cid), "/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("crictl exec -it: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "stdin-is-a-tty") {
		t.Errorf("exec with a terminal printed %q; want a /dev/pts/N and stdin-is-a-tty", out)
	}
	out, err = e.ctrd.Crictl(ctxT(t), "exec", cid, "sh", "-c", "tty || true")
	if err != nil || !strings.Contains(string(out), "not a tty") {
		t.Errorf("exec without a terminal: %q, %v; want 'not a tty'", out, err)
	}
}
