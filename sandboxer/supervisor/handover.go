package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A live upgrade replaces the supervisor too: after the worker stopped,
// the supervisor re-executes itself with the binary now installed
// (execve keeps its pid, so containers and the processes it adopted stay
// its children) and hands its state to the new program: the listeners,
// every relayed task socket with its client connections (the bytes of a
// frame they had begun to send, and the requests that wait for a worker),
// the orphans' exit statuses, the worker's descriptor store and the files
// in [Config.Keep]. Descriptors
// pass through the exec itself; the state is JSON in a memfd named by
// [EnvHandover].

// HandoverVersion is the version of the state a supervisor hands over. A
// binary that reports another one (`--handover-version`) gets the worker
// only: the supervisor stays as it is.
const HandoverVersion = 2

// EnvHandover names the environment variable that gives a re-executed
// supervisor the descriptor of its predecessor's state.
const EnvHandover = "MAGNETAR_SUPERVISOR_HANDOVER"

// maxHandover bounds the state read back.
const maxHandover = 256 << 20

// Handover is the state a supervisor hands to the program it re-executes
// (see [TakeHandover]); pass it to [Run] as Config.Handover.
type Handover struct {
	Version   int            `json:"version"`
	Listeners map[string]int `json:"listeners"` // socket path -> descriptor
	// TCPListeners are the remote API's listeners: "tcp://HOST:PORT" as
	// the worker asked -> descriptor (a program that does not know them
	// ignores them; its workers do not ask for them).
	TCPListeners map[string]int `json:"tcp_listeners,omitempty"`
	Relays       []relayState   `json:"relays"`
	Exits        []exitRecord   `json:"exits"`
	Files        map[string]int `json:"files"`  // Config.Keep
	Stored       []storedFD     `json:"stored"` // the worker's descriptor store
}

type relayState struct {
	Path     string      `json:"path"`
	Listener int         `json:"listener"`
	Conns    []connState `json:"conns"`
	// StreamDir: the relay answers Streaming calls, bridging them under
	// this directory (see EnableStreams); Hub is the state of its streams
	// (see streams_handover.go).
	StreamDir string    `json:"stream_dir,omitempty"`
	Hub       *hubState `json:"hub,omitempty"`
}

type connState struct {
	FD int `json:"fd"`
	// Partial holds the bytes of a frame the client had begun to send.
	Partial []byte `json:"partial,omitempty"`
	// Pending are request frames waiting for a worker, in stream order.
	Pending [][]byte `json:"pending,omitempty"`
	// Streams are the Streaming calls the relay answers itself.
	Streams []localStream `json:"streams,omitempty"`
}

type exitRecord struct {
	Pid  int       `json:"pid"`
	Code int       `json:"code"`
	At   time.Time `json:"at"`
}

// TakeHandover returns the state the previous supervisor of this process
// handed over, or nil when the process was not re-executed by one. Its
// descriptors are close-on-exec again (no worker inherits them).
func TakeHandover() (*Handover, error) {
	v := os.Getenv(EnvHandover)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(EnvHandover)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q is not a descriptor", EnvHandover, v)
	}
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxHandover))
	if err != nil {
		return nil, fmt.Errorf("read the supervisor's handover: %w", err)
	}
	var h Handover
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("decode the supervisor's handover: %w", err)
	}
	if h.Version != HandoverVersion {
		return nil, fmt.Errorf("supervisor handover version %d, this binary takes %d", h.Version, HandoverVersion)
	}
	for _, fd := range h.fds() {
		if fd < 3 {
			return nil, fmt.Errorf("supervisor handover names descriptor %d", fd)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return nil, fmt.Errorf("supervisor handover: descriptor %d: %w", fd, err)
		}
	}
	return &h, nil
}

// File returns the file kept under name across the re-exec (see
// Config.Keep), or nil. It can be taken once.
func (h *Handover) File(name string) *os.File {
	fd, ok := h.Files[name]
	if !ok {
		return nil
	}
	delete(h.Files, name)
	return os.NewFile(uintptr(fd), name)
}

// fds lists every descriptor the state names.
func (h *Handover) fds() []int {
	var out []int
	for _, fd := range h.Listeners {
		out = append(out, fd)
	}
	for _, fd := range h.TCPListeners {
		out = append(out, fd)
	}
	for _, r := range h.Relays {
		out = append(out, r.Listener)
		for _, c := range r.Conns {
			out = append(out, c.FD)
		}
		if r.Hub != nil {
			out = append(out, r.Hub.fds()...)
		}
	}
	for _, fd := range h.Files {
		out = append(out, fd)
	}
	for _, e := range h.Stored {
		out = append(out, e.FD)
	}
	return out
}

// handoverVersionOf asks the binary exe which handover version it takes.
func handoverVersionOf(ctx context.Context, exe string) (int, error) {
	out, err := exec.CommandContext(ctx, exe, "--handover-version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s --handover-version: %w", exe, err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("%s --handover-version: %w", exe, err)
	}
	return v, nil
}

// reexec hands the supervisor's state over and executes the binary at
// cfg.Exe in its place. The worker must be stopped. It returns only when
// the exec failed, after taking its state back: the supervisor goes on.
func (s *supervisor) reexec() error {
	h, err := s.handOver()
	if errors.Is(err, errStreamsBusy) {
		return err // nothing was handed over
	}
	if err == nil {
		err = execWith(s.cfg.Exe, s.cfg.Args, h)
	}
	// Still here: carry on with the same state. resume takes (closes) the
	// descriptors of h; the kept files are still in cfg.Keep.
	for _, fd := range h.Files {
		unix.Close(fd)
	}
	h.Files = nil
	s.reaper = newReaper()
	return errors.Join(err, s.resume(h))
}

// dupOf duplicates the descriptor of c; the duplicate is not
// close-on-exec, so an exec keeps it.
func dupOf(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.Dup(int(fd)) }); err != nil {
		return -1, err
	}
	return nfd, derr
}

// handOver stops the relays and the reaper and collects the state, with
// every descriptor a duplicate that an exec keeps. The objects it took
// them from are closed without removing their sockets.
func (s *supervisor) handOver() (*Handover, error) {
	h := &Handover{Version: HandoverVersion, Listeners: map[string]int{}, Files: map[string]int{}}
	var errs []error
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.relays {
		r.stopLoops()
	}
	var frozen []*Relay
	for _, r := range s.relays {
		if err := r.freezeStreams(freezeTimeout); err != nil {
			for _, f := range frozen {
				f.thawStreams()
			}
			for _, r := range s.relays {
				r.restartLoops()
			}
			return nil, err
		}
		frozen = append(frozen, r)
	}
	for path, l := range s.listeners {
		fd, err := dupOf(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", path, err))
			continue
		}
		h.Listeners[path] = fd
		l.SetUnlinkOnClose(false)
		l.Close()
	}
	for addr, l := range s.tcp {
		fd, err := dupOf(l)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", addr, err))
			continue
		}
		if h.TCPListeners == nil {
			h.TCPListeners = map[string]int{}
		}
		h.TCPListeners[addr] = fd
		l.Close()
	}
	for path, r := range s.relays {
		st, err := r.handOver()
		if err != nil {
			errs = append(errs, fmt.Errorf("relay %s: %w", path, err))
		}
		if st.Listener >= 0 {
			h.Relays = append(h.Relays, st)
		}
	}
	for name, f := range s.cfg.Keep {
		fd, err := unix.Dup(int(f.Fd()))
		if err != nil {
			errs = append(errs, fmt.Errorf("file %s: %w", name, err))
			continue
		}
		h.Files[name] = fd
	}
	// The store's own descriptors go across the exec (it owns them).
	h.Stored = s.fds.entries()
	for _, e := range h.Stored {
		_, _ = unix.FcntlInt(uintptr(e.FD), unix.F_SETFD, 0)
	}
	s.fds = newFDStore(s.cfg.FDStoreMax)
	s.reaper.close()
	h.Exits = s.reaper.records()
	s.listeners, s.relays, s.tcp = map[string]*net.UnixListener{}, map[string]*Relay{}, map[string]*net.TCPListener{}
	return h, errors.Join(errs...)
}

// execWith executes exe with args in place of this process, handing it h.
func execWith(exe string, args []string, h *Handover) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	fd, err := unix.MemfdCreate("magnetar-handover", 0) // inherited by the exec
	if err != nil {
		return fmt.Errorf("memfd for the handover: %w", err)
	}
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, EnvHandover+"=") || strings.HasPrefix(kv, EnvFD+"=")
	})
	env = append(env, EnvHandover+"="+strconv.Itoa(fd))
	return fmt.Errorf("exec %s: %w", exe, syscall.Exec(exe, append([]string{exe}, args...), env))
}

// resume takes over the state h handed over (by a previous program of
// this process, or by reexec when its exec failed).
func (s *supervisor) resume(h *Handover) error {
	var errs []error
	// The next worker follows the one stopped for the handover: what it
	// ran is still running for containerd (see Client.Restarted).
	s.workers = max(s.workers, 1)
	s.reaper.restore(h.Exits)
	s.fds.closeAll()
	s.fds = newFDStoreFrom(s.cfg.FDStoreMax, h.Stored)
	s.mu.Lock()
	defer s.mu.Unlock()
	for path, fd := range h.Listeners {
		l, err := fileListener(fd, path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.listeners[path] = l
	}
	if s.tcp == nil {
		s.tcp = map[string]*net.TCPListener{}
	}
	for addr, fd := range h.TCPListeners {
		f := os.NewFile(uintptr(fd), addr)
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s from the handover: %w", addr, err))
			continue
		}
		tl, ok := l.(*net.TCPListener)
		if !ok {
			l.Close()
			errs = append(errs, fmt.Errorf("listener %s from the handover is a %T", addr, l))
			continue
		}
		s.tcp[addr] = tl
	}
	for _, st := range h.Relays {
		l, err := fileListener(st.Listener, st.Path)
		if err != nil {
			errs = append(errs, err)
			for _, c := range st.Conns {
				unix.Close(c.FD)
			}
			continue
		}
		r := newRelay(st.Path, l, s.log.Named("relay"))
		s.relays[st.Path] = r
		if st.StreamDir != "" {
			if err := r.EnableStreams(st.StreamDir); err != nil {
				errs = append(errs, err)
			}
		}
		// The connections and their streams, then the bridges, are
		// rebuilt before anything is read from containerd.
		conns := make([]*relayConn, len(st.Conns))
		for i, cs := range st.Conns {
			c, err := r.adopt(cs)
			if err != nil {
				errs = append(errs, err)
			}
			conns[i] = c
		}
		hub := r.streamHub()
		if st.Hub != nil {
			if hub == nil {
				for _, fd := range st.Hub.fds() {
					unix.Close(fd)
				}
				errs = append(errs, fmt.Errorf("relay %s: stream state from the handover without a stream dir", st.Path))
			} else if err := hub.restore(st.Hub, conns); err != nil {
				errs = append(errs, err)
			}
		}
		for _, c := range conns {
			if c != nil {
				r.serveConn(c)
			}
		}
		if hub != nil {
			hub.startPumps()
		}
	}
	return errors.Join(errs...)
}

// fileListener makes a listener of descriptor fd (closed), listening on
// path; closing it removes the socket, as for one made here.
func fileListener(fd int, path string) (*net.UnixListener, error) {
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listener %s from the handover: %w", path, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("listener %s from the handover is a %T", path, l)
	}
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// stopLoops stops the relay's accept, client and backend loops without
// closing anything: reads end at a deadline, keeping what they read.
func (r *Relay) stopLoops() {
	r.mu.Lock()
	r.handingOver = true
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	_ = r.ln.(*net.UnixListener).SetDeadline(time.Now())
	for _, c := range conns {
		_ = c.client.SetReadDeadline(time.Now())
		c.mu.Lock()
		if c.back != nil {
			c.back.Close()
		}
		c.mu.Unlock()
	}
	r.wg.Wait() // accept, client and backend loops have ended
}

// restartLoops undoes stopLoops.
func (r *Relay) restartLoops() {
	r.mu.Lock()
	r.handingOver = false
	conns := make([]*relayConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	backend := r.backend
	r.mu.Unlock()
	_ = r.ln.(*net.UnixListener).SetDeadline(time.Time{})
	r.wg.Go(r.accept)
	for _, c := range conns {
		_ = c.client.SetReadDeadline(time.Time{})
		if backend != "" {
			c.connect(backend)
		}
		r.wg.Go(c.clientLoop)
	}
}

// handOver returns the relay's state (its loops stopped by stopLoops),
// with duplicates of its descriptors (Listener -1: it has none), and
// closes its own without removing the socket.
func (r *Relay) handOver() (relayState, error) {
	ul := r.ln.(*net.UnixListener)
	st := relayState{Path: r.path, Listener: -1}
	r.mu.Lock()
	if r.hub != nil {
		st.StreamDir = r.hub.dir
	}
	r.mu.Unlock()
	var errs []error
	fd, err := dupOf(ul)
	if err != nil {
		return st, err
	}
	st.Listener = fd
	ul.SetUnlinkOnClose(false)
	ul.Close()

	r.mu.Lock()
	defer r.mu.Unlock()
	index := map[*relayConn]int{}
	for c := range r.conns {
		sc, ok := c.client.(syscall.Conn)
		if !ok {
			errs = append(errs, fmt.Errorf("client connection is a %T", c.client))
			continue
		}
		fd, err := dupOf(sc)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cs := connState{FD: fd, Partial: c.in.buf}
		c.mu.Lock()
		for _, sid := range slices.Sorted(maps.Keys(c.local)) {
			ls := c.local[sid]
			ls.mu.Lock()
			if !ls.ended {
				cs.Streams = append(cs.Streams, localStream{SID: sid, ID: ls.id, Credit: ls.credit})
			}
			ls.mu.Unlock()
		}
		sids := make([]uint32, 0, len(c.pending))
		for sid, p := range c.pending {
			if !p.sent { // the others were answered when the worker went
				sids = append(sids, sid)
			}
		}
		slices.Sort(sids)
		for _, sid := range sids {
			cs.Pending = append(cs.Pending, c.pending[sid].f)
		}
		c.closed = true
		c.mu.Unlock()
		c.client.Close()
		index[c] = len(st.Conns)
		st.Conns = append(st.Conns, cs)
	}
	r.conns = map[*relayConn]struct{}{}
	r.closed = true
	if r.hub != nil {
		hs, err := r.hub.handOver(index)
		if err != nil {
			errs = append(errs, err)
		}
		st.Hub = hs
	}
	return st, errors.Join(errs...)
}

// adopt makes a client connection of one handed over in cs, with its
// streams; start serves it.
func (r *Relay) adopt(cs connState) (*relayConn, error) {
	f := os.NewFile(uintptr(cs.FD), "task connection")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("task connection from the handover: %w", err)
	}
	pend := map[uint32]*pending{}
	for _, raw := range cs.Pending {
		fr := frame(raw)
		if len(fr) < headerLen || fr.typ() != typeRequest {
			c.Close()
			return nil, errors.New("task connection from the handover: a waiting request is not a request frame")
		}
		m, err := fr.method()
		if err != nil {
			c.Close()
			return nil, err
		}
		pend[fr.streamID()] = &pending{f: fr, method: m, stream: fr.flags()&flagRemoteOpen != 0}
	}
	rc := r.newConn(c, cs.Partial, pend)
	if len(cs.Streams) > 0 {
		rc.local = map[uint32]*sstream{}
		for _, ls := range cs.Streams {
			rc.local[ls.SID] = &sstream{c: rc, sid: ls.SID, id: ls.ID, credit: min(max(ls.Credit, 0), maxStreamCredit)}
		}
	}
	return rc, nil
}
