package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// TestSaveRestore boots a template VM on a shared memory file, saves its
// state once its agent answered, and restores two VMs from it that both
// answer; a truncated state file makes Start fail and leaves nothing.
func TestSaveRestore(t *testing.T) {
	kernel, initrd := requireBoot(t)
	tdir := t.TempDir()
	mem, state := filepath.Join(tdir, "memory"), filepath.Join(tdir, "state")
	cfg := bootConfig(t, kernel, initrd)
	cfg.MemoryFile, cfg.MemoryShared, cfg.TCGCacheMiB = mem, true, 64
	v := startVM(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	health(ctx, t, v)
	if err := v.(hypervisor.StateSaver).SaveState(ctx, state); err != nil {
		t.Fatal(err)
	}
	if err := v.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("state file: %d bytes", fi.Size())
	if fi.Size() > 16<<20 {
		t.Errorf("state file of %d bytes: the memory is in it", fi.Size())
	}

	restore := func(incoming string) hypervisor.Config {
		c := bootConfig(t, kernel, initrd)
		c.MemoryFile, c.TCGCacheMiB, c.Incoming = mem, 64, incoming
		return c
	}
	for i := range 2 {
		c := restore(state)
		t0 := time.Now()
		r := startVM(t, c)
		h := health(ctx, t, r)
		t.Logf("restore %d: %s, to Health %v (guest uptime %v)", i, r.Info()["restore_duration"], time.Since(t0), h.GetUptime().AsDuration())
	}

	bad := filepath.Join(tdir, "truncated")
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	c := restore(bad)
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	r, err := New(Options{}).Start(sctx, c)
	if err == nil {
		_ = r.Stop(ctx, true)
		t.Fatal("restore from a truncated state succeeded")
	}
	t.Logf("truncated state: %v", err)
	for _, f := range []string{QMPSocket, AgentSocket, PidFile} {
		if _, err := os.Stat(filepath.Join(c.Dir, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}
