// Package vm implements the "vm" sandbox kind: one microVM per sandbox,
// started through a [hypervisor.Hypervisor], whose guest agent
// (taskagent/agent) runs the containers with containerd's Task API v3.
//
// The host shares one directory per sandbox with the guest over 9p
// ("shared", mounted at /run/magnetar/shared in the guest by Setup). Each
// container gets <shared>/<cid>/ with its rewritten config.json, its rootfs
// (mounted on the host, seen by the guest through 9p), the host sources of
// its bind mounts, and regular files that collect its output in the guest;
// the host copies their growth into the stdio FIFOs containerd gave it.
//
// After a sandboxer restart a sandbox re-attaches to its VM and agent and
// serves new containers; the containers that ran before are killed in the
// guest (containerd has reported them dead), see recover.go.
//
// Not done yet: networking (the VM has no NIC: "network: none"), stdin and
// terminals, stats.
package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sandboxer/backend/vm/hypervisor"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Kind is the name of this sandbox kind.
const Kind = "vm"

const (
	shareTag    = "shared"
	guestShared = "/run/magnetar/shared"
	// shortVMRoot holds VM work dirs when <sandbox dir>/vm would make unix
	// socket paths too long.
	shortVMRoot = "/run/magnetar/vm"
	maxSockPath = 100
	// tailQuiet is how long an output file must stop growing after its
	// process exited before its copy ends.
	tailQuiet = 250 * time.Millisecond
	tailPoll  = 50 * time.Millisecond
)

// Config configures the vm backend.
type Config struct {
	// Driver starts the VMs (qemu.New(...)).
	Driver hypervisor.Hypervisor
	// Kernel and Initrd are the guest image ("make guest").
	Kernel, Initrd string
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
}

// Backend is the vm sandbox kind.
type Backend struct{ cfg Config }

// New returns the vm backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Driver == nil {
		return nil, fmt.Errorf("vm backend: no hypervisor driver: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	return &Backend{cfg: cfg}, nil
}

// Info describes the kind.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Kind:         Kind,
		Description:  "a microVM per sandbox (" + b.cfg.Driver.Name() + "), containers run by the guest agent",
		Isolation:    backend.IsolationVM,
		Capabilities: backend.Capabilities{Exec: true},
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
func (b *Backend) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	if _, err := vmCgroupPath(cfg.CgroupParent, cfg.ID); err != nil {
		return nil, err
	}
	return newSandbox(b, cfg), nil
}

// Recover re-attaches to the VM of a sandbox started by an earlier run of
// the sandboxer; see recover.go.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	return b.recoverSandbox(ctx, cfg, state)
}
