package agent

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// ttrpc frames start with a 10-byte header: length of the payload
// (4 bytes), stream ID (4), message type (1) and flags (1).
const (
	ttrpcHeaderLen    = 10
	ttrpcTypeResponse = 2
)

// replies counts the ttrpc responses written to the host on the agent's
// connections, so that Shutdown powers the VM off once its own answer has
// gone out to the port rather than after a guess.
type replies struct {
	mu      sync.Mutex
	n       uint64
	changed chan struct{} // closed and replaced at each response
}

// count returns the number of responses written so far.
func (r *replies) count() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *replies) written() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// waitBeyond waits until more than n responses were written or timeout
// passed, and reports whether they were.
func (r *replies) waitBeyond(n uint64, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		r.mu.Lock()
		if r.n > n {
			r.mu.Unlock()
			return true
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return false
		}
	}
}

// listener wraps l so that the responses written on its connections are
// counted.
func (r *replies) listener(l net.Listener) net.Listener { return &replyListener{Listener: l, r: r} }

type replyListener struct {
	net.Listener
	r *replies
}

func (l *replyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &replyConn{Conn: c, r: l.r}, nil
}

// replyConn follows the ttrpc frames written to it and counts each
// response once it is written.
type replyConn struct {
	net.Conn
	r *replies

	mu   sync.Mutex // ttrpc writes from one goroutine; this makes sure
	hdr  [ttrpcHeaderLen]byte
	have int    // header bytes collected of the frame being written
	left uint32 // payload bytes of that frame still to come
	resp bool   // whether that frame is a response
}

func (c *replyConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.follow(p[:n])
	return n, err
}

// follow reads the frames in p, the continuation of what was written;
// c.mu is held.
func (c *replyConn) follow(p []byte) {
	for len(p) > 0 {
		if c.have < ttrpcHeaderLen {
			k := copy(c.hdr[c.have:], p)
			c.have += k
			p = p[k:]
			if c.have < ttrpcHeaderLen {
				return
			}
			c.left = binary.BigEndian.Uint32(c.hdr[0:4])
			c.resp = c.hdr[8] == ttrpcTypeResponse
		}
		k := min(uint32(len(p)), c.left)
		c.left -= k
		p = p[k:]
		if c.left == 0 {
			if c.resp {
				c.r.written()
			}
			c.have = 0
		}
	}
}
