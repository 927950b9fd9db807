// Package daemon wires the magnetar-sandboxer daemon: it reads the
// configuration, opens the sandbox backends and the engine, serves
// containerd's Sandbox Controller API on a unix socket, one Task API socket
// per sandbox, and forwards task events to containerd, until its context
// ends. Containers keep running when the daemon stops; the next daemon
// recovers them from the state directory.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"github.com/magnetar-io/magnetar/internal/unixsock"
	"github.com/magnetar-io/magnetar/sdk/network"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/magnetar-io/magnetar/sandboxer/controller"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
	"github.com/magnetar-io/magnetar/sdk/kinds/gvisor"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/qemu"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
)

// MaxMessageSize bounds gRPC messages in both directions, as containerd's
// proxy plugin client does.
const MaxMessageSize = 16 << 20

// MaxAPIRequestSize bounds a request message of Magnetar's API (Connect,
// gRPC and gRPC-Web alike); a larger one fails with RESOURCE_EXHAUSTED
// before it is read whole. No valid request comes near it: the fields
// have limits of their own (docs/api.md, "Limits").
const MaxAPIRequestSize = 4 << 20

// gracefulStopTimeout is how long the daemon waits for Controller calls in
// flight when it stops, before it cuts them off.
const gracefulStopTimeout = 5 * time.Second

// Run serves containerd until ctx ends, then stops gracefully. It returns
// nil after a clean stop. Sandboxes and containers keep running.
func Run(ctx context.Context, cfg Config, log hclog.Logger) (retErr error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	root := cfg.Backends.Runc.Root
	if root == "" {
		root = filepath.Join(cfg.RunDir, "runc")
	}
	rcfg := runc.Config{Binary: cfg.Backends.Runc.Binary, Root: root}
	if rlog := log.Named("runc"); rlog.IsTrace() {
		// Where a runc pod's start time goes (make bench reads these).
		rcfg.Trace = func(sp runc.Span) {
			rlog.Trace("span", "phase", sp.Phase, "sandbox_id", sp.Sandbox, "container_id", sp.Container, "duration", sp.Duration)
		}
	}
	if cfg.sup != nil {
		// What the containers' stdio needs beyond this worker (held FIFO
		// ends, terminals) is kept by the supervisor.
		store, err := cfg.sup.FDStore()
		if err != nil {
			return fmt.Errorf("fetch the supervisor's descriptors: %w", err)
		}
		cfg.fdstore = store
		rcfg.FDStore = store
		// Containers whose sandboxer died are reaped by the supervisor:
		// it knows how they ended.
		rcfg.OrphanExit = func(pid int) (uint32, time.Time, bool) {
			code, at, ok, err := cfg.sup.ExitOf(pid)
			if err != nil {
				log.Warn("ask the supervisor for an exit status", "pid", pid, "error", err)
			}
			return uint32(code), at, ok
		}
	}
	rb, err := runc.New(rcfg)
	if err != nil {
		return fmt.Errorf("open runc backend: %w", err)
	}
	defer func() {
		if err := rb.Close(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close runc backend: %w", err))
		}
	}()
	wasmRoot := cfg.Backends.Wasm.Root
	if wasmRoot == "" {
		wasmRoot = filepath.Join(cfg.StateDir, "wasm")
	}
	wb, err := wasm.New(wasm.Config{Root: wasmRoot, DefaultMemoryLimit: cfg.Backends.Wasm.DefaultMemoryLimit})
	if err != nil {
		return fmt.Errorf("open wasm backend: %w", err)
	}
	defer func() {
		if err := wb.Close(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close wasm backend: %w", err))
		}
	}()
	// A worker restarted under its supervisor resumes the VM pods'
	// containers; after a full restart containerd has reported them
	// exited, and the vm kind ends them.
	vb, err := vmBackend(cfg.Backends.VM, cfg.RunDir, cfg.sup != nil && cfg.sup.Restarted(), log.Named("vm"))
	if err != nil {
		return fmt.Errorf("open vm backend: %w", err)
	}
	defer func() {
		// Ends the warm pool's unclaimed VMs; the pods' keep running.
		if err := vb.ClosePool(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close vm backend: %w", err))
		}
	}()
	gcfg := cfg.Backends.GVisor
	if gcfg.Root == "" {
		gcfg.Root = filepath.Join(cfg.RunDir, "runsc")
	}
	gvlog := log.Named("gvisor")
	gvc := gvisor.Config{Binary: gcfg.Binary, Root: gcfg.Root, Platform: gcfg.Platform, HostFiles: gcfg.HostFiles, MemoryOverhead: gcfg.MemoryOverheadMiB << 20, Log: gvlog.Info}
	if cfg.fdstore != nil {
		gvc.FDStore = cfg.fdstore
		gvc.OrphanExit = rcfg.OrphanExit // exec'd processes' `runsc exec`
	}
	gb, err := gvisor.New(gvc)
	if err != nil {
		return fmt.Errorf("open gvisor backend: %w", err)
	}
	defer func() {
		if err := gb.Close(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close gvisor backend: %w", err))
		}
	}()
	return run(ctx, cfg, log, []backend.Backend{rb, wb, vb, gb})
}

// run is Run with the backends given.
func run(ctx context.Context, cfg Config, log hclog.Logger, backends []backend.Backend) (retErr error) {
	for _, dir := range []string{cfg.StateDir, cfg.RunDir} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	// The Controller socket first: containerd's connections made while
	// the engine recovers (a VM pod's recovery can take seconds) wait in
	// its backlog instead of being refused.
	l, err := cfg.listen(cfg.Listen)
	if err != nil {
		return err
	}
	defer cfg.removeSocket(cfg.Listen, log)
	serving := false
	defer func() {
		if !serving {
			_ = l.Close()
		}
	}()
	nm, err := network.New(network.Config{Networks: cfg.Networks, NetNSDir: filepath.Join(cfg.RunDir, "netns"), StateDir: filepath.Join(cfg.StateDir, "network")})
	if err != nil {
		return fmt.Errorf("networks: %w", err)
	}
	if err := nm.Check(); err != nil {
		log.Warn("bridge networks unavailable", "error", err)
	}
	eng, err := engine.New(ctx, engine.Config{StateDir: cfg.StateDir, Backends: backends, NetNSDirs: cfg.NetNSDirs, Network: nm})
	if err != nil {
		return fmt.Errorf("open engine: %w", err)
	}
	if err := eng.NetworkSweepError(); err != nil {
		log.Warn("network attachments left by a crash could not all be removed", "error", err)
	}
	if cfg.fdstore != nil {
		// Recovery took back what the containers still use; the rest
		// belonged to processes that are gone.
		swept, err := cfg.fdstore.Sweep()
		if len(swept) > 0 || err != nil {
			log.Info("released descriptors of processes gone", "count", len(swept), "error", err)
		}
	}
	defer func() {
		if err := eng.Close(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close engine: %w", err))
		}
	}()
	ccfg := controller.Config{
		RunDir:      cfg.RunDir,
		Handlers:    cfg.Containerd.Handlers,
		DefaultKind: cfg.DefaultKind,
		Version:     Version(),
		Logger:      log.Named("task"),
	}
	if cfg.sup != nil {
		ccfg.TaskSockets = supervisedSockets{cfg.sup.TaskSockets(filepath.Join(cfg.RunDir, "w"))}
	}
	ctrl, err := controller.New(eng, ccfg)
	if err != nil {
		return err
	}
	// Closing the controller ends blocked Waits (so that the graceful stop
	// below can finish) and stops the Task API servers. Under a supervisor
	// the worker detaches instead: the supervisor keeps containerd's task
	// connections and hands the calls in flight to the next worker.
	stopTasks := ctrl.Close
	if cfg.sup != nil {
		stopTasks = func() error { ctrl.Detach(); return nil }
	}
	defer func() {
		if err := stopTasks(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("close task servers: %w", err))
		}
	}()
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		// The controller returns errdefs errors: the last interceptor maps
		// them to status codes, which logCalls then sees.
		grpc.ChainUnaryInterceptor(logCalls(log.Named("controller")), controller.UnaryServerInterceptor()),
	)
	sandboxapi.RegisterControllerServer(srv, ctrl)

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The recovered sandboxes' Task API. Under a supervisor, which holds
	// the task sockets and their calls until this worker serves them, the
	// controller answers meanwhile (after a restart containerd asks both);
	// without one, a task socket must exist before containerd learns of
	// it.
	recoverTasks := func() {
		if err := ctrl.Recover(ctx); err != nil {
			log.Error("serve task API of recovered sandboxes", "error", err)
		}
	}
	if cfg.sup == nil {
		recoverTasks()
	}
	served := make(chan error, 1)
	serving = true
	wg.Go(func() { served <- srv.Serve(l) })
	log.Info("serving containerd sandbox controller", "listen", cfg.Listen, "version", Version())
	// Which kinds can run here, checked while the controller serves
	// (checks may run binaries: a restarted worker serves sooner).
	wg.Go(func() {
		for _, k := range eng.Kinds(ctx) {
			if k.Available {
				log.Info("sandbox kind available", "kind", k.Kind, "isolation", k.Isolation.String())
			} else {
				log.Warn("sandbox kind unavailable", "kind", k.Kind, "reason", k.Reason)
			}
		}
	})
	if cfg.sup != nil {
		recoverTasks()
	}
	// Events after the task servers: an exit is held until the output of
	// its streams was sent (ExitHold), which their servers know. Exits
	// seen while recovering are replayed from the engine's event log.
	if addr := cfg.Containerd.TTRPCAddress; addr != "" {
		fwd := controller.NewForwarder(addr, log.Named("events"))
		fwd.Hold = ctrl.ExitHold
		wg.Go(func() { _ = fwd.Run(ctx, eng) })
	} else {
		log.Warn("containerd.ttrpc_address is not set: task events are not forwarded to containerd")
	}

	if path := cfg.apiSocket(); path != "" || len(cfg.Remote.Listen) > 0 {
		fail := func(err error) error {
			srv.Stop()
			cancel()
			return err
		}
		images, err := image.Open(filepath.Join(cfg.StateDir, "images"))
		if err != nil {
			return fail(fmt.Errorf("open image store: %w", err))
		}
		defer images.Close()
		api := apiserver.New(eng, apiserver.WithImageStore(images), apiserver.WithOutputRingSize(cfg.APIOutputRingBytes), apiserver.WithMaxFileSize(cfg.APIMaxFileBytes), apiserver.WithHostAccess(cfg.APIAllowHostAccess), apiserver.WithDefaultNetworkBridge(cfg.DefaultNetworkMode == "bridge"))
		// Closed after the servers stopped (defers run in reverse).
		defer api.Close()
		access, err := api.NewAccess(apiserver.AccessConfig{Log: log.Named("audit"), StateDir: filepath.Join(cfg.StateDir, "api")})
		if err != nil {
			return fail(fmt.Errorf("open the API's access state: %w", err))
		}
		if path != "" {
			stopAPI, err := serveAPI(cfg, api, access, path, log.Named("api"), &wg)
			if err != nil {
				return fail(err)
			}
			defer stopAPI()
		}
		if len(cfg.Remote.Listen) > 0 {
			stopRemote, err := serveRemote(ctx, cfg.Remote, cfg.listenTCP(log.Named("remote")), cfg.onRemoteListen, api, access, log.Named("remote"), &wg)
			if err != nil {
				return fail(fmt.Errorf("remote API: %w", err))
			}
			defer stopRemote()
		}
	}

	if cfg.sup != nil {
		if err := cfg.sup.Ready(); err != nil {
			log.Warn("tell the supervisor this worker serves", "error", err)
		}
	}
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case err := <-served:
		// Serve returns only on a listener failure here.
		srv.Stop()
		cancel()
		return fmt.Errorf("serve: %w", err)
	}
	if err := stopTasks(); err != nil {
		log.Warn("close task servers", "error", err)
	}
	stopGracefully(srv, gracefulStopTimeout)
	<-served
	return nil
}

// listen opens a listening socket, through the supervisor when there is
// one (it holds the socket across workers).
func (c Config) listen(path string) (net.Listener, error) {
	if c.sup != nil {
		return c.sup.Listen(path)
	}
	return listen(path)
}

// removeSocket removes a socket the daemon listened on, unless the
// supervisor holds it.
func (c Config) removeSocket(path string, log hclog.Logger) {
	if c.sup != nil {
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("remove socket", "path", path, "error", err)
	}
}

// listen opens the Controller socket: stale sockets are removed, other
// files are not, and the socket is only for its owner (0600).
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := unixsock.Listen(path)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// stopGracefully lets calls in flight finish for up to timeout, then cuts
// them off.
func stopGracefully(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.GracefulStop()
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
}

// logCalls logs every Controller call at debug level with its sandbox ID,
// and failures that are the daemon's fault at error level.
func logCalls(log hclog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		var id string
		if r, ok := req.(interface{ GetSandboxID() string }); ok {
			id = r.GetSandboxID()
		}
		switch code := status.Code(err); code {
		case codes.Internal, codes.Unknown, codes.DataLoss:
			log.Error("sandbox controller call failed", "method", info.FullMethod, "sandbox_id", id, "duration", time.Since(start), "error", err)
		default:
			if log.IsDebug() {
				log.Debug("sandbox controller call", "method", info.FullMethod, "sandbox_id", id, "code", code.String(), "duration", time.Since(start), "error", err)
			}
		}
		return resp, err
	}
}

// Version is the daemon's version: the main module's version from the
// build info, or "devel".
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// serveAPI serves Magnetar's own API (Connect, gRPC and gRPC-Web over HTTP/1.1
// and cleartext HTTP/2) on a 0600 unix socket, to the host's
// administrator (every mutating call audited). The returned function stops
// it and waits for it.
func serveAPI(cfg Config, api *apiserver.Server, access *apiserver.Access, path string, log hclog.Logger, wg *sync.WaitGroup) (func(), error) {
	l, err := cfg.listen(path)
	if err != nil {
		return nil, err
	}
	cs := connect.NewServer(logAPICalls(log), access.Local())
	api.Register(cs)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, cs, connecthttp.WithCompressMinBytes(1024), connecthttp.WithReadMaxBytes(MaxAPIRequestSize))
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: mux, Protocols: protocols, ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() {
		if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serve API", "error", err)
		}
	})
	log.Info("serving Magnetar API (Connect, gRPC, gRPC-Web)", "listen", path)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), gracefulStopTimeout)
		defer cancel()
		// Streams (events, output) stay open until their client leaves:
		// close them after the grace period.
		if err := hs.Shutdown(ctx); err != nil {
			_ = hs.Close()
		}
		cfg.removeSocket(path, log)
	}, nil
}

// logAPICalls logs each API call at debug level, and failures at warn.
func logAPICalls(log hclog.Logger) connect.ServerInterceptor {
	return func(next connect.ServerFunc) connect.ServerFunc {
		return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			start := time.Now()
			err := next(ctx, spec, stream)
			if err != nil && connect.CodeOf(err) != connect.CodeCanceled {
				log.Debug("call failed", "procedure", spec.Procedure, "code", connect.CodeOf(err).String(), "error", err, "took", time.Since(start))
			} else {
				log.Debug("call", "procedure", spec.Procedure, "took", time.Since(start))
			}
			return err
		}
	}
}

// vmBackend builds the vm kind from its config.
func vmBackend(c VMConfig, runDir string, resume bool, log hclog.Logger) (*vm.Backend, error) {
	dir := c.GuestDir
	if dir == "" {
		dir = DefaultGuestDir
	}
	kernel, initrd := c.Kernel, c.Initrd
	if kernel == "" {
		kernel = filepath.Join(dir, "vmlinux")
	}
	if initrd == "" {
		initrd = filepath.Join(dir, "initramfs.cpio.gz")
	}
	pool := vm.PoolConfig{MemoryBudgetMiB: c.Pool.MemoryBudgetMiB, RetryInterval: time.Duration(c.Pool.RetryInterval)}
	for _, cl := range c.Pool.Classes {
		pool.Classes = append(pool.Classes, vm.PoolClass{Count: cl.Count, VCPUs: cl.VCPUs, MemoryMiB: cl.MemoryMiB})
	}
	tmpl := vm.TemplateConfig{Enabled: c.Template.Enabled}
	for _, sz := range c.Template.Sizes {
		tmpl.Sizes = append(tmpl.Sizes, vm.TemplateSize{VCPUs: sz.VCPUs, MemoryMiB: sz.MemoryMiB})
	}
	return vm.New(vm.Config{
		Driver: qemu.New(qemu.Options{Binary: c.QEMU}),
		Kernel: kernel, Initrd: initrd, RunDir: runDir,
		VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB, MaxVCPUs: c.MaxVCPUs, MemoryOverheadMiB: c.MemoryOverheadMiB,
		BootTimeout:    time.Duration(c.BootTimeout),
		HealthInterval: time.Duration(c.HealthInterval), HealthTimeout: time.Duration(c.HealthTimeout),
		HealthFailures:    c.HealthFailures,
		ResumeContainers:  resume,
		Pool:              pool,
		Template:          tmpl,
		TCGCacheMiB:       c.TCGCacheMiB,
		FreePageReporting: c.FreePageReporting,
		Log:               log.Info,
	})
}
