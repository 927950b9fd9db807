package runc_test

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sandboxer/backend/runc"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendtest"
)

func requireRunc(t *testing.T) { requireRuncB(t) }

func requireRuncB(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the runc kind needs root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed (make deps)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static not installed (make deps)")
	}
}

func TestConformance(t *testing.T) {
	requireRunc(t)
	root := t.TempDir()
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		b, err := runc.New(runc.Config{Root: root})
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

func (b busybox) Bundle(t *testing.T, dir, script string) *specs.Spec {
	return b.bundle(t, dir, script)
}

func (b busybox) bundle(t testing.TB, dir, script string) *specs.Spec {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "/bin/busybox", filepath.Join(rootfs, "bin", "busybox"))
	for _, applet := range []string{"sh", "echo", "sleep", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := namespaces.WithNamespace(context.Background(), "conformance")
	sp, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: filepath.Base(dir)})
	if err != nil {
		t.Fatal(err)
	}
	spec := *sp
	spec.Root = &specs.Root{Path: "rootfs"}
	spec.Process.Args = b.Process(script).Args
	spec.Process.Env = []string{"PATH=/bin"}
	spec.Linux.CgroupsPath = ""
	data, err := json.Marshal(&spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return &spec
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
}
