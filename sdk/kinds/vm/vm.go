// Package vm implements the "vm" sandbox kind: one microVM per sandbox,
// started through a [hypervisor.Hypervisor], whose guest agent
// (taskagent/agent) runs the containers with containerd's Task API v3.
//
// The host shares one directory per sandbox with the guest over 9p
// ("shared", mounted at /run/magnetar/shared in the guest by Setup). Each
// container gets <shared>/<cid>/ with its rewritten config.json, its rootfs
// (mounted on the host, seen by the guest through 9p) and the host sources
// of its bind mounts. Standard streams (stdin, stdout, stderr, or a
// terminal) travel as agentmux stdio streams next to the ttrpc ones: the
// agent bridges each to a FIFO in the guest that the guest's Task API
// gets, the host to the stdio containerd gave it.
//
// While a sandbox runs, goroutines it owns stream guest events (OOM kills
// reach the EventSink), ping the agent (a VM whose agent stops answering is
// killed) and keep the guest clock in sync (see health.go, events.go,
// clock.go). Container stats, pids, pause and resource updates are
// forwarded to the guest's Task API (container_ops.go); sandbox stats
// combine the QEMU process's host usage with guest memory (stats.go).
//
// The file service reads and writes a host bind mount of each container's
// root under the sandbox's own directory (files.go); DialPort reaches the
// guest's loopback through a port stream of the agent session (ports.go).
//
// After a sandboxer restart a sandbox re-attaches to its VM and agent and
// serves new containers; the containers that ran before are killed in the
// guest (containerd has reported them dead), see recover.go.
//
// The pod's CNI interfaces are bridged into the guest through taps in the
// pod netns (network.go).
package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netns"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// Kind is the name of this sandbox kind.
const Kind = "vm"

const (
	shareTag    = "shared"
	guestShared = "/run/magnetar/shared"
	// DefaultRunDir is Config.RunDir's default.
	DefaultRunDir = "/run/magnetar"
	maxSockPath   = 100
)

// MinMemoryLimit is the smallest memory limit of a vm sandbox, in bytes.
const MinMemoryLimit = 16 << 20

// Config configures the vm backend.
type Config struct {
	// Driver starts the VMs (qemu.New(...)).
	Driver hypervisor.Hypervisor
	// Kernel and Initrd are the guest image ("make guest").
	Kernel, Initrd string
	// RunDir holds the work dirs of VMs (RunDir/vm/<hash>) whose
	// <sandbox dir>/vm would make unix socket paths too long: the
	// sandboxer's run dir. Default [DefaultRunDir].
	RunDir string
	// Sizing (sizing.go). A VM gets ceil(CPU quota / period) vCPUs and
	// memory limit + MemoryOverheadMiB of memory from its sandbox's
	// resources (CRI: the pod's, the sum of its containers'); VCPUs and
	// MemoryMiB are the defaults when those are not set (driver defaults,
	// 1 vCPU and 256 MiB, when 0). MaxVCPUs bounds the vCPUs (default:
	// the host's CPUs); MemoryOverheadMiB defaults to
	// [DefaultMemoryOverheadMiB].
	VCPUs             int
	MemoryMiB         int
	MaxVCPUs          int
	MemoryOverheadMiB int
	// BootTimeout bounds VM start to a configured agent (default 2m).
	BootTimeout time.Duration

	// HealthInterval is how often a running sandbox pings the guest
	// agent (default 10s); HealthTimeout bounds one ping (default 30s:
	// QEMU TCG on a loaded host is slow). After HealthFailures
	// consecutive failed pings (default 3) the VM is considered dead and
	// killed, so that Wait returns.
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	HealthFailures int
	// ClockCheckInterval is how often the host looks for a suspend or a
	// wall-clock jump to resync the guest clock after (default 5s);
	// ClockSyncInterval is how often the guest clock is synced anyway
	// (default 10m).
	ClockCheckInterval time.Duration
	ClockSyncInterval  time.Duration

	// ResumeContainers makes a recovery resume the containers that ran
	// in the guest: they keep running, their output streams continue
	// where the host stopped, and their exits are reported. Set it when
	// the caller that held the containers' task connections kept them
	// (a sandboxer worker restarted under its supervisor). When false, a
	// recovery ends them (containerd took their closed task connections
	// for dead shims and reported them exited): see recover.go.
	ResumeContainers bool

	// Pool keeps VMs booted ahead of their sandboxes (pool.go, warm.go);
	// off when it has no classes.
	Pool PoolConfig
	// Template restores VMs from a saved VM instead of booting them
	// (template.go); off unless Enabled.
	Template TemplateConfig
	// TCGCacheMiB bounds QEMU's translation cache per VM under TCG
	// (tb-size), default [DefaultTCGCacheMiB]; QEMU's own default is
	// 1 GiB, filled as the guest runs new code (about 65 MiB for an idle
	// guest after boot). Ignored under KVM.
	TCGCacheMiB int
	// FreePageReporting gives each VM a virtio balloon that returns the
	// pages the guest frees to the host.
	FreePageReporting bool
	// Log receives what the warm pool and the templates do (may be nil):
	// VMs ready, claimed, restored, failures.
	Log func(msg string, keyvals ...any)
}

// DefaultTCGCacheMiB is [Config.TCGCacheMiB]'s default.
const DefaultTCGCacheMiB = 32

// withDefaults fills the zero fields with their defaults.
func (cfg Config) withDefaults() Config {
	if cfg.TCGCacheMiB == 0 {
		cfg.TCGCacheMiB = DefaultTCGCacheMiB
	}
	if cfg.RunDir == "" {
		cfg.RunDir = DefaultRunDir
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = 10 * time.Second
	}
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = 30 * time.Second
	}
	if cfg.HealthFailures <= 0 {
		cfg.HealthFailures = 3
	}
	if cfg.ClockCheckInterval <= 0 {
		cfg.ClockCheckInterval = 5 * time.Second
	}
	if cfg.ClockSyncInterval <= 0 {
		cfg.ClockSyncInterval = 10 * time.Minute
	}
	return cfg
}

// Backend is the vm sandbox kind.
type Backend struct {
	cfg Config
	// pool is the warm pool (nil: none), poolNS the network namespace of
	// its VMs' taps.
	pool   *pool
	poolNS netns.NsHandle
	// tmpl builds and hands out the VM templates (nil: off).
	tmpl *templates
}

// New returns the vm backend. With [Config.Pool] set it first ends the
// pooled VMs an earlier run left (warm.go), then starts filling the pool
// in the background; [Backend.ClosePool] ends them. With
// [Config.Template] enabled it builds the VM templates in the background
// (template.go).
func New(cfg Config) (*Backend, error) {
	if cfg.Driver == nil {
		return nil, fmt.Errorf("vm backend: no hypervisor driver: %w", errdefs.ErrInvalidArgument)
	}
	b := &Backend{cfg: cfg.withDefaults(), poolNS: netns.None()}
	if cfg.TCGCacheMiB < 0 {
		return nil, fmt.Errorf("vm backend: negative tcg cache size: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := b.cfg.templateSizes(); err != nil {
		return nil, err
	}
	if err := b.startPool(); err != nil {
		return nil, err
	}
	if err := b.startTemplates(); err != nil {
		_ = b.ClosePool()
		return nil, err
	}
	return b, nil
}

// shortVMRoot holds the work dirs of VMs whose <sandbox dir>/vm would
// make unix socket paths too long.
func (b *Backend) shortVMRoot() string {
	d := b.cfg.RunDir
	if d == "" {
		d = DefaultRunDir
	}
	return filepath.Join(d, "vm")
}

// Info describes the kind.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Kind:        Kind,
		Description: "a microVM per sandbox (" + b.cfg.Driver.Name() + "), containers run by the guest agent",
		Isolation:   backend.IsolationVM,
		Capabilities: backend.DeriveCapabilities((*container)(nil), backend.Capabilities{Exec: true, Stdin: true, Terminal: true, OOMEvents: true,
			// The guest's frames are tc-redirected from the tap to the
			// sandbox's interface: egress policies are enforced on the host.
			EgressPolicy: true, EgressOnHost: true}),
	}
}

// Check reports whether the hypervisor and the guest image are usable.
func (b *Backend) Check(ctx context.Context) error {
	if err := b.cfg.Driver.Check(ctx); err != nil {
		return err
	}
	for _, p := range []string{b.cfg.Kernel, b.cfg.Initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("guest image: %w", err)
		}
	}
	if b.cfg.Kernel == "" {
		return errors.New("guest image: no kernel configured")
	}
	return nil
}

// Create prepares a sandbox; Start boots it.
//
// A sandbox's memory limit, when set, is at least [MinMemoryLimit]: the
// guest's memory is the limit plus the overhead, and what runs in it
// must fit in the limit.
func (b *Backend) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	// No network namespace and no private network is the host's network
	// (backend.SandboxConfig): a guest kernel cannot share the host's
	// interfaces, so say so instead of booting a pod with no network (Kata
	// refuses host networking too).
	if cfg.NetNSPath == "" && !cfg.PrivateNetwork {
		return nil, fmt.Errorf("a microVM pod cannot use the host's network (hostNetwork): its containers run on the guest's kernel; give it a network namespace (CNI, a bridge network) or a private network: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := vmCgroupPath(cfg.CgroupParent, cfg.ID); err != nil {
		return nil, err
	}
	if r := cfg.Resources; r != nil && r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 && *r.Memory.Limit < MinMemoryLimit {
		return nil, fmt.Errorf("resources.memory_limit_bytes: %d is less than the vm kind's minimum of %d (16 MiB): %w",
			*r.Memory.Limit, MinMemoryLimit, errdefs.ErrInvalidArgument)
	}
	return newSandbox(b, cfg), nil
}

// Recover re-attaches to the VM of a sandbox started by an earlier run of
// the sandboxer; see recover.go.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	return b.recoverSandbox(ctx, cfg, state)
}
