package gvisor

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestReadonlyPathsStayInTheRoot: a read-only path that is a symbolic link
// leading out of the root resolves inside it; a path inside a tmpfs is
// refused with InvalidArgument and the spec is left as it was.
func TestReadonlyPathsStayInTheRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc", "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../etc/app", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{Linux: &specs.Linux{ReadonlyPaths: []string{"/link", "/proc/sys"}}}
	if err := readonlyPaths(spec, root); err != nil {
		t.Fatal(err)
	}
	want := []specs.Mount{{Destination: "/etc/app", Type: "bind", Source: filepath.Join(root, "etc", "app"), Options: []string{"rbind", "ro"}}}
	if !reflect.DeepEqual(spec.Mounts, want) {
		t.Errorf("mounts %+v, want %+v", spec.Mounts, want)
	}

	spec = &specs.Spec{Mounts: []specs.Mount{{Destination: "/run", Type: "tmpfs", Source: "tmpfs"}}, Linux: &specs.Linux{ReadonlyPaths: []string{"/run/x"}}}
	if err := readonlyPaths(spec, root); !errdefs.IsInvalidArgument(err) || len(spec.Mounts) != 1 {
		t.Errorf("read-only path in a tmpfs: %v, mounts %+v; want InvalidArgument and the mounts unchanged", err, spec.Mounts)
	}
}

// TestReadOnlyBindOptions: "rro" becomes "ro" (once); a non-recursive
// read-only rbind gets its host submounts with their own flags; a
// read-write one and a plain bind are left.
func TestReadOnlyBindOptions(t *testing.T) {
	host := []*mountinfo.Info{
		{Mountpoint: "/src", Options: "rw"},
		{Mountpoint: "/src/a", Options: "rw,nosuid"},
		{Mountpoint: "/src/a/b", Options: "ro,nosuid"},
		{Mountpoint: "/srcx", Options: "rw"},
	}
	in := []specs.Mount{
		{Destination: "/r", Type: "bind", Source: "/src", Options: []string{"rbind", "ro", "rro"}},
		{Destination: "/n", Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
		{Destination: "/w", Type: "bind", Source: "/src", Options: []string{"rbind", "rw"}},
		{Destination: "/t", Type: "tmpfs", Source: "tmpfs", Options: []string{"ro"}},
	}
	got := readOnlyBinds(in, host)
	want := []specs.Mount{
		{Destination: "/r", Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
		{Destination: "/n", Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
		{Destination: "/n/a", Type: "bind", Source: "/src/a", Options: []string{"rbind", "rw"}},
		{Destination: "/n/a/b", Type: "bind", Source: "/src/a/b", Options: []string{"rbind", "ro"}},
		{Destination: "/w", Type: "bind", Source: "/src", Options: []string{"rbind", "rw"}},
		{Destination: "/t", Type: "tmpfs", Source: "tmpfs", Options: []string{"ro"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mounts:\n%+v\nwant:\n%+v", got, want)
	}
	if in[0].Options[2] != "rro" {
		t.Errorf("the caller's mounts changed: %+v", in[0])
	}
}
