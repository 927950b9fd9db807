// Package embedded runs Magnetar's engine, API server and image store in
// the calling process, with no daemon, and returns an [sdk.Client] of them.
// It links the runc and wasm kinds (Linux only); programs that only talk
// to a sandboxer use [sdk.Dial] and do not import this package.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectinprocess"
	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
	"github.com/magnetar-io/magnetar/sdk/kinds/gvisor"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
	"github.com/magnetar-io/magnetar/sdk/network"
)

// runnerHooked records that the program called [RunnerMain], so that the
// wasm kind may re-execute it.
var runnerHooked atomic.Bool

// RunnerMain must be called first thing in the main function (or TestMain)
// of every program that embeds the wasm kind with [New], or runs pods whose
// containers share a PID namespace in the runc kind:
//
//	func main() {
//		if embedded.RunnerMain() {
//			return
//		}
//		...
//	}
//
// The wasm kind runs its containers as instances in a copy of the
// program's own executable (one runner for all of them), started with a
// marker in its environment; in such a copy, RunnerMain serves as that
// runner and exits once it has had no instance for a while. In the
// program itself it returns false at once. [New] includes the
// wasm kind in its default set only when RunnerMain was called. The runc
// kind likewise starts a copy as the init of a pod's shared PID namespace
// (see runc.PodInitMain), and the gvisor kind as the root container of
// each gVisor sandbox (gvisor.PodInitMain, the same function); New
// includes the gvisor kind (as root, with runsc installed) only when
// RunnerMain was called.
func RunnerMain() bool {
	runnerHooked.Store(true)
	return wasm.RunnerMain() || runc.PodInitMain()
}

// Option configures [New].
type Option func(*options) error

type options struct {
	stateDir     string
	backends     []backend.Backend
	stopTimeout  time.Duration
	noHostAccess bool
	networks     []network.NetworkConfig
}

// WithNetworks gives sandboxes bridge networks (NETWORK_MODE_BRIDGE,
// [sdk.WithBridgeNetwork]) through CNI: nets, the first being the
// default, or [network.DefaultNetwork] when none is given. Their
// namespaces and address leases are kept under the state dir. Needs root
// and the CNI plugins (containernetworking-plugins).
func WithNetworks(nets ...network.NetworkConfig) Option {
	return func(o *options) error {
		if len(nets) == 0 {
			nets = []network.NetworkConfig{network.DefaultNetwork}
		}
		o.networks = nets
		return nil
	}
}

// WithStateDir keeps the engine's state (sandboxes, containers, the image
// store under dir/images) in dir, which is created if needed. Default: a
// new temporary directory, removed by [sdk.Client.Close].
func WithStateDir(dir string) Option {
	return func(o *options) error {
		if dir == "" {
			return fmt.Errorf("WithStateDir: empty directory: %w", errdefs.ErrInvalidArgument)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("WithStateDir: %w", err)
		}
		o.stateDir = abs
		return nil
	}
}

// WithBackends sets the sandbox kinds. The caller keeps ownership of the
// backends and closes them after [sdk.Client.Close]. Default: runc, when
// running as root with runc in PATH, and wasm, when the program calls
// [RunnerMain]; both with their state under the state dir.
func WithBackends(backends ...backend.Backend) Option {
	return func(o *options) error {
		for _, b := range backends {
			if b == nil {
				return fmt.Errorf("WithBackends: nil backend: %w", errdefs.ErrInvalidArgument)
			}
		}
		o.backends = backends
		return nil
	}
}

// WithStopTimeout sets how long stopping a sandbox or container waits
// after SIGTERM before it kills, when the caller gives no timeout.
// Default: 10s.
func WithStopTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("WithStopTimeout: %v is not positive: %w", d, errdefs.ErrInvalidArgument)
		}
		o.stopTimeout = d
		return nil
	}
}

// WithoutHostAccess refuses requests that reach the host (host
// directories as root file systems, bind mounts, raw OCI specs applied
// as given) with PERMISSION_DENIED, as the sandboxer does by default.
// An embedded client allows them by default: its caller is the process
// that runs the engine, with all its rights.
func WithoutHostAccess() Option {
	return func(o *options) error {
		o.noHostAccess = true
		return nil
	}
}

// New runs Magnetar's engine, API server and image store in this
// process and returns a client of them, connected through an in-process
// transport (no socket, no daemon). The client owns everything:
// [sdk.Client.Close] deletes the sandboxes, closes the engine, the image store
// and the default backends, and removes a temporary state dir.
//
// Only one runc backend can be open per process (it makes the process the
// subreaper of the containers), so only one embedded client at a time can
// have the default runc kind.
func New(ctx context.Context, opts ...Option) (_ *sdk.Client, retErr error) {
	var o options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	var cleanups []func() error
	defer func() {
		if retErr != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				_ = cleanups[i]()
			}
		}
	}()
	if o.stateDir == "" {
		dir, err := os.MkdirTemp("", "magnetar-embedded-")
		if err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
		o.stateDir = dir
		cleanups = append(cleanups, func() error { return os.RemoveAll(dir) })
	} else if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}

	backends := o.backends
	if backends == nil {
		if os.Geteuid() == 0 {
			if _, err := exec.LookPath("runc"); err == nil {
				rb, err := runc.New(runc.Config{Root: filepath.Join(o.stateDir, "runc")})
				if err != nil {
					return nil, fmt.Errorf("open the runc kind: %w", err)
				}
				cleanups = append(cleanups, rb.Close)
				backends = append(backends, rb)
			}
			if _, err := exec.LookPath("runsc"); err == nil && runnerHooked.Load() {
				// A gVisor sandbox's root container is a copy of the
				// program (gvisor.PodInitMain, called by RunnerMain).
				gb, err := gvisor.New(gvisor.Config{Root: filepath.Join(o.stateDir, "runsc")})
				if err != nil {
					return nil, fmt.Errorf("open the gvisor kind: %w", err)
				}
				cleanups = append(cleanups, gb.Close)
				backends = append(backends, gb)
			}
		}
		if runnerHooked.Load() {
			wb, err := wasm.New(wasm.Config{Root: filepath.Join(o.stateDir, "wasm")})
			if err != nil {
				return nil, fmt.Errorf("open the wasm kind: %w", err)
			}
			cleanups = append(cleanups, wb.Close)
			backends = append(backends, wb)
		}
	}

	var nm *network.Manager
	if o.networks != nil {
		var err error
		nm, err = network.New(network.Config{Networks: o.networks, NetNSDir: filepath.Join(o.stateDir, "netns"), StateDir: filepath.Join(o.stateDir, "network")})
		if err != nil {
			return nil, err
		}
	}
	eng, err := engine.New(ctx, engine.Config{StateDir: o.stateDir, Backends: backends, StopTimeout: o.stopTimeout, Network: nm})
	if err != nil {
		return nil, fmt.Errorf("open engine: %w", err)
	}
	cleanups = append(cleanups, eng.Close)
	images, err := image.Open(filepath.Join(o.stateDir, "images"))
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	cleanups = append(cleanups, images.Close)
	api := apiserver.New(eng, apiserver.WithImageStore(images), apiserver.WithHostAccess(!o.noHostAccess))
	cleanups = append(cleanups, api.Close)
	// Cleanups run in reverse: the sandboxes go first.
	cleanups = append(cleanups, func() error {
		var errs []error
		for _, sb := range eng.ListSandboxes(context.Background()) {
			if err := eng.DeleteSandbox(context.Background(), sb.ID); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete sandbox %s: %w", sb.ID, err))
			}
		}
		return errors.Join(errs...)
	})

	srv := connect.NewServer()
	api.Register(srv)
	all := cleanups
	return sdk.NewClient(connect.NewClient(connectinprocess.New(srv)), func() error {
		var errs []error
		for i := len(all) - 1; i >= 0; i-- {
			errs = append(errs, all[i]())
		}
		return errors.Join(errs...)
	}), nil
}
