package engine

import (
	"fmt"
	"regexp"

	"github.com/containerd/errdefs"
)

// idPattern is what sandbox, container and exec IDs may look like: the
// characters containerd and CRI use, never a path.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// MaxIDLength bounds sandbox, container and exec IDs; CRI uses 64 hex
// characters.
const MaxIDLength = 128

// ValidateID checks that id is safe to use as a file name and as a runc
// container ID. The error is errdefs.ErrInvalidArgument.
func ValidateID(kind, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s id must not be empty: %w", kind, errdefs.ErrInvalidArgument)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%s id is %d bytes long, more than %d: %w", kind, len(id), MaxIDLength, errdefs.ErrInvalidArgument)
	case !idPattern.MatchString(id) || id == "." || id == "..":
		return fmt.Errorf("%s id %q may only contain letters, digits, '_', '-' and '.', and must start with a letter or digit: %w",
			kind, id, errdefs.ErrInvalidArgument)
	}
	return nil
}
