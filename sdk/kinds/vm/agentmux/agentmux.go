// Package agentmux multiplexes several connections over the one byte stream
// that links the sandboxer to a microVM's task agent: a virtio-serial port
// where the host has no vsock. It uses yamux (hashicorp/yamux, the
// multiplexer of Nomad and Consul): the host opens streams, the agent
// accepts them. Every stream starts with a one-byte kind: a ttrpc stream
// carries one ttrpc connection (containerd's task client, the sandboxer's
// agent client); a stdio stream carries one standard stream of a process
// in the guest (see [StdioHeader]). Stdio streams survive the session:
// the agent keeps the process's FIFOs and its unacknowledged output, and
// a new session resumes them ([Client.ResumeStdio]), so that a sandboxer
// restart loses no output. A port stream carries one TCP connection to a
// port on the guest's loopback ([Client.DialPort], see port.go).
//
// Before yamux starts, the two ends shake hands (see [Handshake] and
// [Accept]) so that a host that reconnects at once never has its first
// frames eaten by the agent's previous session.
//
// The agent side must cope with the port reading EOF while no host is
// connected (a virtio-serial quirk); it reopens the port and serves a new
// session each time.
package agentmux

import (
	"context"
	"encoding/binary"
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

// NewClient starts a session over conn (the host side of the port). The
// caller shakes hands first ([Handshake]) when the agent expects it.
func NewClient(conn io.ReadWriteCloser) (*Client, error) {
	s, err := yamux.Client(conn, config())
	if err != nil {
		return nil, fmt.Errorf("agentmux client: %w", err)
	}
	return &Client{s: s}, nil
}

// Dial opens a new ttrpc stream to the agent.
func (c *Client) Dial() (net.Conn, error) {
	st, err := c.s.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("agentmux open stream: %w", err)
	}
	if _, err := st.Write([]byte{byte(kindTTRPC)}); err != nil {
		st.Close()
		return nil, fmt.Errorf("agentmux open stream: %w", err)
	}
	return st, nil
}

// DialStdio opens a resumable stdio stream: the agent makes a FIFO in the
// guest for h and bridges it to the stream. It returns the stream and the
// guest path of the FIFO, to be passed to the guest's Task API.
//
// On an output stream the host acknowledges what it delivered
// ([WriteAck]); the agent keeps the bytes not yet acknowledged (and, once
// it holds its bound, leaves the rest in the process's pipe) so that a
// later session can resume the stream where the host stopped
// ([Client.ResumeStdio]). The agent half-closes an output stream after
// its last byte, once the process's writers are all gone. Closing a stdin
// stream (a half close: [net.Conn] Close on a yamux stream sends FIN)
// ends the process's input; a session that ends does not. Sending
// [AckRelease] on an output stream ends it for good.
func (c *Client) DialStdio(ctx context.Context, h StdioHeader) (net.Conn, string, error) {
	hdr, err := h.encode()
	if err != nil {
		return nil, "", err
	}
	return c.openStdio(ctx, h, append([]byte{byte(kindStdioOpen)}, hdr...))
}

// ResumeStdio re-attaches a stream opened with [Client.DialStdio] by an
// earlier session. For an output stream, off is how many of its bytes the
// host has delivered: the stream carries the bytes from there on. It
// returns [ErrStdioGone] when the agent no longer has the stream.
func (c *Client) ResumeStdio(ctx context.Context, h StdioHeader, off uint64) (net.Conn, error) {
	hdr, err := h.encode()
	if err != nil {
		return nil, err
	}
	var o [8]byte
	binary.BigEndian.PutUint64(o[:], off)
	st, _, err := c.openStdio(ctx, h, append(append([]byte{byte(kindStdioResume)}, hdr...), o[:]...))
	return st, err
}

func (c *Client) openStdio(ctx context.Context, h StdioHeader, req []byte) (net.Conn, string, error) {
	st, err := c.s.OpenStream()
	if err != nil {
		return nil, "", fmt.Errorf("agentmux open stdio stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Now()) })
	path, err := func() (string, error) {
		if _, err := st.Write(req); err != nil {
			return "", err
		}
		return readReply(st)
	}()
	if !stop() {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if err != nil {
		st.Close()
		return nil, "", fmt.Errorf("agentmux stdio stream %s: %w", h, err)
	}
	return st, path, nil
}

// Done is closed when the session ends (the VM or the agent went away).
func (c *Client) Done() <-chan struct{} { return c.s.CloseChan() }

// Close ends the session and every stream.
func (c *Client) Close() error { return c.s.Close() }
