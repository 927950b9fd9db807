package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	streamingapi "github.com/containerd/containerd/api/services/streaming/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/go-hclog"

	"github.com/magnetar-io/magnetar/internal/unixsock"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// TaskAPIVersion is the Task API version the sandboxer serves; containerd
// needs at least 3 to use a sandbox's task address instead of exec'ing a
// shim.
const TaskAPIVersion = 3

// maxUnixPath is the longest usable unix socket path on Linux (108 bytes
// including the terminating NUL).
const maxUnixPath = 107

// shutdownGrace is how long a closing task server waits for calls in
// flight before it drops its connections.
const shutdownGrace = 2 * time.Second

// errShuttingDown refuses calls that arrive once a task server closes.
var errShuttingDown = fmt.Errorf("task server is shutting down: %w", errdefs.ErrUnavailable)

// TaskSocketPath is where the Task API socket of sandbox id lives: a short,
// stable name derived from the ID, so that the address stays valid across
// restarts of the daemon.
func TaskSocketPath(runDir, id string) string {
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(runDir, "t", hex.EncodeToString(sum[:8])+".sock")
}

// StreamDir is where the FIFOs bridging the streams of sandbox id's
// processes live.
func StreamDir(runDir, id string) string {
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(runDir, "s", hex.EncodeToString(sum[:8]))
}

// TaskSockets places the task sockets: where a sandbox's Task API server
// listens when containerd dials the socket at a public path. The default
// listens on the public path itself; under a supervisor, the supervisor
// serves the public path and relays to a listener of the worker's.
type TaskSockets interface {
	// Listen returns the listener for the task socket at public.
	Listen(public string) (net.Listener, error)
	// Release stops serving public: containerd's connections to it close.
	Release(public string) error
}

// directSockets listens on the public paths themselves.
type directSockets struct{}

func (directSockets) Listen(public string) (net.Listener, error) {
	if err := os.Remove(public); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale task socket: %w", err)
	}
	l, err := unixsock.Listen(public)
	if err != nil {
		return nil, fmt.Errorf("task socket: %w", err)
	}
	return l, nil
}

func (directSockets) Release(public string) error {
	if err := os.Remove(public); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove task socket: %w", err)
	}
	return nil
}

// taskServers runs one ttrpc Task API server per sandbox.
type taskServers struct {
	eng     *engine.Engine
	runDir  string
	version string
	log     hclog.Logger
	sockets TaskSockets

	mu      sync.Mutex
	closed  bool
	servers map[string]*taskServer
	// starting are the servers being started (closed when done), which
	// starts counts: a start talks to the supervisor without holding mu,
	// so that many sandboxes' servers start at once after a restart.
	starting map[string]chan struct{}
	starts   sync.WaitGroup
}

// taskServer is the Task API server of one sandbox.
type taskServer struct {
	id       string
	path     string
	sockets  TaskSockets
	listener *trackingListener
	svc      *taskservice.Service
	sio      stdioBridge
	srv      *ttrpc.Server
	// streams serves containerd's Streaming service for the `streaming`
	// io type next to the Task API.
	streams *streamRegistry
	// served is closed when Serve has returned.
	served chan struct{}

	// mu guards closed; calls counts calls in flight, which Close waits
	// for after it has released the blocked ones.
	mu     sync.Mutex
	closed bool
	calls  sync.WaitGroup
}

func newTaskServers(eng *engine.Engine, runDir, version string, log hclog.Logger, sockets TaskSockets) *taskServers {
	if sockets == nil {
		sockets = directSockets{}
	}
	return &taskServers{eng: eng, runDir: runDir, version: version, log: log, sockets: sockets, servers: map[string]*taskServer{}, starting: map[string]chan struct{}{}}
}

// address returns the Task API address of sandbox id, as containerd
// expects it in the Start and Status responses.
func (ts *taskServers) address(id string) string {
	return "ttrpc+unix://" + TaskSocketPath(ts.runDir, id)
}

// running reports whether sandbox id's Task API is served.
func (ts *taskServers) running(id string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	_, ok := ts.servers[id]
	return ok
}

// outputDone is the outputDone of sandbox id's streams (nil: none).
func (ts *taskServers) outputDone(id, containerID, execID string) <-chan struct{} {
	ts.mu.Lock()
	t, ok := ts.servers[id]
	ts.mu.Unlock()
	if !ok {
		return nil
	}
	return t.sio.OutputDone(containerID, execID)
}

// start serves the Task API of sandbox id, unless it already is, and
// returns its address.
func (ts *taskServers) start(id string) (string, error) {
	ts.mu.Lock()
	for {
		if ts.closed {
			ts.mu.Unlock()
			return "", fmt.Errorf("sandboxer is shutting down: %w", errdefs.ErrUnavailable)
		}
		if _, ok := ts.servers[id]; ok {
			ts.mu.Unlock()
			return ts.address(id), nil
		}
		ch, busy := ts.starting[id]
		if !busy {
			break
		}
		ts.mu.Unlock()
		<-ch
		ts.mu.Lock()
	}
	done := make(chan struct{})
	ts.starting[id] = done
	ts.starts.Add(1)
	ts.mu.Unlock()
	t, err := ts.newServer(id)
	ts.mu.Lock()
	delete(ts.starting, id)
	close(done)
	if err == nil {
		// Also when closing: closeAll and detachAll wait for the starts
		// under way and then take it with the others.
		ts.servers[id] = t
		go t.serve(ts.log)
	}
	ts.mu.Unlock()
	ts.starts.Done()
	if err != nil {
		return "", err
	}
	return ts.address(id), nil
}

// waitStart waits until no server of sandbox id is being started; the
// caller holds ts.mu (released meanwhile).
func (ts *taskServers) waitStart(id string) {
	for {
		ch, busy := ts.starting[id]
		if !busy {
			return
		}
		ts.mu.Unlock()
		<-ch
		ts.mu.Lock()
	}
}

// newServer makes the Task API server of sandbox id (not yet serving).
func (ts *taskServers) newServer(id string) (_ *taskServer, retErr error) {
	path := TaskSocketPath(ts.runDir, id)
	if len(path) > maxUnixPath {
		return nil, fmt.Errorf("task socket path %s is longer than %d bytes; use a shorter run_dir: %w", path, maxUnixPath, errdefs.ErrFailedPrecondition)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create task socket dir: %w", err)
	}
	sl, err := ts.sockets.Listen(path)
	if err != nil {
		return nil, err
	}
	l := &trackingListener{Listener: sl, conns: map[net.Conn]struct{}{}}
	defer func() {
		if retErr != nil {
			_ = l.Close()
			_ = ts.sockets.Release(path)
		}
	}()
	t := &taskServer{id: id, path: path, sockets: ts.sockets, listener: l, streams: newStreamRegistry(), served: make(chan struct{})}
	sio, err := ts.streamBridge(id, path, t.streams)
	if err != nil {
		return nil, err
	}
	t.sio = sio
	t.svc = taskservice.New(ts.eng, id, ts.version, taskservice.WithStdioBridge(t.sio))
	srv, err := ttrpc.NewServer(ttrpc.WithChainUnaryServerInterceptor(taskservice.UnaryServerInterceptor(), t.intercept(ts.log)))
	if err != nil {
		return nil, fmt.Errorf("create task server: %w", err)
	}
	taskapi.RegisterTTRPCTaskService(srv, t.svc)
	streamingapi.RegisterTTRPCStreamingService(srv, t.streams)
	t.srv = srv
	return t, nil
}

// serve serves the Task API until the server is closed.
func (t *taskServer) serve(log hclog.Logger) {
	defer close(t.served)
	err := t.srv.Serve(context.Background(), t.listener)
	// A detached worker's listener is closed under the server (net.ErrClosed):
	// the supervisor keeps the socket for the next worker.
	if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		log.Error("task server stopped", "sandbox_id", t.id, "error", err)
	}
}

// streamBridge returns what bridges the streamed stdio of sandbox id,
// whose task socket is path: the task sockets' StreamHost when they have
// one (the supervisor: the streams outlive this process), else the task
// server itself with reg.
func (ts *taskServers) streamBridge(id, path string, reg *streamRegistry) (stdioBridge, error) {
	dir := StreamDir(ts.runDir, id)
	if ss, ok := ts.sockets.(StreamSockets); ok {
		host, err := ss.Streams(path, dir)
		switch {
		case err == nil:
			h := newHostedStreams(host, path)
			if err := h.recover(); err != nil {
				return nil, err
			}
			return h, nil
		case errdefs.IsNotImplemented(err):
			ts.log.Warn("the supervisor does not bridge streams (an older one): streamed stdio ends with this worker", "sandbox_id", id, "error", err)
		default:
			return nil, fmt.Errorf("bridge streams of the task socket: %w", err)
		}
	}
	// Stream FIFOs of an earlier daemon have no bridge any more.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("remove stale stream FIFOs: %w", err)
	}
	return newStreamIO(reg, path, dir), nil
}

// intercept tracks calls in flight, refuses new ones once the server is
// closing, and logs each call at debug level.
func (t *taskServer) intercept(log hclog.Logger) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil, errShuttingDown
		}
		t.calls.Add(1)
		t.mu.Unlock()
		defer t.calls.Done()
		start := time.Now()
		resp, err := method(ctx, unmarshal)
		if log.IsDebug() {
			log.Debug("task api", "method", info.FullMethod, "sandbox_id", t.id, "duration", time.Since(start), "error", err)
		}
		return resp, err
	}
}

// close stops serving: blocked Waits return Unavailable, calls in flight
// finish, connections are dropped and the socket is removed.
func (t *taskServer) close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.svc.Close()
	t.streams.close()
	t.calls.Wait()
	streamErr := t.sio.closeAll()
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := t.srv.Shutdown(ctx); err != nil {
		_ = t.srv.Close()
	}
	<-t.served
	return errors.Join(streamErr, t.sockets.Release(t.path))
}

// detach stops serving without answering anything: connections are
// dropped at once, so that calls in flight (blocked Waits among them) get
// no reply from this process. Used when the sandboxer exits under a
// supervisor, which keeps containerd's connections to the public socket
// and sends those calls to the next worker.
func (t *taskServer) detach() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	// ttrpc's Close leaves connections with calls in flight open: drop
	// them first, so that no answer (Waits ending Unavailable below)
	// reaches the supervisor.
	t.listener.closeConns()
	_ = t.srv.Close()
	<-t.served
	t.svc.Close()
	t.streams.close()
	_ = t.sio.closeAll()
}

// ids returns the sandboxes whose Task API is served.
func (ts *taskServers) ids() []string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := make([]string, 0, len(ts.servers))
	for id := range ts.servers {
		out = append(out, id)
	}
	return out
}

// stop stops the Task API server of sandbox id, if there is one.
func (ts *taskServers) stop(id string) error {
	ts.mu.Lock()
	ts.waitStart(id)
	t, ok := ts.servers[id]
	delete(ts.servers, id)
	ts.mu.Unlock()
	if !ok {
		// Stream FIFOs left by an earlier daemon go with the sandbox.
		if err := os.RemoveAll(StreamDir(ts.runDir, id)); err != nil {
			return fmt.Errorf("remove stream FIFOs: %w", err)
		}
		return nil
	}
	return t.close()
}

// detachAll detaches every server (see taskServer.detach) and refuses new
// ones.
func (ts *taskServers) detachAll() {
	ts.mu.Lock()
	ts.closed = true
	ts.mu.Unlock()
	ts.starts.Wait()
	ts.mu.Lock()
	servers := ts.servers
	ts.servers = map[string]*taskServer{}
	ts.mu.Unlock()
	var wg sync.WaitGroup
	for _, t := range servers {
		wg.Go(t.detach)
	}
	wg.Wait()
}

// closeAll stops every server and refuses new ones.
func (ts *taskServers) closeAll() error {
	ts.mu.Lock()
	ts.closed = true
	ts.mu.Unlock()
	ts.starts.Wait()
	ts.mu.Lock()
	servers := ts.servers
	ts.servers = map[string]*taskServer{}
	ts.mu.Unlock()
	var wg sync.WaitGroup
	errs := make(chan error, len(servers))
	for _, t := range servers {
		wg.Go(func() { errs <- t.close() })
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// trackingListener remembers the connections it accepted, so that they can
// be dropped at once (see taskServer.detach).
type trackingListener struct {
	net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, l: l}
	l.conns[tc] = struct{}{}
	return tc, nil
}

// closeConns closes the listener and every connection it accepted.
func (l *trackingListener) closeConns() {
	l.mu.Lock()
	l.closed = true
	conns := l.conns
	l.conns = map[net.Conn]struct{}{}
	l.mu.Unlock()
	_ = l.Listener.Close()
	for c := range conns {
		_ = c.(*trackedConn).Conn.Close()
	}
}

// trackedConn leaves its listener's set when closed.
type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
