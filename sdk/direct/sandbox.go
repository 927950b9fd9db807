package direct

import (
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/network"
)

// Namespace is the containerd-style namespace of sandboxes made through
// Magnetar's API.
const Namespace = "magnetar"

// NetworkMode is how a sandbox is networked.
type NetworkMode int

// Network modes. The numbers are those of the API's NetworkMode; a value
// not listed here gives the sandbox neither a private network nor a
// network namespace.
const (
	// NetworkDefault is NetworkNone.
	NetworkDefault NetworkMode = iota
	// NetworkNone is a new network namespace with only a loopback
	// interface.
	NetworkNone
	// NetworkHost is the host's network namespace.
	NetworkHost
	// NetworkNetNS is an existing network namespace, Network.NetNSPath.
	NetworkNetNS
	// NetworkBridge is a network namespace of the sandboxer's, attached
	// by CNI to one of its networks (Network.Name): an address on a
	// bridge, NAT for outbound traffic, and an egress policy.
	NetworkBridge
)

// Network is the network of a sandbox.
type Network struct {
	Mode NetworkMode
	// NetNSPath is the network namespace of NetworkNetNS.
	NetNSPath string
	// Name is the network of NetworkBridge ("": the first configured).
	Name string
	// Egress is the egress policy of NetworkBridge (zero: allow all).
	Egress network.Policy
}

// SandboxRequest describes a sandbox to create.
type SandboxRequest struct {
	// ID is the sandbox's ID; with none, one is generated.
	ID string
	// Kind is the sandbox kind; required.
	Kind string
	// Hostname defaults to the first 12 characters of the ID for a
	// sandbox with its own network; the host network keeps the host's.
	Hostname     string
	CgroupParent string
	Labels       map[string]string
	Annotations  map[string]string
	// Resources, if set, are the sandbox's resources.
	Resources *Resources
	DNS       backend.DNSConfig
	Network   Network
	// Timeout, if positive, ends the sandbox this long after its creation
	// (stopped and deleted, see [Service.SetTimeout]).
	Timeout time.Duration
	// IdleTimeout, if positive, ends the sandbox once it has been idle
	// this long: no call about it or its containers, and no process.
	IdleTimeout time.Duration
}

// CreateSandbox creates a sandbox.
//
// Every field is checked before anything is created (docs/api.md,
// "Limits"); what is refused is errdefs.ErrInvalidArgument, most often an
// [engine.FieldError] naming the field.
func (s *Service) CreateSandbox(ctx context.Context, req SandboxRequest) (engine.SandboxStatus, error) {
	if err := validateSandboxRequest(&req); err != nil {
		return engine.SandboxStatus{}, err
	}
	id := req.ID
	if id == "" {
		id = newID()
	}
	spec := engine.SandboxSpec{
		ID: id, Kind: req.Kind, Namespace: Namespace, Hostname: req.Hostname,
		CgroupParent: req.CgroupParent, Labels: req.Labels, Annotations: req.Annotations,
		Resources: mergeResources(nil, req.Resources),
		DNS:       req.DNS,
	}
	lt, err := lifetime(req.Timeout, req.IdleTimeout)
	if err != nil {
		return engine.SandboxStatus{}, err
	}
	spec.Lifetime = lt
	n := req.Network
	if n.Mode == NetworkDefault {
		n.Mode = s.defaultNetwork
	}
	if n.Mode != NetworkBridge && (n.Name != "" || !isZeroPolicy(n.Egress)) {
		return engine.SandboxStatus{}, invalid("network", "a network name and an egress policy are only for network mode BRIDGE")
	}
	switch n.Mode {
	case NetworkDefault, NetworkNone:
		spec.PrivateNetwork = true
	case NetworkBridge:
		nm := s.e.Network()
		if nm == nil {
			return engine.SandboxStatus{}, fmt.Errorf("network mode BRIDGE: this server has no bridge networks (CNI): %w", errdefs.ErrFailedPrecondition)
		}
		nc, err := nm.Network(n.Name)
		if err != nil {
			return engine.SandboxStatus{}, invalid("network.name", "%v", err)
		}
		spec.Network = &engine.NetworkSpec{Name: nc.Name, Egress: n.Egress}
		if len(spec.DNS.Servers) == 0 && len(nc.DNS) > 0 {
			spec.DNS.Servers = slices.Clone(nc.DNS)
		}
	case NetworkHost:
		if !s.hostAccess {
			return engine.SandboxStatus{}, denied("network.mode", "the host network reaches every service of the host")
		}
		spec.Hostname = ""
	case NetworkNetNS:
		if n.NetNSPath == "" {
			return engine.SandboxStatus{}, fmt.Errorf("network mode NETNS needs netns_path: %w", errdefs.ErrInvalidArgument)
		}
		// Only in the configured netns directories (CRI's are checked
		// less: containerd chooses them).
		if err := s.e.CheckNetNSPath("network.netns_path", n.NetNSPath); err != nil {
			return engine.SandboxStatus{}, err
		}
		spec.NetNSPath = n.NetNSPath
	}
	if spec.Kind == "" {
		return engine.SandboxStatus{}, fmt.Errorf("kind is required: %w", errdefs.ErrInvalidArgument)
	}
	if spec.Hostname == "" && (spec.PrivateNetwork || spec.NetNSPath != "" || spec.Network != nil) {
		// Like Docker: a sandbox with its own UTS namespace is named after
		// its ID rather than inheriting the host's name.
		spec.Hostname = id[:min(12, len(id))]
	}
	return s.e.CreateSandbox(ctx, spec)
}

func isZeroPolicy(p network.Policy) bool {
	return p.Default == "" && p.DNS == "" && len(p.Allow) == 0 && len(p.Deny) == 0
}

// SetEgressPolicy replaces the egress policy of a sandbox on a bridge
// network while it runs (see [engine.Engine.SetEgressPolicy]).
func (s *Service) SetEgressPolicy(ctx context.Context, id string, p network.Policy) (engine.SandboxStatus, error) {
	if err := s.ownSandbox(ctx, id); err != nil {
		return engine.SandboxStatus{}, err
	}
	return s.e.SetEgressPolicy(ctx, id, p)
}

// lifetime turns durations counted from now into an engine lifetime.
func lifetime(timeout, idle time.Duration) (engine.Lifetime, error) {
	if timeout < 0 || idle < 0 {
		return engine.Lifetime{}, fmt.Errorf("timeout %v and idle timeout %v must not be negative: %w", timeout, idle, errdefs.ErrInvalidArgument)
	}
	var l engine.Lifetime
	if timeout > 0 {
		l.Deadline = time.Now().Add(timeout)
	}
	l.IdleTimeout = idle
	return l, nil
}

// SetTimeout replaces a sandbox's lifetime: it ends timeout from now (0:
// no deadline) or after idle without activity (0: never). At its end the
// sandbox is stopped and deleted, after an [engine.TopicSandboxExpired]
// event.
func (s *Service) SetTimeout(ctx context.Context, id string, timeout, idle time.Duration) (engine.SandboxStatus, error) {
	l, err := lifetime(timeout, idle)
	if err != nil {
		return engine.SandboxStatus{}, err
	}
	return s.e.SetLifetime(ctx, id, l)
}

// SandboxPaused is the state ListSandboxes filters on for a paused
// sandbox: the engine reports it ready with Paused set.
const SandboxPaused engine.SandboxState = "paused"

// EffectiveState is st's state as the API shows it: SandboxPaused for a
// paused ready sandbox.
func EffectiveState(st engine.SandboxStatus) engine.SandboxState {
	if st.Paused && st.State == engine.SandboxReady {
		return SandboxPaused
	}
	return st.State
}

// PauseSandbox freezes every running container of a sandbox made through
// this API (see [engine.Engine.PauseSandbox]); a pod of containerd's is
// paused through containerd, which would otherwise not know.
func (s *Service) PauseSandbox(ctx context.Context, id string) (engine.SandboxStatus, error) {
	if err := s.ownSandbox(ctx, id); err != nil {
		return engine.SandboxStatus{}, err
	}
	return s.e.PauseSandbox(ctx, id)
}

// ResumeSandbox thaws what PauseSandbox froze.
func (s *Service) ResumeSandbox(ctx context.Context, id string) (engine.SandboxStatus, error) {
	if err := s.ownSandbox(ctx, id); err != nil {
		return engine.SandboxStatus{}, err
	}
	return s.e.ResumeSandbox(ctx, id)
}

// ownSandbox checks that sandbox id was made through this API.
func (s *Service) ownSandbox(ctx context.Context, id string) error {
	s.e.Touch(id)
	st, err := s.e.Sandbox(ctx, id)
	if err != nil {
		return err
	}
	if st.Namespace != Namespace {
		return fmt.Errorf("sandbox %q belongs to containerd (namespace %s): pause its containers through containerd: %w", id, st.Namespace, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// MinUsageInterval bounds how often WatchUsage samples.
const MinUsageInterval = 100 * time.Millisecond

// Usage returns what a sandbox uses now (see [engine.Engine.SandboxUsage]).
func (s *Service) Usage(ctx context.Context, id string) (*backend.Stats, error) {
	s.e.Touch(id)
	return s.e.SandboxUsage(ctx, id)
}

// WatchUsage calls fn with the sandbox's usage every interval (default
// 1 s), from now until ctx ends, fn fails or the sandbox is gone (an
// error: not found).
func (s *Service) WatchUsage(ctx context.Context, id string, interval time.Duration, fn func(*backend.Stats) error) error {
	if interval == 0 {
		interval = time.Second
	}
	if interval < MinUsageInterval {
		return fmt.Errorf("usage interval %v is shorter than %v: %w", interval, MinUsageInterval, errdefs.ErrInvalidArgument)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, err := s.e.SandboxUsage(ctx, id)
		if err != nil {
			return err
		}
		if err := fn(st); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// DialPort connects to a TCP port of a sandbox (see
// [engine.Engine.DialPort]).
func (s *Service) DialPort(ctx context.Context, id string, port int) (net.Conn, error) {
	s.e.Touch(id)
	return s.e.DialPort(ctx, id, port)
}

// StartSandbox starts a created sandbox.
func (s *Service) StartSandbox(ctx context.Context, id string) (engine.SandboxStatus, error) {
	s.e.Touch(id)
	return s.e.StartSandbox(ctx, id)
}

// StopSandbox stops a sandbox and its containers, giving them timeout to
// exit, and returns its state afterwards.
func (s *Service) StopSandbox(ctx context.Context, id string, timeout time.Duration) (engine.SandboxStatus, error) {
	s.e.Touch(id)
	if err := s.e.StopSandbox(ctx, id, timeout); err != nil {
		return engine.SandboxStatus{}, err
	}
	return s.e.Sandbox(ctx, id)
}

// DeleteSandbox removes a sandbox. A ready sandbox is only removed with
// force.
func (s *Service) DeleteSandbox(ctx context.Context, id string, force bool) error {
	st, err := s.e.Sandbox(ctx, id)
	if err != nil {
		return err
	}
	if st.State == engine.SandboxReady && !force {
		return fmt.Errorf("sandbox %q is running; stop it first or delete with force: %w", st.ID, errdefs.ErrFailedPrecondition)
	}
	if err := s.e.DeleteSandbox(ctx, st.ID); err != nil {
		return err
	}
	for _, cid := range st.Containers {
		s.forgetContainer(cid)
	}
	return nil
}

// Sandbox returns one sandbox.
func (s *Service) Sandbox(ctx context.Context, id string) (engine.SandboxStatus, error) {
	s.e.Touch(id)
	return s.e.Sandbox(ctx, id)
}

// SandboxFilter selects sandboxes; empty fields match everything.
type SandboxFilter struct {
	// Kinds are the kinds of the sandboxes, any of them.
	Kinds []string
	// States are the states of the sandboxes, any of them.
	States []engine.SandboxState
	// Labels must all be among the sandboxes' labels.
	Labels map[string]string
}

// ListSandboxes returns the sandboxes matching every field of f.
func (s *Service) ListSandboxes(ctx context.Context, f SandboxFilter) []engine.SandboxStatus {
	var out []engine.SandboxStatus
	for _, st := range s.e.ListSandboxes(ctx) {
		if len(f.Kinds) > 0 && !slices.Contains(f.Kinds, st.Kind) {
			continue
		}
		if len(f.States) > 0 && !slices.Contains(f.States, EffectiveState(st)) {
			continue
		}
		if !matchLabels(st.Labels, f.Labels) {
			continue
		}
		out = append(out, st)
	}
	return out
}

func matchLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// Kinds lists the sandbox kinds and whether they run here.
func (s *Service) Kinds(ctx context.Context) []engine.KindInfo {
	return s.e.Kinds(ctx)
}

// EventFilter selects events; empty fields match everything.
type EventFilter struct {
	// SandboxIDs are the sandboxes of the events, any of them.
	SandboxIDs []string
	// Topics are the topics of the events (engine.Topic...), any of
	// them.
	Topics []string
}

// LastEventSeq returns the sequence number of the newest event (0 before
// the first).
func (s *Service) LastEventSeq() uint64 {
	return s.e.LastEventSeq()
}

// WatchEvents calls fn with the engine's events matching f, in order,
// until ctx ends (nil) or fn fails (its error). The ExecID of an event of
// a container's init process is empty. With after set, the kept events
// whose sequence number (Event.Seq) is greater come first
// (errdefs.ErrOutOfRange if some of them are no longer kept,
// errdefs.ErrInvalidArgument for a sequence number beyond the newest
// event); without, only events from now on. A watcher that falls behind
// goes on from the event log, or fails with errdefs.ErrOutOfRange once
// the log no longer has what it missed. When the engine closes (the
// sandboxer shuts down), it fails with errdefs.ErrUnavailable: the client
// resumes after the last event it got.
func (s *Service) WatchEvents(ctx context.Context, f EventFilter, after *uint64, fn func(engine.Event) error) error {
	send := func(ev engine.Event) error {
		if (len(f.SandboxIDs) > 0 && !slices.Contains(f.SandboxIDs, ev.SandboxID)) || (len(f.Topics) > 0 && !slices.Contains(f.Topics, ev.Topic)) {
			return nil
		}
		if ev.ExecID == ev.ContainerID {
			ev.ExecID = ""
		}
		return fn(ev)
	}
	var last uint64
	replay := after != nil
	if replay {
		last = *after
	}
	for {
		subCtx, cancel := context.WithCancel(ctx)
		ch, cut := s.e.SubscribeAfter(subCtx)
		if !replay {
			last, replay = cut, true
		}
		err := func() error {
			defer cancel()
			// What the log has up to where the subscription starts.
			for last < cut {
				evs, err := s.e.EventsAfter(last, cut, 256)
				if err != nil {
					return err
				}
				if len(evs) == 0 {
					return fmt.Errorf("event log ends before event %d: %w", cut, errdefs.ErrDataLoss)
				}
				for _, ev := range evs {
					if err := send(ev); err != nil {
						return err
					}
					last = ev.Seq
				}
			}
			for ev := range ch {
				if ev.Seq <= last {
					continue
				}
				if err := send(ev); err != nil {
					return err
				}
				last = ev.Seq
			}
			return nil
		}()
		if err != nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-s.ctx.Done():
			return fmt.Errorf("the sandboxer is shutting down; resume after event %d: %w", last, errdefs.ErrUnavailable)
		default:
		}
		// The subscription fell behind and was dropped, or the engine
		// closed: go on from the log (which tells which).
		if _, err := s.e.EventsAfter(last, last, 1); err != nil {
			return err
		}
	}
}
