package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/ttrpc"
	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// Serve serves the host on the virtio-serial port until ctx is done. Each
// time the port reads EOF (no host connected, or the host went away) it is
// reopened and a new session served.
func (a *Agent) Serve(ctx context.Context) error {
	backoff := 10 * time.Millisecond
	for {
		path, err := waitPort(ctx, a.opts.PortsDir, a.opts.DevDir, a.opts.PortName)
		if err != nil {
			return err
		}
		start := time.Now()
		err = a.serveOnce(ctx, path)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A session that lasted is a host that went away: reconnect at
		// once. Quick EOFs mean nobody is connected: back off a little.
		if time.Since(start) > time.Second {
			backoff = 10 * time.Millisecond
			a.log().Info("host session ended", "error", err)
		} else {
			a.log().Debug("port session ended", "error", err)
			backoff = min(backoff*2, 200*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// serveOnce serves one agentmux session on the port at path: it waits for
// a host's handshake (skipping what a previous session left on the port),
// then serves ttrpc streams with the agent's services and stdio streams
// with FIFOs for the Task API. The stdio bridge outlives the session: the
// processes keep their FIFOs, and a next session resumes their streams.
func (a *Agent) serveOnce(ctx context.Context, path string) error {
	f, err := openPort(ctx, path)
	if err != nil {
		return err
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { _ = f.Close() })
	defer stop()
	conn, err := agentmux.Accept(f)
	if err != nil {
		return err
	}
	l, err := agentmux.Listen(conn, a.stdio.serve, agentmux.WithPortDialer(dialLoopback))
	if err != nil {
		return err
	}
	defer l.Wait()
	defer l.Close()
	srv, err := ttrpc.NewServer(ttrpc.WithChainUnaryServerInterceptor(taskservice.UnaryServerInterceptor(), a.stdio.releaseOnDelete))
	if err != nil {
		return fmt.Errorf("ttrpc server: %w", err)
	}
	defer srv.Close()
	a.Register(srv)
	stopL := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stopL()
	err = srv.Serve(ctx, a.replies.listener(l))
	if errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

// dialLoopback connects to TCP port on the guest's loopback: the guest's
// network namespace is the pod's, where its containers listen. It serves
// the host's port streams (DialPort of the sandbox).
func dialLoopback(ctx context.Context, port int) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
}

// openPort opens the port and waits until the host end is connected (or
// has sent data). Right after open the guest kernel reports "host not
// connected" until QEMU answers the port-open message, and a read then
// returns EOF at once; starting a session before that would only end it.
// The port stays open while waiting, which is what lets QEMU report the
// host's state.
func openPort(ctx context.Context, path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open port: %w", err)
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return nil, fmt.Errorf("poll port: %w", err)
		}
		// virtio_console reports POLLHUP while the host is not
		// connected (and POLLIN too, as a read would not block).
		if err == nil && fds[0].Revents&unix.POLLHUP == 0 {
			return os.NewFile(uintptr(fd), path), nil // pollable: reads go through the Go poller
		}
		select {
		case <-ctx.Done():
			unix.Close(fd)
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Register registers the agent's services on srv: AgentService and, when
// the in-guest runtime started, containerd's Task API v3.
func (a *Agent) Register(srv *ttrpc.Server) {
	agentv1.RegisterTTRPCAgentServiceService(srv, &service{a: a})
	if a.tasks != nil {
		a.tasks.register(srv)
	}
}

// taskDelete is the Task API's Delete method.
const taskDelete = "/containerd.task.v3.Task/Delete"

// releaseOnDelete is a ttrpc interceptor: once the Task API deleted a
// process (a container: with its execs), the bridge releases its stdio
// streams, which a host that went away may have left behind.
func (b *stdioBridge) releaseOnDelete(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
	if info.FullMethod != taskDelete {
		return method(ctx, unmarshal)
	}
	var req *taskapi.DeleteRequest
	resp, err := method(ctx, func(v any) error {
		err := unmarshal(v)
		if r, ok := v.(*taskapi.DeleteRequest); ok && err == nil {
			req = r
		}
		return err
	})
	if err == nil && req != nil {
		b.releaseProcess(req.GetID(), req.GetExecID())
	}
	return resp, err
}
