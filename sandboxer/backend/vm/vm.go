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
// Not done yet: networking (the VM has no NIC: "network: none"), stats,
// and re-attaching to containers after a restart.
package vm

import (
	"context"
	"encoding/json"
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
)

// Config configures the vm backend.
type Config struct {
	// Driver starts the VMs (qemu.New(...)).
	Driver hypervisor.Hypervisor
	// Kernel and Initrd are the guest image ("make guest").
	Kernel, Initrd string
	// VCPUs and MemoryMiB size each VM (driver defaults when 0).
	VCPUs     int
	MemoryMiB int
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
		Capabilities: backend.Capabilities{Exec: true, Stdin: true, Terminal: true},
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
	return newSandbox(b, cfg), nil
}

// Recover re-attaches to the VM of a sandbox (when the driver can) so that
// it can be stopped and deleted; its containers are not recovered.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	s := newSandbox(b, cfg)
	if len(state) > 0 {
		if err := json.Unmarshal(state, &s.st); err != nil {
			return nil, fmt.Errorf("decode vm sandbox state: %w", err)
		}
	}
	r, ok := b.cfg.Driver.(hypervisor.Recoverer)
	if !ok || s.st.VMDir == "" {
		return nil, fmt.Errorf("recover vm sandbox %s: %w", cfg.ID, errdefs.ErrNotImplemented)
	}
	v, err := r.Recover(ctx, s.hvConfig())
	if err != nil {
		return nil, fmt.Errorf("recover vm sandbox %s: %w", cfg.ID, err)
	}
	s.vm = v
	go s.waitVM()
	return s, nil
}
