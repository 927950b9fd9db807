package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/google/renameio/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// newID returns a random 32-hex-digit ID.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// containerMeta is what the API remembers about a container beyond the
// engine's state, persisted next to its bundle.
type containerMeta struct {
	Image       string            `json:"image,omitempty"`
	RootfsPath  string            `json:"rootfsPath,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         []string          `json:"env,omitempty"`
	Cwd         string            `json:"cwd,omitempty"`
	Terminal    bool              `json:"terminal,omitempty"`
	OpenStdin   bool              `json:"openStdin,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	CreatedAt   time.Time         `json:"createdAt"`
	StartedAt   time.Time         `json:"startedAt,omitzero"`
}

const metaFile = "meta.json"

func (s *Server) readMeta(ctx context.Context, sandboxID, id string) containerMeta {
	var m containerMeta
	dir, err := s.e.ContainerDir(ctx, sandboxID, id)
	if err != nil {
		return m
	}
	if data, err := os.ReadFile(filepath.Join(dir, metaFile)); err == nil {
		_ = json.Unmarshal(data, &m)
	}
	return m
}

func writeMeta(dir string, m containerMeta) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return renameio.WriteFile(filepath.Join(dir, metaFile), data, 0o600)
}

var containerStates = map[engine.ProcessState]containerv1.ContainerState{
	engine.ProcessCreated: containerv1.ContainerState_CONTAINER_STATE_CREATED,
	engine.ProcessRunning: containerv1.ContainerState_CONTAINER_STATE_RUNNING,
	engine.ProcessPaused:  containerv1.ContainerState_CONTAINER_STATE_PAUSED,
	engine.ProcessStopped: containerv1.ContainerState_CONTAINER_STATE_STOPPED,
}

func (s *Server) toContainer(ctx context.Context, st engine.ProcessStatus) *containerv1.Container {
	m := s.readMeta(ctx, st.SandboxID, st.ContainerID)
	c := &containerv1.Container{
		Id: st.ContainerID, SandboxId: st.SandboxID, State: containerStates[st.State], Pid: st.Pid,
		Labels: m.Labels, Annotations: m.Annotations, CreatedAt: ts(m.CreatedAt), StartedAt: ts(m.StartedAt),
		ExitedAt: ts(st.ExitedAt), ExitStatus: st.ExitCode,
		Process: &containerv1.ProcessSpec{Args: m.Args, Env: m.Env, Cwd: m.Cwd, Terminal: m.Terminal, OpenStdin: m.OpenStdin},
	}
	switch {
	case m.Image != "":
		c.Source = &containerv1.Container_Image{Image: m.Image}
	case m.RootfsPath != "":
		c.Source = &containerv1.Container_RootfsPath{RootfsPath: m.RootfsPath}
	}
	return c
}

// locate finds the sandbox of a container.
func (s *Server) locate(ctx context.Context, id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("container_id is required: %w", errdefs.ErrInvalidArgument)
	}
	return s.e.SandboxOf(ctx, id)
}

// CreateContainer builds a bundle and creates the container.
//
// A container from an image takes the image from the store (it is not
// pulled), registers itself as a user of the image's root file system
// (released by DeleteContainer, or by RemoveImage once the container is
// gone), unpacks it if needed and gets a writable root: an overlay mount
// with the image's root file system as the lower directory and
// <container dir>/upper and <container dir>/work as upper and work
// directories, which the backend mounts at <bundle>/rootfs and unmounts on
// delete (the container dir goes with the container). readonly_rootfs
// uses the same overlay and sets the spec's root read-only, as CRI does:
// the runtime must still create mount points (/proc, /dev, /run...) in the
// root before making it read-only, which a read-only mount would not let
// it. See buildSpec for the process defaults.
func (s *Server) CreateContainer(ctx context.Context, req *containerv1.CreateContainerRequest) (_ *containerv1.CreateContainerResponse, retErr error) {
	sbst, err := s.e.Sandbox(ctx, req.GetSandboxId())
	if err != nil {
		return nil, toConnect(err)
	}
	id := req.GetContainerId()
	if id == "" {
		id = newID()
	}
	if err := engine.ValidateID("container", id); err != nil {
		return nil, toConnect(err)
	}
	if other, err := s.e.SandboxOf(ctx, id); err == nil {
		return nil, toConnect(fmt.Errorf("container %q already exists in sandbox %q: %w", id, other, errdefs.ErrAlreadyExists))
	}
	var img *imageRootfs
	if ref := req.GetImage(); ref != "" {
		im, err := s.useImage(ctx, ref, id)
		if err != nil {
			return nil, toConnect(err)
		}
		defer func() { s.doneCreating(context.WithoutCancel(ctx), id, retErr != nil) }()
		dir, err := s.images.Rootfs(ctx, im.Digest, nil)
		if err != nil {
			return nil, toConnect(err)
		}
		img = &imageRootfs{config: im.Config, dir: dir}
	}
	spec, err := buildSpec(ctx, sbst, sbst.HostNetwork, sbst.CgroupParent, id, req, img)
	if err != nil {
		return nil, toConnect(err)
	}
	dir, err := s.e.ContainerDir(ctx, sbst.ID, id)
	if err != nil {
		return nil, toConnect(err)
	}
	defer func() {
		if retErr != nil {
			s.forget(procKey{id, ""})
			_ = os.RemoveAll(dir)
		}
	}()
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return nil, toConnect(err)
	}
	var rootfs []mount.Mount
	if img != nil {
		if rootfs, err = imageMounts(dir, img.dir); err != nil {
			return nil, toConnect(err)
		}
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, toConnect(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		return nil, toConnect(err)
	}
	proc := req.GetProcess()
	pio, err := s.newProcIO(dir, "", proc.GetOpenStdin(), spec.Process.Terminal)
	if err != nil {
		return nil, toConnect(err)
	}
	s.mu.Lock()
	s.procs[procKey{id, ""}] = pio
	s.mu.Unlock()
	meta := containerMeta{
		Image: req.GetImage(), RootfsPath: req.GetRootfsPath(), Args: spec.Process.Args, Env: spec.Process.Env,
		Cwd: spec.Process.Cwd, Terminal: spec.Process.Terminal, OpenStdin: proc.GetOpenStdin(),
		Labels: req.GetLabels(), Annotations: req.GetAnnotations(), CreatedAt: time.Now().UTC(),
	}
	if err := writeMeta(dir, meta); err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.CreateContainer(ctx, sbst.ID, engine.ContainerSpec{ID: id, Bundle: bundle, Rootfs: rootfs, Spec: spec, Stdio: pio.stdio})
	if err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.CreateContainerResponse{Container: s.toContainer(ctx, st)}, nil
}

// imageMounts returns the root file system mount of a container from an
// image whose unpacked root file system is lower: an overlay with its upper
// and work directories in the container's directory dir.
func imageMounts(dir, lower string) ([]mount.Mount, error) {
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, p := range []string{lower, upper, work} {
		// Overlay options are comma separated, lower directories colon
		// separated.
		if strings.ContainsAny(p, ",:") {
			return nil, fmt.Errorf("overlay directory %q contains ',' or ':': %w", p, errdefs.ErrInvalidArgument)
		}
	}
	// The upper directory's attributes are those of the container's "/".
	if err := os.Mkdir(upper, 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		return nil, err
	}
	return []mount.Mount{{
		Type: "overlay", Source: "overlay",
		Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work},
	}}, nil
}

// StartContainer starts a created container.
func (s *Server) StartContainer(ctx context.Context, req *containerv1.StartContainerRequest) (*containerv1.StartContainerResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.Start(ctx, sb, req.GetContainerId(), "")
	if err != nil {
		return nil, toConnect(err)
	}
	if dir, err := s.e.ContainerDir(ctx, sb, st.ContainerID); err == nil {
		m := s.readMeta(ctx, sb, st.ContainerID)
		m.StartedAt = time.Now().UTC()
		_ = writeMeta(dir, m)
	}
	return &containerv1.StartContainerResponse{Pid: st.Pid}, nil
}

// GetContainer returns one container.
func (s *Server) GetContainer(ctx context.Context, req *containerv1.GetContainerRequest) (*containerv1.GetContainerResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.State(ctx, sb, req.GetContainerId(), "")
	if err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.GetContainerResponse{Container: s.toContainer(ctx, st)}, nil
}

// ListContainers lists containers, of one sandbox or of all.
func (s *Server) ListContainers(ctx context.Context, req *containerv1.ListContainersRequest) (*containerv1.ListContainersResponse, error) {
	var sandboxes []string
	if req.GetSandboxId() != "" {
		sandboxes = []string{req.GetSandboxId()}
	} else {
		for _, sb := range s.e.ListSandboxes(ctx) {
			sandboxes = append(sandboxes, sb.ID)
		}
	}
	out := &containerv1.ListContainersResponse{}
	for _, sb := range sandboxes {
		sts, err := s.e.Containers(ctx, sb)
		if err != nil {
			if req.GetSandboxId() != "" {
				return nil, toConnect(err)
			}
			continue
		}
		for _, st := range sts {
			c := s.toContainer(ctx, st)
			if matchLabels(c.GetLabels(), req.GetLabels()) {
				out.Containers = append(out.Containers, c)
			}
		}
	}
	return out, nil
}

// DeleteContainer deletes an exited container; force kills it first.
func (s *Server) DeleteContainer(ctx context.Context, req *containerv1.DeleteContainerRequest) (*containerv1.DeleteContainerResponse, error) {
	id := req.GetContainerId()
	sb, err := s.locate(ctx, id)
	if err != nil {
		return nil, toConnect(err)
	}
	if req.GetForce() {
		if st, err := s.e.State(ctx, sb, id, ""); err == nil && st.State == engine.ProcessRunning {
			if err := s.e.Kill(ctx, sb, id, "", syscall.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
				return nil, toConnect(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := s.e.Wait(wctx, sb, id, "")
			cancel()
			if err != nil {
				return nil, toConnect(err)
			}
		}
	}
	st, err := s.e.Delete(ctx, sb, id, "")
	if err != nil {
		return nil, toConnect(err)
	}
	s.forgetContainer(id)
	if s.images != nil {
		// The backend has unmounted the root file system: the image may
		// go. Should saving fail, RemoveImage releases the use later.
		_ = s.images.Release(ctx, id)
	}
	return &containerv1.DeleteContainerResponse{ExitStatus: st.ExitCode, ExitedAt: ts(st.ExitedAt)}, nil
}

// forgetContainer drops the stdio state of a container and its execs.
func (s *Server) forgetContainer(id string) {
	s.mu.Lock()
	var keys []procKey
	for k := range s.procs {
		if k.container == id {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	for _, k := range keys {
		s.forget(k)
	}
}

// ExecProcess creates and starts a process in a running container.
func (s *Server) ExecProcess(ctx context.Context, req *containerv1.ExecProcessRequest) (_ *containerv1.ExecProcessResponse, retErr error) {
	id := req.GetContainerId()
	sb, err := s.locate(ctx, id)
	if err != nil {
		return nil, toConnect(err)
	}
	execID := req.GetExecId()
	if execID == "" {
		execID = newID()[:12]
	}
	if err := engine.ValidateID("exec", execID); err != nil {
		return nil, toConnect(err)
	}
	p := req.GetProcess()
	if len(p.GetArgs()) == 0 {
		return nil, toConnect(fmt.Errorf("process.args must not be empty: %w", errdefs.ErrInvalidArgument))
	}
	dir, err := s.e.ContainerDir(ctx, sb, id)
	if err != nil {
		return nil, toConnect(err)
	}
	spec, err := readSpec(filepath.Join(dir, "bundle", "config.json"))
	if err != nil {
		return nil, toConnect(err)
	}
	proc := *spec.Process
	proc.Args, proc.Terminal = p.GetArgs(), p.GetTerminal()
	proc.Env = append(append([]string(nil), proc.Env...), p.GetEnv()...)
	if p.GetCwd() != "" {
		proc.Cwd = p.GetCwd()
	}
	if u := p.GetUser(); u != nil {
		proc.User = specs.User{UID: u.GetUid(), GID: u.GetGid(), AdditionalGids: u.GetAdditionalGids()}
	}
	if cs := p.GetConsoleSize(); cs != nil && proc.Terminal {
		proc.ConsoleSize = &specs.Box{Width: uint(cs.GetWidth()), Height: uint(cs.GetHeight())}
	}
	pio, err := s.newProcIO(dir, "exec-"+execID+"-", p.GetOpenStdin(), proc.Terminal)
	if err != nil {
		return nil, toConnect(err)
	}
	key := procKey{id, execID}
	s.mu.Lock()
	s.procs[key] = pio
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.forget(key)
		}
	}()
	if _, err := s.e.Exec(ctx, sb, engine.ExecSpec{ContainerID: id, ExecID: execID, Process: &proc, Stdio: pio.stdio}); err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.Start(ctx, sb, id, execID)
	if err != nil {
		_, _ = s.e.Delete(ctx, sb, id, execID)
		return nil, toConnect(err)
	}
	return &containerv1.ExecProcessResponse{ExecId: execID, Pid: st.Pid}, nil
}

func readSpec(path string) (*specs.Spec, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("container was not made through Magnetar's API: %w", errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, err
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("container spec has no process: %w", errdefs.ErrFailedPrecondition)
	}
	return &spec, nil
}

// SignalProcess sends a signal.
func (s *Server) SignalProcess(ctx context.Context, req *containerv1.SignalProcessRequest) (*containerv1.SignalProcessResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	sig := req.GetSignal()
	if sig == 0 || sig > 64 {
		return nil, toConnect(fmt.Errorf("signal %d is not a valid signal number: %w", sig, errdefs.ErrInvalidArgument))
	}
	if err := s.e.Kill(ctx, sb, req.GetContainerId(), req.GetExecId(), syscall.Signal(sig), req.GetAll()); err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.SignalProcessResponse{}, nil
}

// WaitProcess blocks until the process exits.
func (s *Server) WaitProcess(ctx context.Context, req *containerv1.WaitProcessRequest) (*containerv1.WaitProcessResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.Wait(ctx, sb, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.WaitProcessResponse{ExitStatus: st.Code, ExitedAt: ts(st.ExitedAt)}, nil
}

// ResizePty resizes a process's terminal.
func (s *Server) ResizePty(ctx context.Context, req *containerv1.ResizePtyRequest) (*containerv1.ResizePtyResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	if err := s.e.ResizePTY(ctx, sb, req.GetContainerId(), req.GetExecId(), req.GetSize().GetWidth(), req.GetSize().GetHeight()); err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.ResizePtyResponse{}, nil
}

// WriteStdin writes to a process's stdin.
func (s *Server) WriteStdin(ctx context.Context, req *containerv1.WriteStdinRequest) (*containerv1.WriteStdinResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	p := s.proc(procKey{req.GetContainerId(), req.GetExecId()})
	if p == nil {
		return nil, toConnect(fmt.Errorf("process %q of container %q has no stdio managed by this server: %w", req.GetExecId(), req.GetContainerId(), errdefs.ErrNotFound))
	}
	n, err := p.write(req.GetData(), req.GetEof())
	if err != nil {
		return nil, toConnect(err)
	}
	if req.GetEof() {
		// The runtime holds the FIFO open too (as containerd's shims do);
		// it lets go on CloseStdin.
		if err := s.e.CloseStdin(ctx, sb, req.GetContainerId(), req.GetExecId()); err != nil {
			return nil, toConnect(err)
		}
	}
	return &containerv1.WriteStdinResponse{BytesWritten: uint64(n)}, nil
}

// CloseStdin closes a process's stdin.
func (s *Server) CloseStdin(ctx context.Context, req *containerv1.CloseStdinRequest) (*containerv1.CloseStdinResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	if p := s.proc(procKey{req.GetContainerId(), req.GetExecId()}); p != nil {
		if err := p.closeStdin(); err != nil {
			return nil, toConnect(err)
		}
	}
	if err := s.e.CloseStdin(ctx, sb, req.GetContainerId(), req.GetExecId()); err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.CloseStdinResponse{}, nil
}

// AttachOutput streams a process's output from its start, then its exit.
func (s *Server) AttachOutput(ctx context.Context, req *containerv1.AttachOutputRequest, stream containerv1connect.ContainerServiceAttachOutputServerStream) error {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return toConnect(err)
	}
	p := s.proc(procKey{req.GetContainerId(), req.GetExecId()})
	if p == nil {
		return toConnect(fmt.Errorf("process %q of container %q has no output kept by this server: %w", req.GetExecId(), req.GetContainerId(), errdefs.ErrNotFound))
	}
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	err = p.output.follow(ctx, func(c chunk) error {
		return stream.Send(&containerv1.AttachOutputResponse{Payload: &containerv1.AttachOutputResponse_Output{
			Output: &containerv1.OutputChunk{Stream: containerv1.OutputStream(c.stream), Data: c.data},
		}})
	})
	if err != nil {
		return toConnect(err)
	}
	st, err := s.e.Wait(ctx, sb, req.GetContainerId(), req.GetExecId())
	if err != nil {
		return toConnect(err)
	}
	return stream.Send(&containerv1.AttachOutputResponse{Payload: &containerv1.AttachOutputResponse_Exit{
		Exit: &containerv1.ProcessExit{ExitStatus: st.Code, ExitedAt: ts(st.ExitedAt)},
	}})
}

// ContainerStats returns resource usage.
func (s *Server) ContainerStats(ctx context.Context, req *containerv1.ContainerStatsRequest) (*containerv1.ContainerStatsResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	st, err := s.e.Stats(ctx, sb, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
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
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	res := mergeResources(nil, req.GetResources())
	if res == nil {
		return nil, toConnect(fmt.Errorf("resources are required: %w", errdefs.ErrInvalidArgument))
	}
	if err := s.e.Update(ctx, sb, req.GetContainerId(), res); err != nil {
		return nil, toConnect(err)
	}
	return &containerv1.UpdateContainerResourcesResponse{}, nil
}

// ListProcesses lists a container's processes.
func (s *Server) ListProcesses(ctx context.Context, req *containerv1.ListProcessesRequest) (*containerv1.ListProcessesResponse, error) {
	sb, err := s.locate(ctx, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	infos, err := s.e.Pids(ctx, sb, req.GetContainerId())
	if err != nil {
		return nil, toConnect(err)
	}
	out := &containerv1.ListProcessesResponse{}
	for _, i := range infos {
		out.Processes = append(out.Processes, &containerv1.ProcessInfo{Pid: i.Pid, ExecId: i.ExecID})
	}
	return out, nil
}
