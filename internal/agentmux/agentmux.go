// Package agentmux multiplexes several connections over the one byte stream
// that links the sandboxer to a microVM's task agent: a virtio-serial port
// where the host has no vsock. It uses yamux (hashicorp/yamux, the
// multiplexer of Nomad and Consul): the host opens streams, the agent
// accepts them, and every stream is an independent net.Conn carrying one
// ttrpc connection (containerd's task client, the streaming service, the
// sandboxer's agent client).
//
// The agent side must cope with the port reading EOF while no host is
// connected (a virtio-serial quirk); it reopens the port and serves a new
// session each time.
package agentmux

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

func config() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard // libraries do not log
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 5 * time.Second
	c.ConnectionWriteTimeout = 30 * time.Second
	return c
}

// Client is the host end: it opens streams to the agent.
type Client struct{ s *yamux.Session }

// NewClient starts a session over conn (the host side of the port).
func NewClient(conn io.ReadWriteCloser) (*Client, error) {
	s, err := yamux.Client(conn, config())
	if err != nil {
		return nil, fmt.Errorf("agentmux client: %w", err)
	}
	return &Client{s: s}, nil
}

// Dial opens a new stream to the agent.
func (c *Client) Dial() (net.Conn, error) {
	st, err := c.s.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("agentmux open stream: %w", err)
	}
	return st, nil
}

// Done is closed when the session ends (the VM or the agent went away).
func (c *Client) Done() <-chan struct{} { return c.s.CloseChan() }

// Close ends the session and every stream.
func (c *Client) Close() error { return c.s.Close() }

// Listen returns the agent end: a net.Listener whose Accept returns the
// streams the host opens over conn. Closing it ends the session.
func Listen(conn io.ReadWriteCloser) (net.Listener, error) {
	s, err := yamux.Server(conn, config())
	if err != nil {
		return nil, fmt.Errorf("agentmux server: %w", err)
	}
	return s, nil
}
