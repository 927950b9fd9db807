package podinit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSetSysctls: sysctls are written and read back; one the kernel lacks
// gives SysctlUnsupported with its name; bad arguments give 1.
func TestSetSysctls(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"net/ipv4/tcp_sack", "net/ipv4/ip_local_port_range"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var errw bytes.Buffer
	if code := SetSysctls(root, []string{"net/ipv4/tcp_sack", "0", "net/ipv4/ip_local_port_range", "2000   3000"}, &errw); code != 0 {
		t.Fatalf("SetSysctls = %d: %s", code, errw.String())
	}
	if got, _ := os.ReadFile(filepath.Join(root, "net/ipv4/tcp_sack")); string(got) != "0" {
		t.Errorf("tcp_sack = %q", got)
	}
	errw.Reset()
	if code := SetSysctls(root, []string{"kernel/shm_rmid_forced", "1"}, &errw); code != SysctlUnsupported || !strings.Contains(errw.String(), "kernel/shm_rmid_forced") {
		t.Errorf("missing sysctl: %d %q, want %d naming it", code, errw.String(), SysctlUnsupported)
	}
	for _, args := range [][]string{{"net/ipv4/tcp_sack"}, {"../etc/passwd", "x"}} {
		errw.Reset()
		if code := SetSysctls(root, args, &errw); code != 1 {
			t.Errorf("SetSysctls(%q) = %d, want 1", args, code)
		}
	}
}
