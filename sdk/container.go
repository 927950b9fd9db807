package sdk

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
)

// ContainerState is the lifecycle state of a container.
type ContainerState string

// Container states.
const (
	// ContainerCreated: created, its init process not started.
	ContainerCreated ContainerState = "created"
	// ContainerRunning: the init process runs.
	ContainerRunning ContainerState = "running"
	// ContainerPaused: frozen.
	ContainerPaused ContainerState = "paused"
	// ContainerStopped: the init process exited.
	ContainerStopped ContainerState = "stopped"
	// ContainerUnknown: the sandboxer cannot tell.
	ContainerUnknown ContainerState = "unknown"
)

// ProcessSpec describes a process of a container.
type ProcessSpec struct {
	// Args are the command and its arguments.
	Args []string `json:"args,omitempty"`
	// Env holds "KEY=value" environment variables.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory in the container.
	Cwd string `json:"cwd,omitempty"`
	// UID and GID are the process's user and group.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// TTY tells whether the process has a terminal.
	TTY bool `json:"tty,omitempty"`
	// Stdin tells whether the process's standard input is kept open.
	Stdin bool `json:"stdin,omitempty"`
}

// Container is a snapshot of a container, taken when it was returned, and
// a handle to act on it and on its init process ([Container.Wait],
// [Container.Attach], [Container.Stdin], ...).
type Container struct {
	process

	// ID is the container's ID, unique across the sandboxer.
	ID string `json:"id"`
	// SandboxID is the sandbox the container runs in.
	SandboxID string `json:"sandboxId"`
	// State is the lifecycle state when the snapshot was taken.
	State ContainerState `json:"state"`
	// Image or RootfsPath is where the root file system comes from.
	Image      string `json:"image,omitempty"`
	RootfsPath string `json:"rootfsPath,omitempty"`
	// Process is the init process, with the image's defaults applied.
	Process ProcessSpec `json:"process"`
	// Labels and Annotations are those given at creation.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// PID is the init process's PID in the sandbox; 0 when not running.
	PID uint32 `json:"pid,omitempty"`
	// CreatedAt, StartedAt and ExitedAt are the lifecycle times; zero when
	// the container has not got there.
	CreatedAt time.Time `json:"createdAt"`
	StartedAt time.Time `json:"startedAt,omitzero"`
	ExitedAt  time.Time `json:"exitedAt,omitzero"`
	// ExitStatus is the init's exit status, valid when ExitedAt is set.
	ExitStatus int `json:"exitStatus"`
}

func (c *Client) containerFromProto(p *containerv1.Container) *Container {
	ps := p.GetProcess()
	return &Container{
		process: process{client: c, containerID: p.GetId()},
		ID:      p.GetId(), SandboxID: p.GetSandboxId(),
		State: ContainerState(enumName(p.GetState().String(), "CONTAINER_STATE_")),
		Image: p.GetImage(), RootfsPath: p.GetRootfsPath(),
		Process: ProcessSpec{
			Args: ps.GetArgs(), Env: ps.GetEnv(), Cwd: ps.GetCwd(),
			UID: ps.GetUser().GetUid(), GID: ps.GetUser().GetGid(),
			TTY: ps.GetTerminal(), Stdin: ps.GetOpenStdin(),
		},
		Labels: p.GetLabels(), Annotations: p.GetAnnotations(), PID: p.GetPid(),
		CreatedAt: timeOf(p.GetCreatedAt()), StartedAt: timeOf(p.GetStartedAt()), ExitedAt: timeOf(p.GetExitedAt()),
		ExitStatus: int(p.GetExitStatus()),
	}
}

// Mount is a file system mounted into a container.
type Mount struct {
	// Source is a host path for bind mounts, or a file system specific
	// source such as "tmpfs".
	Source string `json:"source"`
	// Destination is the absolute path in the container.
	Destination string `json:"destination"`
	// Type is the file system type, for example "bind" or "tmpfs".
	Type string `json:"type"`
	// Options are mount(8) options, for example "rbind" or "size=64m".
	Options []string `json:"options,omitempty"`
	// ReadOnly mounts read-only.
	ReadOnly bool `json:"readOnly,omitempty"`
}

// ContainerOption configures [Sandbox.Run], [Sandbox.Create] and, for the
// options about the process ([Args], [Env], [Cwd], [WithUser],
// [WithStdin], [WithTTY], [WithExecID]), [Container.Exec].
type ContainerOption func(*containerOptions) error

type containerOptions struct {
	req    *containerv1.CreateContainerRequest
	execID string
	// containerOnly names the options used that do not apply to Exec.
	containerOnly []string
}

func (o *containerOptions) process() *containerv1.ProcessSpec {
	if o.req.Process == nil {
		o.req.Process = &containerv1.ProcessSpec{}
	}
	return o.req.Process
}

func containerOnly(name string, fn func(*containerOptions) error) ContainerOption {
	return func(o *containerOptions) error {
		o.containerOnly = append(o.containerOnly, name)
		return fn(o)
	}
}

// FromImage takes the root file system, and the defaults of the process,
// from an image of the sandboxer's image store ([Client.ImportImage],
// [Client.PullImage]). Either FromImage or [FromRootfs] is required.
func FromImage(ref string) ContainerOption {
	return containerOnly("FromImage", func(o *containerOptions) error {
		if ref == "" {
			return fmt.Errorf("FromImage: empty reference: %w", errdefs.ErrInvalidArgument)
		}
		o.req.Source = &containerv1.CreateContainerRequest_Image{Image: ref}
		return nil
	})
}

// FromRootfs uses a directory of the sandboxer's host as the root file
// system. A relative path is made absolute here. Either FromRootfs or
// [FromImage] is required.
func FromRootfs(dir string) ContainerOption {
	return containerOnly("FromRootfs", func(o *containerOptions) error {
		abs, err := filepath.Abs(dir)
		if err != nil || dir == "" {
			return fmt.Errorf("FromRootfs: bad directory %q: %w", dir, errdefs.ErrInvalidArgument)
		}
		o.req.Source = &containerv1.CreateContainerRequest_RootfsPath{RootfsPath: abs}
		return nil
	})
}

// Args sets the arguments: with an image they replace its command and
// follow its entrypoint (Docker's CMD, Kubernetes' args); with
// [FromRootfs] and for Exec they are the whole command line (after
// [Entrypoint], if set). Default: the image's command.
func Args(args ...string) ContainerOption {
	return func(o *containerOptions) error {
		o.process().Args = args
		return nil
	}
}

// Entrypoint replaces the image's entrypoint (and drops its command), as
// Docker's --entrypoint and Kubernetes' command do. Default: the image's.
func Entrypoint(entrypoint ...string) ContainerOption {
	return func(o *containerOptions) error {
		o.process().Entrypoint = entrypoint
		return nil
	}
}

// Env adds "KEY=value" environment variables. Default: the image's
// environment (to which these are added), or none; for Exec, the
// container's.
func Env(env ...string) ContainerOption {
	return func(o *containerOptions) error {
		for _, kv := range env {
			if !strings.Contains(kv, "=") {
				return fmt.Errorf("Env: %q is not KEY=value: %w", kv, errdefs.ErrInvalidArgument)
			}
		}
		o.process().Env = append(o.process().Env, env...)
		return nil
	}
}

// Cwd sets the working directory, an absolute path in the container.
// Default: the image's, or "/"; for Exec, the container's.
func Cwd(dir string) ContainerOption {
	return func(o *containerOptions) error {
		o.process().Cwd = dir
		return nil
	}
}

// WithUser runs the process as uid and gid. Default: the image's user, or
// root; for Exec, the container's.
func WithUser(uid, gid uint32) ContainerOption {
	return func(o *containerOptions) error {
		o.process().User = &containerv1.User{Uid: uid, Gid: gid}
		return nil
	}
}

// WithStdin keeps the process's standard input open, to be written with
// Stdin or WriteStdin. Default: the process reads end of file.
func WithStdin() ContainerOption {
	return func(o *containerOptions) error {
		o.process().OpenStdin = true
		return nil
	}
}

// WithTTY gives the process a pseudo-terminal; its standard error is then
// merged into standard output. Default: no terminal.
func WithTTY() ContainerOption {
	return func(o *containerOptions) error {
		o.process().Terminal = true
		return nil
	}
}

// WithContainerID sets the container's ID. Default: the server chooses
// one.
func WithContainerID(id string) ContainerOption {
	return containerOnly("WithContainerID", func(o *containerOptions) error {
		if id == "" {
			return fmt.Errorf("WithContainerID: empty ID: %w", errdefs.ErrInvalidArgument)
		}
		o.req.ContainerId = id
		return nil
	})
}

// WithExecID sets the ID of a process started by [Container.Exec].
// Default: the server chooses one.
func WithExecID(id string) ContainerOption {
	return func(o *containerOptions) error {
		if id == "" {
			return fmt.Errorf("WithExecID: empty ID: %w", errdefs.ErrInvalidArgument)
		}
		o.execID = id
		return nil
	}
}

// WithContainerLabels adds labels to the container. Default: none.
func WithContainerLabels(labels map[string]string) ContainerOption {
	return containerOnly("WithContainerLabels", func(o *containerOptions) error {
		if o.req.Labels == nil {
			o.req.Labels = map[string]string{}
		}
		for k, v := range labels {
			o.req.Labels[k] = v
		}
		return nil
	})
}

// WithContainerAnnotations adds annotations to the container's OCI spec.
// Default: none.
func WithContainerAnnotations(annotations map[string]string) ContainerOption {
	return containerOnly("WithContainerAnnotations", func(o *containerOptions) error {
		if o.req.Annotations == nil {
			o.req.Annotations = map[string]string{}
		}
		for k, v := range annotations {
			o.req.Annotations[k] = v
		}
		return nil
	})
}

// WithMemoryLimit bounds the container's memory, in bytes. Default: no
// limit of its own (the sandbox's applies).
func WithMemoryLimit(bytes int64) ContainerOption {
	return containerOnly("WithMemoryLimit", func(o *containerOptions) error {
		if bytes <= 0 {
			return fmt.Errorf("WithMemoryLimit: %d is not a positive number of bytes: %w", bytes, errdefs.ErrInvalidArgument)
		}
		if o.req.Resources == nil {
			o.req.Resources = Resources{}.proto()
		}
		o.req.Resources.MemoryLimitBytes = &bytes
		return nil
	})
}

// WithContainerResources bounds the container. Default: no limits of its
// own (the sandbox's apply).
func WithContainerResources(res Resources) ContainerOption {
	return containerOnly("WithContainerResources", func(o *containerOptions) error {
		o.req.Resources = res.proto()
		return nil
	})
}

// WithMounts adds mounts, applied in order after the default ones.
// Default: none.
func WithMounts(mounts ...Mount) ContainerOption {
	return containerOnly("WithMounts", func(o *containerOptions) error {
		for _, m := range mounts {
			if !filepath.IsAbs(m.Destination) {
				return fmt.Errorf("WithMounts: destination %q is not absolute: %w", m.Destination, errdefs.ErrInvalidArgument)
			}
			o.req.Mounts = append(o.req.Mounts, &containerv1.Mount{
				Source: m.Source, Destination: m.Destination, Type: m.Type, Options: m.Options, Readonly: m.ReadOnly,
			})
		}
		return nil
	})
}

// ReadonlyRootfs mounts the root file system read-only. Default:
// writable.
func ReadonlyRootfs() ContainerOption {
	return containerOnly("ReadonlyRootfs", func(o *containerOptions) error {
		o.req.ReadonlyRootfs = true
		return nil
	})
}

// WithOCISpec uses a complete OCI runtime spec (config.json, as JSON) as
// the base of the container's spec, for advanced uses; the other options
// apply on top. Default: the server's spec.
func WithOCISpec(specJSON []byte) ContainerOption {
	return containerOnly("WithOCISpec", func(o *containerOptions) error {
		o.req.OciSpecJson = specJSON
		return nil
	})
}

func makeContainerOptions(opts []ContainerOption) (*containerOptions, error) {
	o := &containerOptions{req: &containerv1.CreateContainerRequest{}}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// Create creates a container in the sandbox without starting it; start it
// with [Container.Start]. Its output is kept from now on, so attaching
// later loses nothing.
func (s *Sandbox) Create(ctx context.Context, opts ...ContainerOption) (*Container, error) {
	o, err := makeContainerOptions(opts)
	if err != nil {
		return nil, err
	}
	if o.execID != "" {
		return nil, fmt.Errorf("WithExecID applies to Exec only: %w", errdefs.ErrInvalidArgument)
	}
	if o.req.Source == nil {
		return nil, fmt.Errorf("a container needs FromImage or FromRootfs: %w", errdefs.ErrInvalidArgument)
	}
	o.req.SandboxId = s.ID
	res, err := s.client.containers.CreateContainer(ctx, o.req)
	if err != nil {
		return nil, fromAPI(err)
	}
	return s.client.containerFromProto(res.GetContainer()), nil
}

// Run creates a container in the sandbox and starts it. If starting
// fails, the container is deleted again.
func (s *Sandbox) Run(ctx context.Context, opts ...ContainerOption) (*Container, error) {
	c, err := s.Create(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = c.Delete(cctx, Force())
		return nil, err
	}
	return c, nil
}

// Start starts the container's init process.
func (c *Container) Start(ctx context.Context) error {
	res, err := c.client.containers.StartContainer(ctx, &containerv1.StartContainerRequest{ContainerId: c.ID})
	if err != nil {
		return fromAPI(err)
	}
	c.PID = res.GetPid()
	c.State = ContainerRunning
	return nil
}

// Refresh updates the snapshot c from the sandboxer.
func (c *Container) Refresh(ctx context.Context) error {
	n, err := c.client.Container(ctx, c.ID)
	if err != nil {
		return err
	}
	*c = *n
	return nil
}

// Delete removes the container, its processes and its root file system
// mounts. Without [Force], its init process must have exited.
func (c *Container) Delete(ctx context.Context, opts ...DeleteOption) error {
	o, err := makeDeleteOptions(opts)
	if err != nil {
		return err
	}
	_, err = c.client.containers.DeleteContainer(ctx, &containerv1.DeleteContainerRequest{ContainerId: c.ID, Force: o.force})
	return fromAPI(err)
}

// Process is a process started in a container by [Container.Exec].
type Process struct {
	process

	// ContainerID is the container the process runs in.
	ContainerID string `json:"containerId"`
	// ExecID names the process within its container.
	ExecID string `json:"execId"`
	// PID is the process's PID in the sandbox.
	PID uint32 `json:"pid"`
}

// Exec starts another process in the running container. Only the options
// about the process apply; [Args] is required. Its output is kept from the
// start, so attaching later loses nothing.
func (c *Container) Exec(ctx context.Context, opts ...ContainerOption) (*Process, error) {
	o, err := makeContainerOptions(opts)
	if err != nil {
		return nil, err
	}
	if len(o.containerOnly) > 0 {
		return nil, fmt.Errorf("options %s do not apply to Exec: %w", strings.Join(o.containerOnly, ", "), errdefs.ErrInvalidArgument)
	}
	if len(o.req.GetProcess().GetArgs()) == 0 {
		return nil, fmt.Errorf("Exec needs Args: %w", errdefs.ErrInvalidArgument)
	}
	res, err := c.client.containers.ExecProcess(ctx, &containerv1.ExecProcessRequest{ContainerId: c.ID, ExecId: o.execID, Process: o.req.Process})
	if err != nil {
		return nil, fromAPI(err)
	}
	return &Process{
		process:     process{client: c.client, containerID: c.ID, execID: res.GetExecId()},
		ContainerID: c.ID, ExecID: res.GetExecId(), PID: res.GetPid(),
	}, nil
}

// Container returns the container with the given ID.
func (c *Client) Container(ctx context.Context, id string) (*Container, error) {
	res, err := c.containers.GetContainer(ctx, &containerv1.GetContainerRequest{ContainerId: id})
	if err != nil {
		return nil, fromAPI(err)
	}
	return c.containerFromProto(res.GetContainer()), nil
}

// Containers lists the containers that match every filter ([InSandbox]
// with at most one sandbox, [WithLabel]), ordered by creation time.
func (c *Client) Containers(ctx context.Context, fs ...Filter) ([]*Container, error) {
	f := makeFilters(fs)
	if len(f.kinds) > 0 || len(f.states) > 0 {
		return nil, fmt.Errorf("OfKind and InState filter sandboxes, not containers: %w", errdefs.ErrInvalidArgument)
	}
	req := &containerv1.ListContainersRequest{Labels: f.labels}
	switch len(f.sandboxIDs) {
	case 0:
	case 1:
		req.SandboxId = f.sandboxIDs[0]
	default:
		return nil, fmt.Errorf("containers can be listed for one sandbox at a time: %w", errdefs.ErrInvalidArgument)
	}
	res, err := c.containers.ListContainers(ctx, req)
	if err != nil {
		return nil, fromAPI(err)
	}
	out := make([]*Container, 0, len(res.GetContainers()))
	for _, ctr := range res.GetContainers() {
		out = append(out, c.containerFromProto(ctr))
	}
	return out, nil
}

// Stats is a container's resource usage.
type Stats struct {
	// Timestamp is when the statistics were read.
	Timestamp time.Time `json:"timestamp"`
	// CPU is the CPU time used since the container started.
	CPU struct {
		UsageNS, UserNS, SystemNS     uint64
		ThrottledPeriods, ThrottledNS uint64
	} `json:"cpu"`
	// Memory is the memory usage, in bytes; LimitBytes is 0 when
	// unlimited.
	Memory struct {
		UsageBytes, WorkingSetBytes, RSSBytes, SwapBytes, LimitBytes uint64
		OOMKills                                                     uint64
	} `json:"memory"`
	// Pids is the number of processes and threads, and its limit (0 when
	// unlimited).
	Pids struct{ Current, Limit uint64 } `json:"pids"`
	// IO is the block I/O since the container started.
	IO struct{ ReadBytes, WriteBytes uint64 } `json:"io"`
}

// Stats returns the container's current resource usage. Kinds without
// the stats capability fail with errdefs.ErrNotImplemented.
func (c *Container) Stats(ctx context.Context) (Stats, error) {
	res, err := c.client.containers.ContainerStats(ctx, &containerv1.ContainerStatsRequest{ContainerId: c.ID})
	if err != nil {
		return Stats{}, fromAPI(err)
	}
	var s Stats
	s.Timestamp = timeOf(res.GetTimestamp())
	cpu, mem := res.GetCpu(), res.GetMemory()
	s.CPU.UsageNS, s.CPU.UserNS, s.CPU.SystemNS = cpu.GetUsageNs(), cpu.GetUserNs(), cpu.GetSystemNs()
	s.CPU.ThrottledPeriods, s.CPU.ThrottledNS = cpu.GetThrottledPeriods(), cpu.GetThrottledNs()
	s.Memory.UsageBytes, s.Memory.WorkingSetBytes, s.Memory.RSSBytes = mem.GetUsageBytes(), mem.GetWorkingSetBytes(), mem.GetRssBytes()
	s.Memory.SwapBytes, s.Memory.LimitBytes, s.Memory.OOMKills = mem.GetSwapBytes(), mem.GetLimitBytes(), mem.GetOomKills()
	s.Pids.Current, s.Pids.Limit = res.GetPids().GetCurrent(), res.GetPids().GetLimit()
	s.IO.ReadBytes, s.IO.WriteBytes = res.GetIo().GetReadBytes(), res.GetIo().GetWriteBytes()
	return s, nil
}

// UpdateResources changes the container's limits; the zero fields of res
// stay as they are.
func (c *Container) UpdateResources(ctx context.Context, res Resources) error {
	_, err := c.client.containers.UpdateContainerResources(ctx, &containerv1.UpdateContainerResourcesRequest{ContainerId: c.ID, Resources: res.proto()})
	return fromAPI(err)
}

// ProcessInfo is a process running in a container.
type ProcessInfo struct {
	// PID is the process's PID in the sandbox.
	PID uint32 `json:"pid"`
	// ExecID is set for the main process of an exec'd process.
	ExecID string `json:"execId,omitempty"`
}

// Processes lists the processes running in the container, by PID.
func (c *Container) Processes(ctx context.Context) ([]ProcessInfo, error) {
	res, err := c.client.containers.ListProcesses(ctx, &containerv1.ListProcessesRequest{ContainerId: c.ID})
	if err != nil {
		return nil, fromAPI(err)
	}
	out := make([]ProcessInfo, 0, len(res.GetProcesses()))
	for _, p := range res.GetProcesses() {
		out = append(out, ProcessInfo{PID: p.GetPid(), ExecID: p.GetExecId()})
	}
	return out, nil
}

// LoadProcess returns a handle to the exec'd process execID of the container,
// for example one started by another client. It makes no call: the
// handle's methods fail with errdefs.ErrNotFound if there is no such
// process.
func (c *Container) LoadProcess(execID string) *Process {
	return &Process{process: process{client: c.client, containerID: c.ID, execID: execID}, ContainerID: c.ID, ExecID: execID}
}
