// Package backend defines the contract between Magnetar's engine and a sandbox
// kind (runc, wasm, microVM, gVisor, ...).
//
// A backend is small on purpose: [Backend] creates and recovers sandboxes,
// [Sandbox] runs containers, [Container] and [Process] drive their processes.
// Optional capabilities (stats, resource updates, pids, pause) are separate
// interfaces that the engine discovers with a type assertion, so a new kind
// can start with the core and grow. Every backend runs the shared
// conformance suite in package backendtest.
//
// The package has no protobuf in it: the engine converts API messages at its
// edges. Errors are containerd errdefs classes (errdefs.ErrNotFound, ...),
// wrapped with context.
package backend

import (
	"context"
	"net"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Backend is one kind of sandbox.
type Backend interface {
	// Info describes the kind and what it can do.
	Info() Info
	// Check reports whether the kind can run on this host; the error says
	// why not (missing binary, no /dev/kvm, ...).
	Check(ctx context.Context) error
	// Create prepares a new sandbox. It does not start anything yet.
	Create(ctx context.Context, cfg SandboxConfig) (Sandbox, error)
	// Recover re-attaches to a sandbox created by an earlier run of the
	// process, from the state it saved with [Sandbox.State].
	Recover(ctx context.Context, cfg SandboxConfig, state []byte) (Sandbox, error)
}

// Sandbox is one pod: an isolation boundary holding containers.
type Sandbox interface {
	// Start brings the sandbox up (boots a VM, creates namespaces, ...).
	Start(ctx context.Context) (StartInfo, error)
	// Wait blocks until the sandbox has stopped on its own or through Stop,
	// or ctx ends.
	Wait(ctx context.Context) (ExitStatus, error)
	// Stop stops the sandbox. Containers still running are killed first.
	Stop(ctx context.Context, timeout time.Duration) error
	// Delete releases everything the sandbox holds on the host. It is
	// called once, after Stop, and must be idempotent.
	Delete(ctx context.Context) error
	// CreateContainer creates (but does not start) a container.
	CreateContainer(ctx context.Context, cfg ContainerConfig) (Container, error)
	// State returns opaque data that Recover needs after a restart.
	State() ([]byte, error)
}

// Container is a container in a sandbox: an init process plus exec'd ones.
type Container interface {
	// Init returns the container's init process.
	Init() Process
	// Exec creates (but does not start) an extra process in the container.
	Exec(ctx context.Context, cfg ExecConfig) (Process, error)
	// Delete releases the container's resources on the host (rootfs mounts,
	// cgroups, bundle). Its init process has been deleted before.
	Delete(ctx context.Context) error
}

// Process is a process of a container.
type Process interface {
	// Start starts the process and returns its pid as seen from the host
	// (or 0 where there is no host pid).
	Start(ctx context.Context) (uint32, error)
	// Kill sends a signal; all sends it to every process of the container.
	Kill(ctx context.Context, sig syscall.Signal, all bool) error
	// Wait blocks until the process exited and returns its status.
	Wait(ctx context.Context) (ExitStatus, error)
	// ResizePTY resizes the process's terminal.
	ResizePTY(ctx context.Context, width, height uint32) error
	// CloseStdin closes the process's stdin.
	CloseStdin(ctx context.Context) error
	// Delete releases the process's resources after it exited.
	Delete(ctx context.Context) error
}

// PidReporter is implemented by processes that have a host pid before
// they start (a runc container's init exists after create).
type PidReporter interface {
	Pid() uint32
}

// Stater is implemented by containers that report resource usage.
type Stater interface {
	Stats(ctx context.Context) (*Stats, error)
}

// Updater is implemented by containers whose resources can change.
type Updater interface {
	Update(ctx context.Context, res *specs.LinuxResources) error
}

// Pider is implemented by containers that can list their processes.
type Pider interface {
	Pids(ctx context.Context) ([]ProcessInfo, error)
}

// Pauser is implemented by containers that can be frozen.
type Pauser interface {
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
}

// SandboxStater is implemented by sandboxes that report their own status
// details and usage (VM memory, per-phase timings, ...).
type SandboxStater interface {
	SandboxStats(ctx context.Context) (*Stats, map[string]string, error)
}

// HostRooter is implemented by containers whose root file system is a
// directory on the host that the container uses as it is, so that what the
// host writes there the container sees, and the reverse (runc, wasm; vm,
// whose guest sees its containers' roots through 9p without a cache). The
// file service (sdk/direct) resolves paths inside it with openat2 and
// RESOLVE_IN_ROOT. Kinds whose container sees another file system
// (gVisor's overlay in memory) do not implement it.
type HostRooter interface {
	// HostRoot returns the host path of the container's root file system
	// (valid until the container is deleted) and whether the container's
	// root is read-only (its spec's root.readonly: the host directory
	// itself is writable, and the file service refuses writes). "" means
	// that this container's files cannot be reached that way (a gvisor
	// sandbox without host files).
	HostRoot() (dir string, readOnly bool)
}

// EventSink receives events a backend observes on its own, such as an OOM
// kill. It must not block.
type EventSink interface {
	OOM(sandboxID, containerID string)
}

// Isolation is how strongly a kind separates its workloads from the host.
type Isolation int

// Isolation levels, weakest first.
const (
	IsolationUnspecified Isolation = iota
	IsolationProcess               // Linux namespaces and cgroups (runc).
	IsolationWasm                  // a WebAssembly runtime's memory safety.
	IsolationAppKernel             // a user-space kernel (gVisor).
	IsolationVM                    // a virtual machine per sandbox.
)

// String names the isolation level.
func (i Isolation) String() string {
	switch i {
	case IsolationProcess:
		return "process"
	case IsolationWasm:
		return "wasm"
	case IsolationAppKernel:
		return "app-kernel"
	case IsolationVM:
		return "vm"
	}
	return "unspecified"
}

// Info describes a kind.
type Info struct {
	Kind         string
	Description  string
	Isolation    Isolation
	Capabilities Capabilities
}

// Capabilities lists what a kind supports.
type Capabilities struct {
	Exec, Terminal, Stdin, OOMEvents, UpdateResources, Stats, Pause bool
	// RecoverExecs: exec'd processes survive a restart of the engine
	// (the kind's containers implement [ExecRecoverer]).
	RecoverExecs bool
	// EgressPolicy: egress policies of bridge networks bind the kind's
	// sandboxes: every packet they send goes through the IP stack of
	// their network namespace (its nftables output hook), or, with
	// EgressOnHost, through the host side of their veth.
	EgressPolicy bool
	// EgressOnHost: the kind's packets bypass the IP stack of the
	// sandbox's network namespace (a packet socket, a tc redirect from a
	// tap), so its egress policies are enforced on the host, keyed by the
	// sandbox's veth (network.EnforceHost).
	EgressOnHost bool
}

// DeriveCapabilities returns caps with the flags that stand for an optional
// interface set from what c implements: Stats from [Stater],
// UpdateResources from [Updater], Pause from [Pauser]. Kinds build their
// [Info.Capabilities] with it, so that the flags cannot disagree with the
// interfaces the engine discovers. RecoverExecs is set from [ExecRecoverer]. c is usually a nil pointer of the kind's
// container type. A kind that sets Exec must implement [Container.Exec];
// one that does not must return errdefs.ErrNotImplemented from it.
func DeriveCapabilities(c Container, caps Capabilities) Capabilities {
	_, caps.Stats = c.(Stater)
	_, caps.UpdateResources = c.(Updater)
	_, caps.Pause = c.(Pauser)
	_, caps.RecoverExecs = c.(ExecRecoverer)
	return caps
}

// SandboxConfig is what a backend gets to create a sandbox.
type SandboxConfig struct {
	ID string
	// Namespace is the containerd namespace ("k8s.io" for CRI), or "magnetar"
	// for sandboxes made through Magnetar's own API.
	Namespace string
	// Dir is a private directory for the backend, removed with the sandbox.
	Dir string
	// Hostname of the pod; empty keeps the host's (host network).
	Hostname string
	// NetNSPath is the network namespace to run in (CRI makes one per pod).
	// When it is empty the sandbox uses the host's network, unless
	// PrivateNetwork asks for a new network namespace with only loopback.
	// Kinds that cannot share the host's network (a microVM's kernel is its
	// own) refuse the host's with InvalidArgument rather than give the
	// sandbox some other network.
	NetNSPath      string
	PrivateNetwork bool
	// HostPID: containers that join the pod's PID namespace run in the
	// host's (Kubernetes' hostPID); otherwise the pod has a PID namespace
	// of its own, shared by those containers.
	HostPID bool
	// HostIPC: the pod's containers run in the host's IPC namespace
	// (Kubernetes' hostIPC); otherwise the pod has an IPC namespace of its
	// own. Kinds that cannot share the host's refuse it.
	HostIPC bool
	// Sysctls are kernel parameters ("kernel.shm_rmid_forced",
	// "net.ipv4.ip_forward", ...) to set in the pod's namespaces before its
	// containers start. Kinds refuse those the pod's namespaces do not
	// scope (they would change the host).
	Sysctls map[string]string
	// DNS configures the pod's resolv.conf where the backend writes one.
	DNS DNSConfig
	// CgroupParent is the cgroup the pod's cgroups live under.
	CgroupParent string
	// Resources bounds the whole sandbox (may be nil).
	Resources *specs.LinuxResources
	// Labels and Annotations come from the API caller.
	Labels      map[string]string
	Annotations map[string]string
	// Events receives backend-observed events.
	Events EventSink
}

// DNSConfig is a pod's resolver configuration.
type DNSConfig struct {
	Servers, Searches, Options []string
}

// StartInfo is what a started sandbox reports.
type StartInfo struct {
	// Pid is the sandbox's host process (a VMM), or 0 when the sandbox has
	// no process of its own.
	Pid uint32
	// Info is free-form status shown to users (timings, accelerator, ...).
	Info map[string]string
}

// Stdio names where a process's standard streams go: FIFO or file paths on
// the host, or empty for none.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// ContainerConfig is what a backend gets to create a container.
type ContainerConfig struct {
	ID string
	// Bundle is the OCI bundle directory holding config.json; the backend
	// mounts Rootfs at Bundle/rootfs when Rootfs is not empty.
	Bundle string
	Rootfs []mount.Mount
	// Spec is the parsed config.json, with namespace paths already pointing
	// at the sandbox's namespaces.
	Spec  *specs.Spec
	Stdio Stdio
}

// ExecConfig is what a backend gets to create an extra process.
type ExecConfig struct {
	ID      string
	Process *specs.Process
	Stdio   Stdio
}

// ExitStatus is how a process or sandbox ended.
type ExitStatus struct {
	Code     uint32
	ExitedAt time.Time
}

// ProcessInfo is one process of a container.
type ProcessInfo struct {
	Pid    uint32
	ExecID string
}

// Stats is a resource usage sample.
type Stats struct {
	Timestamp          time.Time
	CPUUsageNanos      uint64
	MemoryUsageBytes   uint64
	MemoryLimitBytes   uint64
	MemoryWorkingBytes uint64
	Pids               uint64
	// DiskReadBytes and DiskWriteBytes are the bytes read from and
	// written to block devices (cgroup io accounting; writes to a tmpfs
	// or to memory are not counted).
	DiskReadBytes, DiskWriteBytes uint64
	// NetRxBytes and NetTxBytes are the bytes received and sent on the
	// sandbox's network interfaces (set for sandboxes, not containers; 0
	// for the host's network).
	NetRxBytes, NetTxBytes uint64
	// Raw carries the backend's native metrics message (for example a
	// cgroups v1 or v2 Metrics) for callers that understand it.
	Raw any
}

// PortDialer is implemented by sandboxes whose ports the engine cannot
// reach from the host in their network namespace (a VM's, a user-space
// network stack's): DialPort connects to TCP port on the sandbox's
// loopback.
type PortDialer interface {
	DialPort(ctx context.Context, port int) (net.Conn, error)
}

// ContainerRecoverer is implemented by sandboxes that can re-attach to a
// container after the engine restarted. pid is the init's host pid.
type ContainerRecoverer interface {
	RecoverContainer(ctx context.Context, cfg ContainerConfig, pid uint32) (Container, error)
}

// ExecRecoverer is implemented by containers that can re-attach to their
// exec'd processes after the engine restarted, as a [ContainerRecoverer]
// does to containers. The engine records each exec'd process crash-safely
// when it is created, started and when it exits, and calls RecoverExec
// for every record it finds once the container is recovered.
type ExecRecoverer interface {
	// RecoverExec re-attaches to exec'd process cfg.ID as rec describes
	// it. A started process that is still running is watched, and its
	// exit reported by Wait with its real exit code; one that exited
	// while nobody watched reports the exit code it had, if the kind can
	// still learn it (else 255). A process whose pid now names another
	// process (the pid was reused) must be taken for exited, never
	// signalled. A process whose exit the engine already recorded
	// (rec.Exited) only needs Delete to release what it holds. An error
	// makes the engine report the process exited with an unknown status
	// (255).
	RecoverExec(ctx context.Context, cfg ExecConfig, rec ExecRecord) (Process, error)
}

// ExecRecord is what the engine recorded about an exec'd process for
// [ExecRecoverer.RecoverExec].
type ExecRecord struct {
	// Pid is the host pid Start returned; 0 if the process was never
	// started.
	Pid uint32
	// State is what the process's [RecoveryStater] returned after Start
	// (nil if it has none), for the kind to recognise the process, e.g.
	// its start time against pid reuse.
	State []byte
	// Exited tells the engine recorded the process's exit before the
	// restart.
	Exited bool
}

// ExitRecorder is implemented by exec'd processes that keep what tells
// how they ended (a host process left unreaped, so that the process that
// reaps it after a crash learns its status) until the engine has recorded
// their exit crash-safely: the engine calls ExitRecorded once, after Wait
// returned and it wrote the exit to the process's record (or failed to),
// and the process then lets go of it. Delete lets go of it too.
type ExitRecorder interface {
	ExitRecorded()
}

// RecoveryStater is implemented by exec'd processes that need more than
// their pid to be recovered: RecoveryState is called once after Start and
// its result is handed back to [ExecRecoverer.RecoverExec] as
// [ExecRecord.State].
type RecoveryStater interface {
	RecoveryState() ([]byte, error)
}
