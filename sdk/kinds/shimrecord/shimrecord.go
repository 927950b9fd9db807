// Package shimrecord is the record a sandbox kind leaves in a task's bundle
// so that containerd-shim-magnetar-v2 can remove the container without the
// sandboxer (containerd runs the shim's "delete" when a task connection
// drops). Kinds write it; the shim program reads it.
package shimrecord

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// File is the file in a task's bundle where a Magnetar kind records how to
// remove the container without the sandboxer.
const File = "magnetar-runtime.json"

// Runtime is the content of [File].
type Runtime struct {
	// Kind is the sandbox kind; only "runc" and "gvisor" (whose Binary is
	// runsc) need cleanup by the shim (the
	// vm kind's containers run in the guest, out of the shim's reach: the
	// restarted sandboxer ends them when it reconnects to the agent).
	Kind string `json:"kind"`
	// ID is the container ID (checked against containerd's -id).
	ID string `json:"id"`
	// Binary and Root are the runc binary and its --root.
	Binary string `json:"binary"`
	Root   string `json:"root"`
}

// Write records rt in bundle, readable by root only.
func Write(bundle string, rt Runtime) error {
	data, err := json.Marshal(rt)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, File), data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", File, err)
	}
	return nil
}
