// Package podfiles writes the files a pod's containers share that CRI
// leaves to sandboxers other than its own (containerd only writes them for
// pause-container pods): the pod's resolv.conf, bind-mounted as every
// container's /etc/resolv.conf.
package podfiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// ResolvConfName is the pod's resolv.conf in the sandbox directory.
const ResolvConfName = "resolv.conf"

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
func AddResolvConf(spec *specs.Spec, dir string) {
	for _, m := range spec.Mounts {
		if filepath.Clean(m.Destination) == "/etc/resolv.conf" {
			return
		}
	}
	src := filepath.Join(dir, ResolvConfName)
	if _, err := os.Stat(src); err != nil {
		return
	}
	opts := []string{"rbind", "rprivate"}
	if spec.Root != nil && spec.Root.Readonly {
		opts = append(opts, "ro")
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: src, Options: opts})
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
