package wasm

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/procstat"
)

// TestRecoverLegacyContainer recovers a container recorded by a version
// whose containers were runner processes of their own: the process is
// ended, the container reports exit 137 and can be deleted.
func TestRecoverLegacyContainer(t *testing.T) {
	testutil.RequireRoot(t, "signals another root process")
	b, err := New(Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	old := exec.Command("sleep", "600")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = old.Wait(); close(waited) }()
	defer func() { _ = old.Process.Kill(); <-waited }()
	startTime, err := procstat.StartTime(old.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	s := newSandbox(b, backend.SandboxConfig{ID: "legacy", Dir: t.TempDir()})
	dir := filepath.Join(s.containersDir(), "c")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	legacy, _ := json.Marshal(map[string]any{
		"id": "c", "bundle": t.TempDir(), "rootfs": t.TempDir(), "runner": map[string]any{"module": "/m.wasm"},
		"cgroup": "/magnetar/legacy/c", "pid": old.Process.Pid, "startTime": startTime,
	})
	if err := os.WriteFile(filepath.Join(dir, stateFile), legacy, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := s.RecoverContainer(ctx, backend.ContainerConfig{ID: "c"}, uint32(old.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("the earlier version's runner process still runs")
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if st, err := c.Init().Wait(wctx); err != nil || st.Code != 137 {
		t.Errorf("legacy container exit = %+v, %v; want 137", st, err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state dir remains: %v", err)
	}
}
