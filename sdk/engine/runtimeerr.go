package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
)

// runtimeError gives an error of a backend (runc, runsc, QEMU...) that
// has no errdefs class one, so that no caller sees "unknown" for what a
// runtime refused: errdefs.ErrNotFound for a missing file or executable,
// errdefs.ErrInvalidArgument for a value the runtime or the kernel
// rejected, errdefs.ErrFailedPrecondition for anything else (the runtime
// could not do it on this host). Classified errors, cancellations and
// deadlines are kept.
func runtimeError(err error) error {
	if err == nil || !errors.Is(errdefs.Resolve(err), errdefs.ErrUnknown) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, os.ErrNotExist) || strings.Contains(msg, "no such file or directory") ||
		strings.Contains(msg, "executable file not found") || strings.Contains(msg, "not found in $path"):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ERANGE) || strings.Contains(msg, "invalid argument") ||
		strings.Contains(msg, "numerical result out of range") || strings.Contains(msg, "invalid "):
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
}
