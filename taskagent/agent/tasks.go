package agent

import (
	"context"
	"errors"
	"fmt"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
	"github.com/magnetar-io/magnetar/sdk/taskservice"
)

// PodSandboxID is the engine sandbox that holds the pod's containers in
// the guest: the guest runs exactly one pod, so the ID is fixed. It is
// created by Setup; Task API calls before Setup fail with NotFound.
const PodSandboxID = "pod"

// Paths of the in-guest engine.
const (
	engineStateDir = "/run/magnetar/engine"
	runcRoot       = "/run/magnetar/runc"
	runcBinary     = "/usr/sbin/runc"
)

// tasks is the in-guest container runtime: Magnetar's engine with the runc
// backend, and containerd's Task API v3 on top of it.
type tasks struct {
	eng *engine.Engine
	svc *taskservice.Service
}

// startTasks opens the runc backend and the engine. The guest's network
// and file systems are the pod's, so the sandbox shares them.
func startTasks(ctx context.Context) (*tasks, error) {
	rb, err := runc.New(runc.Config{Binary: runcBinary, Root: runcRoot})
	if err != nil {
		return nil, fmt.Errorf("runc backend: %w", err)
	}
	eng, err := engine.New(ctx, engine.Config{StateDir: engineStateDir, Backends: []backend.Backend{rb}})
	if err != nil {
		_ = rb.Close()
		return nil, fmt.Errorf("engine: %w", err)
	}
	return &tasks{eng: eng, svc: taskservice.New(eng, PodSandboxID, Version)}, nil
}

// register adds the Task API to srv.
func (t *tasks) register(srv *ttrpc.Server) {
	taskapi.RegisterTTRPCTaskService(srv, t.svc)
}

// setup creates and starts the pod sandbox (once) with the host name and
// DNS from the Setup request.
func (t *tasks) setup(ctx context.Context, req *agentv1.SetupRequest) error {
	_, err := t.eng.CreateSandbox(ctx, engine.SandboxSpec{
		ID:       PodSandboxID,
		Kind:     runc.Kind,
		Hostname: req.GetHostname(),
		DNS: backend.DNSConfig{
			Servers:  req.GetDns().GetServers(),
			Searches: req.GetDns().GetSearches(),
			Options:  req.GetDns().GetOptions(),
		},
	})
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		return nil // a repeated Setup
	}
	if err != nil {
		return fmt.Errorf("create pod sandbox: %w", err)
	}
	if _, err := t.eng.StartSandbox(ctx, PodSandboxID); err != nil {
		return fmt.Errorf("start pod sandbox: %w", err)
	}
	return nil
}
