package agentmux

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"time"
)

// The handshake's records: an 8-byte tag and the host's 8-byte nonce.
//
// A virtio-serial port does not tell the guest when a host disconnects
// and reconnects quickly, so the first bytes of a new host can land in the
// agent's previous yamux session, which fails on them (the tags' first
// byte is not yamux's version 0) and takes buffered bytes with it. The
// host therefore repeats its hello until the agent, scanning a fresh
// session's input for it, acknowledges; then the host sends "go" and
// yamux starts right behind it on both ends. Bytes before the hello (on
// the agent) or the ack (on the host) are a previous session's leftovers
// and are skipped.
const (
	tagLen    = 8
	recordLen = 2 * tagLen
)

var (
	tagHello = []byte("MGNTHELO")
	tagAck   = []byte("MGNTACK_")
	tagGo    = []byte("MGNTGO__")
)

// helloInterval is how often the host repeats its hello.
const helloInterval = 50 * time.Millisecond

func record(tag, nonce []byte) []byte { return append(append([]byte{}, tag...), nonce...) }

// deadliner is a connection whose reads and writes can be interrupted.
type deadliner interface{ SetDeadline(time.Time) error }

// Handshake runs the host's side of the handshake on a new connection to
// the agent's port; on success a [NewClient] session can start over conn.
// It fails when ctx ends (conn must then be a net.Conn, which a deadline
// interrupts, or be closed by the caller).
func Handshake(ctx context.Context, conn io.ReadWriter) error {
	nonce := make([]byte, tagLen)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	if d, ok := conn.(deadliner); ok {
		stop := context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Now()) })
		defer func() {
			if stop() {
				_ = d.SetDeadline(time.Time{})
			}
		}()
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() {
		defer wg.Done()
		t := time.NewTicker(helloInterval)
		defer t.Stop()
		hello := record(tagHello, nonce)
		for {
			if _, err := conn.Write(hello); err != nil {
				werr = err
				return
			}
			select {
			case <-quit:
				return
			case <-t.C:
			}
		}
	}()
	err := scanFor(conn, record(tagAck, nonce))
	close(quit)
	if d, ok := conn.(deadliner); ok && err != nil {
		_ = d.SetDeadline(time.Now()) // a hello blocked in Write must not hang us
	}
	wg.Wait()
	if err == nil {
		err = werr
	}
	if err == nil {
		_, err = conn.Write(record(tagGo, nonce))
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("agentmux handshake: %w (%v)", ctx.Err(), err)
		}
		return fmt.Errorf("agentmux handshake: %w", err)
	}
	return nil
}

// scanFor reads r one byte at a time (so nothing after want is consumed)
// until the last bytes read are want.
func scanFor(r io.Reader, want []byte) error {
	win := make([]byte, 0, len(want))
	var b [1]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return err
		}
		if len(win) == len(want) {
			copy(win, win[1:])
			win = win[:len(want)-1]
		}
		win = append(win, b[0])
		if bytes.Equal(win, want) {
			return nil
		}
	}
}

// Accept runs the agent's side of the handshake on the port: it skips
// input until a host's hello, acknowledges it once, and returns once
// the host said go, with a connection for [Listen] that keeps the bytes
// already buffered. To give up, close conn.
func Accept(conn io.ReadWriteCloser) (io.ReadWriteCloser, error) {
	br := bufio.NewReader(conn)
	win := make([]byte, 0, recordLen)
	var acked []byte
	for {
		b, err := br.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("agentmux handshake: %w", err)
		}
		if len(win) == recordLen {
			copy(win, win[1:])
			win = win[:recordLen-1]
		}
		win = append(win, b)
		if len(win) < recordLen {
			continue
		}
		tag, nonce := win[:tagLen], win[tagLen:]
		switch {
		case bytes.Equal(tag, tagHello):
			// Acknowledge each host once: a second ack would reach
			// the host's yamux session.
			if !bytes.Equal(nonce, acked) {
				acked = append(acked[:0], nonce...)
				if _, err := conn.Write(record(tagAck, nonce)); err != nil {
					return nil, fmt.Errorf("agentmux handshake: %w", err)
				}
			}
			win = win[:0]
		case bytes.Equal(tag, tagGo) && acked != nil && bytes.Equal(nonce, acked):
			return &bufConn{r: br, ReadWriteCloser: conn}, nil
		}
	}
}

// bufConn reads through the handshake's buffer.
type bufConn struct {
	r *bufio.Reader
	io.ReadWriteCloser
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }
