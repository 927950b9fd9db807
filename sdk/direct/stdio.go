package direct

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// procIO is the host side of one process's stdio: FIFOs the backend opens,
// the output log, and the stdin writer.
type procIO struct {
	stdio  backend.Stdio
	output *outputLog

	mu      sync.Mutex
	stdin   io.WriteCloser
	readers []io.Closer
}

// newProcIO creates the FIFOs for a process in dir and starts copying its
// output. prefix distinguishes exec'd processes from the init.
func (s *Service) newProcIO(dir, prefix string, openStdin, terminal bool) (_ *procIO, retErr error) {
	p := &procIO{}
	defer func() {
		if retErr != nil {
			p.close()
		}
	}()
	ctx := context.Background()
	streams := []struct {
		name string
		id   Stream
		dst  *string
	}{{"stdout", Stdout, &p.stdio.Stdout}}
	if !terminal {
		streams = append(streams, struct {
			name string
			id   Stream
			dst  *string
		}{"stderr", Stderr, &p.stdio.Stderr})
	}
	p.stdio.Terminal = terminal
	p.output = newOutputLog(len(streams))
	for _, st := range streams {
		path := filepath.Join(dir, prefix+st.name)
		r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create %s fifo: %w", st.name, err)
		}
		p.readers = append(p.readers, r)
		*st.dst = path
		id := st.id
		s.wg.Go(func() { p.output.copyFrom(id, r) })
	}
	if openStdin {
		path := filepath.Join(dir, prefix+"stdin")
		w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("create stdin fifo: %w", err)
		}
		p.stdin = w
		p.stdio.Stdin = path
	}
	return p, nil
}

// write sends data to the process's stdin; eof closes it afterwards.
func (p *procIO) write(data []byte, eof bool) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		if len(data) == 0 && eof {
			return 0, nil
		}
		return 0, fmt.Errorf("process has no open stdin (create it with open_stdin): %w", errdefs.ErrFailedPrecondition)
	}
	n, err := p.stdin.Write(data)
	if err != nil {
		return n, fmt.Errorf("write stdin: %w", err)
	}
	if eof {
		err = p.stdin.Close()
		p.stdin = nil
	}
	return n, err
}

func (p *procIO) closeStdin() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		return nil
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

// close stops copying; buffered output stays readable.
func (p *procIO) close() {
	_ = p.closeStdin()
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, r := range p.readers {
		errs = append(errs, r.Close())
	}
	p.readers = nil
	_ = errors.Join(errs...)
}

var _ = os.DevNull
