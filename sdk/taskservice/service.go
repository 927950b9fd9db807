// Package taskservice serves containerd's Task API v3 (ttrpc) on top of the
// engine for the containers of one sandbox. The sandboxer serves it on each
// pod's task socket; the task agent serves it inside a microVM.
package taskservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/magnetar-io/magnetar/internal/ctxutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// maxSpecSize bounds the config.json read from a bundle.
const maxSpecSize = 16 << 20

// errShuttingDown ends calls that are still blocked when a task server
// closes (sandbox shut down, or daemon exiting).
var errShuttingDown = fmt.Errorf("task server is shutting down: %w", errdefs.ErrUnavailable)

// Service serves containerd's Task API v3 (containerd.task.v3.Task) for the
// containers of one sandbox, on top of the engine. It behaves like
// containerd-shim-runc-v2's task service, except that Shutdown never ends
// the process: one daemon serves every sandbox. Its methods return errdefs
// errors; serve it with [UnaryServerInterceptor], which maps them to ttrpc
// status codes.
type Service struct {
	eng       *engine.Engine
	sandboxID string
	version   string

	// stdio bridges the stdio containerd names to what the engine gets
	// (containerd's `streaming` io type); noBridge when there is none.
	stdio StdioBridge

	// closing is closed by Close; blocked Waits return then.
	closing   chan struct{}
	closeOnce sync.Once
}

var _ taskapi.TTRPCTaskService = (*Service)(nil)

// Option configures [New].
type Option func(*Service)

// WithStdioBridge makes the service pass every process's stdio through b.
func WithStdioBridge(b StdioBridge) Option {
	return func(s *Service) { s.stdio = b }
}

// New returns the Task API of sandbox sandboxID. version is reported by
// Connect.
func New(eng *engine.Engine, sandboxID, version string, opts ...Option) *Service {
	s := &Service{eng: eng, sandboxID: sandboxID, version: version, stdio: noBridge{}, closing: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Close makes calls blocked in Wait return Unavailable. It does not touch
// the containers.
func (s *Service) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
}

// untilClosed returns a context that also ends when s closes, with
// errShuttingDown as its cause.
func (s *Service) untilClosed(ctx context.Context) (context.Context, context.CancelFunc) {
	return ctxutil.UntilClosed(ctx, s.closing, errShuttingDown)
}

// Create creates a container from the OCI bundle at req.Bundle.
func (s *Service) Create(ctx context.Context, req *taskapi.CreateTaskRequest) (*taskapi.CreateTaskResponse, error) {
	if req.GetCheckpoint() != "" || req.GetParentCheckpoint() != "" {
		return nil, fmt.Errorf("restoring from a checkpoint: %w", errdefs.ErrNotImplemented)
	}
	spec, err := readSpec(req.GetBundle())
	if err != nil {
		return nil, err
	}
	stdio, err := s.stdio.Open(ctx, req.GetID(), "", backend.Stdio{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()})
	if err != nil {
		return nil, err
	}
	st, err := s.eng.CreateContainer(ctx, s.sandboxID, engine.ContainerSpec{
		ID:     req.GetID(),
		Bundle: req.GetBundle(),
		Rootfs: mount.FromProto(req.GetRootfs()),
		Spec:   spec,
		Stdio:  stdio,
	})
	if err != nil {
		_ = s.stdio.Remove(req.GetID(), "", false)
		return nil, err
	}
	return &taskapi.CreateTaskResponse{Pid: st.Pid}, nil
}

// readSpec reads and parses bundle/config.json.
func readSpec(bundle string) (*specs.Spec, error) {
	if bundle == "" || !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return nil, fmt.Errorf("bundle %q must be an absolute, clean path: %w", bundle, errdefs.ErrInvalidArgument)
	}
	f, err := os.Open(filepath.Join(bundle, "config.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bundle %s has no config.json: %w", bundle, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("open OCI spec: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSpecSize+1))
	if err != nil {
		return nil, fmt.Errorf("read OCI spec: %w", err)
	}
	if len(data) > maxSpecSize {
		return nil, fmt.Errorf("%s/config.json is larger than %d bytes: %w", bundle, maxSpecSize, errdefs.ErrInvalidArgument)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("parse %s/config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return &spec, nil
}

// ReplayedMetadataKey marks, in a request's ttrpc metadata, a Start that
// the sandboxer's supervisor sends again after the worker that had it
// went away before answering: the process may have been started by then.
const ReplayedMetadataKey = "magnetar-replayed"

// Start starts a container's init process or an exec'd process. A
// replayed Start (ReplayedMetadataKey) of a process already started
// answers its pid, as the lost worker would have.
func (s *Service) Start(ctx context.Context, req *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	if _, replayed := ttrpc.GetMetadataValue(ctx, ReplayedMetadataKey); replayed {
		st, err := s.eng.State(ctx, s.sandboxID, req.GetID(), req.GetExecID())
		if err != nil {
			return nil, err
		}
		if st.State != engine.ProcessCreated {
			return &taskapi.StartResponse{Pid: st.Pid}, nil
		}
	}
	st, err := s.eng.Start(ctx, s.sandboxID, req.GetID(), req.GetExecID())
	if err != nil {
		return nil, err
	}
	return &taskapi.StartResponse{Pid: st.Pid}, nil
}

// State reports a process's state.
func (s *Service) State(ctx context.Context, req *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	st, err := s.eng.State(ctx, s.sandboxID, req.GetID(), req.GetExecID())
	if err != nil {
		return nil, err
	}
	id := st.ContainerID
	if st.ExecID != "" {
		id = st.ExecID
	}
	if orig, ok := s.stdio.Original(req.GetID(), req.GetExecID()); ok {
		st.Stdio.Stdin, st.Stdio.Stdout, st.Stdio.Stderr = orig.Stdin, orig.Stdout, orig.Stderr
	}
	return &taskapi.StateResponse{
		ID:         id,
		ExecID:     st.ExecID,
		Bundle:     st.Bundle,
		Pid:        st.Pid,
		Status:     taskStatus(st.State),
		Stdin:      st.Stdio.Stdin,
		Stdout:     st.Stdio.Stdout,
		Stderr:     st.Stdio.Stderr,
		Terminal:   st.Stdio.Terminal,
		ExitStatus: st.ExitCode,
		ExitedAt:   timestamppb.New(st.ExitedAt),
	}, nil
}

// taskStatus maps engine process states to containerd's.
func taskStatus(s engine.ProcessState) task.Status {
	switch s {
	case engine.ProcessCreated:
		return task.Status_CREATED
	case engine.ProcessRunning:
		return task.Status_RUNNING
	case engine.ProcessStopped:
		return task.Status_STOPPED
	case engine.ProcessPaused:
		return task.Status_PAUSED
	}
	return task.Status_UNKNOWN
}

// Wait blocks until a process has exited.
func (s *Service) Wait(ctx context.Context, req *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	ctx, cancel := s.untilClosed(ctx)
	defer cancel()
	st, err := s.eng.Wait(ctx, s.sandboxID, req.GetID(), req.GetExecID())
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && errors.Is(cause, errShuttingDown) {
			err = cause
		}
		return nil, err
	}
	if out := s.stdio.OutputDone(req.GetID(), req.GetExecID()); out != nil {
		// Streamed output first: CRI stops reading the streams once it
		// learned the exit (the daemon holds exit events likewise).
		t := time.NewTimer(ExitOutputWait)
		select {
		case <-out:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return &taskapi.WaitResponse{ExitStatus: st.Code, ExitedAt: timestamppb.New(st.ExitedAt)}, nil
}

// stdinWait bounds how long CloseIO waits for bridged stdin to reach the
// process.
const stdinWait = 30 * time.Second

// ExitOutputWait bounds how long an exit waits for streamed output, as the
// runc shim bounds its wait for output copies.
const ExitOutputWait = 2 * time.Second

// Kill signals a process, or with All every process of the container.
func (s *Service) Kill(ctx context.Context, req *taskapi.KillRequest) (*emptypb.Empty, error) {
	if err := s.eng.Kill(ctx, s.sandboxID, req.GetID(), req.GetExecID(), syscall.Signal(req.GetSignal()), req.GetAll()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Delete deletes an exited process; for a container's init it deletes the
// container.
func (s *Service) Delete(ctx context.Context, req *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	st, err := s.eng.Delete(ctx, s.sandboxID, req.GetID(), req.GetExecID())
	if err != nil {
		if errdefs.IsNotFound(err) {
			// Deleted with its container already: its streams go too.
			_ = s.stdio.Remove(req.GetID(), req.GetExecID(), false)
		}
		return nil, err
	}
	// The process is gone: its output has ended or ends now; containerd
	// gets all of it before Delete returns. A container's init takes its
	// execs' streams with it (the engine deleted those execs).
	if err := s.stdio.Remove(req.GetID(), req.GetExecID(), true); err != nil {
		return nil, err
	}
	if req.GetExecID() == "" {
		if err := s.stdio.RemoveExecs(req.GetID()); err != nil {
			return nil, err
		}
	}
	return &taskapi.DeleteResponse{Pid: st.Pid, ExitStatus: st.ExitCode, ExitedAt: timestamppb.New(st.ExitedAt)}, nil
}

// Exec adds a process to a running container; Start starts it.
func (s *Service) Exec(ctx context.Context, req *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	if req.GetSpec() == nil {
		return nil, fmt.Errorf("exec %q: process spec is required: %w", req.GetExecID(), errdefs.ErrInvalidArgument)
	}
	var proc specs.Process
	if err := json.Unmarshal(req.GetSpec().GetValue(), &proc); err != nil {
		return nil, fmt.Errorf("exec %q: decode process spec: %v: %w", req.GetExecID(), err, errdefs.ErrInvalidArgument)
	}
	if req.GetExecID() == "" {
		return nil, fmt.Errorf("exec: exec id is required: %w", errdefs.ErrInvalidArgument)
	}
	stdio, err := s.stdio.Open(ctx, req.GetID(), req.GetExecID(), backend.Stdio{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()})
	if err != nil {
		return nil, err
	}
	_, err = s.eng.Exec(ctx, s.sandboxID, engine.ExecSpec{
		ContainerID: req.GetID(),
		ExecID:      req.GetExecID(),
		Process:     &proc,
		Stdio:       stdio,
	})
	if err != nil {
		_ = s.stdio.Remove(req.GetID(), req.GetExecID(), false)
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, req *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	if err := s.eng.ResizePTY(ctx, s.sandboxID, req.GetID(), req.GetExecID(), req.GetWidth(), req.GetHeight()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin when req.Stdin is set.
func (s *Service) CloseIO(ctx context.Context, req *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	if !req.GetStdin() {
		if _, err := s.eng.State(ctx, s.sandboxID, req.GetID(), req.GetExecID()); err != nil {
			return nil, err
		}
		return &emptypb.Empty{}, nil
	}
	if in := s.stdio.StdinDone(req.GetID(), req.GetExecID()); in != nil {
		// Let the streamed stdin reach the process before its end does.
		t := time.NewTimer(stdinWait)
		select {
		case <-in:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	if err := s.eng.CloseStdin(ctx, s.sandboxID, req.GetID(), req.GetExecID()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Pids lists the processes of a container; exec'd processes carry their
// exec ID in a runc ProcessDetails, as the runc shim reports them.
func (s *Service) Pids(ctx context.Context, req *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	infos, err := s.eng.Pids(ctx, s.sandboxID, req.GetID())
	if err != nil {
		return nil, err
	}
	if len(infos) == 0 {
		// containerd, when it restarts, takes a task with no processes for
		// a leaked shim and deletes it (core/runtime/v2 shouldCleanupShim)
		// before CRI reads its exit status: CRI would report 255,
		// "Unknown". A task whose init has exited says so instead, and
		// keeps its exit status for CRI.
		if st, err := s.eng.State(ctx, s.sandboxID, req.GetID(), ""); err == nil && st.State == engine.ProcessStopped {
			return nil, fmt.Errorf("task %s has exited: %w", req.GetID(), errdefs.ErrFailedPrecondition)
		}
	}
	resp := &taskapi.PidsResponse{Processes: make([]*task.ProcessInfo, 0, len(infos))}
	for _, pi := range infos {
		p := &task.ProcessInfo{Pid: pi.Pid}
		if pi.ExecID != "" {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: pi.ExecID})
			if err != nil {
				return nil, fmt.Errorf("encode process %d details: %w", pi.Pid, err)
			}
			p.Info = a
		}
		resp.Processes = append(resp.Processes, p)
	}
	return resp, nil
}

// Stats returns a container's cgroup metrics.
func (s *Service) Stats(ctx context.Context, req *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	st, err := s.eng.Stats(ctx, s.sandboxID, req.GetID())
	if err != nil {
		return nil, err
	}
	a, err := MetricsAny(st)
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: a}, nil
}

// Update changes a container's resources (an Any holding
// specs.LinuxResources as JSON, as containerd sends it).
func (s *Service) Update(ctx context.Context, req *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	if req.GetResources() == nil {
		return nil, fmt.Errorf("update %q: resources are required: %w", req.GetID(), errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(req.GetResources().GetValue(), &res); err != nil {
		return nil, fmt.Errorf("update %q: decode resources: %v: %w", req.GetID(), err, errdefs.ErrInvalidArgument)
	}
	if err := s.eng.Update(ctx, s.sandboxID, req.GetID(), &res); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Pause freezes a container.
func (s *Service) Pause(ctx context.Context, req *taskapi.PauseRequest) (*emptypb.Empty, error) {
	if err := s.eng.Pause(ctx, s.sandboxID, req.GetID()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Resume thaws a paused container.
func (s *Service) Resume(ctx context.Context, req *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	if err := s.eng.Resume(ctx, s.sandboxID, req.GetID()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported.
func (s *Service) Checkpoint(ctx context.Context, req *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, fmt.Errorf("checkpoint of %q: %w", req.GetID(), errdefs.ErrNotImplemented)
}

// Connect reports the daemon's pid as the shim pid and the container's
// init pid (0 when the container is unknown, as the runc shim does).
func (s *Service) Connect(ctx context.Context, req *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	resp := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: s.version}
	if req.GetID() != "" {
		if st, err := s.eng.State(ctx, s.sandboxID, req.GetID(), ""); err == nil {
			resp.TaskPid = st.Pid
		}
	}
	return resp, nil
}

// Shutdown is a no-op: containerd sends it after every task Delete, and the
// daemon serves other sandboxes. The task server goes away with the
// sandbox (Controller.Shutdown).
func (s *Service) Shutdown(ctx context.Context, req *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}
