package agentmux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// StdioHandler serves one stdio stream on the agent. It must answer with
// [ReplyStdio] first, and return when it is done with conn, at the latest
// soon after ctx is done (the session ended). It owns conn. A read from
// conn fails with [ErrSessionClosed] rather than io.EOF when the session
// ended (the host went away) rather than the host closing the stream.
type StdioHandler func(ctx context.Context, conn net.Conn, req StdioRequest)

// ErrSessionClosed is what a stdio stream's Read returns on the agent
// once its session has ended.
var ErrSessionClosed = errors.New("agentmux: session closed")

// headerTimeout bounds how long a new stream may take to say what it is.
const headerTimeout = 30 * time.Second

// Listener is the agent end of a session: Accept returns the host's ttrpc
// streams; stdio streams go to the handler given to [Listen], port
// streams to the dialer of [WithPortDialer].
type Listener struct {
	s        *yamux.Session
	handler  StdioHandler
	dialPort PortDialer
	ports    portConns
	conns    chan net.Conn
	done     chan struct{}
	ctx      context.Context // done with the session, for the handlers
	cancel   context.CancelFunc
	once     sync.Once
	wg       sync.WaitGroup // the accept loop, header readers and handlers
}

// ListenOption configures a [Listener].
type ListenOption func(*Listener)

// WithPortDialer serves port streams ([Client.DialPort]): dial connects to
// a port in the guest. Without it they are refused.
func WithPortDialer(dial PortDialer) ListenOption {
	return func(l *Listener) { l.dialPort = dial }
}

// Listen returns the agent end of a session over conn. stdio serves the
// stdio streams (nil refuses them). The caller closes the listener and
// then waits for it ([Listener.Wait]).
func Listen(conn io.ReadWriteCloser, stdio StdioHandler, opts ...ListenOption) (*Listener, error) {
	s, err := yamux.Server(conn, config())
	if err != nil {
		return nil, fmt.Errorf("agentmux server: %w", err)
	}
	l := &Listener{s: s, handler: stdio, conns: make(chan net.Conn), done: make(chan struct{})}
	for _, o := range opts {
		o(l)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		st, err := l.s.AcceptStream()
		if err != nil {
			_ = l.Close()
			return
		}
		l.wg.Add(1)
		go l.dispatch(st)
	}
}

// dispatch reads a stream's kind (and header) and hands it on.
func (l *Listener) dispatch(st *yamux.Stream) {
	defer l.wg.Done()
	_ = st.SetReadDeadline(time.Now().Add(headerTimeout))
	var kind [1]byte
	if _, err := io.ReadFull(st, kind[:]); err != nil {
		st.Close()
		return
	}
	switch streamKind(kind[0]) {
	case kindTTRPC:
		_ = st.SetReadDeadline(time.Time{})
		select {
		case l.conns <- st:
		case <-l.done:
			st.Close()
		}
	case kindStdio, kindStdioOpen, kindStdioResume:
		req, err := readRequest(st, streamKind(kind[0]))
		_ = st.SetReadDeadline(time.Time{})
		if err == nil && l.handler == nil {
			err = errors.New("stdio streams not served")
		}
		if err != nil {
			_ = ReplyStdio(st, "", err)
			st.Close()
			return
		}
		l.handler(l.ctx, &sessionConn{Stream: st, s: l.s}, req)
	case kindPort:
		l.servePort(l.ctx, st)
	case kindPortKill:
		var id [4]byte
		_, err := io.ReadFull(st, id[:])
		st.Close()
		if err == nil {
			l.ports.kill(binary.BigEndian.Uint32(id[:]))
		}
	default:
		st.Close()
	}
}

// Accept returns the next ttrpc stream.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close ends the session (and so every stream); [Listener.Wait] waits for
// the stdio handlers to return.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		l.cancel()
		err = l.s.Close()
	})
	return err
}

// Wait waits until the session is closed and every stdio handler returned.
func (l *Listener) Wait() {
	<-l.done
	l.wg.Wait()
}

// Addr is the session's address.
func (l *Listener) Addr() net.Addr { return l.s.Addr() }

// readRequest reads a stdio stream's header (and offset, to resume).
func readRequest(r io.Reader, k streamKind) (StdioRequest, error) {
	h, err := readHeader(r)
	if err != nil {
		return StdioRequest{}, err
	}
	req := StdioRequest{StdioHeader: h}
	switch k {
	case kindStdio:
		req.Mode = StdioLegacy
	case kindStdioOpen:
		req.Mode = StdioOpen
	case kindStdioResume:
		req.Mode = StdioResume
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return StdioRequest{}, err
		}
		req.Offset = binary.BigEndian.Uint64(b[:])
	}
	return req, nil
}

// sessionConn tells a stream its host closed (io.EOF) from one whose
// session ended (ErrSessionClosed): yamux reports both as end of file.
// yamux marks the session shut down before it closes its streams.
type sessionConn struct {
	*yamux.Stream
	s *yamux.Session
}

func (c *sessionConn) Read(p []byte) (int, error) {
	n, err := c.Stream.Read(p)
	if errors.Is(err, io.EOF) && c.s.IsClosed() {
		err = ErrSessionClosed
	}
	return n, err
}
