package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// TestSetupSysctls: Setup writes the pod's network and UTS sysctls in the
// guest's /proc/sys (a directory here) and keeps the IPC ones for the pod
// sandbox; a sysctl that is not namespaced is refused before anything is
// written.
func TestSetupSysctls(t *testing.T) {
	etc, sys := t.TempDir(), t.TempDir()
	for _, p := range []string{"net/ipv4/ip_forward", "kernel/domainname", "kernel/shmmax"} {
		if err := os.MkdirAll(filepath.Join(sys, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, p), []byte("0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := New(Options{EtcDir: etc, SysctlDir: sys}, slog.New(slog.NewTextHandler(io.Discard, nil)), new(slog.LevelVar), nil)

	err := a.Setup(context.Background(), &agentv1.SetupRequest{Sysctls: map[string]string{"net.ipv4.ip_forward": "1", "vm.swappiness": "10"}})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "vm.swappiness") {
		t.Fatalf("Setup with vm.swappiness: %v, want InvalidArgument naming it", err)
	}
	if _, err := os.Stat(filepath.Join(etc, "hosts")); !os.IsNotExist(err) {
		t.Errorf("refused Setup wrote %s/hosts (%v)", etc, err)
	}
	if got, _ := os.ReadFile(filepath.Join(sys, "net/ipv4/ip_forward")); string(got) != "0\n" {
		t.Errorf("refused Setup changed ip_forward to %q", got)
	}

	if err := a.Setup(context.Background(), &agentv1.SetupRequest{Sysctls: map[string]string{
		"net.ipv4.ip_forward": "1", "kernel/domainname": "example", "kernel.shmmax": "4096",
	}}); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	for p, want := range map[string]string{"net/ipv4/ip_forward": "1", "kernel/domainname": "example", "kernel/shmmax": "0\n"} {
		if got, _ := os.ReadFile(filepath.Join(sys, p)); string(got) != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
}

// TestGuestSysctlsSplit: IPC sysctls are returned for the pod's IPC
// namespace, not written in the guest's.
func TestGuestSysctlsSplit(t *testing.T) {
	sys := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sys, "net/core"), 0o755); err != nil {
		t.Fatal(err)
	}
	sc, err := backend.ParseSysctls(map[string]string{"net.core.somaxconn": "1024", "fs.mqueue.msg_max": "100", "kernel.shm_rmid_forced": "1"})
	if err != nil {
		t.Fatal(err)
	}
	ipc, err := setGuestSysctls(sys, sc)
	if err != nil {
		t.Fatal(err)
	}
	if len(ipc) != 2 || ipc["fs.mqueue.msg_max"] != "100" || ipc["kernel.shm_rmid_forced"] != "1" {
		t.Errorf("IPC sysctls = %v", ipc)
	}
	if got, _ := os.ReadFile(filepath.Join(sys, "net/core/somaxconn")); string(got) != "1024" {
		t.Errorf("somaxconn = %q", got)
	}
	if _, err := os.Stat(filepath.Join(sys, "fs")); !os.IsNotExist(err) {
		t.Errorf("an IPC sysctl was written in the guest's /proc/sys (%v)", err)
	}
}
