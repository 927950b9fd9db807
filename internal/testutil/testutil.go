// Package testutil holds helpers shared by Magnetar's tests that run real
// containers: prerequisite checks and busybox bundles.
package testutil

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/ociimage"
)

// RequireRunc skips the test (see [SkipOrFail]) unless it runs as root
// with runc and Debian's static busybox installed (`make deps`).
func RequireRunc(t testing.TB) {
	t.Helper()
	RequireRoot(t, "runc")
	RequireBinary(t, "runc")
	RequireBusybox(t)
}

// RequireBinary skips the test (see [SkipOrFail]) unless name is in PATH.
func RequireBinary(t testing.TB, name string) {
	t.Helper()
	_, err := exec.LookPath(name)
	Require(t, err == nil, "%s not installed (make deps): %v", name, err)
}

// RequireBusybox skips the test (see [SkipOrFail]) unless Debian's static
// busybox is installed (`make deps`).
func RequireBusybox(t testing.TB) {
	t.Helper()
	_, err := os.Stat(ociimage.DefaultBusybox)
	Require(t, err == nil, "busybox-static not installed (make deps): %v", err)
}

// RequireRunsc skips the test unless it runs as root with gVisor's runsc
// and Debian's static busybox installed (`make deps`).
func RequireRunsc(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for runsc")
	}
	if _, err := exec.LookPath("runsc"); err != nil {
		t.Skip("runsc not installed (make deps)")
	}
	if _, err := os.Stat(ociimage.DefaultBusybox); err != nil {
		t.Skip("busybox-static not installed (make deps)")
	}
}

// BusyboxRootfs builds a busybox root file system in dir and returns dir.
func BusyboxRootfs(t testing.TB, dir string) string {
	t.Helper()
	if err := ociimage.BuildBusyboxRootfs(context.Background(), "", dir); err != nil {
		t.Fatalf("busybox rootfs: %v", err)
	}
	return dir
}

// BusyboxBundle writes an OCI bundle into dir (config.json and rootfs/)
// whose process runs script with sh, and returns its spec. The spec has
// containerd's defaults and no cgroups path.
func BusyboxBundle(t testing.TB, dir, script string) *specs.Spec {
	t.Helper()
	BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	ctx := namespaces.WithNamespace(context.Background(), "test")
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: filepath.Base(dir)})
	if err != nil {
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: "rootfs"}
	spec.Process.Args = []string{"/bin/sh", "-c", script}
	spec.Process.Env = []string{"PATH=/bin"}
	spec.Linux.CgroupsPath = ""
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return spec
}

// RequireOverlay skips the test (see [SkipOrFail]) unless an overlay file system can be
// mounted in a temporary directory (it cannot on overlayfs itself, for
// example). Containers made from images need one.
func RequireOverlay(t testing.TB) {
	t.Helper()
	d := t.TempDir()
	for _, s := range []string{"l", "u", "w", "m"} {
		if err := os.Mkdir(filepath.Join(d, s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := "lowerdir=" + filepath.Join(d, "l") + ",upperdir=" + filepath.Join(d, "u") + ",workdir=" + filepath.Join(d, "w")
	if err := unix.Mount("overlay", filepath.Join(d, "m"), "overlay", 0, opts); err != nil {
		SkipOrFail(t, "overlay mounts do not work here: %v", err)
	}
	_ = unix.Unmount(filepath.Join(d, "m"), unix.MNT_DETACH)
}
