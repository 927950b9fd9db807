// Package wasm implements the "wasm" sandbox kind: containers whose
// process is a WebAssembly module (WASI preview 1), run by wazero.
//
// # One runner, many instances
//
// The containers of every wasm sandbox of a backend are instances in one
// long-lived runner process: the backend re-executes the current
// executable (the sandboxer) with the environment variable
// MAGNETAR_WASM_RUNNER=1, the way moby's reexec works, once, and talks to
// it over a unix socket in its root (one JSON request per connection,
// stdio descriptors passed as SCM_RIGHTS). The program's main must call
// [RunnerMain] first thing; in a runner it serves and exits once it has
// had no instance for [Config.RunnerIdleExit], elsewhere it returns false
// at once. The runner keeps one wazero CompiledModule per module digest
// (SHA-256 of the module's bytes), shared by every instance of it, so a
// container costs its instance (linear memory, a thread, a few KiB), not
// a process and a copy of the machine code.
//
// The runner is not a child the sandboxer needs: it survives a restart of
// the sandboxer (its own session; recorded in <Root>/runner.json and in
// each container's state), and the next backend re-attaches to it and
// to its instances, whose exit codes it keeps until they are deleted (and
// also writes to an exit file in the container's state directory).
//
// # Instances bounded one by one
//
// Each instance runs on an OS thread of its own that never serves another
// goroutine (runtime.LockOSThread, never unlocked: the thread ends with
// the instance). The thread unshares its file system context and mount
// namespace, bind-mounts the container's directories into the rootfs and
// pivots into it, so no path the module names (not "../..", not a
// symlink) reaches the host's files or another container's.
//
// The memory limit (the spec's, or [Config.DefaultMemoryLimit]) bounds the
// instance's linear memory: it is an anonymous mapping reserved at the
// module's maximum and committed as touched, and a memory.grow past the
// limit fails (the module sees -1, Go's wasip1 runtime then exits with
// "out of memory"), which is reported as an OOM event. Modules are
// compiled so that they check for cancellation at every loop iteration
// and function call (wazero's WithCloseOnContextDone): a busy loop is
// preempted by Go's scheduler like any goroutine and is ended at once by a
// signal; its neighbours keep running. CPU is accounted per instance (its
// thread's CPU time); CPU quotas and shares of a container are not
// enforced per instance (the runner's cgroup bounds all of them). A runner
// hosts at most 8192 instances (one OS thread each); more are refused
// (ResourceExhausted).
//
// # Signals and exit codes
//
// Signals are taken as a process takes them by default: SIGCHLD, SIGURG,
// SIGWINCH and SIGCONT change nothing, stop signals are refused, any other
// ends the instance with 128+signal (the module is closed at its next
// check; a sleep, a blocked read or write ends at once). Otherwise the
// exit code is the module's proc_exit code (0 when _start returns), 126
// when the runner could not compile or instantiate the module, 127 when
// the module file is missing, and 134 when the module trapped; the runner
// explains these on the container's stderr. Start returns once the
// module is instantiated and its _start called.
//
// # Compilation cache
//
// wazero compiles a module to machine code before running it, which takes
// seconds for a few MB of Go. The runner keeps what it compiled in memory
// for every instance of the module, and in an on-disk compilation cache
// in <Root>/cache, so that a new runner (after an idle exit or a restart)
// loads rather than compiles it. wazero copies a cached module into
// executable memory of the process (it cannot map the cache file), once
// per runner.
//
// # File system layout (WASI preview 1)
//
// The image's entrypoint (process.args[0]) names the .wasm file inside the
// rootfs, as with runwasi and Kuasar: an absolute path, or one relative to
// process.cwd; it must stay inside the rootfs (no "..", symlinks resolved
// inside the rootfs). The module gets process.args as its arguments
// (argv[0] as given), process.env (plus PWD=cwd, which Go's wasip1 port
// uses as its working directory), the rootfs preopened at "/" and every
// bind mount of the spec whose source is a directory preopened at its
// destination (read-only with the "ro" option).
//
// Not supported: terminals, exec (a module has one process), networking
// (WASI preview 1 has no sockets), file bind mounts (/etc/hosts, ...),
// pause.
package wasm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Kind is the name of this sandbox kind.
const Kind = "wasm"

// Config configures the wasm backend.
type Config struct {
	// Root holds the backend's state: the compilation cache in
	// <Root>/cache. Default /var/lib/magnetar/wasm.
	Root string
	// DefaultMemoryLimit bounds a container's memory (cgroup and wasm
	// linear memory) when its spec sets no limit; 0 means no limit.
	DefaultMemoryLimit uint64
	// Executable is the binary re-executed as the runner; its main must
	// call [RunnerMain] first. Default: the running executable.
	Executable string
	// RunnerIdleExit is how long the runner stays up without any
	// instance before it exits. Default 10 s.
	RunnerIdleExit time.Duration
}

// Backend is the wasm sandbox kind. Several may be open in one process.
type Backend struct {
	cfg      Config
	cacheDir string

	// life ends with Close; the runner watches end with it.
	life      context.Context
	endLife   context.CancelFunc
	closeOnce sync.Once
	wg        sync.WaitGroup

	rmu    sync.Mutex
	runner *runnerRef // the runner new instances start in; nil: none yet
}

// New opens the wasm backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Root == "" {
		cfg.Root = "/var/lib/magnetar/wasm"
	}
	if cfg.RunnerIdleExit <= 0 {
		cfg.RunnerIdleExit = 10 * time.Second
	}
	if cfg.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find the executable to run wasm runners with: %w", err)
		}
		cfg.Executable = exe
	}
	abs, err := filepath.Abs(cfg.Executable)
	if err != nil {
		return nil, fmt.Errorf("wasm runner executable %q: %v: %w", cfg.Executable, err, errdefs.ErrInvalidArgument)
	}
	cfg.Executable = abs
	cacheDir := filepath.Join(cfg.Root, "cache")
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("create wasm compilation cache: %w", err)
	}
	b := &Backend{cfg: cfg, cacheDir: cacheDir}
	b.life, b.endLife = context.WithCancel(context.Background())
	return b, nil
}

// CacheDir is the directory of the shared compilation cache.
func (b *Backend) CacheDir() string { return b.cacheDir }

// Close stops watching the runner and its instances; they keep running
// and a new backend can re-attach to them. Close is idempotent.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.endLife()
		b.wg.Wait()
	})
	return nil
}

// Info describes the wasm kind.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Kind:        Kind,
		Description: "WebAssembly (WASI preview 1) modules run by wazero, instances of one shared runner process with compiled code shared per module",
		Isolation:   backend.IsolationWasm,
		Capabilities: backend.DeriveCapabilities((*container)(nil), backend.Capabilities{
			Stdin: true, OOMEvents: true,
		}),
	}
}

// Check verifies that the host can run wasm containers: the runner needs
// root (mount namespaces) and the runner executable.
func (b *Backend) Check(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the wasm kind needs root (mount namespaces): %w", errdefs.ErrFailedPrecondition)
	}
	if st, err := os.Stat(b.cfg.Executable); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("wasm runner executable %q: %v: %w", b.cfg.Executable, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Create prepares a wasm sandbox.
func (b *Backend) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	return newSandbox(b, cfg), nil
}

// Recover re-attaches to a sandbox of an earlier run; its containers come
// back through RecoverContainer.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	return newSandbox(b, cfg), nil
}
