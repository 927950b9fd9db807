package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// containersDir is where a sandbox keeps the bundles of containers made
// through Magnetar's own API (CRI containers use containerd's bundles).
const containersDir = "containers"

// ContainerDir creates and returns a private directory for a container of
// the sandbox, for its bundle and stdio FIFOs. It is removed with the
// container (and with the sandbox).
func (e *Engine) ContainerDir(ctx context.Context, sandboxID, containerID string) (string, error) {
	sb, err := e.get(sandboxID)
	if err != nil {
		return "", err
	}
	if err := ValidateID("container", containerID); err != nil {
		return "", err
	}
	dir := filepath.Join(sb.dir, containersDir, containerID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create container dir: %w", err)
	}
	return dir, nil
}

// SandboxOf returns the ID of the sandbox holding container id.
func (e *Engine) SandboxOf(ctx context.Context, containerID string) (string, error) {
	if err := ValidateID("container", containerID); err != nil {
		return "", err
	}
	if sb, ok := e.findContainer(containerID); ok {
		return sb, nil
	}
	return "", fmt.Errorf("container %q: %w", containerID, errdefs.ErrNotFound)
}

// removeContainerDir removes what ContainerDir created, if anything, and
// the records of the container's exec'd processes.
func (s *sandbox) removeContainerDir(id string) error {
	return errors.Join(os.RemoveAll(filepath.Join(s.dir, containersDir, id)), os.RemoveAll(s.execDir(id)))
}
