package apiserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/containerd/errdefs"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
)

// portChunk is the most one DialPort message carries.
const portChunk = 32 << 10

// DialPort carries a TCP connection to a port in a sandbox over the
// stream. Each direction is copied until its end: the client's CloseSend
// half-closes the connection, the process's end of file ends the
// responses once the client's data was written. Back-pressure is the
// stream's flow control and the socket's buffers.
func (s *Server) DialPort(ctx context.Context, stream sandboxv1connect.SandboxServiceDialPortServerStream) error {
	first, err := stream.Receive()
	if err != nil {
		return err
	}
	t := first.GetTarget()
	if t == nil {
		return fmt.Errorf("the first DialPort message must name the target: %w", errdefs.ErrInvalidArgument)
	}
	conn, err := s.d.DialPort(ctx, t.GetSandboxId(), int(t.GetPort()))
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := stream.Send(&sandboxv1.DialPortResponse{}); err != nil {
		return err
	}
	// Data sent along with the target goes first.
	if d := first.GetData(); len(d) > 0 {
		if _, err := conn.Write(d); err != nil {
			return fmt.Errorf("write to the port: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var (
		wg      sync.WaitGroup
		inErr   error
		inClose = make(chan struct{})
	)
	wg.Go(func() {
		defer close(inClose)
		for {
			msg, err := stream.Receive()
			if errors.Is(err, io.EOF) {
				// The client is done sending: the process reads EOF.
				if cw, ok := conn.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
				return
			}
			if err != nil {
				inErr = err
				cancel()
				return
			}
			if _, err := conn.Write(msg.GetData()); err != nil {
				inErr = fmt.Errorf("write to the port: %w", err)
				cancel()
				return
			}
		}
	})
	buf := make([]byte, portChunk)
	var outErr error
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if serr := stream.Send(&sandboxv1.DialPortResponse{Data: bytes.Clone(buf[:n])}); serr != nil {
				outErr = serr
				cancel()
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				outErr = fmt.Errorf("read from the port: %w", err)
			}
			break
		}
	}
	if outErr == nil {
		// The process closed its side: the client is told, and what it
		// still sends is delivered before the stream ends.
		if err := stream.Send(&sandboxv1.DialPortResponse{Closed: true}); err != nil {
			outErr = err
			cancel()
		} else {
			<-inClose
		}
	}
	cancel()
	wg.Wait()
	if outErr != nil {
		return outErr
	}
	return inErr
}
