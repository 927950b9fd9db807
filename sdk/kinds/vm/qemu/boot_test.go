package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// requireBoot skips (or fails with MAGNETAR_E2E_REQUIRED=1) unless QEMU and
// the guest image from "make guest" are there; it returns the image paths.
func requireBoot(t *testing.T) (kernel, initrd string) {
	t.Helper()
	return testutil.GuestImage(t)
}

// health connects to the agent and calls Health, retrying with a fresh
// connection until it answers or ctx ends.
func health(ctx context.Context, t *testing.T, v hypervisor.VM) *agentv1.HealthResponse {
	t.Helper()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	var resp *agentv1.HealthResponse
	var last error
	if !testutil.Poll(time.Until(deadline), func() bool {
		resp, last = healthOnce(ctx, v)
		return last == nil
	}) {
		t.Fatalf("agent did not answer Health: %v (last error %v)", ctx.Err(), last)
	}
	return resp
}

func healthOnce(ctx context.Context, v hypervisor.VM) (*agentv1.HealthResponse, error) {
	conn, err := v.AgentConn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	hctx, hcancel := context.WithTimeout(ctx, 15*time.Second)
	defer hcancel()
	if err := agentmux.Handshake(hctx, conn); err != nil {
		return nil, err
	}
	mc, err := agentmux.NewClient(conn)
	if err != nil {
		return nil, err
	}
	defer mc.Close()
	st, err := mc.Dial()
	if err != nil {
		return nil, err
	}
	cl := ttrpc.NewClient(st)
	defer cl.Close()
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return agentv1.NewTTRPCAgentServiceClient(cl).Health(actx, &agentv1.HealthRequest{})
}

func bootConfig(t *testing.T, kernel, initrd string) hypervisor.Config {
	t.Helper()
	share := t.TempDir()
	cfg := hypervisor.Config{
		ID: "test-" + strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-"), Dir: t.TempDir(),
		Kernel: kernel, Initrd: initrd, VCPUs: 1, MemoryMiB: 256,
		Shares: []hypervisor.Share{{HostPath: share, Tag: "shared", ReadOnly: true}},
	}
	if os.Geteuid() == 0 {
		cfg.CgroupPath = fmt.Sprintf("/magnetar-qemu-test-%d", os.Getpid())
	}
	return cfg
}

func startVM(t *testing.T, cfg hypervisor.Config) hypervisor.VM {
	t.Helper()
	d := New(Options{})
	if err := d.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	v, err := d.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := v.Stop(ctx, true); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(cfg.Dir, ConsoleLog))
			t.Logf("console log:\n%s", b)
		}
	})
	return v
}

func cgroupDirs(path string) []string {
	var dirs []string
	for _, c := range []string{"memory", "cpu", "pids", "unified", ""} {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup", c, path))
	}
	return dirs
}

func TestBootHealthStop(t *testing.T) {
	kernel, initrd := requireBoot(t)
	cfg := bootConfig(t, kernel, initrd)
	t0 := time.Now()
	v := startVM(t, cfg)
	started := time.Since(t0)
	info := v.Info()
	t.Logf("accel %s: %s", info["accel"], info["accel_reason"])
	t.Logf("command line: %s", info["command_line"])

	if cfg.CgroupPath != "" {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", v.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), ":"+cfg.CgroupPath+"\n") {
			t.Errorf("qemu not in cgroup %s:\n%s", cfg.CgroupPath, b)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	h := health(ctx, t, v)
	t.Logf("start %v, boot to Health %v (agent %s, guest uptime %v)", started, time.Since(t0), h.GetVersion(), h.GetUptime().AsDuration())

	sctx, scancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer scancel()
	if err := v.Stop(sctx, false); err != nil {
		t.Fatal(err)
	}
	st, err := v.Wait(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Signal != 0 {
		t.Errorf("graceful stop ended with signal %v, want a clean quit", st.Signal)
	}
	if err := syscall.Kill(v.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("qemu pid %d still exists: %v", v.Pid(), err)
	}
	for _, f := range []string{QMPSocket, AgentSocket, PidFile} {
		if _, err := os.Stat(filepath.Join(cfg.Dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", f, err)
		}
	}
	if cfg.CgroupPath != "" {
		for _, d := range cgroupDirs(cfg.CgroupPath) {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left behind", d)
			}
		}
	}
	if err := v.Stop(sctx, false); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestKill9WaitReturns(t *testing.T) {
	kernel, initrd := requireBoot(t)
	cfg := bootConfig(t, kernel, initrd)
	v := startVM(t, cfg)
	if err := syscall.Kill(v.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := v.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait after kill -9: %v", err)
	}
	if st.Signal != syscall.SIGKILL || st.Code != 137 {
		t.Errorf("status %+v, want SIGKILL/137", st)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, PidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left behind after kill: %v", err)
	}
	if _, err := v.AgentConn(ctx); err == nil {
		t.Error("AgentConn after exit succeeded")
	}
}

func TestStartFailsCleanly(t *testing.T) {
	kernel, initrd := requireBoot(t)
	cfg := bootConfig(t, kernel, initrd)
	// Not a kernel: QEMU exits during start, after the cgroup placement.
	cfg.Kernel = filepath.Join(t.TempDir(), "not-a-kernel")
	if err := os.WriteFile(cfg.Kernel, []byte("nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := New(Options{}).Start(t.Context(), cfg)
	if err == nil {
		_ = v.Stop(t.Context(), true)
		t.Fatal("Start with a bad kernel succeeded")
	}
	t.Logf("error: %v", err)
	for _, f := range []string{QMPSocket, AgentSocket, PidFile} {
		if _, err := os.Stat(filepath.Join(cfg.Dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", f, err)
		}
	}
	if cfg.CgroupPath != "" {
		for _, d := range cgroupDirs(cfg.CgroupPath) {
			if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left behind", d)
			}
		}
	}
}

func TestRecoverWaitsForExit(t *testing.T) {
	kernel, initrd := requireBoot(t)
	cfg := bootConfig(t, kernel, initrd)
	v := startVM(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// The pid file appears once QEMU has initialised.
	testutil.Poll(10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(cfg.Dir, PidFile))
		return err == nil
	})
	r, err := New(Options{}).Recover(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Pid() != v.Pid() {
		t.Fatalf("recovered pid %d, want %d", r.Pid(), v.Pid())
	}
	if err := syscall.Kill(v.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st, err := r.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait of recovered vm after kill -9: %v", err)
	}
	if st.Code != hypervisor.UnknownExitCode {
		t.Errorf("status %+v, want unknown exit code", st)
	}
}
