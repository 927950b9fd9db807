package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/fifo"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// stdioDir holds the FIFOs of the processes' standard streams in the
// guest.
const stdioDir = "/run/magnetar/stdio"

// stdioBridge serves the host's stdio streams: for each it makes a FIFO
// that the in-guest Task API gets as the process's stdin, stdout or stderr
// (like containerd hands FIFOs to a shim) and copies between the FIFO and
// the stream.
type stdioBridge struct {
	dir string
	seq atomic.Uint64
}

// serve is an agentmux.StdioHandler. The FIFO is removed when the stream
// is done.
func (b *stdioBridge) serve(ctx context.Context, conn net.Conn, h agentmux.StdioHeader) {
	defer conn.Close()
	path, f, err := b.open(ctx, h)
	if err != nil {
		_ = agentmux.ReplyStdio(conn, "", err)
		return
	}
	defer os.Remove(path)
	defer f.Close()
	if err := agentmux.ReplyStdio(conn, path, nil); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { f.Close(); conn.Close() })
	defer stop()
	if h.Stream == agentmux.Stdin {
		bridgeIn(conn, f)
		return
	}
	bridgeOut(conn, f)
}

// open makes the FIFO and opens the agent's end without waiting for the
// process's: the Task API opens its end when it creates the process.
func (b *stdioBridge) open(ctx context.Context, h agentmux.StdioHeader) (string, io.ReadWriteCloser, error) {
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return "", nil, err
	}
	path := filepath.Join(b.dir, fmt.Sprintf("%d.%s", b.seq.Add(1), h.Stream))
	flag := syscall.O_RDONLY
	if h.Stream == agentmux.Stdin {
		flag = syscall.O_WRONLY
	}
	f, err := fifo.OpenFifo(ctx, path, flag|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
	if err != nil {
		_ = os.Remove(path)
		return "", nil, fmt.Errorf("stdio fifo for %s: %w", h, err)
	}
	return path, f, nil
}

// bridgeIn copies the host's input into the FIFO until the host closes
// its end (CloseIO), then closes the FIFO: the process reads end of file
// once the Task API's CloseIO closed its own held write end too.
func bridgeIn(conn net.Conn, f io.WriteCloser) {
	_, _ = io.Copy(f, conn)
	f.Close()
}

// bridgeOut copies the process's output to the host until every writer
// of the FIFO is gone, then half-closes the stream so that the host sees
// end of file after the last byte. A host that closes its end first (it
// deleted the process) ends the copy.
func bridgeOut(conn net.Conn, f io.ReadCloser) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(io.Discard, conn) // until the host closes
		f.Close()
	}()
	_, _ = io.Copy(conn, f)
	_ = conn.Close() // FIN: the host's copy ends
	wg.Wait()
}
