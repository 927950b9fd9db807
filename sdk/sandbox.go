package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
)

// SandboxState is the lifecycle state of a sandbox.
type SandboxState string

// Sandbox states.
const (
	// SandboxCreated: created, not started yet.
	SandboxCreated SandboxState = "created"
	// SandboxReady: running and accepting containers.
	SandboxReady SandboxState = "ready"
	// SandboxStopped: exited or stopped.
	SandboxStopped SandboxState = "stopped"
	// SandboxUnknown: the sandboxer cannot tell, for example after a
	// restart when the backend does not answer.
	SandboxUnknown SandboxState = "unknown"
	// SandboxPaused: ready, with every container frozen (see
	// [Sandbox.Pause]).
	SandboxPaused SandboxState = "paused"
)

// Sandbox is a snapshot of a sandbox, taken when it was returned, and a
// handle to act on it. [Sandbox.Refresh] takes a new snapshot.
type Sandbox struct {
	// ID is the sandbox's unique ID.
	ID string `json:"id"`
	// Kind is the sandbox kind, for example "runc".
	Kind string `json:"kind"`
	// State is the lifecycle state when the snapshot was taken.
	State SandboxState `json:"state"`
	// Labels and Annotations are those given at creation.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// CreatedAt, StartedAt and ExitedAt are the lifecycle times; zero when
	// the sandbox has not got there.
	CreatedAt time.Time `json:"createdAt"`
	StartedAt time.Time `json:"startedAt,omitzero"`
	ExitedAt  time.Time `json:"exitedAt,omitzero"`
	// ExitStatus is the exit status, valid when ExitedAt is set.
	ExitStatus uint32 `json:"exitStatus,omitempty"`
	// PID is the host PID of the sandbox's own process (a VMM), if any.
	PID uint32 `json:"pid,omitempty"`
	// NetNSPath is the sandbox's network namespace on the host, if any.
	NetNSPath string `json:"netnsPath,omitempty"`
	// TaskAddress is the containerd task API address of the sandbox, when
	// the sandboxer serves one.
	TaskAddress string `json:"taskAddress,omitempty"`
	// Info holds backend-specific details for humans.
	Info map[string]string `json:"info,omitempty"`
	// ExpiresAt is when the sandbox's deadline ends it (zero: no deadline;
	// see [WithTimeoutAfter] and [Sandbox.SetTimeout]).
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// IdleTimeout ends the sandbox once it has been idle this long (0:
	// never; see [WithIdleTimeout]).
	IdleTimeout time.Duration `json:"idleTimeout,omitempty"`
	// Network is the sandbox's bridge network; nil for other modes.
	Network *SandboxNetwork `json:"network,omitempty"`

	client *Client
}

// SandboxNetwork is a sandbox's attachment to a bridge network.
type SandboxNetwork struct {
	// Name is the network's, as configured in the sandboxer.
	Name string `json:"name"`
	// IPs are the sandbox's addresses with their prefix length.
	IPs []string `json:"ips,omitempty"`
	// Gateway is the bridge's address.
	Gateway string `json:"gateway,omitempty"`
	// Egress is the policy in force.
	Egress EgressPolicy `json:"egress"`
}

// EgressPolicy says what a sandbox on a bridge network may send (see the
// API's EgressPolicy). Traffic is judged in this order: loopback and
// replies to connections made to the sandbox pass; then DNS (port 53),
// if DNS is set; then Deny; then Allow; then DenyByDefault. Rules are
// "CIDR", "ADDRESS", "CIDR:PORT" or "[IPv6-CIDR]:PORT" (a port matches TCP
// and UDP). The zero policy allows everything.
type EgressPolicy struct {
	// DenyByDefault refuses traffic that no rule matches.
	DenyByDefault bool     `json:"denyByDefault,omitempty"`
	Allow         []string `json:"allow,omitempty"`
	Deny          []string `json:"deny,omitempty"`
	// DNS is "allow", "deny" or "" (judged by the rules).
	DNS string `json:"dns,omitempty"`
}

func (p EgressPolicy) toProto() (*sandboxv1.EgressPolicy, error) {
	out := &sandboxv1.EgressPolicy{Allow: p.Allow, Deny: p.Deny}
	if p.DenyByDefault {
		out.DefaultAction = sandboxv1.EgressAction_EGRESS_ACTION_DENY
	}
	switch p.DNS {
	case "":
	case "allow":
		out.Dns = sandboxv1.EgressAction_EGRESS_ACTION_ALLOW
	case "deny":
		out.Dns = sandboxv1.EgressAction_EGRESS_ACTION_DENY
	default:
		return nil, fmt.Errorf("egress policy: DNS %q: want allow, deny or empty: %w", p.DNS, errdefs.ErrInvalidArgument)
	}
	return out, nil
}

func egressFromProto(p *sandboxv1.EgressPolicy) EgressPolicy {
	out := EgressPolicy{Allow: p.GetAllow(), Deny: p.GetDeny(), DenyByDefault: p.GetDefaultAction() == sandboxv1.EgressAction_EGRESS_ACTION_DENY}
	switch p.GetDns() {
	case sandboxv1.EgressAction_EGRESS_ACTION_ALLOW:
		out.DNS = "allow"
	case sandboxv1.EgressAction_EGRESS_ACTION_DENY:
		out.DNS = "deny"
	}
	return out
}

// UpdateNetworkPolicy replaces the egress policy of a sandbox on a bridge
// network, at once, also while it runs; the snapshot is refreshed.
func (s *Sandbox) UpdateNetworkPolicy(ctx context.Context, p EgressPolicy) error {
	pp, err := p.toProto()
	if err != nil {
		return err
	}
	res, err := s.client.sandboxes.UpdateNetworkPolicy(ctx, &sandboxv1.UpdateNetworkPolicyRequest{SandboxId: s.ID, Egress: pp})
	if err != nil {
		return fromAPI(err)
	}
	*s = *s.client.sandboxFromProto(res.GetSandbox())
	return nil
}

func (c *Client) sandboxFromProto(p *sandboxv1.Sandbox) *Sandbox {
	var n *SandboxNetwork
	if pn := p.GetNetwork(); pn != nil {
		n = &SandboxNetwork{Name: pn.GetName(), IPs: pn.GetIpAddresses(), Gateway: pn.GetGateway(), Egress: egressFromProto(pn.GetEgress())}
	}
	return &Sandbox{
		Network: n,
		ID:      p.GetId(), Kind: p.GetKind(),
		State:  SandboxState(enumName(p.GetState().String(), "SANDBOX_STATE_")),
		Labels: p.GetLabels(), Annotations: p.GetAnnotations(),
		CreatedAt: timeOf(p.GetCreatedAt()), StartedAt: timeOf(p.GetStartedAt()), ExitedAt: timeOf(p.GetExitedAt()),
		ExitStatus: p.GetExitStatus(), PID: p.GetPid(), NetNSPath: p.GetNetnsPath(), TaskAddress: p.GetTaskAddress(),
		Info:      p.GetInfo(),
		ExpiresAt: timeOf(p.GetExpiresAt()), IdleTimeout: p.GetIdleTimeout().AsDuration(),
		client: c,
	}
}

// timeOf converts a timestamp; unset becomes the zero time.
func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// SandboxOption configures [Client.CreateSandbox].
type SandboxOption func(*sandboxOptions) error

type sandboxOptions struct {
	req *sandboxv1.CreateSandboxRequest
}

// WithID sets the sandbox's ID. Default: the server chooses one. IDs are
// letters and digits separated by '.', '_' or '-'.
func WithID(id string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		if id == "" {
			return fmt.Errorf("WithID: empty ID: %w", errdefs.ErrInvalidArgument)
		}
		r.SandboxId = id
		return nil
	}
}

// WithLabels adds labels to the sandbox, for [WithLabel] filters. Default:
// none.
func WithLabels(labels map[string]string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		for k, v := range labels {
			r.Labels[k] = v
		}
		return nil
	}
}

// WithAnnotations adds annotations, passed to the backend and to the OCI
// specs. Default: none.
func WithAnnotations(annotations map[string]string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		if r.Annotations == nil {
			r.Annotations = map[string]string{}
		}
		for k, v := range annotations {
			r.Annotations[k] = v
		}
		return nil
	}
}

// WithHostname sets the host name inside the sandbox. Default: the
// sandbox ID.
func WithHostname(name string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		r.Hostname = name
		return nil
	}
}

// Network is a sandbox's network mode.
type Network string

// Network modes.
const (
	// NetworkNone gives the sandbox its own network namespace with only a
	// loopback interface. It is the default.
	NetworkNone Network = "none"
	// NetworkHost shares the host's network namespace (not every kind
	// supports it; the server must allow host access).
	NetworkHost Network = "host"
	// NetworkBridge gives the sandbox a network namespace attached to the
	// sandboxer's default bridge network (see [WithBridgeNetwork]).
	NetworkBridge Network = "bridge"
)

// WithNetwork selects the sandbox's network. Default: the sandboxer's
// default mode ([NetworkNone] unless it is configured otherwise).
func WithNetwork(mode Network) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		switch mode {
		case NetworkNone:
			r.Network = &sandboxv1.NetworkConfig{Mode: sandboxv1.NetworkMode_NETWORK_MODE_NONE}
		case NetworkHost:
			r.Network = &sandboxv1.NetworkConfig{Mode: sandboxv1.NetworkMode_NETWORK_MODE_HOST}
		case NetworkBridge:
			r.Network = &sandboxv1.NetworkConfig{Mode: sandboxv1.NetworkMode_NETWORK_MODE_BRIDGE}
		default:
			return fmt.Errorf("WithNetwork: unknown mode %q (none, host, bridge): %w", mode, errdefs.ErrInvalidArgument)
		}
		return nil
	}
}

// WithBridgeNetwork attaches the sandbox to the sandboxer's bridge
// network called name ("": its default network), with egress policy p:
// its own address, NAT for outbound traffic when the network has it.
func WithBridgeNetwork(name string, p EgressPolicy) SandboxOption {
	return func(o *sandboxOptions) error {
		pp, err := p.toProto()
		if err != nil {
			return err
		}
		o.req.Network = &sandboxv1.NetworkConfig{Mode: sandboxv1.NetworkMode_NETWORK_MODE_BRIDGE, Network: name, Egress: pp}
		return nil
	}
}

// WithNetNS runs the sandbox in an existing network namespace, for example
// one prepared by CNI ("/var/run/netns/cni-1234"). Default: [NetworkNone].
func WithNetNS(path string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		if path == "" {
			return fmt.Errorf("WithNetNS: empty path: %w", errdefs.ErrInvalidArgument)
		}
		r.Network = &sandboxv1.NetworkConfig{Mode: sandboxv1.NetworkMode_NETWORK_MODE_NETNS, NetnsPath: path}
		return nil
	}
}

// WithDNS sets the resolver configuration inside the sandbox. Default: a
// copy of the host's /etc/resolv.conf.
func WithDNS(servers, searches, options []string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		r.Dns = &typesv1.DNSConfig{Servers: servers, Searches: searches, Options: options}
		return nil
	}
}

// WithCgroupParent sets the parent cgroup of the sandbox, for example
// "/magnetar". Default: the server's.
func WithCgroupParent(parent string) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		r.CgroupParent = parent
		return nil
	}
}

// Resources are Linux resource limits. A zero field sets no limit.
type Resources struct {
	// MemoryLimit is the memory limit in bytes.
	MemoryLimit int64 `json:"memoryLimit,omitempty"`
	// CPUShares is the relative CPU weight (cgroup v1 shares, 2 to 262144).
	CPUShares uint64 `json:"cpuShares,omitempty"`
	// CPUQuota and CPUPeriod bound CPU time: CPUQuota microseconds every
	// CPUPeriod microseconds (default period 100000). CPUQuota = 2 *
	// CPUPeriod is two CPUs.
	CPUQuota  int64  `json:"cpuQuota,omitempty"`
	CPUPeriod uint64 `json:"cpuPeriod,omitempty"`
	// CpusetCPUs lists the CPUs the workload may run on, for example "0-3".
	CpusetCPUs string `json:"cpusetCpus,omitempty"`
	// PidsLimit is the maximum number of processes.
	PidsLimit int64 `json:"pidsLimit,omitempty"`
}

func (r Resources) proto() *typesv1.Resources {
	var p typesv1.Resources
	if r.MemoryLimit != 0 {
		p.MemoryLimitBytes = &r.MemoryLimit
	}
	if r.CPUShares != 0 {
		p.CpuShares = &r.CPUShares
	}
	if r.CPUQuota != 0 {
		p.CpuQuotaUs = &r.CPUQuota
	}
	if r.CPUPeriod != 0 {
		p.CpuPeriodUs = &r.CPUPeriod
	}
	if r.CpusetCPUs != "" {
		p.CpusetCpus = &r.CpusetCPUs
	}
	if r.PidsLimit != 0 {
		p.PidsLimit = &r.PidsLimit
	}
	return &p
}

// WithResources bounds the whole sandbox. Default: no limits.
func WithResources(res Resources) SandboxOption {
	return func(o *sandboxOptions) error {
		r := o.req
		r.Resources = res.proto()
		return nil
	}
}

// WithTimeoutAfter gives the sandbox a deadline d after its creation: it
// is then stopped and deleted (an event of type "sandbox-expired" comes
// first), whatever runs in it. [Sandbox.SetTimeout] moves it. Default: no
// deadline.
func WithTimeoutAfter(d time.Duration) SandboxOption {
	return func(o *sandboxOptions) error {
		if d < 0 {
			return fmt.Errorf("WithTimeoutAfter: negative duration %v: %w", d, errdefs.ErrInvalidArgument)
		}
		o.req.Timeout = durationpb.New(d)
		return nil
	}
}

// WithIdleTimeout ends the sandbox (stopped and deleted, after a
// "sandbox-expired" event) once it has been idle for d: no call about it
// or its containers, and no process running in it. Default: never.
func WithIdleTimeout(d time.Duration) SandboxOption {
	return func(o *sandboxOptions) error {
		if d < 0 {
			return fmt.Errorf("WithIdleTimeout: negative duration %v: %w", d, errdefs.ErrInvalidArgument)
		}
		o.req.IdleTimeout = durationpb.New(d)
		return nil
	}
}

// Pause freezes every running container of the sandbox: its processes
// use no CPU until [Sandbox.Resume], and nothing new runs in it
// meanwhile. The snapshot is refreshed (State [SandboxPaused]).
func (s *Sandbox) Pause(ctx context.Context) error {
	res, err := s.client.sandboxes.PauseSandbox(ctx, &sandboxv1.PauseSandboxRequest{SandboxId: s.ID})
	if err != nil {
		return fromAPI(err)
	}
	*s = *s.client.sandboxFromProto(res.GetSandbox())
	return nil
}

// Resume thaws what [Sandbox.Pause] froze. The snapshot is refreshed.
func (s *Sandbox) Resume(ctx context.Context) error {
	res, err := s.client.sandboxes.ResumeSandbox(ctx, &sandboxv1.ResumeSandboxRequest{SandboxId: s.ID})
	if err != nil {
		return fromAPI(err)
	}
	*s = *s.client.sandboxFromProto(res.GetSandbox())
	return nil
}

// SetTimeout replaces the sandbox's lifetime: it ends timeout from now (0:
// no deadline) or once idle for idle (0: never). The sandbox's snapshot
// is refreshed.
func (s *Sandbox) SetTimeout(ctx context.Context, timeout, idle time.Duration) error {
	if timeout < 0 || idle < 0 {
		return fmt.Errorf("SetTimeout: negative duration: %w", errdefs.ErrInvalidArgument)
	}
	res, err := s.client.sandboxes.SetSandboxTimeout(ctx, &sandboxv1.SetSandboxTimeoutRequest{
		SandboxId: s.ID, Timeout: durationpb.New(timeout), IdleTimeout: durationpb.New(idle),
	})
	if err != nil {
		return fromAPI(err)
	}
	*s = *s.client.sandboxFromProto(res.GetSandbox())
	return nil
}

// CreateSandbox creates a sandbox of the given kind (see [Client.Kinds])
// and starts it, so that it is ready for containers. If starting fails,
// the sandbox is deleted again.
func (c *Client) CreateSandbox(ctx context.Context, kind string, opts ...SandboxOption) (_ *Sandbox, retErr error) {
	req := &sandboxv1.CreateSandboxRequest{Kind: kind}
	for _, opt := range opts {
		if err := opt(&sandboxOptions{req: req}); err != nil {
			return nil, err
		}
	}
	if kind == "" {
		return nil, fmt.Errorf("sandbox kind is required: %w", errdefs.ErrInvalidArgument)
	}
	created, err := c.sandboxes.CreateSandbox(ctx, req)
	if err != nil {
		return nil, fromAPI(err)
	}
	id := created.GetSandbox().GetId()
	started, err := c.sandboxes.StartSandbox(ctx, &sandboxv1.StartSandboxRequest{SandboxId: id})
	if err != nil {
		// Clean up with a context of its own: ctx may be what failed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_, _ = c.sandboxes.DeleteSandbox(cctx, &sandboxv1.DeleteSandboxRequest{SandboxId: id, Force: true})
		return nil, fromAPI(err)
	}
	return c.sandboxFromProto(started.GetSandbox()), nil
}

// Sandbox returns the sandbox with the given ID.
func (c *Client) Sandbox(ctx context.Context, id string) (*Sandbox, error) {
	res, err := c.sandboxes.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: id})
	if err != nil {
		return nil, fromAPI(err)
	}
	return c.sandboxFromProto(res.GetSandbox()), nil
}

// Filter narrows a listing ([Client.Sandboxes], [Client.Containers],
// [Client.Events]). All filters must match.
type Filter func(*filters)

type filters struct {
	labels     map[string]string
	kinds      []string
	states     []SandboxState
	sandboxIDs []string
}

func makeFilters(fs []Filter) filters {
	var f filters
	for _, fn := range fs {
		fn(&f)
	}
	return f
}

// WithLabel keeps sandboxes or containers that have the label key with
// the value.
func WithLabel(key, value string) Filter {
	return func(f *filters) {
		if f.labels == nil {
			f.labels = map[string]string{}
		}
		f.labels[key] = value
	}
}

// OfKind keeps sandboxes of one of the given kinds. Sandboxes only.
func OfKind(kinds ...string) Filter {
	return func(f *filters) { f.kinds = append(f.kinds, kinds...) }
}

// InState keeps sandboxes in one of the given states. Sandboxes only.
func InState(states ...SandboxState) Filter {
	return func(f *filters) { f.states = append(f.states, states...) }
}

// InSandbox keeps the containers, or the events, of the given sandboxes.
// [Client.Containers] takes at most one sandbox.
func InSandbox(ids ...string) Filter {
	return func(f *filters) { f.sandboxIDs = append(f.sandboxIDs, ids...) }
}

// Sandboxes lists the sandboxes that match every filter, ordered by
// creation time.
func (c *Client) Sandboxes(ctx context.Context, fs ...Filter) ([]*Sandbox, error) {
	f := makeFilters(fs)
	req := &sandboxv1.ListSandboxesRequest{Labels: f.labels, Kinds: f.kinds}
	for _, s := range f.states {
		v, ok := sandboxv1.SandboxState_value["SANDBOX_STATE_"+upperEnum(string(s))]
		if !ok || s == "" {
			return nil, fmt.Errorf("unknown sandbox state %q: %w", s, errdefs.ErrInvalidArgument)
		}
		req.States = append(req.States, sandboxv1.SandboxState(v))
	}
	res, err := c.sandboxes.ListSandboxes(ctx, req)
	if err != nil {
		return nil, fromAPI(err)
	}
	var out []*Sandbox
	for _, sb := range res.GetSandboxes() {
		if len(f.sandboxIDs) > 0 && !contains(f.sandboxIDs, sb.GetId()) {
			continue
		}
		out = append(out, c.sandboxFromProto(sb))
	}
	return out, nil
}

// Refresh updates the snapshot s from the sandboxer.
func (s *Sandbox) Refresh(ctx context.Context) error {
	n, err := s.client.Sandbox(ctx, s.ID)
	if err != nil {
		return err
	}
	*s = *n
	return nil
}

// StopOption configures [Sandbox.Stop].
type StopOption func(*stopOptions) error

type stopOptions struct {
	timeout *time.Duration
}

// WithTimeout sets how long processes get to exit after SIGTERM (a VM to
// power off) before they are killed. Zero kills at once. Default: the
// server's (10s for the sandboxer).
func WithTimeout(d time.Duration) StopOption {
	return func(o *stopOptions) error {
		if d < 0 {
			return fmt.Errorf("WithTimeout: negative timeout %v: %w", d, errdefs.ErrInvalidArgument)
		}
		o.timeout = &d
		return nil
	}
}

// Stop stops every container of the sandbox and then the sandbox.
// Stopping a stopped sandbox succeeds.
func (s *Sandbox) Stop(ctx context.Context, opts ...StopOption) error {
	var o stopOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return err
		}
	}
	req := &sandboxv1.StopSandboxRequest{SandboxId: s.ID}
	if o.timeout != nil {
		req.Timeout = durationpb.New(*o.timeout)
	}
	res, err := s.client.sandboxes.StopSandbox(ctx, req)
	if err != nil {
		return fromAPI(err)
	}
	if res.GetSandbox() != nil {
		*s = *s.client.sandboxFromProto(res.GetSandbox())
	}
	return nil
}

// DeleteOption configures [Sandbox.Delete] and [Container.Delete].
type DeleteOption func(*deleteOptions) error

type deleteOptions struct {
	force bool
}

// Force kills what is still running before deleting. Default: deleting a
// running sandbox or container fails with errdefs.ErrFailedPrecondition.
func Force() DeleteOption {
	return func(o *deleteOptions) error {
		o.force = true
		return nil
	}
}

func makeDeleteOptions(opts []DeleteOption) (deleteOptions, error) {
	var o deleteOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// Delete removes the sandbox and everything it holds. Without [Force] the
// sandbox must be stopped first.
func (s *Sandbox) Delete(ctx context.Context, opts ...DeleteOption) error {
	o, err := makeDeleteOptions(opts)
	if err != nil {
		return err
	}
	_, err = s.client.sandboxes.DeleteSandbox(ctx, &sandboxv1.DeleteSandboxRequest{SandboxId: s.ID, Force: o.force})
	return fromAPI(err)
}

// Containers lists the containers of the sandbox.
func (s *Sandbox) Containers(ctx context.Context, fs ...Filter) ([]*Container, error) {
	return s.client.Containers(ctx, append(fs, InSandbox(s.ID))...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Usage is what a sandbox uses, summed over its containers (for a VM: its
// VMM on the host).
type Usage struct {
	// Timestamp is when it was read.
	Timestamp time.Time `json:"timestamp"`
	// CPU is the CPU time used by the containers that exist now.
	CPU time.Duration `json:"cpu"`
	// MemoryBytes is the memory in use; MemoryWorkingSetBytes the same
	// without inactive file cache.
	MemoryBytes           uint64 `json:"memoryBytes"`
	MemoryWorkingSetBytes uint64 `json:"memoryWorkingSetBytes"`
	// Pids counts processes and threads.
	Pids uint64 `json:"pids"`
	// DiskReadBytes and DiskWriteBytes count block device I/O.
	DiskReadBytes  uint64 `json:"diskReadBytes"`
	DiskWriteBytes uint64 `json:"diskWriteBytes"`
	// NetRxBytes and NetTxBytes count the sandbox's network traffic (0 on
	// the host's network).
	NetRxBytes uint64 `json:"netRxBytes"`
	NetTxBytes uint64 `json:"netTxBytes"`
}

func usageFromProto(u *sandboxv1.SandboxUsage) Usage {
	return Usage{
		Timestamp: timeOf(u.GetTimestamp()), CPU: time.Duration(u.GetCpuUsageNs()),
		MemoryBytes: u.GetMemoryUsageBytes(), MemoryWorkingSetBytes: u.GetMemoryWorkingSetBytes(), Pids: u.GetPids(),
		DiskReadBytes: u.GetDiskReadBytes(), DiskWriteBytes: u.GetDiskWriteBytes(),
		NetRxBytes: u.GetNetRxBytes(), NetTxBytes: u.GetNetTxBytes(),
	}
}

// Usage returns what the sandbox uses now.
func (s *Sandbox) Usage(ctx context.Context) (Usage, error) {
	res, err := s.client.sandboxes.GetSandboxUsage(ctx, &sandboxv1.GetSandboxUsageRequest{SandboxId: s.ID})
	if err != nil {
		return Usage{}, fromAPI(err)
	}
	return usageFromProto(res.GetUsage()), nil
}

// WatchUsage yields the sandbox's usage every interval (0: every second;
// at least 100 ms), starting at once, until ctx ends, the consumer stops
// or the sandbox is deleted (an error that errdefs.IsNotFound matches).
// A stream broken by a restart of the sandboxer is opened again (within
// the client's retry budget, see [WithRetryTimeout]): the samples go on
// from the next one.
func (s *Sandbox) WatchUsage(ctx context.Context, interval time.Duration) iter.Seq2[Usage, error] {
	return func(yield func(Usage, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		b := newBackoff(s.client.retry)
		for {
			stop, err := s.watchUsageOnce(ctx, interval, b, yield)
			if stop {
				return
			}
			if !unavailable(err) || ctx.Err() != nil {
				if ctx.Err() == nil {
					yield(Usage{}, err)
				}
				return
			}
			if err := b.wait(ctx, err); err != nil {
				if ctx.Err() == nil {
					yield(Usage{}, err)
				}
				return
			}
		}
	}
}

// watchUsageOnce is one WatchSandboxUsage stream of WatchUsage: stop when
// the consumer stopped or ctx ended, else the error that broke it.
func (s *Sandbox) watchUsageOnce(ctx context.Context, interval time.Duration, b *backoff, yield func(Usage, error) bool) (stop bool, _ error) {
	stream, err := s.client.sandboxes.WatchSandboxUsage(ctx, &sandboxv1.WatchSandboxUsageRequest{SandboxId: s.ID, Interval: durationpb.New(interval)})
	if err != nil {
		return ctx.Err() != nil, fromAPI(err)
	}
	defer stream.Close()
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			// The server ends the stream only with an error (NOT_FOUND).
			return ctx.Err() != nil, fmt.Errorf("usage stream of sandbox %q ended: %w", s.ID, errdefs.ErrUnavailable)
		}
		if err != nil {
			return ctx.Err() != nil, fromAPI(err)
		}
		b.reset()
		if !yield(usageFromProto(msg.GetUsage()), nil) {
			return true, nil
		}
	}
}
