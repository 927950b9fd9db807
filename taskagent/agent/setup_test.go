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
)

// TestSetupSysctls: Setup writes the pod's sysctls in the guest's
// /proc/sys (a directory here); a sysctl that is not namespaced is refused before anything is
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
	for p, want := range map[string]string{"net/ipv4/ip_forward": "1", "kernel/domainname": "example", "kernel/shmmax": "4096"} {
		if got, _ := os.ReadFile(filepath.Join(sys, p)); string(got) != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
}
