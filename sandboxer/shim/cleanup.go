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

	"github.com/magnetar-io/magnetar/sdk/kinds/shimrecord"
)

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
	data, err := os.ReadFile(filepath.Join(bundle, shimrecord.File))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rt shimrecord.Runtime
	if err := json.Unmarshal(data, &rt); err != nil {
		return fmt.Errorf("read %s: %w", shimrecord.File, err)
	}
	if (rt.Kind != "runc" && rt.Kind != "gvisor") || rt.ID == "" {
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
