package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	cg1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cg2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgstats"
)

// The container operations below are forwarded to the guest's Task API,
// where the agent's runc backend applies them to the container's cgroup
// in the guest.
var (
	_ backend.Stater  = (*container)(nil)
	_ backend.Pider   = (*container)(nil)
	_ backend.Pauser  = (*container)(nil)
	_ backend.Updater = (*container)(nil)
)

// Stats returns the container's cgroup metrics in the guest.
func (c *container) Stats(ctx context.Context) (*backend.Stats, error) {
	tc, err := c.s.taskClient()
	if err != nil {
		return nil, err
	}
	resp, err := tc.Stats(c.s.ns(ctx), &taskapi.StatsRequest{ID: c.id})
	if err != nil {
		return nil, fmt.Errorf("stats of %q in the guest: %w", c.id, errgrpc.ToNative(err))
	}
	return statsFromAny(resp.GetStats(), time.Now().UTC())
}

// statsFromAny converts the guest's cgroup v1 or v2 Metrics (the runc
// shim's encoding); the Metrics become the Raw stats, which CRI decodes.
func statsFromAny(a *anypb.Any, at time.Time) (*backend.Stats, error) {
	if a == nil {
		return nil, fmt.Errorf("guest returned no stats: %w", errdefs.ErrUnavailable)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		return nil, fmt.Errorf("decode guest stats (%s): %w", a.GetTypeUrl(), err)
	}
	switch m := v.(type) {
	case *cg2.Metrics:
		return cgstats.FromV2(m, at), nil
	case *cg1.Metrics:
		return cgstats.FromV1(m, at), nil
	}
	return nil, fmt.Errorf("guest stats of unexpected type %T: %w", v, errdefs.ErrUnknown)
}

// Pids lists the container's processes (guest pids; exec'd processes
// carry their exec ID).
func (c *container) Pids(ctx context.Context) ([]backend.ProcessInfo, error) {
	tc, err := c.s.taskClient()
	if err != nil {
		return nil, err
	}
	resp, err := tc.Pids(c.s.ns(ctx), &taskapi.PidsRequest{ID: c.id})
	if err != nil {
		return nil, fmt.Errorf("list processes of %q in the guest: %w", c.id, errgrpc.ToNative(err))
	}
	out := make([]backend.ProcessInfo, 0, len(resp.GetProcesses()))
	for _, p := range resp.GetProcesses() {
		pi := backend.ProcessInfo{Pid: p.GetPid()}
		if p.GetInfo() != nil {
			var d options.ProcessDetails
			if err := typeurl.UnmarshalTo(p.GetInfo(), &d); err == nil {
				pi.ExecID = d.ExecID
			}
		}
		out = append(out, pi)
	}
	return out, nil
}

// Pause freezes the container in the guest.
func (c *container) Pause(ctx context.Context) error {
	tc, err := c.s.taskClient()
	if err != nil {
		return err
	}
	if _, err := tc.Pause(c.s.ns(ctx), &taskapi.PauseRequest{ID: c.id}); err != nil {
		return fmt.Errorf("pause %q in the guest: %w", c.id, errgrpc.ToNative(err))
	}
	return nil
}

// Resume thaws the container in the guest.
func (c *container) Resume(ctx context.Context) error {
	tc, err := c.s.taskClient()
	if err != nil {
		return err
	}
	if _, err := tc.Resume(c.s.ns(ctx), &taskapi.ResumeRequest{ID: c.id}); err != nil {
		return fmt.Errorf("resume %q in the guest: %w", c.id, errgrpc.ToNative(err))
	}
	return nil
}

// Update changes the container's resources in its guest cgroup. The
// limits apply inside the VM; the VM's own size does not change.
func (c *container) Update(ctx context.Context, res *specs.LinuxResources) error {
	if res == nil {
		return fmt.Errorf("update %q: no resources: %w", c.id, errdefs.ErrInvalidArgument)
	}
	tc, err := c.s.taskClient()
	if err != nil {
		return err
	}
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if _, err := tc.Update(c.s.ns(ctx), &taskapi.UpdateTaskRequest{
		ID:        c.id,
		Resources: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: data},
	}); err != nil {
		return fmt.Errorf("update %q in the guest: %w", c.id, errgrpc.ToNative(err))
	}
	return nil
}
