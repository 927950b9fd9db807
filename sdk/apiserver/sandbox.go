package apiserver

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/network"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// invert returns the inverse of a one-to-one map.
func invert[K, V comparable](m map[K]V) map[V]K {
	out := make(map[V]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

// convertAll converts each element of in with m; an element m lacks
// becomes other(element), which must match nothing m maps to.
func convertAll[K comparable, V any](in []K, m map[K]V, other func(K) V) []V {
	if in == nil {
		return nil
	}
	out := make([]V, 0, len(in))
	for _, k := range in {
		v, ok := m[k]
		if !ok {
			v = other(k)
		}
		out = append(out, v)
	}
	return out
}

var (
	sandboxStates = map[engine.SandboxState]sandboxv1.SandboxState{
		engine.SandboxCreated: sandboxv1.SandboxState_SANDBOX_STATE_CREATED,
		engine.SandboxReady:   sandboxv1.SandboxState_SANDBOX_STATE_READY,
		engine.SandboxStopped: sandboxv1.SandboxState_SANDBOX_STATE_STOPPED,
		engine.SandboxUnknown: sandboxv1.SandboxState_SANDBOX_STATE_UNKNOWN,
		direct.SandboxPaused:  sandboxv1.SandboxState_SANDBOX_STATE_PAUSED,
	}
	engineSandboxStates = invert(sandboxStates)
)

func (s *Server) toSandbox(st engine.SandboxStatus) *sandboxv1.Sandbox {
	out := &sandboxv1.Sandbox{
		Id: st.ID, Kind: st.Kind, State: sandboxStates[direct.EffectiveState(st)], Labels: st.Labels, Annotations: st.Annotations,
		CreatedAt: ts(st.CreatedAt), StartedAt: ts(st.StartedAt), ExitedAt: ts(st.ExitedAt), ExitStatus: st.ExitCode,
		Pid: st.Pid, NetnsPath: st.NetNSPath, Info: st.Info,
	}
	if n := st.Network; n != nil {
		out.Network = &sandboxv1.SandboxNetwork{Name: n.Name, IpAddresses: n.IPs, Gateway: n.Gateway, Egress: fromEgress(n.Egress)}
	}
	if !st.Lifetime.Deadline.IsZero() {
		out.ExpiresAt = timestamppb.New(st.Lifetime.Deadline)
	}
	if st.Lifetime.IdleTimeout > 0 {
		out.IdleTimeout = durationpb.New(st.Lifetime.IdleTimeout)
	}
	if s.taskAddress != nil {
		out.TaskAddress = s.taskAddress(st.ID)
	}
	return out
}

// toResources converts resources; nil stays nil.
func toResources(r *typesv1.Resources) *direct.Resources {
	if r == nil {
		return nil
	}
	return &direct.Resources{
		CPUShares: r.CpuShares, CPUQuota: r.CpuQuotaUs, CPUPeriod: r.CpuPeriodUs, CpusetCPUs: r.CpusetCpus, CpusetMems: r.CpusetMems,
		MemoryLimit: r.MemoryLimitBytes, MemorySwapLimit: r.MemorySwapLimitBytes, PidsLimit: r.PidsLimit,
	}
}

// CreateSandbox creates a sandbox; with no ID, one is generated.
func (s *Server) CreateSandbox(ctx context.Context, req *sandboxv1.CreateSandboxRequest) (*sandboxv1.CreateSandboxResponse, error) {
	egress, err := toEgress("network.egress", req.GetNetwork().GetEgress())
	if err != nil {
		return nil, err
	}
	st, err := s.d.CreateSandbox(ctx, direct.SandboxRequest{
		ID: req.GetSandboxId(), Kind: req.GetKind(), Hostname: req.GetHostname(),
		CgroupParent: req.GetCgroupParent(), Labels: req.GetLabels(), Annotations: req.GetAnnotations(),
		Resources: toResources(req.GetResources()),
		DNS:       backend.DNSConfig{Servers: req.GetDns().GetServers(), Searches: req.GetDns().GetSearches(), Options: req.GetDns().GetOptions()},
		// direct's modes have the API's numbers.
		Network: direct.Network{
			Mode: direct.NetworkMode(req.GetNetwork().GetMode()), NetNSPath: req.GetNetwork().GetNetnsPath(),
			Name: req.GetNetwork().GetNetwork(), Egress: egress,
		},
		Timeout:     req.GetTimeout().AsDuration(),
		IdleTimeout: req.GetIdleTimeout().AsDuration(),
	})
	if err != nil {
		return nil, err
	}
	return &sandboxv1.CreateSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// PauseSandbox freezes a sandbox's containers.
func (s *Server) PauseSandbox(ctx context.Context, req *sandboxv1.PauseSandboxRequest) (*sandboxv1.PauseSandboxResponse, error) {
	st, err := s.d.PauseSandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return &sandboxv1.PauseSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// ResumeSandbox thaws a paused sandbox.
func (s *Server) ResumeSandbox(ctx context.Context, req *sandboxv1.ResumeSandboxRequest) (*sandboxv1.ResumeSandboxResponse, error) {
	st, err := s.d.ResumeSandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return &sandboxv1.ResumeSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

func toUsage(st *backend.Stats) *sandboxv1.SandboxUsage {
	return &sandboxv1.SandboxUsage{
		Timestamp: ts(st.Timestamp), CpuUsageNs: st.CPUUsageNanos,
		MemoryUsageBytes: st.MemoryUsageBytes, MemoryWorkingSetBytes: st.MemoryWorkingBytes, Pids: st.Pids,
		DiskReadBytes: st.DiskReadBytes, DiskWriteBytes: st.DiskWriteBytes, NetRxBytes: st.NetRxBytes, NetTxBytes: st.NetTxBytes,
	}
}

// GetSandboxUsage returns a sandbox's usage.
func (s *Server) GetSandboxUsage(ctx context.Context, req *sandboxv1.GetSandboxUsageRequest) (*sandboxv1.GetSandboxUsageResponse, error) {
	st, err := s.d.Usage(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return &sandboxv1.GetSandboxUsageResponse{Usage: toUsage(st)}, nil
}

// WatchSandboxUsage streams a sandbox's usage at an interval.
func (s *Server) WatchSandboxUsage(ctx context.Context, req *sandboxv1.WatchSandboxUsageRequest, stream sandboxv1connect.SandboxServiceWatchSandboxUsageServerStream) error {
	return s.d.WatchUsage(ctx, req.GetSandboxId(), req.GetInterval().AsDuration(), func(st *backend.Stats) error {
		return stream.Send(&sandboxv1.WatchSandboxUsageResponse{Usage: toUsage(st)})
	})
}

// SetSandboxTimeout replaces a sandbox's lifetime.
func (s *Server) SetSandboxTimeout(ctx context.Context, req *sandboxv1.SetSandboxTimeoutRequest) (*sandboxv1.SetSandboxTimeoutResponse, error) {
	st, err := s.d.SetTimeout(ctx, req.GetSandboxId(), req.GetTimeout().AsDuration(), req.GetIdleTimeout().AsDuration())
	if err != nil {
		return nil, err
	}
	return &sandboxv1.SetSandboxTimeoutResponse{Sandbox: s.toSandbox(st)}, nil
}

// UpdateNetworkPolicy replaces a sandbox's egress policy.
func (s *Server) UpdateNetworkPolicy(ctx context.Context, req *sandboxv1.UpdateNetworkPolicyRequest) (*sandboxv1.UpdateNetworkPolicyResponse, error) {
	p, err := toEgress("egress", req.GetEgress())
	if err != nil {
		return nil, err
	}
	st, err := s.d.SetEgressPolicy(ctx, req.GetSandboxId(), p)
	if err != nil {
		return nil, err
	}
	return &sandboxv1.UpdateNetworkPolicyResponse{Sandbox: s.toSandbox(st)}, nil
}

var egressActions = map[sandboxv1.EgressAction]network.Action{
	sandboxv1.EgressAction_EGRESS_ACTION_UNSPECIFIED: "",
	sandboxv1.EgressAction_EGRESS_ACTION_ALLOW:       network.ActionAllow,
	sandboxv1.EgressAction_EGRESS_ACTION_DENY:        network.ActionDeny,
}

// toEgress converts an egress policy; nil allows everything.
func toEgress(field string, p *sandboxv1.EgressPolicy) (network.Policy, error) {
	var out network.Policy
	if p == nil {
		return out, nil
	}
	var ok bool
	if out.Default, ok = egressActions[p.GetDefaultAction()]; !ok {
		return out, engine.Invalid(field+".default_action", "%d is not an egress action", p.GetDefaultAction())
	}
	if out.DNS, ok = egressActions[p.GetDns()]; !ok {
		return out, engine.Invalid(field+".dns", "%d is not an egress action", p.GetDns())
	}
	for _, l := range []struct {
		name string
		in   []string
		out  *[]network.Rule
	}{{"allow", p.GetAllow(), &out.Allow}, {"deny", p.GetDeny(), &out.Deny}} {
		if len(l.in) > network.MaxRules {
			return out, engine.Invalid(field+"."+l.name, "%d rules, more than %d", len(l.in), network.MaxRules)
		}
		rs, err := network.ParseRules(l.in)
		if err != nil {
			return out, engine.Invalid(field+"."+l.name, "%v", err)
		}
		*l.out = rs
	}
	return out, nil
}

func fromAction(a network.Action) sandboxv1.EgressAction {
	switch a {
	case network.ActionAllow:
		return sandboxv1.EgressAction_EGRESS_ACTION_ALLOW
	case network.ActionDeny:
		return sandboxv1.EgressAction_EGRESS_ACTION_DENY
	}
	return sandboxv1.EgressAction_EGRESS_ACTION_UNSPECIFIED
}

func fromEgress(p network.Policy) *sandboxv1.EgressPolicy {
	out := &sandboxv1.EgressPolicy{DefaultAction: fromAction(p.Default), Dns: fromAction(p.DNS)}
	for _, r := range p.Allow {
		out.Allow = append(out.Allow, r.String())
	}
	for _, r := range p.Deny {
		out.Deny = append(out.Deny, r.String())
	}
	return out
}

// StartSandbox starts a created sandbox.
func (s *Server) StartSandbox(ctx context.Context, req *sandboxv1.StartSandboxRequest) (*sandboxv1.StartSandboxResponse, error) {
	st, err := s.d.StartSandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return &sandboxv1.StartSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// StopSandbox stops a sandbox and its containers.
func (s *Server) StopSandbox(ctx context.Context, req *sandboxv1.StopSandboxRequest) (*sandboxv1.StopSandboxResponse, error) {
	// Unset: the server's default grace period; zero: none.
	timeout := req.GetTimeout().AsDuration()
	switch {
	case timeout < 0:
		return nil, fmt.Errorf("timeout: %v is negative: %w", timeout, errdefs.ErrInvalidArgument)
	case req.GetTimeout() != nil && timeout == 0:
		timeout = engine.KillNow
	}
	st, err := s.d.StopSandbox(ctx, req.GetSandboxId(), timeout)
	if err != nil {
		return nil, err
	}
	return &sandboxv1.StopSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// DeleteSandbox removes a sandbox. A ready sandbox is only removed with
// force.
func (s *Server) DeleteSandbox(ctx context.Context, req *sandboxv1.DeleteSandboxRequest) (*sandboxv1.DeleteSandboxResponse, error) {
	if err := s.d.DeleteSandbox(ctx, req.GetSandboxId(), req.GetForce()); err != nil {
		return nil, err
	}
	return &sandboxv1.DeleteSandboxResponse{}, nil
}

// GetSandbox returns one sandbox.
func (s *Server) GetSandbox(ctx context.Context, req *sandboxv1.GetSandboxRequest) (*sandboxv1.GetSandboxResponse, error) {
	st, err := s.d.Sandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return &sandboxv1.GetSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// ListSandboxes returns the sandboxes matching every filter.
func (s *Server) ListSandboxes(ctx context.Context, req *sandboxv1.ListSandboxesRequest) (*sandboxv1.ListSandboxesResponse, error) {
	f := direct.SandboxFilter{
		Kinds: req.GetKinds(),
		// A state the engine does not have matches no sandbox.
		States: convertAll(req.GetStates(), engineSandboxStates, func(st sandboxv1.SandboxState) engine.SandboxState {
			return engine.SandboxState(st.String())
		}),
		Labels: req.GetLabels(),
	}
	out := &sandboxv1.ListSandboxesResponse{}
	for _, st := range s.d.ListSandboxes(ctx, f) {
		out.Sandboxes = append(out.Sandboxes, s.toSandbox(st))
	}
	return out, nil
}

// ListKinds lists the sandbox kinds and whether they run here.
func (s *Server) ListKinds(ctx context.Context, req *sandboxv1.ListKindsRequest) (*sandboxv1.ListKindsResponse, error) {
	out := &sandboxv1.ListKindsResponse{}
	for _, k := range s.d.Kinds(ctx) {
		c := k.Capabilities
		out.Kinds = append(out.Kinds, &sandboxv1.Kind{
			Name: k.Kind, Description: k.Description, Available: k.Available, UnavailableReason: k.Reason,
			Capabilities: &sandboxv1.KindCapabilities{
				Exec: c.Exec, Tty: c.Terminal, Stdin: c.Stdin, OomEvents: c.OOMEvents, UpdateResources: c.UpdateResources,
				Stats: c.Stats, Pause: c.Pause, IsolationLevel: isolation(k.Isolation), EgressPolicy: c.EgressPolicy,
			},
		})
	}
	return out, nil
}

func isolation(i backend.Isolation) sandboxv1.IsolationLevel {
	switch i {
	case backend.IsolationProcess:
		return sandboxv1.IsolationLevel_ISOLATION_LEVEL_CONTAINER
	case backend.IsolationWasm:
		return sandboxv1.IsolationLevel_ISOLATION_LEVEL_WASM
	case backend.IsolationAppKernel:
		return sandboxv1.IsolationLevel_ISOLATION_LEVEL_USER_SPACE_KERNEL
	case backend.IsolationVM:
		return sandboxv1.IsolationLevel_ISOLATION_LEVEL_VIRTUAL_MACHINE
	}
	return sandboxv1.IsolationLevel_ISOLATION_LEVEL_UNSPECIFIED
}

var (
	eventTypes = map[string]sandboxv1.EventType{
		engine.TopicSandboxCreate:        sandboxv1.EventType_EVENT_TYPE_SANDBOX_CREATED,
		engine.TopicSandboxStart:         sandboxv1.EventType_EVENT_TYPE_SANDBOX_STARTED,
		engine.TopicSandboxExit:          sandboxv1.EventType_EVENT_TYPE_SANDBOX_EXITED,
		engine.TopicSandboxDelete:        sandboxv1.EventType_EVENT_TYPE_SANDBOX_DELETED,
		engine.TopicTaskCreate:           sandboxv1.EventType_EVENT_TYPE_CONTAINER_CREATED,
		engine.TopicTaskStart:            sandboxv1.EventType_EVENT_TYPE_CONTAINER_STARTED,
		engine.TopicTaskDelete:           sandboxv1.EventType_EVENT_TYPE_CONTAINER_DELETED,
		engine.TopicExecStarted:          sandboxv1.EventType_EVENT_TYPE_PROCESS_STARTED,
		engine.TopicTaskExit:             sandboxv1.EventType_EVENT_TYPE_PROCESS_EXITED,
		engine.TopicTaskOOM:              sandboxv1.EventType_EVENT_TYPE_PROCESS_OOM,
		engine.TopicSandboxExpired:       sandboxv1.EventType_EVENT_TYPE_SANDBOX_EXPIRED,
		engine.TopicSandboxPaused:        sandboxv1.EventType_EVENT_TYPE_SANDBOX_PAUSED,
		engine.TopicSandboxNetworkPolicy: sandboxv1.EventType_EVENT_TYPE_SANDBOX_NETWORK_POLICY_CHANGED,
		engine.TopicSandboxResumed:       sandboxv1.EventType_EVENT_TYPE_SANDBOX_RESUMED,
	}
	eventTopics = invert(eventTypes)
)

// EventSequenceHeader is the response header of WatchEvents that carries
// the sequence number the stream starts after: after_sequence, or the
// newest event's when the request has none. A client whose stream breaks
// before its first event resumes from it.
const EventSequenceHeader = "Magnetar-Event-Sequence"

// WatchEvents streams events until the client goes away.
func (s *Server) WatchEvents(ctx context.Context, req *sandboxv1.WatchEventsRequest, stream sandboxv1connect.SandboxServiceWatchEventsServerStream) error {
	after := req.AfterSequence
	if after == nil {
		// Live events only: from the newest event now on, which the
		// client learns from the header to resume from should the
		// stream break before its first event.
		last := s.d.LastEventSeq()
		after = &last
	}
	if info, ok := connect.CallInfoForServerContext(ctx); ok {
		info.ResponseHeader().Set(EventSequenceHeader, strconv.FormatUint(*after, 10))
	}
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	f := direct.EventFilter{
		SandboxIDs: req.GetSandboxIds(),
		// A type without a topic matches no event.
		Topics: convertAll(req.GetTypes(), eventTopics, sandboxv1.EventType.String),
	}
	return s.d.WatchEvents(ctx, f, after, func(ev engine.Event) error {
		typ, ok := eventTypes[ev.Topic]
		if !ok {
			return nil
		}
		return stream.Send(&sandboxv1.WatchEventsResponse{Event: &sandboxv1.Event{
			Type: typ, Topic: ev.Topic, Timestamp: ts(ev.Timestamp), SandboxId: ev.SandboxID, ContainerId: ev.ContainerID,
			ExecId: ev.ExecID, Pid: ev.Pid, ExitStatus: ev.ExitCode, ExitedAt: ts(ev.ExitedAt), Sequence: ev.Seq, Reason: ev.Reason,
		}})
	})
}
