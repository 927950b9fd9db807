package taskservice

import (
	"context"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// StdioBridge turns the stdio that containerd names for a process into the
// stdio the engine is given, and keeps what it made until the process is
// deleted. The sandboxer bridges containerd's `streaming` io type to FIFOs
// with one.
type StdioBridge interface {
	// Open returns the stdio to give the engine for a new process.
	Open(ctx context.Context, containerID, execID string, stdio backend.Stdio) (backend.Stdio, error)
	// Original returns the stdio containerd named, when Open replaced it.
	Original(containerID, execID string) (backend.Stdio, bool)
	// StdinDone is closed once bridged stdin has reached the process (nil:
	// nothing bridged).
	StdinDone(containerID, execID string) <-chan struct{}
	// OutputDone is closed once bridged output has been sent (nil: nothing
	// bridged).
	OutputDone(containerID, execID string) <-chan struct{}
	// Remove ends a process's bridge; with drain, after its output was sent.
	Remove(containerID, execID string, drain bool) error
	// RemoveExecs ends the bridges of a container's exec'd processes.
	RemoveExecs(containerID string) error
}

// noBridge passes stdio through unchanged.
type noBridge struct{}

func (noBridge) Open(_ context.Context, _, _ string, stdio backend.Stdio) (backend.Stdio, error) {
	return stdio, nil
}
func (noBridge) Original(string, string) (backend.Stdio, bool) { return backend.Stdio{}, false }
func (noBridge) StdinDone(string, string) <-chan struct{}      { return nil }
func (noBridge) OutputDone(string, string) <-chan struct{}     { return nil }
func (noBridge) Remove(string, string, bool) error             { return nil }
func (noBridge) RemoveExecs(string) error                      { return nil }
