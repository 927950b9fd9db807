package wasm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"golang.org/x/sys/unix"
)

// runnerEnv is the guard variable that makes [RunnerMain] serve as the
// node's wasm runner.
const runnerEnv = "MAGNETAR_WASM_RUNNER"

// runnerListenFd is the runner's fd of its listening control socket,
// made by the backend before the runner starts.
const runnerListenFd = 3

// Exit codes of an instance that could not run its module to the end.
const (
	exitRunnerError = 126 // bad instructions, compile or instantiate error
	exitNotFound    = 127 // the module file is missing
	exitTrap        = 134 // the module trapped (like SIGABRT: 128+6)
)

// runnerConfig is what the runner is told to run for one container.
type runnerConfig struct {
	// Rootfs is the host path of the container's root file system.
	Rootfs string `json:"rootfs"`
	// Module is the module's path inside Rootfs (absolute, not resolved).
	Module string   `json:"module"`
	Args   []string `json:"args"`
	Env    []string `json:"env,omitempty"`
	// Cwd is the working directory inside the rootfs.
	Cwd string `json:"cwd"`
	// ReadonlyRoot preopens the rootfs read-only.
	ReadonlyRoot bool `json:"readonlyRoot,omitempty"`
	// Preopens are host directories bind-mounted into the rootfs and
	// preopened at their guest paths, besides the rootfs at "/".
	Preopens []preopen `json:"preopens,omitempty"`
	// MemoryLimitPages bounds the module's linear memory (64 KiB pages);
	// 0 keeps the module's own maximum (at most 4 GiB).
	MemoryLimitPages uint32 `json:"memoryLimitPages,omitempty"`
	// ExitFile receives the exit code, so that a sandboxer that finds the
	// runner gone still learns it.
	ExitFile string `json:"exitFile,omitempty"`
}

// preopen is a directory preopened for the module.
type preopen struct {
	Host     string `json:"host"`
	Guest    string `json:"guest"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// RunnerMain serves as the node's wasm runner when the process was started
// as one by this package's backend (the environment variable
// MAGNETAR_WASM_RUNNER=1 is set): it then never returns but exits once it
// has run out of work. Otherwise it returns false at once.
//
// Every program that opens a wasm [Backend] (and every test binary of
// one, from TestMain) must call it first thing in main:
//
//	func main() {
//		if wasm.RunnerMain() {
//			return
//		}
//		...
//	}
func RunnerMain() (ran bool) {
	if os.Getenv(runnerEnv) != "1" {
		return false
	}
	os.Exit(runRunner())
	return true
}

// runRunner serves the control socket on fd 3 until the runner has been
// idle (no instance) for its idle time.
func runRunner() int {
	os.Unsetenv(runnerEnv)
	fs := flag.NewFlagSet("magnetar-wasm-runner", flag.ContinueOnError)
	cacheDir := fs.String("cache", "", "compilation cache directory")
	idle := fs.Duration("idle", 5*time.Second, "exit after this long without instances")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	// Signals from a terminal or the sandboxer's process group do not
	// reach it (its own session); SIGTERM ends every instance (143).
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	lf := os.NewFile(runnerListenFd, "runner-socket")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "wasm runner: %v\n", err)
		return 2
	}
	debug.SetMaxThreads(maxInstances + 1000)
	r := newRunner(*cacheDir, *idle, l.(*net.UnixListener))
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM)
	go func() {
		<-sigc
		r.terminateAll(syscall.SIGTERM)
	}()
	return r.serve()
}

// runner hosts the instances of every wasm container of one backend: one
// wazero runtime, one compiled module per module digest, one instance
// (on an OS thread of its own) per container.
type runner struct {
	ctx      context.Context
	rt       wazero.Runtime
	idle     time.Duration
	l        *net.UnixListener
	sockPath string

	mu        sync.Mutex
	insts     map[string]*instance
	mods      map[[32]byte]*moduleEntry
	unused    [][32]byte // digests of modules no instance uses, oldest first
	idleTimer *time.Timer
	trimTimer *time.Timer
	closing   bool
	handlers  sync.WaitGroup // requests being answered
}

// maxUnusedModules is how many compiled modules no instance uses the
// runner keeps, for the next instance of the same module.
const maxUnusedModules = 8

// maxInstances bounds the instances of a runner: each has an OS thread,
// and Go ends a process that exceeds its thread limit (set above this).
const maxInstances = 8192

func newRunner(cacheDir string, idle time.Duration, l *net.UnixListener) *runner {
	ctx := context.Background()
	rc := wazero.NewRuntimeConfig().WithCloseOnContextDone(true)
	if cacheDir != "" {
		if cache, err := wazero.NewCompilationCacheWithDir(cacheDir); err == nil {
			rc = rc.WithCompilationCache(cache)
		}
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	r := &runner{ctx: ctx, rt: rt, idle: idle, l: l, insts: map[string]*instance{}, mods: map[[32]byte]*moduleEntry{}}
	if a, ok := l.Addr().(*net.UnixAddr); ok {
		r.sockPath = a.Name
	}
	r.mu.Lock()
	r.armIdleLocked()
	r.mu.Unlock()
	return r
}

// trimDelay is how long after the last start the runner returns the
// garbage of instantiations to the host.
const trimDelay = time.Second

// trimSoon returns freed memory to the host once starts have quietened:
// instantiating a module leaves garbage on the runner's Go heap (decoded
// sections, copies of data), which Go would otherwise keep for a while.
func (r *runner) trimSoon() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.trimTimer != nil {
		r.trimTimer.Reset(trimDelay)
		return
	}
	r.trimTimer = time.AfterFunc(trimDelay, debug.FreeOSMemory)
}

// armIdleLocked starts the idle timer when no instance is left.
func (r *runner) armIdleLocked() {
	if len(r.insts) > 0 || r.idleTimer != nil {
		return
	}
	r.idleTimer = time.AfterFunc(r.idle, r.idleExit)
}

// idleExit stops serving when the runner still has no instance: a request
// that arrives later finds the socket closed, and the backend starts a
// new runner.
func (r *runner) idleExit() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.idleTimer = nil
	if len(r.insts) > 0 || r.closing {
		return
	}
	r.closing = true
	r.l.Close()
}

// serve accepts control connections until the runner closes.
func (r *runner) serve() int {
	for {
		c, err := r.l.AcceptUnix()
		if err != nil {
			r.mu.Lock()
			closing := r.closing
			r.mu.Unlock()
			if closing {
				if r.sockPath != "" {
					_ = os.Remove(r.sockPath)
				}
				r.handlers.Wait() // each gets its answer (a start: "exiting")
				return 0
			}
			if errors.Is(err, net.ErrClosed) {
				return 0
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like
			continue
		}
		r.handlers.Go(func() { r.handle(c) })
	}
}

// request is one call to the runner, one JSON document on its own
// connection; a start carries the instance's stdin, stdout and stderr as
// SCM_RIGHTS.
type request struct {
	Op     string        `json:"op"` // start, wait, kill, delete, stats, update, list
	ID     string        `json:"id,omitempty"`
	Start  *runnerConfig `json:"start,omitempty"`
	Signal int           `json:"signal,omitempty"`
	// MemoryLimitPages is an update's new limit (0: the module's maximum).
	MemoryLimitPages uint32 `json:"memoryLimitPages,omitempty"`
}

// response answers a request.
type response struct {
	Error    string `json:"error,omitempty"`
	NotFound bool   `json:"notFound,omitempty"`
	// Exiting: the runner is closing and takes no new instance.
	Exiting bool `json:"exiting,omitempty"`
	// Exhausted: the runner hosts as many instances as it can.
	Exhausted bool `json:"exhausted,omitempty"`
	// Wait's answer.
	Code uint32 `json:"code,omitempty"`
	// OOM: the instance's memory limit refused a growth.
	OOM      bool      `json:"oom,omitempty"`
	ExitedAt time.Time `json:"exitedAt,omitzero"`
	// Stats' answer: CPU time, linear memory's size, the part of it in
	// RAM, its limit.
	CPUNanos       uint64 `json:"cpuNanos,omitempty"`
	MemoryBytes    uint64 `json:"memoryBytes,omitempty"`
	MemoryResident uint64 `json:"memoryResident,omitempty"`
	MemoryLimit    uint64 `json:"memoryLimit,omitempty"`
	// List's answer.
	IDs []string `json:"ids,omitempty"`
}

// maxRequest bounds a request's size.
const maxRequest = 1 << 20

func (r *runner) handle(c *net.UnixConn) {
	defer c.Close()
	buf := make([]byte, maxRequest)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	files, err := receivedFiles(oob[:oobn])
	if err != nil {
		writeResponse(c, &response{Error: err.Error()})
		return
	}
	closeFiles := func() {
		for _, f := range files {
			f.Close()
		}
	}
	data := buf[:n]
	// A request larger than one read (a long argument list) continues.
	for !json.Valid(data) && len(data) < maxRequest {
		m, err := c.Read(buf[len(data):])
		if err != nil {
			closeFiles()
			return
		}
		data = buf[:len(data)+m]
	}
	var req request
	if err := json.Unmarshal(data, &req); err != nil {
		closeFiles()
		writeResponse(c, &response{Error: "bad request: " + err.Error()})
		return
	}
	if req.Op != "start" {
		closeFiles()
	}
	var resp *response
	switch req.Op {
	case "start":
		resp = r.start(req.ID, req.Start, files)
	case "wait":
		resp = r.wait(c, req.ID)
	case "kill":
		resp = r.kill(req.ID, syscall.Signal(req.Signal))
	case "delete":
		resp = r.delete(req.ID)
	case "stats":
		resp = r.stats(req.ID)
	case "update":
		resp = r.update(req.ID, req.MemoryLimitPages)
	case "list":
		resp = r.list()
	default:
		resp = &response{Error: fmt.Sprintf("unknown operation %q", req.Op)}
	}
	writeResponse(c, resp)
}

// receivedFiles turns the SCM_RIGHTS of a message into files.
func receivedFiles(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("stdio-%d", len(files))))
		}
	}
	return files, nil
}

func writeResponse(c net.Conn, resp *response) {
	data, _ := json.Marshal(resp)
	_, _ = c.Write(append(data, '\n'))
}

func (r *runner) lookup(id string) (*instance, *response) {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst, ok := r.insts[id]
	if !ok {
		return nil, &response{NotFound: true, Error: fmt.Sprintf("no instance %q", id)}
	}
	return inst, nil
}

// start registers the instance and runs it on a thread of its own; it
// answers once the module's _start runs (or the instance ended early,
// with its exit code recorded).
func (r *runner) start(id string, cfg *runnerConfig, files []*os.File) *response {
	if cfg == nil || id == "" || len(files) != 3 {
		for _, f := range files {
			f.Close()
		}
		return &response{Error: "start needs an id, a configuration and three stdio descriptors"}
	}
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		for _, f := range files {
			f.Close()
		}
		return &response{Exiting: true, Error: "runner exiting"}
	}
	if len(r.insts) >= maxInstances {
		r.mu.Unlock()
		for _, f := range files {
			f.Close()
		}
		return &response{Error: fmt.Sprintf("the runner hosts %d instances, its most", maxInstances), Exhausted: true}
	}
	if _, dup := r.insts[id]; dup {
		r.mu.Unlock()
		for _, f := range files {
			f.Close()
		}
		return &response{Error: fmt.Sprintf("instance %q exists", id)}
	}
	inst := newInstance(r, id, cfg, [3]*os.File{files[0], files[1], files[2]})
	r.insts[id] = inst
	if r.idleTimer != nil {
		r.idleTimer.Stop()
		r.idleTimer = nil
	}
	r.mu.Unlock()
	running := make(chan struct{})
	go inst.run(running)
	<-running
	r.trimSoon()
	return &response{}
}

// wait answers when the instance exited, or ends when the caller goes.
func (r *runner) wait(c *net.UnixConn, id string) *response {
	inst, resp := r.lookup(id)
	if resp != nil {
		return resp
	}
	gone := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(c).ReadByte() // EOF when the caller closes
		close(gone)
	}()
	select {
	case <-inst.done:
		return inst.status()
	case <-gone:
		return &response{Error: "caller gone"}
	}
}

func (r *runner) kill(id string, sig syscall.Signal) *response {
	inst, resp := r.lookup(id)
	if resp != nil {
		return resp
	}
	if err := inst.signal(sig); err != nil {
		return &response{Error: err.Error(), NotFound: errors.Is(err, errExited)}
	}
	return &response{}
}

// delete ends the instance if it still runs and forgets it.
func (r *runner) delete(id string) *response {
	inst, resp := r.lookup(id)
	if resp != nil {
		return &response{} // already gone
	}
	_ = inst.signal(syscall.SIGKILL)
	select {
	case <-inst.done:
	case <-time.After(10 * time.Second):
		return &response{Error: fmt.Sprintf("instance %q does not stop", id)}
	}
	r.mu.Lock()
	delete(r.insts, id)
	r.armIdleLocked()
	r.mu.Unlock()
	inst.release()
	return &response{}
}

func (r *runner) stats(id string) *response {
	inst, resp := r.lookup(id)
	if resp != nil {
		return resp
	}
	return inst.stats()
}

func (r *runner) update(id string, pages uint32) *response {
	inst, resp := r.lookup(id)
	if resp != nil {
		return resp
	}
	inst.mem.setLimit(pagesToBytes(pages))
	return &response{}
}

func (r *runner) list() *response {
	r.mu.Lock()
	defer r.mu.Unlock()
	resp := &response{}
	for id := range r.insts {
		resp.IDs = append(resp.IDs, id)
	}
	return resp
}

// terminateAll ends every instance with sig and exits once they are done.
func (r *runner) terminateAll(sig syscall.Signal) {
	r.mu.Lock()
	r.closing = true
	r.l.Close()
	insts := make([]*instance, 0, len(r.insts))
	for _, inst := range r.insts {
		insts = append(insts, inst)
	}
	r.mu.Unlock()
	for _, inst := range insts {
		_ = inst.signal(sig)
	}
	for _, inst := range insts {
		select {
		case <-inst.done:
		case <-time.After(5 * time.Second):
		}
	}
	if r.sockPath != "" {
		_ = os.Remove(r.sockPath)
	}
	os.Exit(128 + int(sig))
}
