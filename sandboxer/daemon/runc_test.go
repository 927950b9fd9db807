package daemon

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/hashicorp/go-hclog"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestRuncThroughContainerdAPIs runs a container of the real runc kind the
// way containerd drives it: Controller Create/Start over gRPC, then the Task
// API over ttrpc. It needs root, runc and busybox-static, and skips without.
func TestRuncThroughContainerdAPIs(t *testing.T) {
	testutil.RequireRunc(t)
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: testWriter{t}}))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	client := dialDaemon(t, cfg, done)
	cctx := k8sCtx(t)

	const id = "runc-smoke"
	pod := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "smoke", Namespace: "ns", Uid: "u"},
		Hostname: "smoke",
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}
	req := createRequest(t, id, "magnetar-runc", pod)
	req.NetnsPath = ""
	if _, err := client.Create(cctx, req); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if _, err := client.Shutdown(context.WithoutCancel(cctx), &sandboxapi.ControllerShutdownRequest{SandboxID: id}); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	start, err := client.Start(cctx, &sandboxapi.ControllerStartRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	tc := dialTask(t, start.GetAddress())

	bundle := busyboxBundle(t, "echo hello from runc; exit 3")
	stdout := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(stdout, 0o600); err != nil {
		t.Fatal(err)
	}
	fifo, err := os.OpenFile(stdout, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fifo.Close()
	lines := make(chan string, 10)
	go func() {
		s := bufio.NewScanner(fifo)
		for s.Scan() {
			lines <- s.Text()
		}
	}()

	if _, err := tc.Create(cctx, &taskapi.CreateTaskRequest{ID: "smoke-ctr", Bundle: bundle, Stdout: stdout}); err != nil {
		t.Fatalf("Task.Create: %v", err)
	}
	if _, err := tc.Start(cctx, &taskapi.StartRequest{ID: "smoke-ctr"}); err != nil {
		t.Fatalf("Task.Start: %v", err)
	}
	wctx, wcancel := context.WithTimeout(cctx, 20*time.Second)
	defer wcancel()
	w, err := tc.Wait(wctx, &taskapi.WaitRequest{ID: "smoke-ctr"})
	if err != nil {
		t.Fatalf("Task.Wait: %v", err)
	}
	if w.GetExitStatus() != 3 {
		t.Errorf("exit status %d, want 3", w.GetExitStatus())
	}
	select {
	case l := <-lines:
		if l != "hello from runc" {
			t.Errorf("stdout %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Error("no output")
	}
	if _, err := tc.Delete(cctx, &taskapi.DeleteRequest{ID: "smoke-ctr"}); err != nil {
		t.Errorf("Task.Delete: %v", err)
	}
	if _, err := client.Stop(cctx, &sandboxapi.ControllerStopRequest{SandboxID: id}); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// busyboxBundle writes a bundle whose rootfs is the host's static busybox
// and whose process runs script.
func busyboxBundle(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	testutil.BusyboxBundle(t, dir, script)
	return dir
}
