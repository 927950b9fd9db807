package podfiles

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// TestPodFiles: the pod's resolv.conf, hosts (the host's copy) and
// hostname (the pod's, else the host's) are written and bound into a
// container that does not mount its own, read-only with a read-only root.
func TestPodFiles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(src, []byte("10.0.0.1 somewhere\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := HostsSource
	HostsSource = src
	t.Cleanup(func() { HostsSource = old })

	if err := WritePodFiles(dir, backend.DNSConfig{Servers: []string{"10.0.0.53"}}, "pod-a"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{ResolvConfName: "nameserver 10.0.0.53\n", HostsName: "10.0.0.1 somewhere\n", HostnameName: "pod-a\n"} {
		if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	spec := &specs.Spec{Root: &specs.Root{Readonly: true}, Mounts: []specs.Mount{{Destination: "/etc/hosts", Type: "bind", Source: "/kubelet/etc-hosts"}}}
	AddPodFiles(spec, dir)
	got := map[string]specs.Mount{}
	for _, m := range spec.Mounts {
		got[m.Destination] = m
	}
	if len(spec.Mounts) != 3 || got["/etc/hosts"].Source != "/kubelet/etc-hosts" {
		t.Fatalf("mounts = %+v, want the spec's own /etc/hosts kept and two added", spec.Mounts)
	}
	for _, d := range []string{"/etc/resolv.conf", "/etc/hostname"} {
		m := got[d]
		if m.Source != filepath.Join(dir, filepath.Base(d)) || m.Type != "bind" || m.Options[len(m.Options)-1] != "ro" {
			t.Errorf("%s mount = %+v, want a read-only bind of the pod's file", d, m)
		}
	}

	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if err := WritePodFiles(dir, backend.DNSConfig{}, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, HostnameName)); string(got) != host+"\n" {
		t.Errorf("hostname without the pod's = %q, want the host's %q", got, host)
	}
}

// TestAddShm: the spec's tmpfs /dev/shm becomes a bind of the pod's, one is
// added when missing, and a /dev/shm volume is kept.
func TestAddShm(t *testing.T) {
	spec := &specs.Spec{Mounts: []specs.Mount{{Destination: "/proc", Type: "proc"}, {Destination: "/dev/shm", Type: "tmpfs", Source: "shm"}}}
	AddShm(spec, "/pod/shm")
	if m := spec.Mounts[1]; len(spec.Mounts) != 2 || m.Type != "bind" || m.Source != "/pod/shm" || m.Destination != "/dev/shm" {
		t.Errorf("mounts = %+v, want the tmpfs replaced by a bind of /pod/shm", spec.Mounts)
	}
	spec = &specs.Spec{}
	AddShm(spec, "/pod/shm")
	if len(spec.Mounts) != 1 || spec.Mounts[0].Source != "/pod/shm" {
		t.Errorf("mounts = %+v, want a bind of /pod/shm added", spec.Mounts)
	}
	spec = &specs.Spec{Mounts: []specs.Mount{{Destination: "/dev/shm/", Type: "bind", Source: "/volume"}}}
	AddShm(spec, "/pod/shm")
	if len(spec.Mounts) != 1 || spec.Mounts[0].Source != "/volume" {
		t.Errorf("mounts = %+v, want the /dev/shm volume kept", spec.Mounts)
	}
}

// TestMountShm: the pod's /dev/shm is a tmpfs of ShmSize, mounted once,
// and gone after UnmountShm.
func TestMountShm(t *testing.T) {
	testutil.RequireRoot(t, "mounts a tmpfs")
	dir := t.TempDir()
	t.Cleanup(func() { _ = UnmountShm(dir) })
	for range 2 {
		if err := MountShm(dir); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, ShmName)
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.TMPFS_MAGIC || st.Blocks*uint64(st.Bsize) != ShmSize {
		t.Errorf("shm: fs type %#x, size %d; want tmpfs of %d", st.Type, st.Blocks*uint64(st.Bsize), ShmSize)
	}
	// Mounted once: one unmount leaves no mount point.
	if err := unix.Unmount(p, 0); err != nil {
		t.Fatal(err)
	}
	if IsMountPoint(p) {
		t.Error("MountShm called twice stacked two tmpfs mounts")
	}
	if err := MountShm(dir); err != nil {
		t.Fatal(err)
	}
	if err := UnmountShm(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("after UnmountShm: %v, want no %s", err, p)
	}
}
