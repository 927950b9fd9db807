package apiserver

import (
	"context"
	"fmt"
	"math"

	"github.com/containerd/errdefs"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

var containerStates = map[engine.ProcessState]containerv1.ContainerState{
	engine.ProcessCreated: containerv1.ContainerState_CONTAINER_STATE_CREATED,
	engine.ProcessRunning: containerv1.ContainerState_CONTAINER_STATE_RUNNING,
	engine.ProcessPaused:  containerv1.ContainerState_CONTAINER_STATE_PAUSED,
	engine.ProcessStopped: containerv1.ContainerState_CONTAINER_STATE_STOPPED,
}

var outputStreams = map[direct.Stream]containerv1.OutputStream{
	direct.Stdout: containerv1.OutputStream_OUTPUT_STREAM_STDOUT,
	direct.Stderr: containerv1.OutputStream_OUTPUT_STREAM_STDERR,
}

func toContainer(c direct.Container) *containerv1.Container {
	st := c.Status
	out := &containerv1.Container{
		Id: st.ContainerID, SandboxId: st.SandboxID, State: containerStates[st.State], Pid: st.Pid,
		Labels: c.Labels, Annotations: c.Annotations, CreatedAt: ts(c.CreatedAt), StartedAt: ts(c.StartedAt),
		ExitedAt: ts(st.ExitedAt), ExitStatus: st.ExitCode,
		Process: &containerv1.ProcessSpec{
			Args: c.Process.Args, Env: c.Process.Env, Cwd: c.Process.Cwd, Terminal: c.Process.Terminal, OpenStdin: c.Process.OpenStdin,
		},
	}
	switch {
	case c.Image != "":
		out.Source = &containerv1.Container_Image{Image: c.Image}
	case c.RootfsPath != "":
		out.Source = &containerv1.Container_RootfsPath{RootfsPath: c.RootfsPath}
	}
	return out
}

// toProcess converts a process spec; nil is the zero process.
func toProcess(p *containerv1.ProcessSpec) direct.Process {
	out := direct.Process{
		Entrypoint: p.GetEntrypoint(), Args: p.GetArgs(), Env: p.GetEnv(), Cwd: p.GetCwd(),
		Terminal: p.GetTerminal(), OpenStdin: p.GetOpenStdin(),
	}
	if u := p.GetUser(); u != nil {
		out.User = &direct.User{UID: u.GetUid(), GID: u.GetGid(), AdditionalGids: u.GetAdditionalGids()}
	}
	if cs := p.GetConsoleSize(); cs != nil {
		out.ConsoleSize = &direct.ConsoleSize{Width: cs.GetWidth(), Height: cs.GetHeight()}
	}
	return out
}

// CreateContainer builds a bundle and creates the container (see
// [direct.Service.CreateContainer]).
func (s *Server) CreateContainer(ctx context.Context, req *containerv1.CreateContainerRequest) (*containerv1.CreateContainerResponse, error) {
	var mounts []direct.Mount
	for _, m := range req.GetMounts() {
		mounts = append(mounts, direct.Mount{
			Source: m.GetSource(), Destination: m.GetDestination(), Type: m.GetType(), Options: m.GetOptions(), Readonly: m.GetReadonly(),
		})
	}
	c, err := s.d.CreateContainer(ctx, direct.ContainerRequest{
		SandboxID: req.GetSandboxId(), ID: req.GetContainerId(), Image: req.GetImage(), RootfsPath: req.GetRootfsPath(),
		Process: toProcess(req.GetProcess()), Mounts: mounts, Resources: toResources(req.GetResources()),
		Labels: req.GetLabels(), Annotations: req.GetAnnotations(), ReadonlyRootfs: req.GetReadonlyRootfs(),
		OCISpecJSON: req.GetOciSpecJson(),
	})
	if err != nil {
		return nil, err
	}
	return &containerv1.CreateContainerResponse{Container: toContainer(c)}, nil
}

// StartContainer starts a created container.
func (s *Server) StartContainer(ctx context.Context, req *containerv1.StartContainerRequest) (*containerv1.StartContainerResponse, error) {
	st, err := s.d.StartContainer(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return &containerv1.StartContainerResponse{Pid: st.Pid}, nil
}

// GetContainer returns one container.
func (s *Server) GetContainer(ctx context.Context, req *containerv1.GetContainerRequest) (*containerv1.GetContainerResponse, error) {
	c, err := s.d.Container(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return &containerv1.GetContainerResponse{Container: toContainer(c)}, nil
}

// ListContainers lists containers, of one sandbox or of all.
func (s *Server) ListContainers(ctx context.Context, req *containerv1.ListContainersRequest) (*containerv1.ListContainersResponse, error) {
	cs, err := s.d.ListContainers(ctx, direct.ContainerFilter{SandboxID: req.GetSandboxId(), Labels: req.GetLabels()})
	if err != nil {
		return nil, err
	}
	out := &containerv1.ListContainersResponse{}
	for _, c := range cs {
		out.Containers = append(out.Containers, toContainer(c))
	}
	return out, nil
}

// DeleteContainer deletes an exited container; force kills it first.
func (s *Server) DeleteContainer(ctx context.Context, req *containerv1.DeleteContainerRequest) (*containerv1.DeleteContainerResponse, error) {
	st, err := s.d.DeleteContainer(ctx, req.GetContainerId(), req.GetForce())
	if err != nil {
		return nil, err
	}
	return &containerv1.DeleteContainerResponse{ExitStatus: st.ExitCode, ExitedAt: ts(st.ExitedAt)}, nil
}

// ExecProcess creates and starts a process in a running container.
func (s *Server) ExecProcess(ctx context.Context, req *containerv1.ExecProcessRequest) (*containerv1.ExecProcessResponse, error) {
	st, err := s.d.Exec(ctx, direct.ExecRequest{ContainerID: req.GetContainerId(), ExecID: req.GetExecId(), Process: toProcess(req.GetProcess())})
	if err != nil {
		return nil, err
	}
	return &containerv1.ExecProcessResponse{ExecId: st.ExecID, Pid: st.Pid}, nil
}

// SignalProcess sends a signal.
func (s *Server) SignalProcess(ctx context.Context, req *containerv1.SignalProcessRequest) (*containerv1.SignalProcessResponse, error) {
	if err := s.d.Signal(ctx, req.GetContainerId(), req.GetExecId(), req.GetSignal(), req.GetAll()); err != nil {
		return nil, err
	}
	return &containerv1.SignalProcessResponse{}, nil
}

// WaitProcess blocks until the process exits.
func (s *Server) WaitProcess(ctx context.Context, req *containerv1.WaitProcessRequest) (*containerv1.WaitProcessResponse, error) {
	st, err := s.d.Wait(ctx, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, err
	}
	return &containerv1.WaitProcessResponse{ExitStatus: st.Code, ExitedAt: ts(st.ExitedAt)}, nil
}

// ResizePty resizes a process's terminal.
func (s *Server) ResizePty(ctx context.Context, req *containerv1.ResizePtyRequest) (*containerv1.ResizePtyResponse, error) {
	if err := s.d.ResizePTY(ctx, req.GetContainerId(), req.GetExecId(), req.GetSize().GetWidth(), req.GetSize().GetHeight()); err != nil {
		return nil, err
	}
	return &containerv1.ResizePtyResponse{}, nil
}

// WriteStdin writes to a process's stdin.
func (s *Server) WriteStdin(ctx context.Context, req *containerv1.WriteStdinRequest) (*containerv1.WriteStdinResponse, error) {
	n, err := s.d.WriteStdin(ctx, req.GetContainerId(), req.GetExecId(), req.GetData(), req.GetEof())
	if err != nil {
		return nil, err
	}
	return &containerv1.WriteStdinResponse{BytesWritten: uint64(n)}, nil
}

// CloseStdin closes a process's stdin.
func (s *Server) CloseStdin(ctx context.Context, req *containerv1.CloseStdinRequest) (*containerv1.CloseStdinResponse, error) {
	if err := s.d.CloseStdin(ctx, req.GetContainerId(), req.GetExecId()); err != nil {
		return nil, err
	}
	return &containerv1.CloseStdinResponse{}, nil
}

// AttachOutput streams a process's output from start_offset (or the
// oldest byte kept), then its exit; without follow, only the output there
// is, and the exit if the process had exited.
func (s *Server) AttachOutput(ctx context.Context, req *containerv1.AttachOutputRequest, stream containerv1connect.ContainerServiceAttachOutputServerStream) error {
	out, err := s.d.Output(ctx, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return err
	}
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	from := int64(-1)
	if req.StartOffset != nil {
		if req.GetStartOffset() > math.MaxInt64 {
			return fmt.Errorf("start_offset %d is too large: %w", req.GetStartOffset(), errdefs.ErrInvalidArgument)
		}
		from = int64(req.GetStartOffset())
	}
	send := func(c direct.Chunk) error {
		return stream.Send(&containerv1.AttachOutputResponse{Payload: &containerv1.AttachOutputResponse_Output{
			Output: &containerv1.OutputChunk{Stream: outputStreams[c.Stream], Data: c.Data, Offset: uint64(c.Offset)},
		}})
	}
	var st backend.ExitStatus
	if req.Follow == nil || req.GetFollow() {
		st, err = out.Follow(ctx, from, send)
	} else {
		var exited bool
		st, exited, err = out.Read(ctx, from, send)
		if err == nil && !exited {
			return nil
		}
	}
	if err != nil {
		return err
	}
	return stream.Send(&containerv1.AttachOutputResponse{Payload: &containerv1.AttachOutputResponse_Exit{
		Exit: &containerv1.ProcessExit{ExitStatus: st.Code, ExitedAt: ts(st.ExitedAt)},
	}})
}

// ContainerStats returns resource usage.
func (s *Server) ContainerStats(ctx context.Context, req *containerv1.ContainerStatsRequest) (*containerv1.ContainerStatsResponse, error) {
	st, err := s.d.Stats(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return &containerv1.ContainerStatsResponse{
		Timestamp: ts(st.Timestamp),
		Cpu:       &containerv1.CPUStats{UsageNs: st.CPUUsageNanos},
		Memory:    &containerv1.MemoryStats{UsageBytes: st.MemoryUsageBytes, WorkingSetBytes: st.MemoryWorkingBytes, LimitBytes: st.MemoryLimitBytes},
		Pids:      &containerv1.PidsStats{Current: st.Pids},
	}, nil
}

// UpdateContainerResources changes the set resource fields.
func (s *Server) UpdateContainerResources(ctx context.Context, req *containerv1.UpdateContainerResourcesRequest) (*containerv1.UpdateContainerResourcesResponse, error) {
	if err := s.d.UpdateResources(ctx, req.GetContainerId(), toResources(req.GetResources())); err != nil {
		return nil, err
	}
	return &containerv1.UpdateContainerResourcesResponse{}, nil
}

// ListProcesses lists a container's processes.
func (s *Server) ListProcesses(ctx context.Context, req *containerv1.ListProcessesRequest) (*containerv1.ListProcessesResponse, error) {
	infos, err := s.d.Processes(ctx, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	out := &containerv1.ListProcessesResponse{}
	for _, i := range infos {
		out.Processes = append(out.Processes, &containerv1.ProcessInfo{Pid: i.Pid, ExecId: i.ExecID})
	}
	return out, nil
}
