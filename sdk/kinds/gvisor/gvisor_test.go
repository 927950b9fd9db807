package gvisor_test

import (
	"os"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/backend/backendtest"
	"github.com/magnetar-io/magnetar/sdk/kinds/gvisor"
)

func TestMain(m *testing.M) {
	// Each sandbox's root container is this test binary re-executed.
	if gvisor.PodInitMain() {
		return
	}
	os.Exit(m.Run())
}

func TestConformance(t *testing.T) {
	testutil.RequireRunsc(t)
	root := t.TempDir()
	// The stdio copies' descriptors outlive a backend, as under the
	// sandboxer's supervisor (RecoverExecAfterRestart).
	store := backendfake.NewFDStore()
	t.Cleanup(store.Close)
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		b, err := gvisor.New(gvisor.Config{Root: root, FDStore: store})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}, busybox{})
}

// busybox builds bundles whose rootfs is Debian's static busybox.
type busybox struct{}

func (busybox) Process(script string) *specs.Process {
	return &specs.Process{Args: []string{"/bin/sh", "-c", script}, Cwd: "/", Env: []string{"PATH=/bin"}}
}

func (busybox) Bundle(t *testing.T, dir, script string) *specs.Spec {
	return testutil.BusyboxBundle(t, dir, script)
}

// HasShell: busybox has sh, cat, tty and stty.
func (busybox) HasShell() bool { return true }
