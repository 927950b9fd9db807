// Package wasm implements the "wasm" sandbox kind: containers whose
// process is a WebAssembly module (WASI preview 1), run by wazero.
//
// # Process per container
//
// Each container runs in its own runner process: the backend re-executes
// the current executable (the sandboxer) with the environment variable
// MAGNETAR_WASM_RUNNER=1, the way moby's reexec works. The program's main
// must call [RunnerMain] first thing; in a runner it runs the module and
// exits with the module's status, elsewhere it returns false at once. A
// runaway module (a busy loop, a memory bomb) therefore only ever hurts its
// own process, which the kernel bounds with a cgroup; the sandboxer and
// other sandboxes keep running.
//
// The runner starts held: it reads its instructions, one JSON document,
// from fd 3, and the backend writes them only after it has placed the
// runner in the container's cgroup. So everything the runner does,
// compiling included, is accounted and bounded. Its stdio are fds 0, 1 and
// 2: the FIFOs (or files) the caller named, opened by the backend the way
// containerd's shims open them. A runner survives a restart of the
// sandboxer and is re-attached by pid through a pidfd; it writes its exit
// code to a file in the container's state directory, so a re-attached
// container still reports it.
//
// # Resources
//
// The container's cgroup is the spec's linux.cgroupsPath (CRI sets it), or
// /magnetar/<sandbox>/<container>; cgroup v1 (also hybrid) and v2 work.
// The memory limit (the spec's, or [Config.DefaultMemoryLimit]) bounds the
// cgroup and also wazero's linear memory (in 64 KiB pages), so a module
// that grows its memory fails inside wazero or, at the latest, is killed by
// the kernel's OOM killer (exit 137 and an OOM event). CPU shares and quota
// and the pids limit go to the cgroup.
//
// # Signals and exit codes
//
// Kill signals the runner. On SIGTERM or SIGINT it cancels the module's
// context (wazero closes a module at its next function call or loop
// iteration), gives it a second to stop (a module blocked in a host call,
// say a sleep, does not notice), and exits with 128+signal; SIGKILL kills
// it (137). Otherwise the exit code is the module's proc_exit code (0 when
// _start returns), 126 when the runner could not compile or instantiate
// the module, 127 when the module file is missing, and 134 when the module
// trapped; the runner explains these on the container's stderr.
//
// # Compilation cache
//
// wazero compiles a module to machine code before running it, which takes
// seconds for a few MB of Go. Runners share an on-disk compilation cache in
// <Root>/cache (wazero's file cache is safe for concurrent processes), so
// only the first start of a module compiles it.
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
// destination (read-only with the "ro" option). The runner enters a private
// mount namespace, bind-mounts those directories into the rootfs and
// pivots into it before instantiating the module, so no path the module
// names (not "../..", not a symlink) reaches the host's file system.
//
// Not supported: terminals, exec (a module has one process), networking
// (WASI preview 1 has no sockets), file bind mounts (/etc/hosts, ...).
package wasm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/cgroups/v3"
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
	// Executable is the binary re-executed as the runner of each
	// container; its main must call [RunnerMain] first. Default: the
	// running executable.
	Executable string
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
}

// New opens the wasm backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Root == "" {
		cfg.Root = "/var/lib/magnetar/wasm"
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

// Close stops watching runners; they keep running and a new backend can
// re-attach to them. Close is idempotent.
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
		Description: "WebAssembly (WASI preview 1) modules run by wazero, one cgroup-bounded runner process per container",
		Isolation:   backend.IsolationWasm,
		Capabilities: backend.DeriveCapabilities((*container)(nil), backend.Capabilities{
			Stdin: true, OOMEvents: true,
		}),
	}
}

// Check verifies that the host can run wasm containers: runners need root
// (cgroups, a mount namespace) and the runner executable.
func (b *Backend) Check(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the wasm kind needs root (cgroups, mount namespaces): %w", errdefs.ErrFailedPrecondition)
	}
	if cgroups.Mode() == cgroups.Unavailable {
		return fmt.Errorf("no cgroup file system: %w", errdefs.ErrFailedPrecondition)
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
