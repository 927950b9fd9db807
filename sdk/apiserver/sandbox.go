package apiserver

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/timestamppb"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// apiNamespace is the containerd-style namespace of sandboxes made through
// Magnetar's API.
const apiNamespace = "magnetar"

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

var sandboxStates = map[engine.SandboxState]sandboxv1.SandboxState{
	engine.SandboxCreated: sandboxv1.SandboxState_SANDBOX_STATE_CREATED,
	engine.SandboxReady:   sandboxv1.SandboxState_SANDBOX_STATE_READY,
	engine.SandboxStopped: sandboxv1.SandboxState_SANDBOX_STATE_STOPPED,
	engine.SandboxUnknown: sandboxv1.SandboxState_SANDBOX_STATE_UNKNOWN,
}

func (s *Server) toSandbox(st engine.SandboxStatus) *sandboxv1.Sandbox {
	out := &sandboxv1.Sandbox{
		Id: st.ID, Kind: st.Kind, State: sandboxStates[st.State], Labels: st.Labels, Annotations: st.Annotations,
		CreatedAt: ts(st.CreatedAt), StartedAt: ts(st.StartedAt), ExitedAt: ts(st.ExitedAt), ExitStatus: st.ExitCode,
		Pid: st.Pid, NetnsPath: st.NetNSPath, Info: st.Info,
	}
	if s.taskAddress != nil {
		out.TaskAddress = s.taskAddress(st.ID)
	}
	return out
}

// CreateSandbox creates a sandbox; with no ID, one is generated.
func (s *Server) CreateSandbox(ctx context.Context, req *sandboxv1.CreateSandboxRequest) (*sandboxv1.CreateSandboxResponse, error) {
	id := req.GetSandboxId()
	if id == "" {
		id = newID()
	}
	spec := engine.SandboxSpec{
		ID: id, Kind: req.GetKind(), Namespace: apiNamespace, Hostname: req.GetHostname(),
		CgroupParent: req.GetCgroupParent(), Labels: req.GetLabels(), Annotations: req.GetAnnotations(),
		Resources: mergeResources(nil, req.GetResources()),
		DNS:       backend.DNSConfig{Servers: req.GetDns().GetServers(), Searches: req.GetDns().GetSearches(), Options: req.GetDns().GetOptions()},
	}
	switch n := req.GetNetwork(); n.GetMode() {
	case sandboxv1.NetworkMode_NETWORK_MODE_UNSPECIFIED, sandboxv1.NetworkMode_NETWORK_MODE_NONE:
		spec.PrivateNetwork = true
	case sandboxv1.NetworkMode_NETWORK_MODE_HOST:
		spec.Hostname = ""
	case sandboxv1.NetworkMode_NETWORK_MODE_NETNS:
		if n.GetNetnsPath() == "" {
			return nil, toConnect(fmt.Errorf("network mode NETNS needs netns_path: %w", errdefs.ErrInvalidArgument))
		}
		spec.NetNSPath = n.GetNetnsPath()
	}
	if spec.Kind == "" {
		return nil, toConnect(fmt.Errorf("kind is required: %w", errdefs.ErrInvalidArgument))
	}
	if spec.Hostname == "" && (spec.PrivateNetwork || spec.NetNSPath != "") {
		// Like Docker: a sandbox with its own UTS namespace is named after
		// its ID rather than inheriting the host's name.
		spec.Hostname = id[:min(12, len(id))]
	}
	st, err := s.e.CreateSandbox(ctx, spec)
	if err != nil {
		return nil, toConnect(err)
	}
	return &sandboxv1.CreateSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// StartSandbox starts a created sandbox.
func (s *Server) StartSandbox(ctx context.Context, req *sandboxv1.StartSandboxRequest) (*sandboxv1.StartSandboxResponse, error) {
	st, err := s.e.StartSandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return &sandboxv1.StartSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// StopSandbox stops a sandbox and its containers.
func (s *Server) StopSandbox(ctx context.Context, req *sandboxv1.StopSandboxRequest) (*sandboxv1.StopSandboxResponse, error) {
	if err := s.e.StopSandbox(ctx, req.GetSandboxId(), req.GetTimeout().AsDuration()); err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.Sandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return &sandboxv1.StopSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// DeleteSandbox removes a sandbox. A ready sandbox is only removed with
// force.
func (s *Server) DeleteSandbox(ctx context.Context, req *sandboxv1.DeleteSandboxRequest) (*sandboxv1.DeleteSandboxResponse, error) {
	st, err := s.e.Sandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	if st.State == engine.SandboxReady && !req.GetForce() {
		return nil, toConnect(fmt.Errorf("sandbox %q is running; stop it first or delete with force: %w", st.ID, errdefs.ErrFailedPrecondition))
	}
	if err := s.e.DeleteSandbox(ctx, st.ID); err != nil {
		return nil, toConnect(err)
	}
	for _, cid := range st.Containers {
		s.forgetContainer(cid)
	}
	return &sandboxv1.DeleteSandboxResponse{}, nil
}

// GetSandbox returns one sandbox.
func (s *Server) GetSandbox(ctx context.Context, req *sandboxv1.GetSandboxRequest) (*sandboxv1.GetSandboxResponse, error) {
	st, err := s.e.Sandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	return &sandboxv1.GetSandboxResponse{Sandbox: s.toSandbox(st)}, nil
}

// ListSandboxes returns the sandboxes matching every filter.
func (s *Server) ListSandboxes(ctx context.Context, req *sandboxv1.ListSandboxesRequest) (*sandboxv1.ListSandboxesResponse, error) {
	out := &sandboxv1.ListSandboxesResponse{}
	for _, st := range s.e.ListSandboxes(ctx) {
		if len(req.GetKinds()) > 0 && !slices.Contains(req.GetKinds(), st.Kind) {
			continue
		}
		if len(req.GetStates()) > 0 && !slices.Contains(req.GetStates(), sandboxStates[st.State]) {
			continue
		}
		if !matchLabels(st.Labels, req.GetLabels()) {
			continue
		}
		out.Sandboxes = append(out.Sandboxes, s.toSandbox(st))
	}
	return out, nil
}

func matchLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// ListKinds lists the sandbox kinds and whether they run here.
func (s *Server) ListKinds(ctx context.Context, req *sandboxv1.ListKindsRequest) (*sandboxv1.ListKindsResponse, error) {
	out := &sandboxv1.ListKindsResponse{}
	for _, k := range s.e.Kinds(ctx) {
		c := k.Capabilities
		out.Kinds = append(out.Kinds, &sandboxv1.Kind{
			Name: k.Kind, Description: k.Description, Available: k.Available, UnavailableReason: k.Reason,
			Capabilities: &sandboxv1.KindCapabilities{
				Exec: c.Exec, Tty: c.Terminal, Stdin: c.Stdin, OomEvents: c.OOMEvents, UpdateResources: c.UpdateResources,
				Stats: c.Stats, Pause: c.Pause, IsolationLevel: isolation(k.Isolation),
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

var eventTypes = map[string]sandboxv1.EventType{
	engine.TopicSandboxCreate: sandboxv1.EventType_EVENT_TYPE_SANDBOX_CREATED,
	engine.TopicSandboxStart:  sandboxv1.EventType_EVENT_TYPE_SANDBOX_STARTED,
	engine.TopicSandboxExit:   sandboxv1.EventType_EVENT_TYPE_SANDBOX_EXITED,
	engine.TopicSandboxDelete: sandboxv1.EventType_EVENT_TYPE_SANDBOX_DELETED,
	engine.TopicTaskCreate:    sandboxv1.EventType_EVENT_TYPE_CONTAINER_CREATED,
	engine.TopicTaskStart:     sandboxv1.EventType_EVENT_TYPE_CONTAINER_STARTED,
	engine.TopicTaskDelete:    sandboxv1.EventType_EVENT_TYPE_CONTAINER_DELETED,
	engine.TopicExecStarted:   sandboxv1.EventType_EVENT_TYPE_PROCESS_STARTED,
	engine.TopicTaskExit:      sandboxv1.EventType_EVENT_TYPE_PROCESS_EXITED,
	engine.TopicTaskOOM:       sandboxv1.EventType_EVENT_TYPE_PROCESS_OOM,
}

// WatchEvents streams events until the client goes away.
func (s *Server) WatchEvents(ctx context.Context, req *sandboxv1.WatchEventsRequest, stream sandboxv1connect.SandboxServiceWatchEventsServerStream) error {
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	ids, types := req.GetSandboxIds(), req.GetTypes()
	for ev := range s.e.Subscribe(ctx) {
		typ, ok := eventTypes[ev.Topic]
		if !ok || (len(ids) > 0 && !slices.Contains(ids, ev.SandboxID)) || (len(types) > 0 && !slices.Contains(types, typ)) {
			continue
		}
		exec := ev.ExecID
		if exec == ev.ContainerID {
			exec = ""
		}
		if err := stream.Send(&sandboxv1.WatchEventsResponse{Event: &sandboxv1.Event{
			Type: typ, Topic: ev.Topic, Timestamp: ts(ev.Timestamp), SandboxId: ev.SandboxID, ContainerId: ev.ContainerID,
			ExecId: exec, Pid: ev.Pid, ExitStatus: ev.ExitCode, ExitedAt: ts(ev.ExitedAt),
		}}); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return toConnect(fmt.Errorf("event stream fell behind and was dropped: %w", errdefs.ErrUnavailable))
}
