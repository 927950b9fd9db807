package wasm

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/hoststdio"
)

// runnerStdio holds the files a runner gets as fds 0, 1 and 2, and the
// write end of a stdin FIFO that the backend keeps open until CloseStdin,
// as containerd's shims do: a client may close and reopen its end of the
// FIFO without the module seeing end of file.
type runnerStdio struct {
	files     [3]*os.File
	stdinHold *os.File
}

// closeChildEnds closes the parent's copies of the runner's fds.
func (r *runnerStdio) closeChildEnds() {
	for i, f := range r.files {
		if f != nil {
			f.Close()
			r.files[i] = nil
		}
	}
}

// close closes everything.
func (r *runnerStdio) close() {
	r.closeChildEnds()
	if r.stdinHold != nil {
		r.stdinHold.Close()
		r.stdinHold = nil
	}
}

// openStdio opens s for a runner. Each path is a FIFO (as containerd and
// the API server make them), a plain file, or a "fifo://" or "file://"
// URI; an empty one means /dev/null.
func openStdio(ctx context.Context, s backend.Stdio) (_ *runnerStdio, retErr error) {
	if s.Terminal {
		return nil, fmt.Errorf("terminals: %w", errdefs.ErrNotImplemented)
	}
	r := &runnerStdio{}
	defer func() {
		if retErr != nil {
			r.close()
		}
	}()
	var err error
	if r.files[0], r.stdinHold, err = hoststdio.OpenInput(s.Stdin); err != nil {
		return nil, fmt.Errorf("open stdin %q: %w", s.Stdin, err)
	}
	if r.files[1], err = hoststdio.OpenOutput(ctx, s.Stdout); err != nil {
		return nil, fmt.Errorf("open stdout %q: %w", s.Stdout, err)
	}
	if r.files[2], err = hoststdio.OpenOutput(ctx, s.Stderr); err != nil {
		return nil, fmt.Errorf("open stderr %q: %w", s.Stderr, err)
	}
	return r, nil
}
