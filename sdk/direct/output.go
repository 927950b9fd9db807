package direct

import (
	"context"
	"io"
	"sync"
)

// outputBufferLimit bounds how much output of one process is kept for
// clients that attach late; older output is dropped first.
const outputBufferLimit = 4 << 20

// Stream is an output stream of a process.
type Stream int

// Output streams; the numbers are those of the API's OutputStream.
const (
	Stdout Stream = 1
	Stderr Stream = 2
)

// Chunk is a piece of a process's output.
type Chunk struct {
	Stream Stream
	Data   []byte
}

// outputLog keeps a process's output from its creation on, so that a
// client attaching after the process started still sees all of it (up to
// outputBufferLimit), and fans new output out to attached clients.
type outputLog struct {
	mu      sync.Mutex
	chunks  []Chunk
	first   int // sequence number of chunks[0]
	size    int
	open    int // streams still being copied
	changed chan struct{}
}

func newOutputLog(streams int) *outputLog {
	return &outputLog{open: streams, changed: make(chan struct{})}
}

func (l *outputLog) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *outputLog) append(stream Stream, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chunks = append(l.chunks, Chunk{Stream: stream, Data: data})
	l.size += len(data)
	for l.size > outputBufferLimit && len(l.chunks) > 1 {
		l.size -= len(l.chunks[0].Data)
		l.chunks = l.chunks[1:]
		l.first++
	}
	l.notify()
}

func (l *outputLog) closeStream() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	l.notify()
}

// copyFrom appends everything read from r until EOF.
func (l *outputLog) copyFrom(stream Stream, r io.Reader) {
	defer l.closeStream()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			l.append(stream, append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			return
		}
	}
}

// follow calls send for every chunk from the start of the retained output
// until all streams closed, or ctx ends.
func (l *outputLog) follow(ctx context.Context, send func(Chunk) error) error {
	next := 0
	for {
		l.mu.Lock()
		if next < l.first {
			next = l.first
		}
		pending := append([]Chunk(nil), l.chunks[next-l.first:]...)
		next += len(pending)
		done := l.open <= 0
		changed := l.changed
		l.mu.Unlock()
		for _, c := range pending {
			if err := send(c); err != nil {
				return err
			}
		}
		if done && len(pending) == 0 {
			return nil
		}
		if len(pending) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
