package backendfake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

type container struct {
	s    *sandbox
	id   string
	init *process

	mu       sync.Mutex
	procs    map[*process]bool // the processes, true while running
	execs    map[string]*process
	memLimit uint64
	paused   chan struct{} // non-nil while paused, closed on resume
	cpu      time.Duration // running time of the processes, paused time excluded
	counted  time.Time     // when cpu was last brought up to date
}

func (c *container) Init() backend.Process { return c.init }

func (c *container) Exec(_ context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	if cfg.Process == nil {
		return nil, fmt.Errorf("exec %q: no process: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	p, err := c.newProcess(cfg.Process, cfg.Stdio)
	if err != nil {
		return nil, err
	}
	p.execID = cfg.ID
	c.mu.Lock()
	if c.execs == nil {
		c.execs = map[string]*process{}
	}
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

// RecoverExec finds an exec'd process of the container by its ID; its pid
// and recovery state must be those recorded (a process with another pid
// or state is not it: the record is stale).
func (c *container) RecoverExec(_ context.Context, cfg backend.ExecConfig, rec backend.ExecRecord) (backend.Process, error) {
	c.mu.Lock()
	p, ok := c.execs[cfg.ID]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("fake exec %q: %w", cfg.ID, errdefs.ErrNotFound)
	}
	if rec.Pid != 0 {
		st, _ := p.RecoveryState()
		if p.Pid() != rec.Pid || string(st) != string(rec.State) {
			return nil, fmt.Errorf("fake exec %q: pid %d (state %s) is another process: %w", cfg.ID, rec.Pid, rec.State, errdefs.ErrNotFound)
		}
	}
	return p, nil
}

// RecoveryState names the process by its pid and a serial number of its
// start, as a start time would a real process.
func (p *process) RecoveryState() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return []byte(fmt.Sprintf(`{"pid":%d,"start":%d}`, p.pid, p.startSerial)), nil
}

// Delete kills what still runs and forgets the container.
func (c *container) Delete(context.Context) error {
	c.killAll(syscall.SIGKILL)
	c.s.mu.Lock()
	if c.s.ctrs[c.id] == c {
		delete(c.s.ctrs, c.id)
	}
	c.s.mu.Unlock()
	return nil
}

// account brings cpu up to date; c.mu is held.
func (c *container) account() {
	now := time.Now()
	if c.paused == nil && !c.counted.IsZero() {
		n := 0
		for _, running := range c.procs {
			if running {
				n++
			}
		}
		c.cpu += time.Duration(n) * now.Sub(c.counted)
	}
	c.counted = now
}

func (c *container) setRunning(p *process, running bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.account()
	c.procs[p] = running
}

// Stats reports MemoryPerProcess per running process and their running
// time as CPU time.
func (c *container) Stats(context.Context) (*backend.Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.account()
	var n uint64
	for _, running := range c.procs {
		if running {
			n++
		}
	}
	return &backend.Stats{
		Timestamp: time.Now(), CPUUsageNanos: uint64(c.cpu), MemoryUsageBytes: n * MemoryPerProcess,
		MemoryWorkingBytes: n * MemoryPerProcess, MemoryLimitBytes: c.memLimit, Pids: n,
	}, nil
}

// Update takes a new memory limit, which Stats reports.
func (c *container) Update(_ context.Context, res *specs.LinuxResources) error {
	if res == nil || res.Memory == nil || res.Memory.Limit == nil {
		return nil
	}
	if *res.Memory.Limit < -1 {
		return fmt.Errorf("memory limit %d: %w", *res.Memory.Limit, errdefs.ErrInvalidArgument)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.memLimit = uint64(max(*res.Memory.Limit, 0))
	return nil
}

// Pids lists the running processes.
func (c *container) Pids(context.Context) ([]backend.ProcessInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []backend.ProcessInfo
	for p, running := range c.procs {
		if running {
			out = append(out, backend.ProcessInfo{Pid: p.Pid()})
		}
	}
	slices.SortFunc(out, func(a, b backend.ProcessInfo) int { return int(a.Pid) - int(b.Pid) })
	return out, nil
}

// Pause stops the container's processes before their next step.
func (c *container) Pause(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.account()
	if c.paused == nil {
		c.paused = make(chan struct{})
	}
	return nil
}

// Resume lets them go on.
func (c *container) Resume(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.account()
	if c.paused != nil {
		close(c.paused)
		c.paused = nil
	}
	return nil
}

// gate returns once the container is not paused, or with ctx's error.
func (c *container) gate(ctx context.Context) error {
	for {
		c.mu.Lock()
		ch := c.paused
		c.mu.Unlock()
		if ch == nil {
			return ctx.Err()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *container) killAll(sig syscall.Signal) {
	c.mu.Lock()
	ps := make([]*process, 0, len(c.procs))
	for p := range c.procs {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	for _, p := range ps {
		p.signal(sig)
	}
}

// startSerial numbers the starts of processes.
var startSerial atomic.Uint64

type process struct {
	c      *container
	script string
	stdio  backend.Stdio
	stdin  *os.File // the read end, nil for none
	stdinW *os.File // the write end held until CloseStdin, nil but for FIFOs

	ctx    context.Context // ends when the process is killed
	cancel context.CancelFunc

	execID string // empty for an init

	mu          sync.Mutex
	pid         uint32
	startSerial uint64
	started     bool
	killSig     syscall.Signal
	status      backend.ExitStatus
	exited      bool
	done        chan struct{}
}

// newProcess opens the process's stdin now, like a runtime that holds the
// FIFO from create on, so the writer's open does not wait.
func (c *container) newProcess(ps *specs.Process, stdio backend.Stdio) (*process, error) {
	if stdio.Terminal || ps != nil && ps.Terminal {
		return nil, fmt.Errorf("the fake backend has no terminals: %w", errdefs.ErrNotImplemented)
	}
	p := &process{c: c, stdio: stdio, done: make(chan struct{})}
	if ps != nil {
		p.script = script(ps.Args)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if stdio.Stdin != "" {
		if st, err := os.Stat(stdio.Stdin); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
			r, err := os.OpenFile(stdio.Stdin, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				return nil, err
			}
			w, err := os.OpenFile(stdio.Stdin, os.O_WRONLY, 0)
			if err != nil {
				r.Close()
				return nil, err
			}
			p.stdin, p.stdinW = r, w
		} else {
			f, err := os.Open(stdio.Stdin)
			if err != nil {
				return nil, fmt.Errorf("stdin: %w", err)
			}
			p.stdin = f
		}
		context.AfterFunc(p.ctx, func() { p.stdin.Close() })
	}
	c.mu.Lock()
	c.procs[p] = false
	c.mu.Unlock()
	return p, nil
}

// script is what a process with args runs: the argument after -c, or all
// of them.
func script(args []string) string {
	if i := slices.Index(args, "-c"); i >= 0 && i+1 < len(args) {
		return strings.Join(args[i+1:], " ")
	}
	return strings.Join(args, " ")
}

// Pid is the pid the process got when it started, or 0.
func (p *process) Pid() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

func (p *process) Start(context.Context) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.exited {
		return 0, fmt.Errorf("process already started: %w", errdefs.ErrFailedPrecondition)
	}
	p.started = true
	p.pid = p.c.s.backend().cfg.Host.pid()
	p.startSerial = startSerial.Add(1)
	p.c.setRunning(p, true)
	go p.run()
	return p.pid, nil
}

func (p *process) run() {
	code := p.exec()
	p.closeStdin()
	p.cancel()
	p.c.setRunning(p, false)
	p.mu.Lock()
	if p.killSig != 0 {
		code = 128 + uint32(p.killSig)
	}
	p.finish(code)
	p.mu.Unlock()
	if p == p.c.init {
		// Like a pid namespace: the others die with the init.
		p.c.killAll(syscall.SIGKILL)
	}
}

// finish records the exit; p.mu is held.
func (p *process) finish(code uint32) {
	if p.exited {
		return
	}
	p.exited = true
	p.status = backend.ExitStatus{Code: code, ExitedAt: time.Now()}
	close(p.done)
}

// exec runs the script and returns its exit status.
func (p *process) exec() uint32 {
	ctx := p.ctx
	stdout, err := openOutput(ctx, p.stdio.Stdout)
	if err != nil {
		return 126
	}
	defer stdout.Close()
	stderr, err := openOutput(ctx, p.stdio.Stderr)
	if err != nil {
		return 126
	}
	defer stderr.Close()
	context.AfterFunc(ctx, func() { stdout.Close(); stderr.Close() })
	if strings.TrimSpace(p.script) == "" {
		<-ctx.Done()
		return 0
	}
	var status uint32
	for cmd := range strings.SplitSeq(p.script, ";") {
		f := strings.Fields(cmd)
		if len(f) == 0 {
			continue
		}
		if p.c.gate(ctx) != nil {
			return status
		}
		var exit bool
		status, exit = p.command(ctx, f, stdout, stderr)
		if exit || ctx.Err() != nil {
			return status
		}
	}
	return status
}

// command runs one command; exit says the script ends with it.
func (p *process) command(ctx context.Context, f []string, stdout, stderr io.Writer) (status uint32, exit bool) {
	switch f[0] {
	case "true":
		return 0, false
	case "false":
		return 1, false
	case "echo":
		if _, err := fmt.Fprintln(stdout, strings.Join(f[1:], " ")); err != nil {
			return 1, false
		}
		return 0, false
	case "exit":
		n := 0
		if len(f) > 1 {
			n, _ = strconv.Atoi(f[1])
		}
		return uint32(n), true
	case "sleep":
		if len(f) > 1 {
			s, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				fmt.Fprintln(stderr, "sleep:", err)
				return 1, false
			}
			t := time.NewTimer(time.Duration(s * float64(time.Second)))
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
		return 0, false
	case "cat":
		if p.stdin == nil {
			return 0, false
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := p.stdin.Read(buf)
			if n > 0 {
				if p.c.gate(ctx) != nil {
					return 1, false
				}
				if _, werr := stdout.Write(buf[:n]); werr != nil {
					return 1, false
				}
			}
			if errors.Is(err, io.EOF) {
				return 0, false
			}
			if err != nil {
				return 1, false
			}
		}
	case "tick":
		for {
			if p.c.gate(ctx) != nil {
				return 0, false
			}
			if _, err := io.WriteString(stdout, "tick\n"); err != nil {
				return 1, false
			}
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return 0, false
			}
		}
	}
	fmt.Fprintf(stderr, "fake: %s: not found\n", f[0])
	return 127, false
}

// openOutput opens a stdout or stderr path: a FIFO once its reader is
// there, a file for appending, or nothing.
func openOutput(ctx context.Context, path string) (io.WriteCloser, error) {
	if path == "" {
		return nopCloser{io.Discard}, nil
	}
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
		return fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// signal ends the process with 128+sig (SIGTERM may be ignored, signal 0
// does nothing).
func (p *process) signal(sig syscall.Signal) {
	if sig == 0 || sig == syscall.SIGTERM && p.c.s.backend().cfg.IgnoreSIGTERM {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return
	}
	if p.killSig == 0 {
		p.killSig = sig
	}
	if !p.started {
		p.cancel()
		p.finish(128 + uint32(sig))
		return
	}
	p.cancel()
}

func (p *process) Kill(_ context.Context, sig syscall.Signal, all bool) error {
	if all {
		p.c.killAll(sig)
		return nil
	}
	p.signal(sig)
	return nil
}

func (p *process) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.status, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (p *process) ResizePTY(context.Context, uint32, uint32) error {
	return fmt.Errorf("the fake backend has no terminals: %w", errdefs.ErrNotImplemented)
}

// CloseStdin lets the process read to the end of what was written.
func (p *process) CloseStdin(context.Context) error {
	p.closeStdin()
	return nil
}

func (p *process) closeStdin() {
	p.mu.Lock()
	w := p.stdinW
	p.stdinW = nil
	p.mu.Unlock()
	if w != nil {
		w.Close()
	}
}

// Delete releases the process's stdin and forgets an exec.
func (p *process) Delete(context.Context) error {
	p.release()
	if p != p.c.init {
		p.c.mu.Lock()
		delete(p.c.procs, p)
		if p.c.execs[p.execID] == p {
			delete(p.c.execs, p.execID)
		}
		p.c.mu.Unlock()
	}
	return nil
}

func (p *process) release() {
	p.closeStdin()
	p.mu.Lock()
	started := p.started
	p.mu.Unlock()
	if !started {
		p.cancel()
	}
}
