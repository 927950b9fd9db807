// Package supervisor is magnetar-sandboxer's supervisor: a small parent
// process that keeps what containerd and API clients hold open while the
// sandboxer's worker process (the daemon proper) crashes, restarts or is
// replaced by a new binary.
//
// The supervisor
//   - starts the worker (the same program, with a control channel on fd 3,
//     see [EnvFD]) and starts it again when it dies;
//   - holds the listening sockets (containerd's Controller socket, the API
//     socket, the remote API's TCP ports), so that a connection made while
//     no worker runs waits in the backlog instead of being refused;
//   - serves every pod's task socket itself and relays whole ttrpc frames
//     to the worker ([Relay]), so that containerd's task connections never
//     close: containerd would take a closed one for a dead shim and report
//     the pod's containers exited;
//   - is a child subreaper, so that containers orphaned by a dead worker
//     become its children: it reaps them and keeps their exit statuses for
//     the next worker;
//   - on SIGHUP, checks that the binary on disk starts, then stops the
//     worker gracefully and starts the new binary (a live upgrade).
//
// It stays small on purpose: no engine, no kind, no containerd client.
package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
)

// Config configures [Run].
type Config struct {
	// Exe is the worker's executable, looked up again at every start, so
	// that an upgrade runs the binary now at this path.
	Exe string
	// Args are the worker's arguments (without the program name).
	Args []string
	// PIDFile, when set, receives the supervisor's pid (for
	// `magnetar-sandboxer upgrade`).
	PIDFile string
	// StopTimeout bounds how long a stopping worker may take before it is
	// killed. Default 30s.
	StopTimeout time.Duration
	// Keep are files that a live upgrade hands to the new supervisor
	// (see [Handover.File]), e.g. the state directory's lock.
	Keep map[string]*os.File
	// Handover is the state handed over by the supervisor this process
	// was before a live upgrade ([TakeHandover]); nil for a fresh start.
	Handover *Handover
	// FDStoreMax bounds the descriptors the worker may store (see
	// fdstore.go). Default DefaultFDStoreMax.
	FDStoreMax int
}

// Restart backoff after worker crashes.
const (
	minRestartDelay = 100 * time.Millisecond
	maxRestartDelay = 10 * time.Second
	// stableAfter resets the backoff: a worker that ran this long was not
	// crash-looping.
	stableAfter = 30 * time.Second
	// exitQueryWait bounds how long an exit query waits for an orphan
	// that exited but is not reaped yet.
	exitQueryWait = 5 * time.Second
)

type supervisor struct {
	cfg    Config
	log    hclog.Logger
	reaper *reaper
	fds    *fdStore

	mu        sync.Mutex
	listeners map[string]*net.UnixListener
	// tcp are the remote API's listeners, by their "tcp://HOST:PORT" as
	// the worker asked (port 0 included: the port stays across workers).
	tcp    map[string]*net.TCPListener
	relays map[string]*Relay
	// workers counts the workers started (by start, one at a time).
	workers int
}

// Run supervises the worker until ctx ends (SIGTERM/SIGINT to the
// supervisor), then stops the worker and closes every socket. Containers
// keep running, as when the daemon runs without a supervisor.
func Run(ctx context.Context, cfg Config, log hclog.Logger) (retErr error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	if cfg.PIDFile != "" {
		if err := writePIDFile(cfg.PIDFile); err != nil {
			return err
		}
		defer os.Remove(cfg.PIDFile)
	}
	s := &supervisor{cfg: cfg, log: log, reaper: newReaper(), fds: newFDStore(cfg.FDStoreMax), listeners: map[string]*net.UnixListener{}, relays: map[string]*Relay{}, tcp: map[string]*net.TCPListener{}}
	defer func() { s.reaper.close() }() // reexec may replace it
	defer func() { s.fds.closeAll() }() // and the store
	defer s.closeAll()
	if h := cfg.Handover; h != nil {
		if err := s.resume(h); err != nil {
			// What could not be taken over is lost; the rest is served.
			log.Error("take over the previous supervisor's state", "error", err)
		}
		log.Info("supervisor upgraded: took over its predecessor's sockets", "listeners", len(h.Listeners), "task_sockets", len(h.Relays))
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, unix.SIGHUP)
	defer signal.Stop(hup)

	delay := minRestartDelay
	for {
		w, err := s.start()
		if err != nil {
			return err
		}
		started := time.Now()
		select {
		case e := <-w.exit:
			s.gone(w)
			if ctx.Err() != nil {
				return nil
			}
			if w.ready.Load() || time.Since(started) > stableAfter {
				// It served: not a crash loop.
				delay = minRestartDelay
			}
			log.Error("worker died; starting a new one", "pid", w.pid, "exit_code", e.Code, "ran", time.Since(started).Round(time.Millisecond), "restart_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			delay = min(2*delay, maxRestartDelay)
		case <-hup:
			nb, err := s.check()
			if err != nil {
				log.Error("upgrade refused: the new binary does not start; the running worker keeps serving", "exe", cfg.Exe, "error", err)
				// Keep serving with the old worker until the next signal.
				if !s.serveUntil(ctx, w, hup) {
					return nil
				}
				continue
			}
			log.Info("upgrading: stopping the worker", "pid", w.pid)
			s.upgrade(w, nb)
			delay = minRestartDelay
		case <-ctx.Done():
			log.Info("stopping the worker", "pid", w.pid)
			s.stop(w)
			return nil
		}
	}
}

// serveUntil waits with the running worker w until the next SIGHUP (true:
// go on with the upgrade loop) or the end of ctx or w (false after ctx).
func (s *supervisor) serveUntil(ctx context.Context, w *worker, hup <-chan os.Signal) bool {
	for {
		select {
		case <-hup:
			nb, err := s.check()
			if err != nil {
				s.log.Error("upgrade refused: the new binary does not start; the running worker keeps serving", "exe", s.cfg.Exe, "error", err)
				continue
			}
			s.log.Info("upgrading: stopping the worker", "pid", w.pid)
			s.upgrade(w, nb)
			return true
		case e := <-w.exit:
			s.gone(w)
			s.log.Error("worker died; starting a new one", "pid", w.pid, "exit_code", e.Code)
			return ctx.Err() == nil
		case <-ctx.Done():
			s.stop(w)
			return false
		}
	}
}

// upgrade replaces the worker w, and the supervisor itself when the new
// binary takes its state (same [HandoverVersion]): calls in flight are
// drained, the worker stops, and the supervisor re-executes the new
// binary, which starts the new worker. Without a handover (another
// version, or a failed exec) the supervisor stays and the caller starts
// the new worker.
func (s *supervisor) upgrade(w *worker, nb newBinary) {
	v, verr := nb.handover, nb.handoverErr
	s.drain()
	s.stop(w)
	switch {
	case verr != nil:
		s.log.Warn("the new binary does not say which supervisor state it takes: upgrading the worker only", "error", verr)
	case v != HandoverVersion:
		s.log.Warn("the new binary takes another supervisor state: upgrading the worker only", "its_version", v, "ours", HandoverVersion)
	default:
		s.log.Info("re-executing the supervisor", "exe", s.cfg.Exe)
		err := s.reexec() // returns only on failure
		if errors.Is(err, errStreamsBusy) {
			s.log.Warn("streamed stdio did not come to rest (containerd reads none of it?): the supervisor stays as it is and starts the new worker", "error", err)
			return
		}
		s.log.Error("the supervisor could not re-execute itself; it stays and starts the new worker", "error", err)
	}
}

// newBinary is what the binary an upgrade starts says of itself.
type newBinary struct {
	// handover is the supervisor state it takes over ([HandoverVersion]),
	// valid when handoverErr is nil.
	handover    int
	handoverErr error
}

// check runs the worker binary once, asking which supervisor state it
// takes (--handover-version): an upgrade goes ahead only with a binary
// that starts. A binary from before live upgrades of the supervisor
// does not know that flag; it must then at least print its --version.
func (s *supervisor) check() (newBinary, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, herr := handoverVersionOf(ctx, s.cfg.Exe)
	if herr == nil {
		return newBinary{handover: v}, nil
	}
	out, err := exec.CommandContext(ctx, s.cfg.Exe, "--version").CombinedOutput()
	if err != nil {
		return newBinary{}, fmt.Errorf("%s --version: %v: %s", s.cfg.Exe, err, out)
	}
	return newBinary{handoverErr: herr}, nil
}

// worker is a running worker process.
type worker struct {
	pid     int
	started time.Time
	exit    <-chan exit
	ctl     *net.UnixConn
	done    chan struct{} // closed when its control loop ended
	ready   atomic.Bool   // it said it serves (opReady)
}

// start starts a worker with a fresh control channel.
func (s *supervisor) start() (*worker, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control channel: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "control")
	theirs := os.NewFile(uintptr(fds[1]), "control")
	defer theirs.Close()
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, err
	}
	ctl := c.(*net.UnixConn)
	env := append(os.Environ(), EnvFD+"=3")
	if s.workers > 0 {
		// containerd's task connections were held through the previous
		// worker's end: the new one resumes what it left running.
		env = append(env, EnvRestarted+"=1")
	}
	var p *os.Process
	// A worker without its supervisor serves nothing containerd can
	// reach: it stops (detaching) when the supervisor dies — and only
	// then, so it is forked from a thread that lives as long as the
	// supervisor.
	err = pdeathsig.Fork(func() (err error) {
		p, err = os.StartProcess(s.cfg.Exe, append([]string{s.cfg.Exe}, s.cfg.Args...), &os.ProcAttr{
			Env:   env,
			Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, theirs},
			Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM},
		})
		return err
	})
	if err != nil {
		ctl.Close()
		return nil, fmt.Errorf("start worker %s: %w", s.cfg.Exe, err)
	}
	s.workers++
	// The reaper reaps it; os.Process must not.
	w := &worker{pid: p.Pid, started: time.Now(), exit: s.reaper.watch(p.Pid), ctl: ctl, done: make(chan struct{})}
	_ = p.Release()
	go s.serve(w)
	s.log.Info("worker started", "pid", w.pid, "exe", s.cfg.Exe)
	return w, nil
}

// drain holds new task calls for the next worker and waits (up to
// StopTimeout) until the worker has answered the calls that cannot be
// replayed, so that a live upgrade fails none.
func (s *supervisor) drain() {
	s.mu.Lock()
	relays := make([]*Relay, 0, len(s.relays))
	for _, r := range s.relays {
		relays = append(relays, r)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StopTimeout)
	defer cancel()
	for _, r := range relays {
		if err := r.Drain(ctx); err != nil {
			s.log.Warn("calls still in flight when the worker stops", "socket", r.path, "error", err)
			return
		}
	}
}

// stop ends a worker gracefully (SIGTERM), or kills it after StopTimeout.
func (s *supervisor) stop(w *worker) {
	_ = unix.Kill(w.pid, unix.SIGTERM)
	t := time.NewTimer(s.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-w.exit:
	case <-t.C:
		s.log.Warn("worker did not stop in time: killing it", "pid", w.pid, "timeout", s.cfg.StopTimeout)
		_ = unix.Kill(w.pid, unix.SIGKILL)
		<-w.exit
	}
	s.gone(w)
}

// gone forgets a worker that exited: its control channel closes and the
// relays wait for the next one.
func (s *supervisor) gone(w *worker) {
	w.ctl.Close()
	<-w.done
	s.mu.Lock()
	relays := make([]*Relay, 0, len(s.relays))
	for _, r := range s.relays {
		relays = append(relays, r)
	}
	s.mu.Unlock()
	for _, r := range relays {
		r.ClearBackend()
	}
}

// serve answers the worker's requests until its control channel closes.
func (s *supervisor) serve(w *worker) {
	defer close(w.done)
	buf := make([]byte, maxControlMessage)
	oob := make([]byte, unix.CmsgSpace(4*maxFDsIn))
	for {
		n, oobn, flags, _, err := w.ctl.ReadMsgUnix(buf, oob)
		fds := parseFDs(oob[:oobn])
		if err != nil || n == 0 {
			closeFDs(fds)
			return
		}
		var req request
		err = json.Unmarshal(buf[:n], &req)
		if err == nil && flags&(unix.MSG_CTRUNC|unix.MSG_TRUNC) != 0 {
			err = fmt.Errorf("message truncated (more than %d bytes or %d descriptors)", maxControlMessage, maxFDsIn)
		}
		if err != nil {
			// Only our own worker holds the other end: garbage means it
			// is broken. Its requests fail from now on; it is replaced
			// when it exits.
			closeFDs(fds)
			s.log.Error("bad control message from the worker: closing its control channel", "pid", w.pid, "error", err)
			w.ctl.Close()
			return
		}
		switch {
		case isFDStoreOp(req.Op):
			resp, out := s.fds.handle(req, fds)
			s.send(w, req.Op, resp, out)
			closeFDs(out)
		case len(fds) > 0:
			closeFDs(fds)
			s.send(w, req.Op, response{ID: req.ID, Err: fmt.Sprintf("%s takes no descriptor, got %d", req.Op, len(fds))}, nil)
		case req.Op == opExit || waitingStreamOp(req.Op):
			// Answered one by one except those that may wait.
			go s.answer(w, req)
		default:
			s.answer(w, req)
		}
	}
}

func (s *supervisor) answer(w *worker, req request) {
	resp := response{ID: req.ID}
	var fds []int
	switch req.Op {
	case opListen:
		f, err := s.listener(req.Path)
		if err != nil {
			resp.Err = err.Error()
			break
		}
		defer f.Close()
		fds = []int{int(f.Fd())}
	case opRelay:
		if err := s.relay(req.Path, req.Backend); err != nil {
			resp.Err = err.Error()
		}
	case opUnrelay:
		if err := s.unrelay(req.Path); err != nil {
			resp.Err = err.Error()
		}
	case opReady:
		w.ready.Store(true)
		s.log.Info("worker ready", "pid", w.pid, "after", time.Since(w.started).Round(time.Millisecond))
	case opExit:
		if e, ok := s.reaper.exitOf(req.Pid, exitQueryWait); ok {
			resp.Exited, resp.Code, resp.At = true, e.Code, e.At
		}
	default:
		if !s.answerStreams(req, &resp) {
			resp.Err = fmt.Sprintf("unknown operation %q", req.Op)
		}
	}
	s.send(w, req.Op, resp, fds)
}

// send answers the worker with resp and copies of the descriptors fds.
func (s *supervisor) send(w *worker, op string, resp response, fds []int) {
	data, err := json.Marshal(resp)
	if err != nil {
		return
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := w.ctl.WriteMsgUnix(data, oob, nil); err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("answer the worker", "op", op, "error", err)
	}
}

// checkPath accepts absolute, clean socket paths only.
func checkPath(path string) error {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("socket path %q must be absolute and clean", path)
	}
	return nil
}

// listener returns a copy of the listener on path, listening first if
// the supervisor holds none yet.
func (s *supervisor) listener(path string) (*os.File, error) {
	if hp, ok := strings.CutPrefix(path, "tcp://"); ok {
		return s.tcpListener(path, hp)
	}
	if err := checkPath(path); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.listeners[path]
	if !ok {
		var err error
		if l, err = listenStale(path); err != nil {
			return nil, err
		}
		s.listeners[path] = l
	}
	return l.File()
}

// tcpListener returns a copy of the TCP listener asked for as key
// ("tcp://HOST:PORT"), listening on hostport first if the supervisor holds
// none yet.
func (s *supervisor) tcpListener(key, hostport string) (*os.File, error) {
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return nil, fmt.Errorf("listen %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.tcp[key]
	if !ok {
		if s.tcp == nil {
			s.tcp = map[string]*net.TCPListener{}
		}
		nl, err := net.Listen("tcp", hostport)
		if err != nil {
			return nil, err
		}
		l = nl.(*net.TCPListener)
		s.tcp[key] = l
	}
	return l.File()
}

// listenStale listens on a unix socket (0600), replacing a stale socket
// but no other kind of file.
func listenStale(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	return l.(*net.UnixListener), nil
}

func (s *supervisor) relay(path, backend string) error {
	if err := checkPath(path); err != nil {
		return err
	}
	if err := checkPath(backend); err != nil {
		return err
	}
	s.mu.Lock()
	r, ok := s.relays[path]
	if !ok {
		l, err := listenStale(path)
		if err != nil {
			s.mu.Unlock()
			return err
		}
		r = newRelay(path, l, s.log.Named("relay"))
		s.relays[path] = r
	}
	s.mu.Unlock()
	r.SetBackend(backend)
	return nil
}

func (s *supervisor) unrelay(path string) error {
	s.mu.Lock()
	r, ok := s.relays[path]
	delete(s.relays, path)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return r.Close()
}

// closeAll closes the relays and the listeners (removing their sockets).
func (s *supervisor) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for path, r := range s.relays {
		if err := r.Close(); err != nil {
			s.log.Warn("close task socket", "path", path, "error", err)
		}
	}
	for _, l := range s.listeners {
		l.Close() // removes the socket file
	}
	for _, l := range s.tcp {
		l.Close()
	}
	s.relays, s.listeners, s.tcp = map[string]*Relay{}, map[string]*net.UnixListener{}, map[string]*net.TCPListener{}
}

func writePIDFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Upgrade asks the supervisor whose pid is in pidFile to upgrade its
// worker (SIGHUP).
func Upgrade(pidFile string) (int, error) {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("read supervisor pid: %w", err)
	}
	pid, err := strconv.Atoi(string(trimNL(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("%s does not hold a pid", pidFile)
	}
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return pid, fmt.Errorf("signal supervisor %d: %w", pid, err)
	}
	return pid, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
