package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	"github.com/containerd/containerd/v2/core/streaming"
	transferstreaming "github.com/containerd/containerd/v2/core/transfer/streaming"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// streamClaimTimeout bounds how long Create/Exec wait for containerd to
// open a stream it named in a stdio URI. CRI opens its streams before it
// creates the task, so the wait is normally zero.
const streamClaimTimeout = 30 * time.Second

// drainTimeout bounds how long deleting a process waits for its output to
// reach containerd.
const drainTimeout = 10 * time.Second

// maxStreamIDLen bounds a stream ID: under a supervisor it names a FIFO
// (NAME_MAX).
const maxStreamIDLen = 255

// streamRegistry holds the streams containerd opened on a sandbox's task
// socket (containerd.services.streaming.v1.Streaming) until a Create or
// Exec claims them by ID. It is containerd's `streaming` io type: the stdio
// of a task is `ttrpc+unix://<task socket>?streaming_id=<id>`.
type streamRegistry struct {
	mu      sync.Mutex
	closed  bool
	streams map[string]*serverStream
	// added is closed and replaced whenever a stream registers.
	added chan struct{}
	// closing is closed by close; it ends every handler.
	closing chan struct{}
}

func newStreamRegistry() *streamRegistry {
	return &streamRegistry{streams: map[string]*serverStream{}, added: make(chan struct{}), closing: make(chan struct{})}
}

// validStreamID reports whether id is a usable stream ID: it is only ever a
// map key, but it shows up in logs and errors, so keep it plain.
func validStreamID(id string) error {
	if id == "" || len(id) > maxStreamIDLen {
		return fmt.Errorf("stream id must have 1 to %d characters: %w", maxStreamIDLen, errdefs.ErrInvalidArgument)
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("stream id %q has a character other than [A-Za-z0-9._-]: %w", id, errdefs.ErrInvalidArgument)
		}
	}
	if id == "." || strings.Contains(id, "..") {
		return fmt.Errorf("stream id %q is \".\" or contains \"..\": %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Stream serves one stream: it reads the StreamInit naming it, registers
// it, acknowledges, and holds the call open until the stream is closed by
// its user, the connection ends, or the task server closes.
func (r *streamRegistry) Stream(ctx context.Context, srv streamingapi.TTRPCStreaming_StreamServer) error {
	// The task server's unary interceptor does not see streams.
	return taskservice.StreamError(r.stream(ctx, srv))
}

func (r *streamRegistry) stream(ctx context.Context, srv streamingapi.TTRPCStreaming_StreamServer) error {
	a, err := srv.Recv()
	if err != nil {
		return err
	}
	var init streamingapi.StreamInit
	if err := typeurl.UnmarshalTo(a, &init); err != nil {
		return fmt.Errorf("first stream message must be a StreamInit: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if err := validStreamID(init.ID); err != nil {
		return err
	}
	ss := &serverStream{srv: srv, done: make(chan struct{})}
	if err := r.register(init.ID, ss); err != nil {
		return err
	}
	defer r.unregister(init.ID, ss)
	ack, err := typeurl.MarshalAny(&emptypb.Empty{})
	if err != nil {
		return err
	}
	if err := srv.Send(typeurl.MarshalProto(ack)); err != nil {
		return err
	}
	select {
	case <-ss.done:
	case <-ctx.Done():
	case <-r.closing:
	}
	return nil
}

func (r *streamRegistry) register(id string, ss *serverStream) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errShuttingDown
	}
	if _, ok := r.streams[id]; ok {
		return fmt.Errorf("stream %q: %w", id, errdefs.ErrAlreadyExists)
	}
	r.streams[id] = ss
	close(r.added)
	r.added = make(chan struct{})
	return nil
}

// unregister drops ss if it was never claimed.
func (r *streamRegistry) unregister(id string, ss *serverStream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams[id] == ss {
		delete(r.streams, id)
	}
}

// claim takes stream id out of the registry, waiting for containerd to
// open it.
func (r *streamRegistry) claim(ctx context.Context, id string) (*serverStream, error) {
	ctx, cancel := context.WithTimeout(ctx, streamClaimTimeout)
	defer cancel()
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, errShuttingDown
		}
		if ss, ok := r.streams[id]; ok {
			delete(r.streams, id)
			r.mu.Unlock()
			return ss, nil
		}
		added := r.added
		r.mu.Unlock()
		select {
		case <-added:
		case <-r.closing:
			return nil, errShuttingDown
		case <-ctx.Done():
			return nil, fmt.Errorf("stream %q was not opened on the task socket: %w", id, errdefs.ErrFailedPrecondition)
		}
	}
}

// close ends every stream handler and refuses new streams.
func (r *streamRegistry) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		close(r.closing)
	}
}

// serverStream adapts a ttrpc server stream to containerd's
// streaming.Stream, so containerd's own byte stream helpers drive it.
type serverStream struct {
	srv    streamingapi.TTRPCStreaming_StreamServer
	sendMu sync.Mutex
	once   sync.Once
	done   chan struct{}
}

var _ streaming.Stream = (*serverStream)(nil)

// Send sends a message to containerd.
func (s *serverStream) Send(a typeurl.Any) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	select {
	case <-s.done:
		return io.EOF
	default:
	}
	err := s.srv.Send(typeurl.MarshalProto(a))
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, ttrpc.ErrStreamClosed) {
		// containerd closed the connection: what it sent before may
		// still be buffered for Recv, which containerd's stream readers
		// only keep reading after a failed send when it says EOF.
		return io.EOF
	}
	return err
}

// recvCanceledRetries is how often Recv retries after the call's context
// was cancelled, to drain messages still buffered (see Recv).
const recvCanceledRetries = 64

// Recv receives a message from containerd.
//
// CRI closes its connection right after the last message of a stream (its
// stdin's end of file), and ttrpc then cancels the call's context; its
// RecvMsg picks at random between a message still buffered and the
// cancellation. So a cancellation is retried: buffered messages (and the
// end of the stream, when containerd sent it) win within a few tries, and
// only a stream with nothing left reports the cancellation every time.
func (s *serverStream) Recv() (typeurl.Any, error) {
	for try := 0; ; try++ {
		a, err := s.srv.Recv()
		if err == nil {
			return (*anypb.Any)(a), nil
		}
		if !errors.Is(err, context.Canceled) || try >= recvCanceledRetries {
			return nil, err
		}
	}
}

// Close ends the stream: the handler returns and containerd reads EOF.
func (s *serverStream) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

// streamIO bridges the stream stdio of the processes of one sandbox to
// FIFOs under dir, which the engine's backends consume like containerd's
// own FIFOs.
type streamIO struct {
	reg    *streamRegistry
	socket string
	dir    string

	mu    sync.Mutex
	procs map[string]*procStreams
}

func newStreamIO(reg *streamRegistry, socket, dir string) *streamIO {
	return &streamIO{reg: reg, socket: socket, dir: dir, procs: map[string]*procStreams{}}
}

// procStreams is the bridge of one process.
type procStreams struct {
	dir    string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// out is closed when every output stream has been sent and closed;
	// settled streamSettle after that.
	out, settled chan struct{}
	// in is closed when the stdin stream ended and all it carried was
	// written to the process's stdin FIFO; nil without a stdin stream.
	in chan struct{}
	// orig is the stdio containerd asked for, reported back by State.
	orig backend.Stdio
}

func procKey(containerID, execID string) string { return containerID + "\x00" + execID }

// streamID returns the stream ID of a stdio URI, "" when s is not one (a
// FIFO or file path), or an error when it is a stream URI that does not
// name this sandbox's task socket.
func (sio *streamIO) streamID(s string) (string, error) {
	return parseStreamURI(sio.socket, s)
}

// parseStreamURI returns the stream ID of stdio URI s on the task socket
// at socket ("" when s is a path).
func parseStreamURI(socket, s string) (string, error) {
	if !strings.Contains(s, "://") {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("parse stdio %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	id := u.Query().Get("streaming_id")
	if id == "" {
		return "", fmt.Errorf("stdio %q: only FIFO paths and stream URIs with a streaming_id are supported: %w", s, errdefs.ErrInvalidArgument)
	}
	if u.Scheme != "ttrpc+unix" || filepath.Clean(u.Host+u.Path) != socket {
		return "", fmt.Errorf("stdio %q: streams must be opened on this sandbox's task socket ttrpc+unix://%s: %w", s, socket, errdefs.ErrInvalidArgument)
	}
	if err := validStreamID(id); err != nil {
		return "", err
	}
	return id, nil
}

// Open turns the stream URIs in stdio into FIFOs bridged to the streams
// and returns the stdio to hand to the engine. Paths pass through
// unchanged. The caller must call release when creating the process
// fails, and remove when it has been deleted.
func (sio *streamIO) Open(ctx context.Context, containerID, execID string, stdio backend.Stdio) (_ backend.Stdio, retErr error) {
	if sio == nil {
		return stdio, nil
	}
	var ids [3]string
	any := false
	for i, s := range []string{stdio.Stdin, stdio.Stdout, stdio.Stderr} {
		id, err := sio.streamID(s)
		if err != nil {
			return stdio, err
		}
		ids[i] = id
		any = any || id != ""
	}
	if !any {
		return stdio, nil
	}
	key := procKey(containerID, execID)
	sum := sha256.Sum256([]byte(key))
	p := &procStreams{dir: filepath.Join(sio.dir, hex.EncodeToString(sum[:12])), out: make(chan struct{}), settled: make(chan struct{}), orig: stdio}
	sio.mu.Lock()
	if _, ok := sio.procs[key]; ok {
		sio.mu.Unlock()
		return stdio, fmt.Errorf("process %q/%q already has streams: %w", containerID, execID, errdefs.ErrAlreadyExists)
	}
	sio.procs[key] = p
	sio.mu.Unlock()
	defer func() {
		if retErr != nil {
			_ = sio.Remove(containerID, execID, false)
		}
	}()
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return stdio, fmt.Errorf("create stream dir: %w", err)
	}
	var streams [3]*serverStream
	for i, id := range ids {
		if id == "" {
			continue
		}
		ss, err := sio.reg.claim(ctx, id)
		if err != nil {
			for _, s := range streams {
				if s != nil {
					_ = s.Close()
				}
			}
			return stdio, err
		}
		streams[i] = ss
	}
	// Streams not yet handed to a bridge goroutine are closed if a later
	// step fails, so that containerd's side of them ends too.
	var handed [3]bool
	defer func() {
		if retErr != nil {
			for i, ss := range streams {
				if ss != nil && !handed[i] {
					_ = ss.Close()
				}
			}
		}
	}()
	bctx, cancel := context.WithCancel(context.Background())
	sio.mu.Lock()
	p.cancel = cancel
	sio.mu.Unlock()
	out := stdio
	var outs sync.WaitGroup
	names := [3]string{"stdin", "stdout", "stderr"}
	for i, ss := range streams {
		if ss == nil {
			continue
		}
		path := filepath.Join(p.dir, names[i])
		if i == 0 {
			w, err := fifo.OpenFifo(bctx, path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
			if err != nil {
				_ = ss.Close()
				return stdio, fmt.Errorf("create stdin fifo: %w", err)
			}
			out.Stdin = path
			in := make(chan struct{})
			sio.mu.Lock()
			p.in = in
			sio.mu.Unlock()
			handed[i] = true
			p.wg.Go(func() {
				defer close(in)
				defer ss.Close()
				defer w.Close()
				r := transferstreaming.ReceiveStream(bctx, ss)
				copyUntil(bctx, w, r)
			})
			continue
		}
		r, err := fifo.OpenFifo(bctx, path, syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			_ = ss.Close()
			return stdio, fmt.Errorf("create %s fifo: %w", names[i], err)
		}
		if i == 1 {
			out.Stdout = path
		} else {
			out.Stderr = path
		}
		outs.Add(1)
		handed[i] = true
		p.wg.Go(func() {
			defer outs.Done()
			defer r.Close()
			transferstreaming.SendStream(bctx, r, ss)
			select {
			case <-ss.done:
			case <-bctx.Done():
				_ = ss.Close()
			}
		})
	}
	p.wg.Go(func() {
		outs.Wait()
		close(p.out)
		t := time.NewTimer(streamSettle)
		defer t.Stop()
		select {
		case <-t.C:
		case <-bctx.Done():
		}
		close(p.settled)
	})
	return out, nil
}

// streamSettle is how long an exit is held after the output was sent, so
// that containerd reads what is still buffered on its side: on Delete its
// client cancels the stream readers of an exited task before they reached
// the end (the FIFO io type has no such window).
const streamSettle = 250 * time.Millisecond

// copyUntil copies r to w until r ends or ctx is cancelled.
func copyUntil(ctx context.Context, w io.Writer, r io.Reader) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(w, r)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		if c, ok := r.(io.Closer); ok {
			_ = c.Close()
		}
		<-done
	}
}

// Original returns the stdio containerd asked for when the process has
// streams.
func (sio *streamIO) Original(containerID, execID string) (backend.Stdio, bool) {
	if sio == nil {
		return backend.Stdio{}, false
	}
	sio.mu.Lock()
	defer sio.mu.Unlock()
	p, ok := sio.procs[procKey(containerID, execID)]
	if !ok {
		return backend.Stdio{}, false
	}
	return p.orig, true
}

// StdinDone returns a channel closed once the process's stdin stream has
// been written to it in full, or nil when its stdin is not a stream.
// containerd closes a streamed stdin (CloseIO) as soon as it has sent the
// last bytes, which may still be on their way through the bridge.
func (sio *streamIO) StdinDone(containerID, execID string) <-chan struct{} {
	if sio == nil {
		return nil
	}
	sio.mu.Lock()
	defer sio.mu.Unlock()
	p, ok := sio.procs[procKey(containerID, execID)]
	if !ok || p.in == nil {
		return nil
	}
	return p.in
}

// OutputDone returns a channel closed once every output stream of the
// process has been sent and has had streamSettle to be read, or nil when
// it has no output streams.
func (sio *streamIO) OutputDone(containerID, execID string) <-chan struct{} {
	if sio == nil {
		return nil
	}
	sio.mu.Lock()
	defer sio.mu.Unlock()
	p, ok := sio.procs[procKey(containerID, execID)]
	if !ok || p.cancel == nil {
		return nil
	}
	return p.settled
}

// Remove tears down a process's bridge and removes its FIFOs. With drain
// it first waits (bounded) for the output to be sent.
func (sio *streamIO) Remove(containerID, execID string, drain bool) error {
	if sio == nil {
		return nil
	}
	key := procKey(containerID, execID)
	sio.mu.Lock()
	p, ok := sio.procs[key]
	delete(sio.procs, key)
	sio.mu.Unlock()
	if !ok {
		return nil
	}
	return p.close(drain)
}

// RemoveExecs tears down the bridges of every exec of containerID.
func (sio *streamIO) RemoveExecs(containerID string) error {
	if sio == nil {
		return nil
	}
	prefix := procKey(containerID, "")
	sio.mu.Lock()
	var ps []*procStreams
	for k, p := range sio.procs {
		if strings.HasPrefix(k, prefix) && k != prefix {
			ps = append(ps, p)
			delete(sio.procs, k)
		}
	}
	sio.mu.Unlock()
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.close(false))
	}
	return errors.Join(errs...)
}

func (p *procStreams) close(drain bool) error {
	if p.cancel != nil {
		if drain {
			select {
			case <-p.out:
			case <-time.After(drainTimeout):
			}
		}
		p.cancel()
	}
	p.wg.Wait()
	if err := os.RemoveAll(p.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stream dir: %w", err)
	}
	return nil
}

// closeAll tears down every bridge.
func (sio *streamIO) closeAll() error {
	if sio == nil {
		return nil
	}
	sio.mu.Lock()
	procs := sio.procs
	sio.procs = map[string]*procStreams{}
	sio.mu.Unlock()
	var errs []error
	for _, p := range procs {
		errs = append(errs, p.close(false))
	}
	if err := os.RemoveAll(sio.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
