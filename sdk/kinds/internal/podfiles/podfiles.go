// Package podfiles writes the files a pod's containers share that CRI
// leaves to sandboxers other than its own (containerd only writes them for
// pause-container pods): the pod's resolv.conf, hosts and hostname,
// bind-mounted as every container's /etc/resolv.conf, /etc/hosts and
// /etc/hostname, and the pod's /dev/shm.
package podfiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Names of the pod's files in the sandbox directory.
const (
	ResolvConfName = "resolv.conf"
	HostsName      = "hosts"
	HostnameName   = "hostname"
	// ShmName is the pod's /dev/shm: a tmpfs (MountShm) or, for the gvisor
	// kind, a directory standing for a tmpfs inside the sandbox.
	ShmName = "shm"
)

// ShmSize is the size of a pod's /dev/shm, containerd's for its
// pause-container pods.
const ShmSize = 64 << 20

// HostsSource is the file a pod's hosts file is copied from.
var HostsSource = "/etc/hosts"

// WritePodFiles writes the pod's resolv.conf (WriteResolvConf), hosts
// (a copy of the host's /etc/hosts, as containerd does for its
// pause-container pods; kubelet mounts its own over it) and hostname
// (hostname, or the host's name when it is empty) into the sandbox
// directory dir, crash-safely.
func WritePodFiles(dir string, dns backend.DNSConfig, hostname string) error {
	if err := WriteResolvConf(dir, dns); err != nil {
		return err
	}
	hosts, err := os.ReadFile(HostsSource)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read the host's hosts file: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, HostsName), hosts, 0o644); err != nil {
		return err
	}
	if hostname == "" {
		if hostname, err = os.Hostname(); err != nil {
			return fmt.Errorf("host name: %w", err)
		}
	}
	return writeFileAtomic(filepath.Join(dir, HostnameName), []byte(hostname+"\n"), 0o644)
}

// AddPodFiles gives the container the pod's resolv.conf, hosts and
// hostname written by WritePodFiles in the sandbox directory dir as
// /etc/resolv.conf, /etc/hosts and /etc/hostname, read-only with a
// read-only root, each unless the spec mounts one itself or the sandbox
// has none (started before pods had it). spec.Mounts is appended to:
// callers pass a copy they own.
func AddPodFiles(spec *specs.Spec, dir string) {
	for _, name := range []string{ResolvConfName, HostsName, HostnameName} {
		addFile(spec, dir, name)
	}
}

// WriteResolvConf writes the pod's resolv.conf into the sandbox directory
// dir crash-safely: dns rendered, or the host's /etc/resolv.conf when dns
// is empty (as containerd does for its pause-container pods).
func WriteResolvConf(dir string, dns backend.DNSConfig) error {
	data := dns.ResolvConf()
	if dns.IsZero() {
		var err error
		if data, err = os.ReadFile("/etc/resolv.conf"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read the host's resolv.conf: %w", err)
		}
	}
	return writeFileAtomic(filepath.Join(dir, ResolvConfName), data, 0o644)
}

// AddResolvConf gives the container the pod's resolv.conf (written by
// WriteResolvConf in the sandbox directory dir) as /etc/resolv.conf,
// read-only with a read-only root, unless the spec mounts one itself or
// the sandbox has none (started before pods had one). spec.Mounts is
// appended to: callers pass a copy they own.
func AddResolvConf(spec *specs.Spec, dir string) { addFile(spec, dir, ResolvConfName) }

func addFile(spec *specs.Spec, dir, name string) {
	dest := "/etc/" + name
	for _, m := range spec.Mounts {
		if filepath.Clean(m.Destination) == dest {
			return
		}
	}
	src := filepath.Join(dir, name)
	if _, err := os.Stat(src); err != nil {
		return
	}
	opts := []string{"rbind", "rprivate"}
	if spec.Root != nil && spec.Root.Readonly {
		opts = append(opts, "ro")
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: dest, Type: "bind", Source: src, Options: opts})
}

// MountShm mounts the pod's /dev/shm, a tmpfs of ShmSize (mode 1777,
// nosuid, nodev, noexec, as containerd's), at dir/shm; a tmpfs already
// there (a restarted sandboxer) is kept.
func MountShm(dir string) error {
	p := filepath.Join(dir, ShmName)
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if IsMountPoint(p) {
		return nil
	}
	if err := unix.Mount("shm", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, fmt.Sprintf("mode=1777,size=%d", ShmSize)); err != nil {
		return fmt.Errorf("mount the pod's /dev/shm: %w", err)
	}
	return nil
}

// UnmountShm unmounts and removes the pod's /dev/shm at dir/shm (MountShm
// or a plain directory), if any.
func UnmountShm(dir string) error {
	p := filepath.Join(dir, ShmName)
	for IsMountPoint(p) {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount the pod's /dev/shm: %w", err)
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// IsMountPoint reports whether p is the root of a mount other than its
// parent's (a bind of a directory onto itself is not seen).
func IsMountPoint(p string) bool {
	var st, parent unix.Stat_t
	if unix.Lstat(p, &st) != nil || unix.Lstat(filepath.Dir(p), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// AddShm makes src the container's /dev/shm: a tmpfs /dev/shm in the spec
// (the per-container default of containerd's and Magnetar's specs) is
// replaced by a bind of src, and one is added when the spec has none; a
// /dev/shm the spec binds from elsewhere (a volume) is kept.
// spec.Mounts is changed in place: callers pass a copy they own.
func AddShm(spec *specs.Spec, src string) {
	m := specs.Mount{Destination: "/dev/shm", Type: "bind", Source: src, Options: []string{"rbind", "rprivate", "nosuid", "nodev", "noexec"}}
	i := slices.IndexFunc(spec.Mounts, func(m specs.Mount) bool { return filepath.Clean(m.Destination) == "/dev/shm" })
	switch {
	case i < 0:
		spec.Mounts = append(spec.Mounts, m)
	case spec.Mounts[i].Type == "tmpfs":
		spec.Mounts[i] = m
	}
}

// writeFileAtomic writes data to path through a synced temporary file
// renamed into place.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
