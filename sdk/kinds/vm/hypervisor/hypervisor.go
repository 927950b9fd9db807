// Package hypervisor is the small contract between Magnetar's microVM
// backend and a virtual machine monitor (QEMU today; Cloud Hypervisor,
// Firecracker and StratoVirt later, see docs/hypervisors.md).
//
// A [Hypervisor] checks the host and starts a [VM] from a [Config]. The VM
// process is owned by the driver and outlives the context of the request
// that started it: contexts only bound how long a call waits. Optional
// capabilities are separate interfaces ([Recoverer]) found with a type
// assertion.
//
// The package also decides the accelerator ([ChooseAccel]): KVM only when
// it really runs a stock guest, TCG otherwise.
package hypervisor

import (
	"context"
	"net"
	"os"
	"syscall"
	"time"
)

// Hypervisor is one kind of VMM.
type Hypervisor interface {
	// Name is the driver's short name ("qemu").
	Name() string
	// Check reports whether the VMM can run here; the error says why not
	// (binary missing, unusable version, ...).
	Check(ctx context.Context) error
	// Start launches a VM. It returns once the guest has been told to run
	// (its kernel is booting); it does not wait for the agent. ctx bounds
	// the start only, never the VM's life.
	Start(ctx context.Context, cfg Config) (VM, error)
}

// VM is a running virtual machine.
type VM interface {
	// Pid is the VMM process id on the host.
	Pid() int
	// Wait blocks until the VMM process has exited (on its own, killed, or
	// through Stop) and returns how; it returns ctx.Err() if ctx ends first.
	Wait(ctx context.Context) (ExitStatus, error)
	// Stop ends the VM. Without force it asks the VMM to quit cleanly and
	// kills it when that does not work within the driver's stop timeout or
	// before ctx ends; with force it kills it at once. Stop returns after
	// the process has exited and the driver's host files (sockets, pid
	// file, a cgroup it created) are gone. Stopping a stopped VM is a no-op.
	Stop(ctx context.Context, force bool) error
	// AgentConn connects to the host end of the guest agent's channel (a
	// byte stream, multiplexed with sdk/kinds/vm/agentmux by the caller),
	// retrying until it exists or ctx ends. Only one connection is served
	// at a time: close the previous one before asking again.
	AgentConn(ctx context.Context) (net.Conn, error)
	// Info describes the VM for logs and status: accelerator and why,
	// paths of the console log and sockets, the command line, ...
	Info() map[string]string
}

// Recoverer is implemented by hypervisors that can re-attach to a VM
// started by an earlier run of the sandboxer, found through cfg.Dir.
type Recoverer interface {
	Recover(ctx context.Context, cfg Config) (VM, error)
}

// FDHolder is implemented by VMs whose VMM can keep file descriptors open
// on the sandboxer's behalf: they stay open for as long as the VMM runs
// (or until released), across restarts of the sandboxer. The vm kind
// holds the ends of containerd's stdio FIFOs that keep them usable while
// no sandboxer runs.
type FDHolder interface {
	// HoldFD keeps a duplicate of f open under name, replacing (and
	// closing) what an earlier call held under the same name.
	HoldFD(ctx context.Context, name string, f *os.File) error
	// ReleaseFD closes what is held under name; a name not held is not an
	// error.
	ReleaseFD(ctx context.Context, name string) error
}

// ExitStatus is how the VMM process ended.
type ExitStatus struct {
	// Code is the exit code, or 128+signal when killed by a signal, or
	// [UnknownExitCode] when the process was not our child (recovered).
	Code int
	// Signal is the signal that killed the process, or 0.
	Signal syscall.Signal
	// ExitedAt is when the exit was observed.
	ExitedAt time.Time
}

// UnknownExitCode is the [ExitStatus.Code] of a VMM whose status could not
// be collected because another process was its parent.
const UnknownExitCode = 255

// Accel is an accelerator preference or choice.
type Accel string

// Accelerators.
const (
	// AccelAuto picks KVM when it really runs a guest, else TCG.
	AccelAuto Accel = "auto"
	// AccelKVM uses hardware virtualisation (/dev/kvm).
	AccelKVM Accel = "kvm"
	// AccelTCG uses QEMU's software emulator.
	AccelTCG Accel = "tcg"
)

// Config describes one VM. Paths are host paths.
type Config struct {
	// ID names the VM (the sandbox id); it appears in the VMM's name.
	ID string
	// Dir is the VM's private work directory: sockets, pid file and
	// console log go there. It must exist; keep it short, unix socket
	// paths are limited to 107 bytes.
	Dir string
	// Kernel is an uncompressed vmlinux with the PVH note (direct boot).
	Kernel string
	// Initrd is the initramfs, or empty.
	Initrd string
	// KernelArgs are appended to the driver's kernel command line.
	KernelArgs []string
	// VCPUs is the number of virtual CPUs (default 1).
	VCPUs int
	// MemoryMiB is the guest memory in MiB (default 256).
	MemoryMiB int
	// Shares are host directories exported to the guest over 9p.
	Shares []Share
	// Taps are network interfaces given to the guest.
	Taps []Tap
	// CgroupPath is the cgroup (path from the hierarchy root, e.g.
	// "/magnetar/pod1") the VMM is placed in before the guest runs. A
	// cgroup that does not exist is created, and removed when the VM
	// exits. Empty leaves the VMM in the sandboxer's cgroup.
	CgroupPath string
	// Accel is the accelerator preference (default [AccelAuto]).
	Accel Accel
	// TCGCacheMiB bounds the VMM's translation cache under software
	// emulation (QEMU's tb-size), 0: the VMM's default. Ignored under KVM.
	TCGCacheMiB int
	// MemoryFile backs the guest RAM with this file (created when missing,
	// MemoryMiB long). With MemoryShared the mapping is shared: what the
	// guest writes reaches the file (a template's memory, see
	// [StateSaver]). Without it the mapping is private: the guest reads
	// the file's pages and copies only those it writes, so the VMs
	// restored from one template share its memory. Empty: anonymous
	// memory. Only for a [Snapshotter]'s VMs.
	MemoryFile   string
	MemoryShared bool
	// Incoming restores the VM from a state file written by
	// [StateSaver.SaveState] instead of booting: the guest resumes where
	// the saved VM stopped. The config must describe the same machine as
	// the saved VM's (size, devices in the same order, TCGCacheMiB, MAC
	// addresses, MemoryFile with the saved memory). Paths (work dir,
	// shares, taps) may differ. Only for a [Snapshotter].
	Incoming string
	// FreePageReporting adds a memory balloon that never inflates but
	// takes the pages the guest frees (virtio-balloon free page
	// reporting), so that they are given back to the host. It needs the
	// guest kernel's virtio_balloon driver with CONFIG_PAGE_REPORTING.
	FreePageReporting bool
}

// Snapshotter is implemented by hypervisors that can restore a VM from a
// saved state ([Config.Incoming]).
type Snapshotter interface {
	// SnapshotKey identifies what a saved state depends on besides the
	// VM config: the VMM build and the accelerator chosen for accel. A
	// state saved under one key must not be restored under another.
	SnapshotKey(ctx context.Context, accel Accel) (string, error)
}

// StateSaver is implemented by VMs whose VMM can save their state.
type StateSaver interface {
	// SaveState pauses the VM and writes its CPU and device state to path
	// (a new file). Guest memory is not written: it must be in a shared
	// [Config.MemoryFile], which holds it once SaveState returns. The VM
	// stays paused; the caller stops it.
	SaveState(ctx context.Context, path string) error
}

// Share is a host directory exported to the guest with 9p.
type Share struct {
	// HostPath is the directory to share.
	HostPath string
	// Tag is the 9p mount tag the guest mounts (mount -t 9p TAG dir).
	Tag string
	// ReadOnly makes the share read-only.
	ReadOnly bool
}

// Tap is a network interface for the guest, backed by a host tap device.
type Tap struct {
	// Name is the tap device; the VMM opens it by name in its own network
	// namespace. Ignored when File is set.
	Name string
	// File is an open tap (e.g. opened inside the pod's network namespace);
	// the VMM inherits it. The caller keeps ownership and closes it after
	// Start returns.
	File *os.File
	// MAC is the guest NIC's address, "52:54:00:12:34:56" (empty: VMM
	// default).
	MAC string
}

// CgroupMover is implemented by VMs whose VMM can change cgroup while it
// runs: a VM booted ahead of its sandbox (the vm kind's warm pool) moves
// into the sandbox's cgroup when a sandbox adopts it.
type CgroupMover interface {
	// MoveCgroup moves the VMM (all its threads) into the cgroup at path
	// (from the hierarchy root), creating it if needed; a cgroup it
	// created is removed when the VM exits, as [Config.CgroupPath]. The
	// cgroup the VMM leaves is removed if the driver created it.
	MoveCgroup(path string) error
}
