package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// RuntimeFile is the file in a task's bundle where a Magnetar backend
// records how to remove the container without the sandboxer.
const RuntimeFile = "magnetar-runtime.json"

// Runtime is the content of [RuntimeFile].
type Runtime struct {
	// Kind is the sandbox kind; only "runc" needs cleanup here (the vm
	// kind's containers run in the guest, out of the shim's reach: the
	// restarted sandboxer ends them when it reconnects to the agent).
	Kind string `json:"kind"`
	// ID is the container ID (checked against containerd's -id).
	ID string `json:"id"`
	// Binary and Root are the runc binary and its --root.
	Binary string `json:"binary"`
	Root   string `json:"root"`
}

// cleanup kills and deletes what is left of a container whose bundle
// records a runtime, and unmounts its rootfs. A bundle without the file
// (the container was never created, or was deleted) needs nothing.
func cleanup(id, bundle string) error {
	if bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		bundle = wd
	}
	data, err := os.ReadFile(filepath.Join(bundle, RuntimeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rt Runtime
	if err := json.Unmarshal(data, &rt); err != nil {
		return fmt.Errorf("read %s: %w", RuntimeFile, err)
	}
	if rt.Kind != "runc" || rt.ID == "" {
		return nil
	}
	if id != "" && id != rt.ID {
		return fmt.Errorf("bundle %s belongs to container %q, not %q", bundle, rt.ID, id)
	}
	var errs []error
	// Kill first: delete --force of a running container with shared
	// namespaces can leave its other processes behind.
	_ = exec.Command(rt.Binary, "--root", rt.Root, "kill", "--all", rt.ID, "KILL").Run()
	if out, err := exec.Command(rt.Binary, "--root", rt.Root, "delete", "--force", rt.ID).CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "does not exist") && !strings.Contains(string(out), "not found") {
		errs = append(errs, fmt.Errorf("runc delete %s: %v: %s", rt.ID, err, strings.TrimSpace(string(out))))
	}
	rootfs := filepath.Join(bundle, "rootfs")
	if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", rootfs, err))
	}
	return errors.Join(errs...)
}
