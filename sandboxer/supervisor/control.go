package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// EnvFD names the environment variable that tells a worker the file
// descriptor of its control channel to the supervisor.
const EnvFD = "MAGNETAR_SUPERVISOR_FD"

// EnvRestarted names the environment variable that tells a worker that it
// is not its supervisor's first: the supervisor held containerd's task
// connections while no worker ran, so containerd took no container for
// dead ([Client.Restarted]).
const EnvRestarted = "MAGNETAR_SUPERVISOR_RESTARTED"

// maxControlMessage bounds one control message.
const maxControlMessage = 64 << 10

// request is a worker's request to the supervisor.
type request struct {
	ID int    `json:"id"`
	Op string `json:"op"`
	// Path is a socket path (listen, relay, unrelay).
	Path string `json:"path,omitempty"`
	// Backend is where the worker serves a relayed socket.
	Backend string `json:"backend,omitempty"`
	// Pid is the process asked about (exit).
	Pid int `json:"pid,omitempty"`
	// Name names a stored descriptor (fdstore, fdremove).
	Name string `json:"name,omitempty"`
	// After is where a listing resumes (fdlist, streams).
	After string `json:"after,omitempty"`
	// Stream bridges of the relayed socket Path (see streamops.go): Dir
	// is where their FIFOs go (streams), Bridges are made (bridge), IDs
	// name bridges (bridgewait, unbridge), and TimeoutMS bounds a wait
	// (bridgewait).
	Dir       string   `json:"dir,omitempty"`
	Bridges   []Bridge `json:"bridges,omitempty"`
	IDs       []string `json:"ids,omitempty"`
	TimeoutMS int64    `json:"timeout_ms,omitempty"`
}

// response answers a request; a listen response carries the listener's
// file descriptor.
type response struct {
	ID     int       `json:"id"`
	Err    string    `json:"err,omitempty"`
	Exited bool      `json:"exited,omitempty"`
	Code   int       `json:"code,omitempty"`
	At     time.Time `json:"at,omitzero"`
	// Names are the stored descriptors sent with an fdlist answer, in
	// order; More tells that others follow.
	Names []string `json:"names,omitempty"`
	More  bool     `json:"more,omitempty"`
	// Bridges are listed or made stream bridges; Done reports that a
	// bridgewait ended before its timeout.
	Bridges []Bridge `json:"bridges,omitempty"`
	Done    bool     `json:"done,omitempty"`
}

// Operations of the control channel.
const (
	opListen  = "listen"  // a listening socket held by the supervisor (fd passed back)
	opRelay   = "relay"   // serve Path through a relay to Backend
	opUnrelay = "unrelay" // stop serving Path
	opExit    = "exit"    // the exit status of an orphan the supervisor reaped
	opReady   = "ready"   // the worker serves (recovery done)
)

// Client is a worker's end of the control channel to its supervisor. It is
// safe for concurrent use.
type Client struct {
	conn *net.UnixConn
	// restarted: see [Client.Restarted].
	restarted bool

	wmu     sync.Mutex
	mu      sync.Mutex
	next    int
	waiting map[int]chan reply
	err     error // set when the channel broke
}

type reply struct {
	resp response
	fds  []int
}

// Connect returns the client of the supervisor that started this process,
// or nil when the process runs without one.
func Connect() (*Client, error) {
	v := os.Getenv(EnvFD)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(EnvFD) // not for the processes the worker starts
	restarted := os.Getenv(EnvRestarted) == "1"
	os.Unsetenv(EnvRestarted)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q is not a file descriptor", EnvFD, v)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "supervisor")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("supervisor control channel: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("supervisor control channel is a %T, not a unix socket", c)
	}
	cl := &Client{conn: uc, restarted: restarted, waiting: map[int]chan reply{}}
	go cl.read()
	return cl, nil
}

func (c *Client) read() {
	buf := make([]byte, maxControlMessage)
	oob := make([]byte, unix.CmsgSpace(4*fdListPage))
	for {
		n, oobn, _, _, err := c.conn.ReadMsgUnix(buf, oob)
		if err == nil && n == 0 {
			err = errors.New("supervisor closed the control channel")
		}
		if err != nil {
			c.fail(err)
			return
		}
		var r reply
		if err := json.Unmarshal(buf[:n], &r.resp); err != nil {
			c.fail(fmt.Errorf("bad message from the supervisor: %w", err))
			return
		}
		r.fds = parseFDs(oob[:oobn])
		c.mu.Lock()
		ch := c.waiting[r.resp.ID]
		delete(c.waiting, r.resp.ID)
		c.mu.Unlock()
		if ch == nil {
			closeFDs(r.fds)
			continue
		}
		ch <- r
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	c.err = err
	for id, ch := range c.waiting {
		close(ch)
		delete(c.waiting, id)
	}
	c.mu.Unlock()
}

// call sends a request and waits for its reply.
func (c *Client) call(req request) (reply, error) { return c.callFDs(req, nil) }

// callFDs sends a request with copies of the descriptors fds and waits for
// its reply.
func (c *Client) callFDs(req request, fds []int) (reply, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return reply{}, c.err
	}
	c.next++
	req.ID = c.next
	c.waiting[req.ID] = ch
	c.mu.Unlock()
	data, err := json.Marshal(req)
	if err != nil {
		return reply{}, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.wmu.Lock()
	_, _, err = c.conn.WriteMsgUnix(data, oob, nil)
	c.wmu.Unlock()
	if err != nil {
		return reply{}, fmt.Errorf("supervisor: %w", err)
	}
	r, ok := <-ch
	if !ok {
		c.mu.Lock()
		defer c.mu.Unlock()
		return reply{}, fmt.Errorf("supervisor: %w", c.err)
	}
	if r.resp.Err != "" {
		closeFDs(r.fds)
		return reply{}, fmt.Errorf("supervisor: %s", r.resp.Err)
	}
	return r, nil
}

// Listen returns a listener on the unix socket path that the supervisor
// holds: it outlives this process, so that connections made while no
// worker runs wait in its backlog instead of being refused. path is a
// unix socket path or "tcp://HOST:PORT" (with port 0 the port the
// supervisor chose stays across workers).
func (c *Client) Listen(path string) (net.Listener, error) {
	r, err := c.call(request{Op: opListen, Path: path})
	if err != nil {
		return nil, err
	}
	if len(r.fds) != 1 {
		closeFDs(r.fds)
		return nil, fmt.Errorf("supervisor: listen %s: got %d descriptors", path, len(r.fds))
	}
	f := os.NewFile(uintptr(r.fds[0]), path)
	defer f.Close()
	return net.FileListener(f)
}

// Relay makes the supervisor serve the ttrpc socket path itself and relay
// its connections to backend, where this worker serves.
func (c *Client) Relay(path, backend string) error {
	_, err := c.call(request{Op: opRelay, Path: path, Backend: backend})
	return err
}

// Unrelay makes the supervisor stop serving path and close its
// connections.
func (c *Client) Unrelay(path string) error {
	_, err := c.call(request{Op: opUnrelay, Path: path})
	return err
}

// ExitOf returns the exit code of pid, a process that was orphaned while
// no worker ran and that the supervisor reaped. ok is false when the
// supervisor has no record of it.
func (c *Client) ExitOf(pid int) (code int, at time.Time, ok bool, err error) {
	r, err := c.call(request{Op: opExit, Pid: pid})
	if err != nil {
		return 0, time.Time{}, false, err
	}
	return r.resp.Code, r.resp.At, r.resp.Exited, nil
}

// Ready tells the supervisor that this worker serves: it recovered the
// sandboxes and listens. A worker that was ready and then dies is
// restarted without crash-loop backoff.
func (c *Client) Ready() error {
	_, err := c.call(request{Op: opReady})
	return err
}

// Restarted reports whether this worker follows an earlier one of the
// same supervisor (after a crash or a live upgrade). containerd's task
// connections then outlived the earlier worker, so the containers it ran
// are still running for containerd and are to be resumed; the first
// worker of a supervisor follows a full restart, after which containerd
// has reported them exited.
func (c *Client) Restarted() bool { return c.restarted }

// Close closes the control channel.
func (c *Client) Close() error { return c.conn.Close() }

func parseFDs(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if f, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// TaskSockets places task sockets under the supervisor: the supervisor
// serves each public path and relays it to a socket of the worker's in
// backendDir (same file name). It satisfies controller.TaskSockets.
func (c *Client) TaskSockets(backendDir string) *TaskSockets {
	return &TaskSockets{c: c, dir: backendDir}
}

// TaskSockets is the worker's side of the relayed task sockets.
type TaskSockets struct {
	c   *Client
	dir string
}

// Listen listens on the backend socket for public and has the supervisor
// relay public to it.
func (t *TaskSockets) Listen(public string) (net.Listener, error) {
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create backend socket dir: %w", err)
	}
	backend := t.backend(public)
	if err := os.Remove(backend); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale backend socket: %w", err)
	}
	l, err := listenUnix(backend)
	if err != nil {
		return nil, fmt.Errorf("listen on backend socket: %w", err)
	}
	if err := t.c.Relay(public, backend); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Release makes the supervisor close public and its connections.
func (t *TaskSockets) Release(public string) error {
	err := t.c.Unrelay(public)
	if rerr := os.Remove(t.backend(public)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

func (t *TaskSockets) backend(public string) string {
	return filepath.Join(t.dir, filepath.Base(public))
}
