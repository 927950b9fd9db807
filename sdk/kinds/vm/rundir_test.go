package vm

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// The work dir of a VM whose sandbox dir is long goes under the
// configured run dir, not a fixed /run/magnetar.
func TestShortVMDirFollowsRunDir(t *testing.T) {
	b := &Backend{cfg: Config{RunDir: "/x/run"}.withDefaults()}
	s := newSandbox(b, backend.SandboxConfig{ID: "sb", Dir: "/" + strings.Repeat("d", 120)})
	if d := s.vmDir(); !strings.HasPrefix(d, "/x/run/vm/") {
		t.Errorf("vm dir %q is not under the run dir /x/run", d)
	}
	s = newSandbox(b, backend.SandboxConfig{ID: "sb", Dir: "/short"})
	if d := s.vmDir(); d != "/short/vm" {
		t.Errorf("vm dir %q, want /short/vm", d)
	}
	if d := (&Backend{cfg: Config{}.withDefaults()}).shortVMRoot(); d != "/run/magnetar/vm" {
		t.Errorf("default short root %q", d)
	}
}

// A sandbox's memory limit below the vm kind's minimum is refused before
// anything is made.
func TestCreateRefusesTinyMemory(t *testing.T) {
	b := &Backend{cfg: Config{}.withDefaults()}
	for _, tc := range []struct {
		limit int64
		ok    bool
	}{{1, false}, {MinMemoryLimit - 1, false}, {MinMemoryLimit, true}, {-1, true}, {0, true}} {
		lim := tc.limit
		_, err := b.Create(context.Background(), backend.SandboxConfig{ID: "sb", Dir: t.TempDir(), PrivateNetwork: true,
			Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &lim}}})
		if tc.ok && err != nil {
			t.Errorf("limit %d: %v", tc.limit, err)
		}
		if !tc.ok && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "memory_limit_bytes")) {
			t.Errorf("limit %d: %v, want InvalidArgument naming memory_limit_bytes", tc.limit, err)
		}
	}
}
