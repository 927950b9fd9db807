package sdk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
)

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128 plus the signal number if the process
	// was killed by a signal.
	Code int `json:"code"`
	// ExitedAt is when the process exited.
	ExitedAt time.Time `json:"exitedAt,omitzero"`
}

// Stream names a process output stream.
type Stream int

// Output streams.
const (
	// Stdout is standard output; with a terminal, all output.
	Stdout Stream = 1
	// Stderr is standard error.
	Stderr Stream = 2
)

// String returns "stdout" or "stderr".
func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return fmt.Sprintf("stream(%d)", int(s))
}

// OutputChunk is a piece of a process's output, in the order it was
// written. Data is not necessarily whole lines or valid UTF-8.
type OutputChunk struct {
	// Stream is the stream the bytes were written to.
	Stream Stream
	// Data holds the bytes.
	Data []byte
	// Offset is where Data starts in the process's output: how many bytes
	// the process wrote before, to both streams. The next chunk starts at
	// Offset+len(Data); [Process.OutputFrom] resumes from there.
	Offset int64
}

// process is the part of [Container] and [Process] that drives one
// process, named by its container ID and exec ID ("" for a container's
// init).
type process struct {
	client      *Client
	containerID string
	execID      string
}

// Wait blocks until the process exits and returns its exit status; at
// once if it has exited already.
func (p process) Wait(ctx context.Context) (ExitStatus, error) {
	res, err := p.client.containers.WaitProcess(ctx, &containerv1.WaitProcessRequest{ContainerId: p.containerID, ExecId: p.execID})
	if err != nil {
		return ExitStatus{}, fromAPI(err)
	}
	return ExitStatus{Code: int(res.GetExitStatus()), ExitedAt: timeOf(res.GetExitedAt())}, nil
}

// Signal sends sig to the process.
func (p process) Signal(ctx context.Context, sig syscall.Signal) error {
	_, err := p.client.containers.SignalProcess(ctx, &containerv1.SignalProcessRequest{ContainerId: p.containerID, ExecId: p.execID, Signal: uint32(sig)})
	return fromAPI(err)
}

// Resize changes the size of the process's terminal.
func (p process) Resize(ctx context.Context, width, height uint32) error {
	_, err := p.client.containers.ResizePty(ctx, &containerv1.ResizePtyRequest{
		ContainerId: p.containerID, ExecId: p.execID, Size: &containerv1.ConsoleSize{Width: width, Height: height},
	})
	return fromAPI(err)
}

// WriteStdin writes data to the process's standard input. The process
// must have been made [WithStdin].
func (p process) WriteStdin(ctx context.Context, data []byte) error {
	_, err := p.client.containers.WriteStdin(ctx, &containerv1.WriteStdinRequest{ContainerId: p.containerID, ExecId: p.execID, Data: data})
	return fromAPI(err)
}

// CloseStdin closes the process's standard input, so that it reads end of
// file.
func (p process) CloseStdin(ctx context.Context) error {
	_, err := p.client.containers.CloseStdin(ctx, &containerv1.CloseStdinRequest{ContainerId: p.containerID, ExecId: p.execID})
	return fromAPI(err)
}

// Stdin returns a writer to the process's standard input (the process must
// have been made [WithStdin]); closing it closes standard input. Each
// Write is one call, which no context bounds: use WriteStdin
// for that. The writer is safe for concurrent use; writes are applied in
// order.
func (p process) Stdin() io.WriteCloser {
	return &stdinWriter{p: p}
}

type stdinWriter struct {
	p      process
	mu     sync.Mutex
	closed bool
}

// stdinChunk bounds the data sent in one WriteStdin call.
const stdinChunk = 256 << 10

func (w *stdinWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("stdin of process %q of container %q: %w", w.p.execID, w.p.containerID, io.ErrClosedPipe)
	}
	n := 0
	for n < len(b) {
		end := min(len(b), n+stdinChunk)
		if err := w.p.WriteStdin(context.Background(), b[n:end]); err != nil {
			return n, err
		}
		n = end
	}
	return n, nil
}

func (w *stdinWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	return w.p.CloseStdin(context.Background())
}

// Output streams the process's output: first what the sandboxer kept of
// it (on disk, the newest 1 MiB or so by default, since the process was
// created), then live output until the process exits. Stopping the
// iteration early, or ending ctx, stops the stream. An error ends the
// sequence. While the sandboxer restarts, the stream resumes by itself
// from the last offset received (see [WithRetryTimeout]).
func (p process) Output(ctx context.Context) iter.Seq2[OutputChunk, error] {
	return p.OutputFrom(ctx, -1)
}

// OutputFrom is Output from offset (see OutputChunk.Offset; a negative one
// is the oldest byte kept). Output no longer kept fails with
// errdefs.ErrOutOfRange.
func (p process) OutputFrom(ctx context.Context, offset int64) iter.Seq2[OutputChunk, error] {
	return func(yield func(OutputChunk, error) bool) {
		_, err := p.follow(ctx, offset, func(c OutputChunk) bool { return yield(c, nil) })
		if err != nil {
			yield(OutputChunk{}, err)
		}
	}
}

// OutputSoFar streams the output the sandboxer kept of the process from
// offset (see OutputChunk.Offset; a negative one is the oldest byte kept)
// up to what the process had written when the call reached the
// sandboxer, then ends: unlike Output it does not wait for more, so it
// returns at once for a process that keeps printing. Output no longer
// kept fails with errdefs.ErrOutOfRange. A stream broken by a sandboxer
// restart resumes from the last offset received (up to the output's end
// at the new call).
func (p process) OutputSoFar(ctx context.Context, offset int64) iter.Seq2[OutputChunk, error] {
	return func(yield func(OutputChunk, error) bool) {
		_, err := p.stream(ctx, offset, false, func(c OutputChunk) bool { return yield(c, nil) })
		if err != nil {
			yield(OutputChunk{}, err)
		}
	}
}

// follow calls fn for every output chunk from offset from (the oldest
// kept if negative) until the exit message, which it returns; fn
// returning false stops early (ExitStatus then unset, err nil). A stream
// that breaks because the sandboxer is unavailable is opened again from
// the offset reached, within the client's retry budget.
func (p process) follow(ctx context.Context, from int64, fn func(OutputChunk) bool) (*ExitStatus, error) {
	return p.stream(ctx, from, true, fn)
}

// stream is follow, or without follow the output up to its end at the
// call (and the exit message if the process had exited; nil otherwise).
func (p process) stream(ctx context.Context, from int64, follow bool, fn func(OutputChunk) bool) (*ExitStatus, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	b := newBackoff(p.client.retry)
	for {
		st, err := p.followOnce(ctx, &from, follow, b, fn)
		if err == nil || !unavailable(err) || ctx.Err() != nil {
			return st, err
		}
		if err := b.wait(ctx, err); err != nil {
			return nil, err
		}
	}
}

// followOnce is one AttachOutput stream of stream; from advances with
// each chunk.
func (p process) followOnce(ctx context.Context, from *int64, follow bool, b *backoff, fn func(OutputChunk) bool) (*ExitStatus, error) {
	req := &containerv1.AttachOutputRequest{ContainerId: p.containerID, ExecId: p.execID}
	if !follow {
		req.Follow = &follow
	}
	if *from >= 0 {
		off := uint64(*from)
		req.StartOffset = &off
	}
	stream, err := p.client.containers.AttachOutput(ctx, req)
	if err != nil {
		return nil, fromAPI(err)
	}
	defer stream.Close()
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) && !follow {
			return nil, nil
		}
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("output of process %q of container %q ended without an exit status: %w", p.execID, p.containerID, errdefs.ErrUnavailable)
		}
		if err != nil {
			return nil, fromAPI(err)
		}
		b.reset()
		if out := msg.GetOutput(); out != nil {
			c := OutputChunk{Stream: Stream(out.GetStream()), Data: out.GetData(), Offset: int64(out.GetOffset())}
			*from = c.Offset + int64(len(c.Data))
			if !fn(c) {
				return nil, nil
			}
		}
		if ex := msg.GetExit(); ex != nil {
			return &ExitStatus{Code: int(ex.GetExitStatus()), ExitedAt: timeOf(ex.GetExitedAt())}, nil
		}
	}
}

// Attach copies the process's output (as Output streams it) to
// stdout and stderr until the process exits, and returns its exit status.
// A nil writer discards its stream; the same writer for both interleaves
// them in order.
func (p process) Attach(ctx context.Context, stdout, stderr io.Writer) (ExitStatus, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	var werr error
	st, err := p.follow(ctx, -1, func(c OutputChunk) bool {
		w := stdout
		if c.Stream == Stderr {
			w = stderr
		}
		_, werr = w.Write(c.Data)
		return werr == nil
	})
	if err != nil {
		return ExitStatus{}, err
	}
	if werr != nil {
		return ExitStatus{}, werr
	}
	return *st, nil
}

// CombinedOutput waits for the process to exit and returns its standard
// output and standard error, interleaved in the order they were written,
// and its exit status. A non-zero exit code is not an error.
func (p process) CombinedOutput(ctx context.Context) ([]byte, ExitStatus, error) {
	var b bytes.Buffer
	st, err := p.Attach(ctx, &b, &b)
	return b.Bytes(), st, err
}
