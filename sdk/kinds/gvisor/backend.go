// Package gvisor implements the "gvisor" sandbox kind: each pod is one
// gVisor sandbox (runsc), an application kernel in user space that holds all
// of the pod's containers. runsc is driven through its OCI command line
// (create, start, exec, kill, wait, delete, events, ...), with containerd's
// go-runc and the runc shim's process package, as the runc kind drives runc.
//
// runsc needs a root container for the sandbox: Magnetar starts its own, with
// no image, whose process is this program re-executed as the pod's init (see
// [PodInitMain]). The pod's containers are runsc subcontainers placed in the
// sandbox by the CRI annotations runsc reads
// (io.kubernetes.cri.container-type and io.kubernetes.cri.sandbox-id). There
// is no pause container and no containerd-shim-runsc process.
//
// See docs/gvisor.md for the mapping and the platform choice.
package gvisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podinit"
)

// Kind is the name of this sandbox kind.
const Kind = "gvisor"

// Platforms runsc can run on, in the order the automatic choice tries them.
const (
	PlatformKVM     = "kvm"
	PlatformSystrap = "systrap"
	PlatformPtrace  = "ptrace"
)

// MinVersion is the oldest runsc release this kind supports (Debian
// bookworm's, ptrace only).
const MinVersion = 20221219

// DefaultProbeTimeout bounds the probe of the kvm platform.
const DefaultProbeTimeout = 5 * time.Second

// DefaultCommandTimeout bounds runsc commands (see Config.CommandTimeout).
const DefaultCommandTimeout = 60 * time.Second

// Config configures the gvisor backend.
type Config struct {
	// Binary is the runsc binary; default "runsc" from PATH.
	Binary string
	// Root is runsc's state root (--root); one subdirectory per namespace
	// is used. Default /run/magnetar/runsc.
	Root string
	// Platform is runsc's platform: kvm, systrap or ptrace. Empty chooses
	// one: kvm where a bounded probe runs a sandbox on it, else systrap
	// where runsc has it, else ptrace.
	Platform string
	// ProbeTimeout bounds the kvm probe (default DefaultProbeTimeout).
	ProbeTimeout time.Duration
	// CommandTimeout bounds every runsc command that should end promptly
	// (all but wait): a hung runsc fails the call instead of hanging the
	// sandboxer. Default DefaultCommandTimeout.
	CommandTimeout time.Duration
	// PodInit is the executable run as the root container of every sandbox
	// (bind-mounted read-only into an empty root file system): a program
	// whose main calls [PodInitMain] first. Default: this program
	// (/proc/self/exe).
	PodInit string
	// Log receives the platform choice and its reason (may be nil).
	Log func(msg string, keyvals ...any)
	// HostFiles runs new sandboxes with runsc's --overlay2=none and
	// --file-access=shared, so that a container's root is its host
	// directory as it is: what the container writes lands there, and what
	// the host writes (Magnetar's file service) the container sees. By
	// default runsc wraps the root in an overlay whose upper layer is a
	// file store of its own (--overlay2=root:self) and caches the root
	// exclusively, so the host directory is neither what the container
	// sees nor kept in sync, and the file service answers
	// UNIMPLEMENTED for the kind. The cost: every write of a container
	// goes through the gofer to the host file system.
	HostFiles bool
	// FDStore, when set, keeps the descriptors of the containers' stdio
	// copies (pipes, FIFO ends, a terminal's pty master) beyond this
	// process's life, so that the next process resumes the copies after
	// a restart (see package keptio). Without it the copies end with
	// this process.
	FDStore backend.FDStore
	// OrphanExit, when set, tells how an exec'd process's `runsc exec`
	// process ended that this process could not reap: one that exited
	// while no sandboxer ran, reaped by whoever adopted it (the
	// sandboxer's supervisor). ok is false when that is unknown (the
	// exit is then reported as 255).
	OrphanExit func(pid int) (code uint32, at time.Time, ok bool)
	// MemoryOverhead is added to a sandbox's memory bound (the pod's limit
	// or its containers' together, see limits.go) for the sentry and the
	// gofers themselves: without it a pod whose containers ask for 32 MiB
	// would be killed as it starts. 0 means DefaultMemoryOverhead; a
	// negative value adds nothing.
	MemoryOverhead int64
}

// PodInitMain runs the init of a gVisor sandbox's root container when the
// process was started as one, and never returns then; otherwise it returns
// false at once. Every program that opens a gvisor [Backend] must call it
// (or the runc kind's PodInitMain, which is the same function) first thing
// in main:
//
//	func main() {
//		if gvisor.PodInitMain() {
//			return
//		}
//		...
//	}
func PodInitMain() bool { return podinit.Main() }

// Backend is the gvisor sandbox kind. It makes the process a child
// subreaper, so that the sandbox, gofer and exec processes runsc leaves
// behind become its children; it reaps only those it knows.
type Backend struct {
	cfg Config

	// runsc's platform and why it was chosen, or why the kind cannot run.
	runscPlatform, reason string
	version               int
	checkErr              error

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	// kept are the stdio copies (keptio.Streams or Terminal), detached by
	// Close.
	keptMu sync.Mutex
	kept   map[detacher]struct{}
}

// detacher is a stdio copy kept in the FDStore.
type detacher interface {
	Detach()
	Close() error
}

func (b *Backend) addKept(d detacher) {
	b.keptMu.Lock()
	b.kept[d] = struct{}{}
	b.keptMu.Unlock()
}

func (b *Backend) closeKept(d detacher) error {
	b.keptMu.Lock()
	delete(b.kept, d)
	b.keptMu.Unlock()
	return d.Close()
}

// New opens the gvisor backend. It fails on a bad configuration (an
// unknown platform); a missing or too old runsc is reported by Check.
func New(cfg Config) (*Backend, error) {
	switch cfg.Platform {
	case "", PlatformKVM, PlatformSystrap, PlatformPtrace:
	default:
		return nil, fmt.Errorf("unknown gVisor platform %q (want kvm, systrap or ptrace, or empty to choose): %w", cfg.Platform, errdefs.ErrInvalidArgument)
	}
	if cfg.Binary == "" {
		cfg.Binary = "runsc"
	}
	if p, err := exec.LookPath(cfg.Binary); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			cfg.Binary = abs
		}
	}
	if cfg.Root == "" {
		cfg.Root = "/run/magnetar/runsc"
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	switch {
	case cfg.MemoryOverhead == 0:
		cfg.MemoryOverhead = DefaultMemoryOverhead
	case cfg.MemoryOverhead < 0:
		cfg.MemoryOverhead = 0
	}
	if err := os.MkdirAll(cfg.Root, 0o711); err != nil {
		return nil, fmt.Errorf("create runsc root: %w", err)
	}
	b := &Backend{cfg: cfg, stop: make(chan struct{}), kept: map[detacher]struct{}{}}
	b.runscPlatform, b.reason, b.version, b.checkErr = choosePlatform(cfg)
	if b.cfg.Log != nil {
		if b.checkErr != nil {
			b.cfg.Log("gvisor kind unavailable", "reason", b.checkErr.Error())
		} else {
			b.cfg.Log("gvisor platform chosen", "platform", b.runscPlatform, "reason", b.reason, "runsc", b.version)
		}
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("become child subreaper: %w", err)
	}
	return b, nil
}

// Close stops reaping and the stdio copies (the next process resumes them
// when an FDStore keeps them). Sandboxes keep running. Close is
// idempotent.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		close(b.stop)
		b.wg.Wait()
		b.keptMu.Lock()
		for d := range b.kept {
			d.Detach()
			delete(b.kept, d)
		}
		b.keptMu.Unlock()
	})
	return nil
}

// Platform is the runsc platform sandboxes run on and the reason it was
// chosen (empty when runsc cannot run here).
func (b *Backend) Platform() (platform, reason string) { return b.runscPlatform, b.reason }

// Info describes the gvisor kind.
func (b *Backend) Info() backend.Info {
	desc := "gVisor sandboxes run by runsc: an application kernel in user space per pod"
	if b.runscPlatform != "" {
		desc += ", platform " + b.runscPlatform
	}
	return backend.Info{
		Kind:        Kind,
		Description: desc,
		Isolation:   backend.IsolationAppKernel,
		// Terminals work (input, output, sizes) but are the host's pty
		// imported into the sentry: they have no name under /dev/pts
		// inside (tty says "not a tty"), so Terminal is not claimed.
		// Its netstack writes frames to a packet socket on the
		// sandbox's interface: egress policies are enforced on the host.
		Capabilities: backend.DeriveCapabilities((*container)(nil), backend.Capabilities{
			Exec: true, Stdin: true, EgressPolicy: true, EgressOnHost: true,
		}),
	}
}

// Check reports whether runsc is there, new enough, and has a platform
// that works here.
func (b *Backend) Check(ctx context.Context) error { return b.checkErr }

// Create prepares a gVisor sandbox.
func (b *Backend) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	if b.checkErr != nil {
		return nil, b.checkErr
	}
	return newSandbox(b, cfg, nil)
}

// Recover re-attaches to a sandbox of an earlier run.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	return newSandbox(b, cfg, state)
}

// podInitExe is the executable of the sandboxes' root containers.
func (b *Backend) podInitExe() (string, error) {
	if b.cfg.PodInit != "" {
		return b.cfg.PodInit, nil
	}
	if !podinit.Hooked() {
		return "", fmt.Errorf("a gVisor sandbox needs a root container init: the program must call gvisor.PodInitMain first thing in main: %w", errdefs.ErrFailedPrecondition)
	}
	return os.Executable()
}

// runtime is runsc for one sandbox (namespace, platform and network flags)
// logging to dir/log.json.
func (b *Backend) runtime(namespace, dir, network string) *gorunc.Runc {
	return &gorunc.Runc{
		Command:      b.cfg.Binary,
		Root:         filepath.Join(b.cfg.Root, namespace),
		Log:          filepath.Join(dir, "log.json"),
		LogFormat:    gorunc.JSON,
		PdeathSignal: unix.SIGKILL,
		ExtraArgs:    []string{"--platform=" + b.runscPlatform, "--network=" + network},
	}
}

// platforms caches the automatic platform choice per runsc binary: the kvm
// probe may take its whole timeout.
var (
	platformsMu sync.Mutex
	platforms   = map[string]platformChoice{}
)

type platformChoice struct {
	platform, reason string
	version          int
	err              error
}

var versionRE = regexp.MustCompile(`(?m)^runsc version \S*?(\d{8})`)

// choosePlatform checks runsc and picks its platform.
func choosePlatform(cfg Config) (platform, reason string, version int, err error) {
	platformsMu.Lock()
	defer platformsMu.Unlock()
	key := cfg.Binary + "\x00" + cfg.Platform
	if c, ok := platforms[key]; ok {
		return c.platform, c.reason, c.version, c.err
	}
	c := platformChoice{}
	if rec, ok := loadChoice(cfg); ok {
		c.platform, c.reason, c.version = rec.Platform, rec.Reason, rec.Version
	} else {
		c.platform, c.reason, c.version, c.err = detect(cfg)
		if c.err == nil {
			saveChoice(cfg, c)
		}
	}
	platforms[key] = c
	return c.platform, c.reason, c.version, c.err
}

// choiceRecord is a successful platform choice kept in the runsc root, so
// that the next sandboxer process (a restarted or upgraded worker) starts
// without running runsc twice: valid for the same runsc binary (path,
// inode, size and modification time), configured platform, kernel and
// boot.
type choiceRecord struct {
	Binary     string
	Ino, Size  uint64
	MtimeNs    int64
	Configured string
	Kernel     string
	Boot       string

	Platform, Reason string
	Version          int
}

// choiceKey is what a kept choice must match: the runsc binary's identity
// now, the configured platform, the kernel and the boot.
func choiceKey(cfg Config) (choiceRecord, bool) {
	var st unix.Stat_t
	if err := unix.Stat(cfg.Binary, &st); err != nil {
		return choiceRecord{}, false
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return choiceRecord{}, false
	}
	return choiceRecord{
		Binary: cfg.Binary, Ino: st.Ino, Size: uint64(st.Size), MtimeNs: st.Mtim.Nano(),
		Configured: cfg.Platform, Kernel: unix.ByteSliceToString(uts.Release[:]), Boot: strings.TrimSpace(string(boot)),
	}, true
}

func choiceFile(cfg Config) string { return filepath.Join(cfg.Root, "platform.json") }

// loadChoice returns the kept choice when it is still valid.
func loadChoice(cfg Config) (choiceRecord, bool) {
	want, ok := choiceKey(cfg)
	if !ok {
		return choiceRecord{}, false
	}
	data, err := os.ReadFile(choiceFile(cfg))
	if err != nil {
		return choiceRecord{}, false
	}
	var got choiceRecord
	if json.Unmarshal(data, &got) != nil || got.Platform == "" || got.Version < MinVersion {
		return choiceRecord{}, false
	}
	key := got
	key.Platform, key.Reason, key.Version = "", "", 0
	if key != want {
		return choiceRecord{}, false
	}
	return got, true
}

// saveChoice keeps a successful choice (written whole, crash-safely). Failing to keep it only costs the next start the
// detection.
func saveChoice(cfg Config, c platformChoice) {
	rec, ok := choiceKey(cfg)
	if !ok {
		return
	}
	rec.Platform, rec.Reason, rec.Version = c.platform, c.reason, c.version
	if data, err := json.Marshal(rec); err == nil {
		_ = atomicfile.WriteFile(choiceFile(cfg), data, 0o600)
	}
}

func detect(cfg Config) (platform, reason string, version int, err error) {
	if _, err := exec.LookPath(cfg.Binary); err != nil {
		return "", "", 0, fmt.Errorf("runsc binary %q not found (install Debian's runsc, e.g. hack/install-deps.sh): %w", cfg.Binary, errdefs.ErrFailedPrecondition)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cfg.Binary, "--version").CombinedOutput()
	if err != nil {
		return "", "", 0, fmt.Errorf("runsc --version: %v: %s: %w", err, bytes.TrimSpace(out), errdefs.ErrFailedPrecondition)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", "", 0, fmt.Errorf("runsc --version: no release date in %q: %w", bytes.TrimSpace(out), errdefs.ErrFailedPrecondition)
	}
	version, _ = strconv.Atoi(string(m[1]))
	if version < MinVersion {
		return "", "", version, fmt.Errorf("runsc %d is too old (want %d or newer): %w", version, MinVersion, errdefs.ErrFailedPrecondition)
	}
	known := map[string]bool{}
	if out, err := exec.CommandContext(ctx, cfg.Binary, "help", "platforms").Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			known[f] = true
		}
	} else {
		known[PlatformPtrace], known[PlatformKVM] = true, true
	}
	if cfg.Platform != "" {
		if !known[cfg.Platform] {
			return "", "", version, fmt.Errorf("runsc %d has no platform %q (it has %s): %w", version, cfg.Platform, strings.Join(keys(known), ", "), errdefs.ErrFailedPrecondition)
		}
		return cfg.Platform, "configured", version, nil
	}
	var why []string
	if _, err := os.Stat("/dev/kvm"); err != nil {
		why = append(why, "no /dev/kvm")
	} else if !known[PlatformKVM] {
		why = append(why, "runsc has no kvm platform")
	} else if err := cachedProbe(cfg, strings.TrimSpace(string(out)), PlatformKVM); err != nil {
		why = append(why, "kvm probe failed: "+err.Error())
	} else {
		return PlatformKVM, "kvm probe ran a sandbox", version, nil
	}
	if known[PlatformSystrap] {
		return PlatformSystrap, strings.Join(why, "; "), version, nil
	}
	why = append(why, fmt.Sprintf("runsc %d has no systrap", version))
	if known[PlatformPtrace] {
		return PlatformPtrace, strings.Join(why, "; "), version, nil
	}
	return "", "", version, fmt.Errorf("runsc %d offers none of kvm, systrap, ptrace: %w", version, errdefs.ErrFailedPrecondition)
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// probe runs `runsc --platform=p do true`, bounded by cfg.ProbeTimeout
// (runsc hangs on KVM where the host's KVM cannot run its guest code, as
// with KVM-PVM). The process is briefly not a child subreaper, so that
// what a killed probe leaves behind goes to the host's init, not here.
func probe(cfg Config, p string) error {
	root, err := os.MkdirTemp(cfg.Root, "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ProbeTimeout)
	defer cancel()
	var was int32
	_ = unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&was)), 0, 0, 0)
	if was != 0 {
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	cmd := exec.CommandContext(ctx, cfg.Binary, "--root", root, "--platform="+p, "--network=none", "--ignore-cgroups", "do", "true")
	// runsc do writes its spec under $TMPDIR (runsc-do*): keep it in root.
	cmd.Env = append(os.Environ(), "TMPDIR="+root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("no answer within %v", cfg.ProbeTimeout)
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		return errors.New(msg)
	}
	return nil
}

// probeRecord is a probe's result kept in the runsc root, valid for the
// same runsc, kernel and boot.
type probeRecord struct {
	Runsc, Kernel, Boot, Platform string
	OK                            bool
	Error                         string
}

// cachedProbe is probe, its result kept in cfg.Root for the same runsc,
// kernel and boot (a hanging platform costs its whole timeout once per
// boot, not at every start).
func cachedProbe(cfg Config, runscVersion, p string) error {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	want := probeRecord{Runsc: runscVersion, Kernel: unix.ByteSliceToString(uts.Release[:]), Boot: strings.TrimSpace(string(boot)), Platform: p}
	file := filepath.Join(cfg.Root, "probe-"+p+".json")
	if data, err := os.ReadFile(file); err == nil {
		var got probeRecord
		if json.Unmarshal(data, &got) == nil && got.Runsc == want.Runsc && got.Kernel == want.Kernel && got.Boot == want.Boot && got.Platform == p {
			if got.OK {
				return nil
			}
			return errors.New(got.Error + " (cached for this boot)")
		}
	}
	err := probe(cfg, p)
	rec := want
	rec.OK = err == nil
	if err != nil {
		rec.Error = err.Error()
	}
	if data, jerr := json.Marshal(rec); jerr == nil {
		_ = os.WriteFile(file, data, 0o600)
	}
	return err
}
