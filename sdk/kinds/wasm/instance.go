package wasm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/sys/unix"
)

// errExited is returned for signals to an instance that has exited.
var errExited = errors.New("instance has exited")

// moduleEntry is one compiled module, shared by every instance of the
// same module (by the SHA-256 of its bytes).
type moduleEntry struct {
	ready    chan struct{} // closed once compiled (or failed)
	compiled wazero.CompiledModule
	err      error
	refs     int
}

// instance is one container's module instance in the runner.
type instance struct {
	r     *runner
	id    string
	cfg   *runnerConfig
	files [3]*os.File
	holds []*os.File // read ends of output FIFOs, held while it runs
	// exitFile receives the exit code.
	exitFile *os.File
	mem      *memoryAllocator

	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // closed when the instance is told to stop
	done   chan struct{} // closed when it ended

	mu       sync.Mutex
	tid      int
	cpuAtEnd uint64
	killSig  syscall.Signal
	stopOnce sync.Once
	code     uint32
	exitedAt time.Time
	digest   [32]byte
	hasMod   bool
}

func newInstance(r *runner, id string, cfg *runnerConfig, files [3]*os.File) *instance {
	inst := &instance{r: r, id: id, cfg: cfg, files: files, wake: make(chan struct{}), done: make(chan struct{})}
	inst.mem = newMemoryAllocator(pagesToBytes(cfg.MemoryLimitPages))
	inst.ctx, inst.cancel = context.WithCancel(r.ctx)
	return inst
}

// run runs the instance on a locked OS thread that never returns to the
// Go scheduler's pool: the thread has its own file system root and mount
// namespace (the container's rootfs), and ends with the instance.
// running is closed once the module's _start is called, or the instance
// ended before that.
func (inst *instance) run(running chan<- struct{}) {
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	var once sync.Once
	signalRunning := func() { once.Do(func() { close(running) }) }
	defer signalRunning()
	inst.mu.Lock()
	inst.tid = unix.Gettid()
	inst.mu.Unlock()
	inst.holdFifoReaders()
	if inst.cfg.ExitFile != "" {
		// Opened now: once the thread entered the rootfs, it is out of reach.
		f, err := os.OpenFile(inst.cfg.ExitFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
		if err != nil {
			fmt.Fprintf(inst.files[2], "wasm runner: %v\n", err)
		}
		inst.exitFile = f
	}
	code := inst.execute(signalRunning)
	inst.finish(code)
}

// execute compiles (or finds) the module, enters the rootfs, instantiates
// the module and runs _start; it returns the exit code.
func (inst *instance) execute(running func()) (code uint32) {
	cfg := inst.cfg
	stderr := inst.files[2]
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(stderr, "wasm runner: %s: %v\n", cfg.Module, p)
			code = exitTrap
		}
	}()
	// A mount namespace and root of this thread's own.
	if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
		fmt.Fprintf(stderr, "wasm runner: unshare: %v\n", err)
		return exitRunnerError
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintf(stderr, "wasm runner: private mounts: %v\n", err)
		return exitRunnerError
	}
	compiled, err := inst.compile()
	if err != nil {
		fmt.Fprintf(stderr, "wasm runner: %v\n", err)
		if errors.Is(err, os.ErrNotExist) {
			return exitNotFound
		}
		return exitRunnerError
	}
	if err := checkMemoryFits(compiled, inst.mem.limit()); err != nil {
		fmt.Fprintf(stderr, "wasm runner: %s: %v\n", cfg.Module, err)
		return exitRunnerError
	}
	mounted, err := enterRoot(cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "wasm runner: %v\n", err)
		return exitRunnerError
	}
	fsc := wazero.NewFSConfig()
	if cfg.ReadonlyRoot {
		fsc = fsc.WithReadOnlyDirMount("/", "/")
	} else {
		fsc = fsc.WithDirMount("/", "/")
	}
	for _, p := range mounted {
		if p.ReadOnly {
			fsc = fsc.WithReadOnlyDirMount(p.Guest, p.Guest)
		} else {
			fsc = fsc.WithDirMount(p.Guest, p.Guest)
		}
	}
	mc := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions(). // _start is called below, once Start has returned
		WithArgs(cfg.Args...).
		WithStdin(inst.files[0]).WithStdout(inst.files[1]).WithStderr(stderr).
		WithSysWalltime().WithSysNanotime().
		WithNanosleep(inst.sleep).
		WithRandSource(rand.Reader).
		WithFSConfig(fsc)
	for _, kv := range cfg.Env {
		k, v, _ := strings.Cut(kv, "=")
		mc = mc.WithEnv(k, v)
	}
	ctx := experimental.WithMemoryAllocator(inst.ctx, inst.mem)
	mod, err := inst.r.rt.InstantiateModule(ctx, compiled, mc)
	if err != nil {
		return inst.exitCode(err)
	}
	defer mod.Close(context.Background())
	start := mod.ExportedFunction("_start")
	if start == nil {
		fmt.Fprintf(stderr, "wasm runner: %s exports no _start function\n", cfg.Module)
		return exitRunnerError
	}
	running()
	_, err = start.Call(ctx)
	return inst.exitCode(err)
}

// exitCode maps how _start (or instantiation) ended to an exit code.
func (inst *instance) exitCode(err error) uint32 {
	var exitErr *sys.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr):
		switch exitErr.ExitCode() {
		case sys.ExitCodeContextCanceled, sys.ExitCodeDeadlineExceeded:
			return 128 + uint32(syscall.SIGKILL) // replaced by the signal in finish
		}
		return exitErr.ExitCode() & 0xff
	}
	fmt.Fprintf(inst.files[2], "wasm runner: %s: %v\n", inst.cfg.Module, err)
	return exitTrap
}

// sleep is the module's nanosleep: it ends early when the instance is
// told to stop, so that a sleeping module does not hold its thread.
func (inst *instance) sleep(ns int64) {
	t := time.NewTimer(time.Duration(ns))
	defer t.Stop()
	select {
	case <-t.C:
	case <-inst.wake:
	}
}

// compile returns the compiled module for the container's module file,
// compiling it only if no instance of the same bytes was compiled before.
func (inst *instance) compile() (wazero.CompiledModule, error) {
	code, err := readModule(inst.cfg.Rootfs, inst.cfg.Module)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(code)
	r := inst.r
	r.mu.Lock()
	e, ok := r.mods[digest]
	if !ok {
		e = &moduleEntry{ready: make(chan struct{})}
		r.mods[digest] = e
	}
	if e.refs == 0 {
		r.unused = deleteDigest(r.unused, digest)
	}
	e.refs++
	r.mu.Unlock()
	inst.mu.Lock()
	inst.digest, inst.hasMod = digest, true
	inst.mu.Unlock()
	if !ok {
		e.compiled, e.err = r.rt.CompileModule(r.ctx, code)
		if e.err != nil {
			e.err = fmt.Errorf("compile %s: %w", inst.cfg.Module, e.err)
		}
		close(e.ready)
	} else {
		<-e.ready
	}
	return e.compiled, e.err
}

// releaseModule drops the instance's reference to its compiled module; a
// module no instance uses is kept for a while (the most recent few).
func (inst *instance) releaseModule() {
	inst.mu.Lock()
	digest, has := inst.digest, inst.hasMod
	inst.hasMod = false
	inst.mu.Unlock()
	if !has {
		return
	}
	r := inst.r
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.mods[digest]
	if e == nil {
		return
	}
	e.refs--
	if e.refs > 0 {
		return
	}
	if e.err != nil {
		delete(r.mods, digest)
		return
	}
	r.unused = append(r.unused, digest)
	for len(r.unused) > maxUnusedModules {
		old := r.unused[0]
		r.unused = r.unused[1:]
		if oe := r.mods[old]; oe != nil && oe.refs == 0 {
			delete(r.mods, old)
			_ = oe.compiled.Close(context.Background())
		}
	}
}

func deleteDigest(list [][32]byte, d [32]byte) [][32]byte {
	for i, x := range list {
		if x == d {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

// checkMemoryFits refuses a module whose minimum memory exceeds limit.
func checkMemoryFits(m wazero.CompiledModule, limit uint64) error {
	if limit == 0 {
		return nil
	}
	var defs []api.MemoryDefinition
	defs = append(defs, m.ImportedMemories()...)
	for _, d := range m.ExportedMemories() {
		defs = append(defs, d)
	}
	for _, d := range defs {
		if need := pagesToBytes(d.Min()); need > limit {
			return fmt.Errorf("the module needs %d bytes of memory, over the container's limit of %d", need, limit)
		}
	}
	return nil
}

// finish records the exit code, writes the exit file and wakes waiters.
func (inst *instance) finish(code uint32) {
	// The CPU time of this thread, which ran nothing but the instance.
	var cpu uint64
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) == nil {
		cpu = uint64(ts.Nano())
	}
	inst.mu.Lock()
	if inst.killSig != 0 {
		code = 128 + uint32(inst.killSig)
	}
	inst.code, inst.exitedAt, inst.cpuAtEnd = code, time.Now().UTC(), cpu
	inst.mu.Unlock()
	inst.stop() // wakes anything the module left blocked
	for _, f := range inst.files {
		f.Close()
	}
	for _, f := range inst.holds {
		f.Close()
	}
	inst.holds = nil
	inst.mem.free()
	if inst.exitFile != nil {
		_, _ = inst.exitFile.WriteString(strconv.FormatUint(uint64(code), 10) + "\n")
		_ = inst.exitFile.Close()
	}
	inst.releaseModule()
	close(inst.done)
}

// stop tells the instance to stop: its context ends (wazero closes the
// module at its next function call or loop iteration), sleeps end, and
// its stdio are closed, so that blocked reads and writes return.
func (inst *instance) stop() {
	inst.stopOnce.Do(func() {
		inst.cancel()
		close(inst.wake)
		for _, f := range inst.files {
			_ = f.Close()
		}
	})
}

// signal delivers sig as a process would take it by default: signals
// that are ignored by default change nothing, stop signals are refused,
// every other one ends the instance (exit 128+sig).
func (inst *instance) signal(sig syscall.Signal) error {
	select {
	case <-inst.done:
		return errExited
	default:
	}
	switch sig {
	case 0, syscall.SIGCHLD, syscall.SIGURG, syscall.SIGWINCH, syscall.SIGCONT:
		return nil
	case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
		return fmt.Errorf("signal %d: a wasm instance cannot be stopped", sig)
	}
	inst.mu.Lock()
	if inst.killSig == 0 || sig == syscall.SIGKILL {
		inst.killSig = sig
	}
	inst.mu.Unlock()
	inst.stop()
	return nil
}

// status is wait's answer once the instance ended.
func (inst *instance) status() *response {
	inst.mu.Lock()
	defer inst.mu.Unlock()
	return &response{Code: inst.code, ExitedAt: inst.exitedAt, OOM: inst.mem.refusedGrowth()}
}

// stats reads the instance's CPU time (its thread's) and memory.
func (inst *instance) stats() *response {
	inst.mu.Lock()
	tid, cpu := inst.tid, inst.cpuAtEnd
	inst.mu.Unlock()
	select {
	case <-inst.done:
	default:
		if tid != 0 {
			cpu = threadCPU(tid)
		}
	}
	return &response{CPUNanos: cpu, MemoryBytes: inst.mem.size(), MemoryResident: inst.mem.resident(), MemoryLimit: inst.mem.limit()}
}

// release frees what the instance still holds once it was deleted.
func (inst *instance) release() {
	inst.stop()
}

// threadCPU is the CPU time of the runner's thread tid in nanoseconds
// (schedstat's first field).
func threadCPU(tid int) uint64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/schedstat", os.Getpid(), tid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	return n
}

// readModule reads the module at the in-rootfs path module, resolving it
// inside rootfs without a race against symlink swaps.
func readModule(rootfs, module string) ([]byte, error) {
	h, err := pathrs.OpenInRoot(rootfs, module)
	if err != nil {
		return nil, fmt.Errorf("open module %s: %w", module, err)
	}
	defer h.Close()
	f, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open module %s: %w", module, err)
	}
	defer f.Close()
	return io.ReadAll(f)
}

// holdFifoReaders keeps a read end of stdout and stderr FIFOs open while
// the instance runs, as containerd's shims do, so that a reader that goes
// away makes writes wait in the FIFO instead of failing.
func (inst *instance) holdFifoReaders() {
	for _, f := range inst.files[1:] {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			continue
		}
		fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			inst.holds = append(inst.holds, os.NewFile(uintptr(fd), "hold"))
		}
	}
}

// enterRoot makes the rootfs (with the preopened directories bind-mounted
// into it) the calling thread's root, and returns the preopens it
// mounted. The thread has a mount namespace and file system context of
// its own (unshare CLONE_NEWNS|CLONE_FS), so nothing leaks to the host or
// to the other instances, and the old root is detached, so the module
// cannot reach the host's files. A preopen whose mount point cannot be
// made (a read-only rootfs) is left out with a warning.
func enterRoot(cfg *runnerConfig, stderr io.Writer) ([]preopen, error) {
	if err := unix.Mount(cfg.Rootfs, cfg.Rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return nil, fmt.Errorf("bind rootfs: %w", err)
	}
	root, err := os.OpenFile(cfg.Rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var mounted []preopen
	for _, p := range cfg.Preopens {
		target, err := pathrs.MkdirAllHandle(root, p.Guest, 0o755)
		if err != nil {
			fmt.Fprintf(stderr, "wasm runner: warning: not preopening %s: mount point: %v\n", p.Guest, err)
			continue
		}
		tp := fmt.Sprintf("/proc/self/fd/%d", target.Fd())
		err = unix.Mount(p.Host, tp, "", unix.MS_BIND|unix.MS_REC, "")
		if err == nil && p.ReadOnly {
			err = unix.Mount("", tp, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
		target.Close()
		if err != nil {
			return nil, fmt.Errorf("bind %s at %s: %w", p.Host, p.Guest, err)
		}
		mounted = append(mounted, p)
	}
	if err := unix.Chdir(cfg.Rootfs); err != nil {
		return nil, err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		// A root that cannot be pivoted (an initramfs): chroot, which is
		// as good against a module that cannot make system calls.
		if err := unix.Chroot("."); err != nil {
			return nil, fmt.Errorf("enter rootfs: %w", err)
		}
	} else if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return nil, fmt.Errorf("detach the host's root: %w", err)
	}
	return mounted, unix.Chdir("/")
}
