// Package containerd is the sandboxer's edge towards containerd: it serves
// containerd's Sandbox Controller API (gRPC, reached through a
// [proxy_plugins] entry of type "sandbox"), one Task API v3 ttrpc server per
// sandbox (the address returned by Start), and forwards task events to
// containerd's events service. Requests are converted to the engine's
// domain types here; the controller returns errdefs errors, which
// [UnaryServerInterceptor] maps to gRPC status codes.
package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	goruntime "runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/ctxutil"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// Config configures a [Controller].
type Config struct {
	// RunDir holds the per-sandbox Task API sockets, in RunDir/t, and the
	// FIFOs of streamed stdio (io_type "streaming"), in RunDir/s. Required;
	// keep it short (unix socket paths are limited to 107 bytes).
	RunDir string
	// Handlers maps CRI runtime handler names to sandbox kinds. A handler
	// that is not listed and starts with "magnetar-" runs the kind named by
	// the rest, without a trailing "-streaming" ("magnetar-runc" and
	// "magnetar-runc-streaming" → "runc"); other handlers fall back to the
	// pod's "magnetar.io/kind" annotation, then to DefaultKind.
	Handlers map[string]string
	// DefaultKind is the kind of sandboxes for which nothing else names
	// one; empty means such sandboxes are refused.
	DefaultKind string
	// Version is the daemon version reported by Task.Connect.
	Version string
	// Logger receives errors of the task servers and, at debug level, one
	// line per Task API call. Default: discard.
	Logger hclog.Logger
	// TaskSockets places the task sockets; default: listen on their public
	// paths under RunDir/t.
	TaskSockets TaskSockets
}

// Controller implements containerd's Sandbox Controller service
// (containerd.services.sandbox.v1.Controller) over an [engine.Engine], and
// runs the Task API server of every started sandbox. Close it to stop those.
type Controller struct {
	sandboxapi.UnimplementedControllerServer

	eng   *engine.Engine
	kinds kindResolver
	log   hclog.Logger
	tasks *taskServers

	// closing is closed by Close; blocked Waits return Unavailable, which
	// containerd's proxy retries (reaching the next daemon).
	closing   chan struct{}
	closeOnce sync.Once
	// wg holds watchDeletes.
	wg sync.WaitGroup
}

var _ sandboxapi.ControllerServer = (*Controller)(nil)

// New returns a controller over eng.
func New(eng *engine.Engine, cfg Config) (*Controller, error) {
	if eng == nil {
		return nil, fmt.Errorf("engine is required: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.RunDir == "" {
		return nil, fmt.Errorf("run dir is required: %w", errdefs.ErrInvalidArgument)
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	c := &Controller{
		eng:     eng,
		kinds:   kindResolver{handlers: maps.Clone(cfg.Handlers), defaultKind: cfg.DefaultKind},
		log:     log,
		tasks:   newTaskServers(eng, cfg.RunDir, cfg.Version, log, cfg.TaskSockets),
		closing: make(chan struct{}),
	}
	c.wg.Go(c.watchDeletes)
	return c, nil
}

// watchDeletes stops the Task API server of a sandbox deleted other than
// through Shutdown (Magnetar's API deletes sandboxes too, among them
// those whose server Recover started), until Close or Detach.
func (c *Controller) watchDeletes() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-c.closing
		cancel()
	}()
	for ctx.Err() == nil {
		ch := c.eng.Subscribe(ctx)
		// What was deleted while no subscription was open.
		for _, id := range c.tasks.ids() {
			c.stopIfDeleted(ctx, id)
		}
		for ev := range ch {
			if ev.Topic == engine.TopicSandboxDelete {
				c.stopIfDeleted(ctx, ev.SandboxID)
			}
		}
		// The subscription fell behind (or the engine closed): subscribe
		// again and look at every server, not in a busy loop.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// stopIfDeleted stops the Task API server of sandbox id unless the
// engine has a sandbox of that ID (again: CRI may have made it anew).
func (c *Controller) stopIfDeleted(ctx context.Context, id string) {
	if _, err := c.eng.Sandbox(ctx, id); !errdefs.IsNotFound(err) || !c.tasks.running(id) {
		return
	}
	if err := c.tasks.stop(id); err != nil {
		c.log.Warn("stop task server of a deleted sandbox", "sandbox_id", id, "error", err)
	}
}

// Recover serves the Task API of every ready sandbox the engine knows, so
// that the addresses containerd saved stay valid across a daemon restart.
func (c *Controller) Recover(ctx context.Context) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, recoverParallel)
	)
	for _, st := range c.eng.ListSandboxes(ctx) {
		if st.State != engine.SandboxReady {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := c.tasks.start(st.ID); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("sandbox %s: %w", st.ID, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// recoverParallel is how many Task API servers Recover starts at once
// (each asks the supervisor for its socket and stream bridges).
const recoverParallel = 16

// ExitHold is a [Forwarder.Hold]: a process whose stdio are containerd
// streams has its exit event held until its output has been sent, as the
// runc shim publishes an exit only after the output reached its FIFOs (CRI
// stops reading a task's streams once it handled the exit).
func (c *Controller) ExitHold(ev engine.Event) <-chan struct{} {
	return c.tasks.outputDone(ev.SandboxID, ev.ContainerID, ev.ExecID)
}

// Close stops every Task API server and ends blocked Waits. Sandboxes and
// containers keep running.
func (c *Controller) Close() error {
	c.closeOnce.Do(func() { close(c.closing) })
	c.wg.Wait()
	return c.tasks.closeAll()
}

// Detach stops serving the Task API without answering calls in flight and
// without releasing the task sockets: the way a worker leaves under a
// supervisor, which holds containerd's connections and hands the calls to
// the next worker. Blocked Controller Waits end (containerd retries them).
func (c *Controller) Detach() {
	c.closeOnce.Do(func() { close(c.closing) })
	c.wg.Wait()
	c.tasks.detachAll()
}

// Create creates a sandbox. Its kind comes from the CRI runtime handler, the
// pod's magnetar.io/kind annotation or the default kind (see [Config]).
func (c *Controller) Create(ctx context.Context, req *sandboxapi.ControllerCreateRequest) (*sandboxapi.ControllerCreateResponse, error) {
	ns, err := namespace(ctx)
	if err != nil {
		return nil, err
	}
	if err := engine.ValidateID("sandbox", req.GetSandboxID()); err != nil {
		return nil, err
	}
	spec, from, err := c.kinds.sandboxSpec(req, ns)
	if err != nil {
		return nil, err
	}
	if _, err := c.eng.CreateSandbox(ctx, spec); err != nil {
		if errdefs.IsInvalidArgument(err) {
			err = fmt.Errorf("sandbox kind %q from %s: %w", spec.Kind, from, err)
		}
		return nil, err
	}
	return &sandboxapi.ControllerCreateResponse{SandboxID: req.GetSandboxID()}, nil
}

// namespace is the containerd namespace of the call; empty when the caller
// sent none.
func namespace(ctx context.Context) (string, error) {
	if _, ok := namespaces.Namespace(ctx); !ok {
		return "", nil
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", fmt.Errorf("containerd namespace: %w", err)
	}
	return ns, nil
}

// Start starts a sandbox and serves its Task API.
func (c *Controller) Start(ctx context.Context, req *sandboxapi.ControllerStartRequest) (_ *sandboxapi.ControllerStartResponse, retErr error) {
	id := req.GetSandboxID()
	if _, err := c.eng.Sandbox(ctx, id); err != nil {
		return nil, err
	}
	// Serve the Task API first: if that fails, nothing was started.
	wasServing := c.tasks.running(id)
	address, err := c.tasks.start(id)
	if err != nil {
		return nil, err
	}
	st, err := c.eng.StartSandbox(ctx, id)
	if err != nil {
		if !wasServing {
			if serr := c.tasks.stop(id); serr != nil {
				c.log.Warn("stop task server", "sandbox_id", id, "error", serr)
			}
		}
		return nil, err
	}
	return &sandboxapi.ControllerStartResponse{
		SandboxID: id,
		Pid:       st.Pid,
		CreatedAt: timestamppb.New(st.CreatedAt),
		Labels:    st.Labels,
		Address:   address,
		Version:   TaskAPIVersion,
	}, nil
}

// Platform reports the platform containers of the sandbox run on.
func (c *Controller) Platform(ctx context.Context, req *sandboxapi.ControllerPlatformRequest) (*sandboxapi.ControllerPlatformResponse, error) {
	if _, err := c.eng.Sandbox(ctx, req.GetSandboxID()); err != nil {
		return nil, err
	}
	return &sandboxapi.ControllerPlatformResponse{Platform: &types.Platform{OS: goruntime.GOOS, Architecture: goruntime.GOARCH}}, nil
}

// Stop stops the sandbox's containers and then the sandbox. timeout_secs is
// the grace period before containers are killed; 0 means the engine's
// default.
func (c *Controller) Stop(ctx context.Context, req *sandboxapi.ControllerStopRequest) (*sandboxapi.ControllerStopResponse, error) {
	timeout := time.Duration(req.GetTimeoutSecs()) * time.Second
	if err := c.eng.StopSandbox(ctx, req.GetSandboxID(), timeout); err != nil {
		return nil, err
	}
	return &sandboxapi.ControllerStopResponse{}, nil
}

// Wait blocks until the sandbox has exited. When the daemon shuts down, it
// returns Unavailable, which containerd retries.
func (c *Controller) Wait(ctx context.Context, req *sandboxapi.ControllerWaitRequest) (*sandboxapi.ControllerWaitResponse, error) {
	ctx, cancel := ctxutil.UntilClosed(ctx, c.closing, fmt.Errorf("sandboxer is shutting down: %w", errdefs.ErrUnavailable))
	defer cancel()
	st, err := c.eng.WaitSandbox(ctx, req.GetSandboxID())
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && errdefs.IsUnavailable(cause) {
			err = cause
		}
		return nil, err
	}
	return &sandboxapi.ControllerWaitResponse{ExitStatus: st.Code, ExitedAt: timestamppb.New(st.ExitedAt)}, nil
}

// Status reports the sandbox's state as CRI shows it (SANDBOX_READY or
// SANDBOX_NOTREADY) and its Task API address.
func (c *Controller) Status(ctx context.Context, req *sandboxapi.ControllerStatusRequest) (*sandboxapi.ControllerStatusResponse, error) {
	st, err := c.eng.Sandbox(ctx, req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	state := runtimeapi.PodSandboxState_SANDBOX_NOTREADY.String()
	if st.State == engine.SandboxReady {
		state = runtimeapi.PodSandboxState_SANDBOX_READY.String()
	}
	info, err := statusInfo(st, req.GetVerbose())
	if err != nil {
		return nil, err
	}
	if req.GetVerbose() && st.State == engine.SandboxReady {
		// What the sandbox reports about itself now; best effort: a
		// sandbox that cannot tell still has a status.
		if live, err := c.eng.SandboxLiveInfo(ctx, st.ID); err == nil {
			for k, v := range live {
				info["magnetar.live."+k] = v
			}
		}
	}
	resp := &sandboxapi.ControllerStatusResponse{
		SandboxID: st.ID,
		Pid:       st.Pid,
		State:     state,
		Info:      info,
		CreatedAt: timestamppb.New(st.CreatedAt),
	}
	if !st.ExitedAt.IsZero() {
		resp.ExitedAt = timestamppb.New(st.ExitedAt)
	}
	if st.State == engine.SandboxReady || c.tasks.running(st.ID) {
		resp.Address, resp.Version = c.tasks.address(st.ID), TaskAPIVersion
	}
	return resp, nil
}

// criSandboxInfo is the JSON CRI expects under info["info"]: it decodes it
// into its own SandboxInfo (internal/cri/server/podsandbox/types) and
// re-encodes it, so only fields it knows survive.
type criSandboxInfo struct {
	Pid    uint32 `json:"pid"`
	Status string `json:"processStatus"`
}

// statusInfo is the info map of a Status response: the backend's info, the
// kind and namespace, and with verbose the CRI "info" document.
func statusInfo(st engine.SandboxStatus, verbose bool) (map[string]string, error) {
	info := map[string]string{}
	maps.Copy(info, st.Info)
	info["magnetar.kind"] = st.Kind
	info["magnetar.namespace"] = st.Namespace
	info["magnetar.state"] = string(st.State)
	if len(st.Containers) > 0 {
		info["magnetar.containers"] = strconv.Itoa(len(st.Containers))
	}
	if st.Err != nil {
		info["magnetar.error"] = st.Err.Error()
	}
	if verbose {
		data, err := json.Marshal(criSandboxInfo{Pid: st.Pid, Status: string(st.State)})
		if err != nil {
			return nil, fmt.Errorf("encode sandbox info: %w", err)
		}
		info["info"] = string(data)
	}
	return info, nil
}

// Shutdown deletes the sandbox, with everything it holds, and stops its
// Task API server.
func (c *Controller) Shutdown(ctx context.Context, req *sandboxapi.ControllerShutdownRequest) (*sandboxapi.ControllerShutdownResponse, error) {
	id := req.GetSandboxID()
	if err := c.eng.DeleteSandbox(ctx, id); err != nil {
		if errdefs.IsNotFound(err) {
			// A server left behind by a failed Start must not outlive
			// the sandbox.
			_ = c.tasks.stop(id)
		}
		return nil, err
	}
	if err := c.tasks.stop(id); err != nil {
		c.log.Warn("stop task server", "sandbox_id", id, "error", err)
	}
	return &sandboxapi.ControllerShutdownResponse{}, nil
}

// Metrics returns the sandbox's resource usage as a cgroups Metrics message,
// which CRI's pod stats decode.
func (c *Controller) Metrics(ctx context.Context, req *sandboxapi.ControllerMetricsRequest) (*sandboxapi.ControllerMetricsResponse, error) {
	st, err := c.eng.SandboxStats(ctx, req.GetSandboxID())
	if err != nil {
		return nil, err
	}
	data, err := taskservice.MetricsAny(st)
	if err != nil {
		return nil, err
	}
	ts := st.Timestamp
	if ts.IsZero() {
		ts = time.Now()
	}
	return &sandboxapi.ControllerMetricsResponse{Metrics: &types.Metric{
		Timestamp: timestamppb.New(ts),
		ID:        req.GetSandboxID(),
		Data:      data,
	}}, nil
}

// Update accepts changes to the sandbox record. The sandbox store in
// containerd owns labels and extensions and the engine keeps nothing that
// depends on them after creation, so Update only checks that the sandbox
// exists. (containerd 2.4.2 does not fill "sandboxer" in this request.)
func (c *Controller) Update(ctx context.Context, req *sandboxapi.ControllerUpdateRequest) (*sandboxapi.ControllerUpdateResponse, error) {
	// Only labels are ours to keep; CRI owns the rest of its record.
	var labels map[string]string
	if slices.Contains(req.GetFields(), "labels") && req.GetSandbox() != nil {
		labels = req.GetSandbox().GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
	}
	if _, err := c.eng.UpdateSandbox(ctx, req.GetSandboxID(), labels, nil); err != nil {
		return nil, err
	}
	return &sandboxapi.ControllerUpdateResponse{}, nil
}
