// Package atomicfile writes files crash-safely: a temporary file in the
// destination's own directory, fsync, rename over the destination, fsync of
// the directory.
//
// renameio.WriteFile alone puts its temporary file in $TMPDIR whenever that
// is on the destination's file system; a process killed between the create
// and the rename then leaves the file in /tmp, where nothing removes it.
// Here it is always next to the destination, so it goes with the directory
// that owns it (a sandbox's, a container's).
package atomicfile

import (
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
)

// WriteFile replaces path with data, with permissions perm, atomically.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return renameio.WriteFile(path, data, perm, renameio.WithTempDir(filepath.Dir(path)))
}
