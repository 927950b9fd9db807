package backendfake_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/backend/backendtest"
)

// TestConformance runs the suite on the fake, unprivileged: the fake must
// behave like a real kind for the tests that use it to mean anything.
func TestConformance(t *testing.T) {
	host := backendfake.NewHost()
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		b := backendfake.New(backendfake.Config{Host: host})
		t.Cleanup(func() { b.Close() })
		return b
	}, workload{})
}

// workload writes bundles whose script the fake interprets.
type workload struct{}

func (workload) Process(script string) *specs.Process {
	return &specs.Process{Args: []string{"sh", "-c", script}, Cwd: "/"}
}

func (w workload) Bundle(t *testing.T, dir, script string) *specs.Spec {
	spec := &specs.Spec{Version: specs.Version, Process: w.Process(script), Root: &specs.Root{Path: "rootfs"}}
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return spec
}

func (workload) Tick() string { return "tick" }
