package agentmux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// A port stream carries one TCP connection that the agent makes to a port
// on the guest's loopback (where the sandbox's processes listen). The host
// opens it with the kind byte, then the port (2 bytes, big endian); the
// agent dials and answers with a reply as a stdio stream's (status, length,
// message), replyRefused when nothing listens. Then:
//
//   - agent to host: the connection's bytes as they are; the agent
//     half-closes the stream (yamux FIN) once the guest side reached end of
//     file (or failed).
//   - host to agent: frames of a type byte and, for data, a 4-byte length
//     and the bytes (at most [maxPortFrame]). frameCloseWrite half-closes
//     the guest connection (the process reads end of file);
//     frameAbort (or the stream's end without it: the host or the session
//     went away) closes it at once. The host's own end of the stream stays
//     open after a half close, so that a later Close can still abort.
//
// Back pressure is yamux's per-stream window on the one side and the
// guest socket's buffers on the other: neither end reads more than it can
// pass on.
const (
	frameData       = 'D'
	frameCloseWrite = 'W'
	frameAbort      = 'A'
	// maxPortFrame bounds one data frame.
	maxPortFrame = 64 << 10
	// replyRefused: nothing listens on the port.
	replyRefused = 3
)

// ErrPortRefused is what [Client.DialPort] returns when nothing listens on
// the port in the guest.
var ErrPortRefused = errors.New("agentmux: connection refused")

// ErrPortsNotServed is what [Client.DialPort] returns when the agent does
// not serve port streams (an agent from before them).
var ErrPortsNotServed = errors.New("agentmux: the agent does not serve port streams")

// PortDialer connects to TCP port on the guest's loopback, for the agent's
// port streams ([WithPortDialer]). A refused connection is
// syscall.ECONNREFUSED (as net.Dialer reports it).
type PortDialer func(ctx context.Context, port int) (net.Conn, error)

// DialPort connects to TCP port on the guest's loopback through the
// agent. The connection's CloseWrite half-closes it (the process in the
// guest reads end of file, its answer still arrives); Close ends it both
// ways. Reads fail with [ErrSessionClosed] once the session ended (the VM
// stopped) rather than reporting end of file.
func (c *Client) DialPort(ctx context.Context, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("agentmux: port %d out of range", port)
	}
	st, err := c.s.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("agentmux open port stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Now()) })
	err = func() error {
		req := []byte{byte(kindPort), 0, 0}
		binary.BigEndian.PutUint16(req[1:], uint16(port))
		if _, err := st.Write(req); err != nil {
			return err
		}
		var b [3]byte
		if _, err := io.ReadFull(st, b[:]); err != nil {
			if errors.Is(err, io.EOF) {
				// The agent closed the stream without a word: it does
				// not know the kind.
				return ErrPortsNotServed
			}
			return err
		}
		msg := make([]byte, binary.BigEndian.Uint16(b[1:]))
		if _, err := io.ReadFull(st, msg); err != nil {
			return err
		}
		switch b[0] {
		case replyOK:
			return nil
		case replyRefused:
			return fmt.Errorf("%w: %s", ErrPortRefused, msg)
		}
		return fmt.Errorf("agent: %s", msg)
	}()
	if !stop() {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("agentmux port %d: %w", port, err)
	}
	_ = st.SetDeadline(time.Time{})
	return &portConn{st: st, c: c}, nil
}

// abortTimeout bounds how long a closed connection's last bytes and its
// close frame may take to reach the agent (a guest process that does not
// read holds them); past it the agent is told to drop the connection.
const abortTimeout = 5 * time.Second

// portConn is the host end of a port stream.
type portConn struct {
	st *yamux.Stream
	c  *Client

	wmu       sync.Mutex // frames are written whole
	wbuf      []byte
	writeShut bool // CloseWrite sent
	closed    atomic.Bool
	closeOnce sync.Once
}

func (c *portConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.st.Read(p)
	if errors.Is(err, io.EOF) && c.c.s.IsClosed() {
		err = ErrSessionClosed
	}
	if errors.Is(err, yamux.ErrTimeout) && c.closed.Load() {
		err = net.ErrClosed
	}
	return n, err
}

func (c *portConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeShut || c.closed.Load() {
		return 0, net.ErrClosed
	}
	total := 0
	for len(p) > 0 {
		n := min(len(p), maxPortFrame)
		if cap(c.wbuf) < 5+n {
			c.wbuf = make([]byte, 5+maxPortFrame)
		}
		b := c.wbuf[:5+n]
		b[0] = frameData
		binary.BigEndian.PutUint32(b[1:5], uint32(n))
		copy(b[5:], p[:n])
		if _, err := c.st.Write(b); err != nil {
			return total, c.writeErr(err)
		}
		total += n
		p = p[n:]
	}
	return total, nil
}

func (c *portConn) writeErr(err error) error {
	switch {
	case c.closed.Load():
		return net.ErrClosed
	case c.c.s.IsClosed():
		return ErrSessionClosed
	}
	return err
}

// CloseWrite half-closes the connection: the process in the guest reads
// end of file once it read what was written before.
func (c *portConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeShut || c.closed.Load() {
		return nil
	}
	c.writeShut = true
	if _, err := c.st.Write([]byte{frameCloseWrite}); err != nil {
		return c.writeErr(err)
	}
	return nil
}

// Close ends the connection both ways, as closing a TCP socket does: what
// was written still reaches the process (within [abortTimeout]), which
// then reads end of file; what it sends afterwards is dropped. Close does
// not wait for any of it.
func (c *portConn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		_ = c.st.SetReadDeadline(time.Now())
		// A Write blocked on a full window gives up at the deadline.
		_ = c.st.SetWriteDeadline(time.Now().Add(abortTimeout))
		go func() {
			c.wmu.Lock()
			_, err := c.st.Write([]byte{frameAbort})
			c.wmu.Unlock()
			if err != nil && !c.c.s.IsClosed() {
				c.c.killPort(c.st.StreamID())
			}
			_ = c.st.Close()
		}()
	})
	return nil
}

func (c *portConn) LocalAddr() net.Addr                { return c.st.LocalAddr() }
func (c *portConn) RemoteAddr() net.Addr               { return c.st.RemoteAddr() }
func (c *portConn) SetDeadline(t time.Time) error      { return c.st.SetDeadline(t) }
func (c *portConn) SetReadDeadline(t time.Time) error  { return c.st.SetReadDeadline(t) }
func (c *portConn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }

// killPort tells the agent, on a stream of its own, to drop the guest
// connection of port stream id at once: its own stream may be blocked by
// a full window.
func (c *Client) killPort(id uint32) {
	st, err := c.s.OpenStream()
	if err != nil {
		return
	}
	b := []byte{byte(kindPortKill), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], id)
	_, _ = st.Write(b)
	_ = st.Close()
}

// dialTimeout bounds the agent's connection to a guest port.
const dialTimeout = 10 * time.Second

// portConns are the agent's live guest connections, by stream ID, for
// kill streams.
type portConns struct {
	mu sync.Mutex
	m  map[uint32]net.Conn
}

func (p *portConns) add(id uint32, c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[uint32]net.Conn{}
	}
	p.m[id] = c
}

func (p *portConns) remove(id uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, id)
}

func (p *portConns) kill(id uint32) {
	p.mu.Lock()
	c := p.m[id]
	p.mu.Unlock()
	if c != nil {
		abortConn(c)
	}
}

// servePort serves one port stream on the agent: it reads the port, dials
// it, replies and carries the connection until both directions ended, the
// host closed it, or ctx (the session) ended.
func (l *Listener) servePort(ctx context.Context, st *yamux.Stream) {
	defer st.Close()
	var b [2]byte
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	port := int(binary.BigEndian.Uint16(b[:]))
	if l.dialPort == nil {
		_ = writeReply(st, replyErr, "port streams not served")
		return
	}
	if port == 0 {
		_ = writeReply(st, replyErr, "port 0")
		return
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	conn, err := l.dialPort(dctx, port)
	cancel()
	if err != nil {
		status := byte(replyErr)
		if errors.Is(err, syscall.ECONNREFUSED) {
			status = replyRefused
		}
		_ = writeReply(st, status, err.Error())
		return
	}
	l.ports.add(st.StreamID(), conn)
	defer l.ports.remove(st.StreamID())
	if err := writeReply(st, replyOK, ""); err != nil {
		abortConn(conn)
		return
	}
	stop := context.AfterFunc(ctx, func() { abortConn(conn) })
	defer stop()
	// Guest to host: the connection's bytes until its end, then a half
	// close of the stream (the host's frames are still read).
	out := make(chan struct{})
	go func() {
		defer close(out)
		_, _ = io.CopyBuffer(st, conn, make([]byte, 32<<10))
		_ = st.Close()
	}()
	switch readFrames(st, conn) {
	case frameCloseWrite:
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		// Until the guest side ends, or the host closes.
		closed := make(chan byte, 1)
		go func() { closed <- readFrames(st, conn) }()
		select {
		case <-out:
			_ = conn.Close()
		case how := <-closed:
			closeConn(conn, how)
		}
	case frameAbort:
		_ = conn.Close()
	default:
		abortConn(conn)
	}
	// A copy blocked on the host's window ends with the stream.
	_ = st.Close()
	<-out
}

// readFrames writes the host's data frames to conn until a frame that is
// not data: it returns frameCloseWrite or frameAbort, or 0 when the stream
// ended without one (the host went away), a frame was bad or a write to
// conn failed.
func readFrames(st io.Reader, conn net.Conn) byte {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(st, hdr[:1]); err != nil {
			return 0
		}
		switch hdr[0] {
		case frameData:
			if _, err := io.ReadFull(st, hdr[1:]); err != nil {
				return 0
			}
			n := binary.BigEndian.Uint32(hdr[1:])
			if n > maxPortFrame {
				return 0
			}
			if _, err := io.CopyN(conn, st, int64(n)); err != nil {
				return 0
			}
		case frameCloseWrite, frameAbort:
			return hdr[0]
		default:
			return 0
		}
	}
}

// closeConn closes conn as the host asked (frameAbort: as a socket is
// closed), or at once when the host went away.
func closeConn(conn net.Conn, how byte) {
	if how == frameAbort {
		_ = conn.Close()
		return
	}
	abortConn(conn)
}

// abortConn closes a TCP connection at once (a reset), so that the process
// in the guest learns that the other end went.
func abortConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func writeReply(w io.Writer, status byte, msg string) error {
	if len(msg) > 0xffff {
		msg = msg[:0xffff]
	}
	b := []byte{status, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(msg)))
	_, err := w.Write(append(b, msg...))
	return err
}
