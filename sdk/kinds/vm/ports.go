package vm

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

var _ backend.PortDialer = (*sandbox)(nil)

// DialPort connects to TCP port on the guest's loopback, the pod's
// network where its containers listen: the agent makes the connection in
// the guest and carries it on a stream of the agent session
// ([agentmux.Client.DialPort]), with the stream's flow control, half
// close, and an end when the VM stops. Nothing listening is
// errdefs.ErrUnavailable.
func (s *sandbox) DialPort(ctx context.Context, port int) (net.Conn, error) {
	mc, err := s.muxClient()
	if err != nil {
		return nil, err
	}
	c, err := mc.DialPort(ctx, port)
	switch {
	case errors.Is(err, agentmux.ErrPortRefused):
		return nil, fmt.Errorf("nothing listens on port %d in the sandbox: %w", port, errdefs.ErrUnavailable)
	case errors.Is(err, agentmux.ErrPortsNotServed):
		return nil, fmt.Errorf("the guest agent of sandbox %s does not serve ports (a guest image from before: make guest): %w", s.cfg.ID, errdefs.ErrNotImplemented)
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("port %d: %w", port, ctx.Err())
	case err != nil:
		return nil, fmt.Errorf("port %d in the sandbox: %w", port, err)
	}
	return c, nil
}
