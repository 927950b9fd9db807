package wasm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/sys/unix"
)

// runnerEnv is the guard variable that makes [RunnerMain] run a module.
const runnerEnv = "MAGNETAR_WASM_RUNNER"

// runnerConfigFd is the runner's fd carrying its JSON instructions.
const runnerConfigFd = 3

// Exit codes of a runner that could not run its module to the end.
const (
	exitRunnerError = 126 // bad instructions, compile or instantiate error
	exitNotFound    = 127 // the module file is missing
	exitTrap        = 134 // the module trapped (like SIGABRT: 128+6)
)

// runnerConfig is what a runner is told to do, as one JSON document.
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
	// 0 keeps wazero's limit (4 GiB).
	MemoryLimitPages uint32 `json:"memoryLimitPages,omitempty"`
	// CacheDir is the shared compilation cache; "" compiles in memory.
	CacheDir string `json:"cacheDir,omitempty"`
	// ExitFile receives the exit code, so that a re-attached sandboxer
	// learns it.
	ExitFile string `json:"exitFile,omitempty"`
	// SignalGrace is how long a module gets to stop after SIGTERM or
	// SIGINT cancelled it, before the runner exits anyway.
	SignalGrace time.Duration `json:"signalGrace,omitempty"`
}

// preopen is a directory preopened for the module.
type preopen struct {
	Host     string `json:"host"`
	Guest    string `json:"guest"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// RunnerMain runs a wasm container's module when the process was started
// as a runner by this package's backend (the environment variable
// MAGNETAR_WASM_RUNNER=1 is set): it then never returns but exits with the
// module's exit code. Otherwise it returns false at once.
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
	os.Exit(runRunner()) // runRunner exits itself; this is for clarity
	return true
}

// runRunner runs the module described on fd 3 and exits with its code.
func runRunner() int {
	os.Unsetenv(runnerEnv)
	// Signals first: SIGTERM or SIGINT at any time (compiling included)
	// cancels the module and ends the runner with 128+signal.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT)
	// The backend writes the instructions after placing us in the
	// container's cgroup; reading them is the go-ahead.
	cf := os.NewFile(runnerConfigFd, "runner-config")
	data, err := io.ReadAll(cf)
	cf.Close()
	if err != nil || len(data) == 0 {
		fmt.Fprintf(os.Stderr, "wasm runner: no instructions: %v\n", err)
		return exitRunnerError
	}
	var cfg runnerConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "wasm runner: bad instructions: %v\n", err)
		return exitRunnerError
	}
	var exitFile *os.File
	if cfg.ExitFile != "" {
		// Opened now: it is outside the root the runner pivots into.
		if exitFile, err = os.OpenFile(cfg.ExitFile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600); err != nil {
			fmt.Fprintf(os.Stderr, "wasm runner: %v\n", err)
		}
	}
	var exitMu sync.Mutex
	finish := func(code int) {
		exitMu.Lock() // held until the process exits: one exit code only
		if exitFile != nil {
			_, _ = exitFile.WriteString(strconv.Itoa(code) + "\n")
			_ = exitFile.Sync()
		}
		os.Exit(code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var sig atomic.Int32
	go func() {
		s := (<-sigc).(syscall.Signal)
		sig.Store(int32(s))
		cancel() // wazero closes the module at its next check
		grace := cfg.SignalGrace
		if grace <= 0 {
			grace = time.Second
		}
		// The module may be blocked in a host call (sleep, read), or
		// wazero still compiling: do not wait for it forever.
		time.Sleep(grace)
		finish(128 + int(s))
	}()
	code := run(ctx, &cfg)
	if s := sig.Load(); s != 0 {
		code = 128 + int(s)
	}
	finish(code)
	return code
}

// run runs the module and returns its exit code.
func run(ctx context.Context, cfg *runnerConfig) int {
	holdFifoReaders()
	code, err := readModule(cfg.Rootfs, cfg.Module)
	if err != nil {
		fmt.Fprintf(os.Stderr, "wasm runner: %v\n", err)
		if errors.Is(err, os.ErrNotExist) {
			return exitNotFound
		}
		return exitRunnerError
	}
	rc := wazero.NewRuntimeConfig().WithCloseOnContextDone(true)
	if cfg.MemoryLimitPages > 0 {
		rc = rc.WithMemoryLimitPages(cfg.MemoryLimitPages)
	}
	if cfg.CacheDir != "" {
		cache, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "wasm runner: compilation cache: %v\n", err)
		} else {
			rc = rc.WithCompilationCache(cache)
		}
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	compiled, err := rt.CompileModule(ctx, code)
	if err != nil {
		fmt.Fprintf(os.Stderr, "wasm runner: compile %s: %v\n", cfg.Module, err)
		return exitRunnerError
	}
	code = nil
	mounted, err := enterRoot(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "wasm runner: %v\n", err)
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
		WithArgs(cfg.Args...).
		WithStdin(os.Stdin).WithStdout(os.Stdout).WithStderr(os.Stderr).
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().
		WithRandSource(rand.Reader).
		WithFSConfig(fsc)
	for _, kv := range cfg.Env {
		k, v, _ := strings.Cut(kv, "=")
		mc = mc.WithEnv(k, v)
	}
	_, err = rt.InstantiateModule(ctx, compiled, mc)
	var exitErr *sys.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr):
		return int(exitErr.ExitCode() & 0xff)
	}
	fmt.Fprintf(os.Stderr, "wasm runner: %s: %v\n", cfg.Module, err)
	return exitTrap
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

// holdFifoReaders keeps a read end of stdout and stderr FIFOs open, as
// containerd's shims do, so that a reader that goes away makes writes
// wait in the FIFO instead of killing the runner with SIGPIPE.
func holdFifoReaders() {
	for _, fd := range []int{1, 2} {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			continue
		}
		// Never closed: the runner exits with the module.
		_, _ = unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	}
}

// enterRoot makes the rootfs (with the preopened directories bind-mounted
// into it) the runner's root, and returns the preopens it mounted. The
// runner runs in a private mount namespace (the backend starts it so), so
// nothing leaks to the host, and the old root is detached, so the module
// cannot reach the host's files. A preopen whose mount point cannot be
// made (a read-only rootfs) is left out with a warning.
func enterRoot(cfg *runnerConfig) ([]preopen, error) {
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
			fmt.Fprintf(os.Stderr, "wasm runner: warning: not preopening %s: mount point: %v\n", p.Guest, err)
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
