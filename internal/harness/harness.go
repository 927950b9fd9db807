// Package harness runs a private containerd for tests and demos.
//
// The containerd it starts owns everything it touches: root, state, sockets,
// shim sockets, the runc state directory, CNI configuration, IPAM leases and
// registry configuration live under one scratch directory; it runs in a
// private mount namespace whose /var/lib is bound to that directory (libcni
// hard-codes its cache under /var/lib/cni); its CNI bridge and subnet are
// unique per instance; every pull goes to 127.0.0.1:1 so nothing leaves the
// host. It is configured with magnetar's sandboxer as the proxy sandbox
// plugin "magnetar" serving the runtime handlers in MagnetarHandlers, next
// to the stock runc handler ("runc", podsandbox mode, the default) for
// comparison.
//
// Starting one needs root and the pinned tools (`make tools`, see
// CheckPrerequisites).
package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/magnetar-io/magnetar/internal/pdeathsig"
)

// Names the harness configures containerd with.
const (
	// Namespace is the containerd namespace CRI uses.
	Namespace = "k8s.io"
	// SandboxerName is the proxy plugin name of magnetar's sandboxer, used as
	// the `sandboxer` of every magnetar runtime handler.
	SandboxerName = "magnetar"
	// RuntimeType is the runtime_type of the magnetar handlers; containerd
	// resolves it to the binary containerd-shim-magnetar-v2.
	RuntimeType = "io.containerd.magnetar.v2"
	// RuncHandler is the stock runc runtime handler (podsandbox mode).
	RuncHandler = "runc"
	// BusyboxImage is the name ImportBusybox imports busybox under.
	BusyboxImage = "docker.io/library/busybox:1.36"
	// PauseImage is containerd 2.4's default sandbox image, which
	// ImportPause imports a stand-in for.
	PauseImage = "registry.k8s.io/pause:3.10.2"
)

// MagnetarHandlers are the CRI runtime handlers served by the sandboxer.
var MagnetarHandlers = []string{"magnetar-runc", "magnetar-wasm", "magnetar-vm", "magnetar-gvisor"}

// UnknownKindHandler is declared in containerd for the sandboxer like
// MagnetarHandlers, but names a kind the sandboxer does not have (for tests
// of that error).
const UnknownKindHandler = "magnetar-nosuch"

// Socket path limits: sun_path is 108 bytes with the terminating NUL, and
// containerd names shim sockets <socket_dir>/<64 hex digits>.
const (
	maxSocketPath    = 107
	maxShimSocketDir = maxSocketPath - 1 - 64 // 42
)

// Options configure Start.
type Options struct {
	// BaseDir is the scratch directory holding everything the instance
	// writes; Stop removes it. Empty means a new directory under /tmp. When
	// BaseDir is too long for the socket paths, sockets go to a separate
	// short directory under /tmp.
	BaseDir string
	// BinDir holds containerd, ctr, crictl and containerd-shim-runc-v2
	// (hack/build-tools.sh). Empty means DefaultBinDir().
	BinDir string
	// SandboxerSocket is the unix socket path of magnetar's sandboxer
	// (gRPC, containerd.services.sandbox.v1.Controller). containerd connects
	// lazily, so the sandboxer may start later. Empty means
	// <socket dir>/sandboxer.sock, see (*Containerd).SandboxerSocket.
	SandboxerSocket string
	// ShimPath is containerd-shim-magnetar-v2, set as the runtime_path of
	// the magnetar handlers; its directory goes first in containerd's PATH.
	ShimPath string
	// CNIBinDir holds the CNI plugins; empty means /usr/lib/cni (Debian's
	// containernetworking-plugins).
	CNIBinDir string
	// LogWriter, if set, receives containerd's log.
	LogWriter io.Writer
	// LogLevel is containerd's log level; empty means "info".
	LogLevel string
	// StartTimeout bounds the wait for CRI to become ready; 0 means 30s.
	StartTimeout time.Duration
	// CgroupParents are the cgroup parents (e.g. "/magnetar-test-1") the
	// caller's pods use. Stop removes them, and their ancestors, if they did
	// not exist at Start and are empty. Parents of the pods still present
	// at Stop are found without this; list here those of pods the caller
	// removes itself. Other new cgroups are left alone: the host is shared.
	CgroupParents []string
	// Registry is a plain-HTTP registry ("127.0.0.1:port", see
	// StartRegistry) every pull goes to. Empty sends every pull to a
	// closed port: pulls fail and only imported images exist.
	Registry string
	// SharedDir, if set, is an existing directory whose mounts propagate
	// both ways between the host and containerd's mount namespace (a
	// shared bind mount of itself), as on a node without a private
	// namespace: host paths below it can be mounted into containers with
	// HOST_TO_CONTAINER or BIDIRECTIONAL propagation. Every other mount
	// stays private.
	SharedDir string
	// ReachablePods gives the host an address on the pods' bridge (the
	// first of the subnet, CNI's isGateway) and maps host ports to pods
	// (the CNI portmap plugin), as on a Kubernetes node. Pods still get no
	// route off the host and no masquerading.
	ReachablePods bool
}

// Containerd is a running private containerd. Its methods are safe for
// concurrent use.
type Containerd struct {
	base, sockDir string
	ownSockDir    bool
	binDir        string
	sandboxer     string
	bridge        string
	subnet        string
	crictlConfig  string

	sharedDir string // Options.SharedDir, bind-mounted on itself ("" if none)

	cmd     *exec.Cmd     // nil until containerd was started
	done    chan struct{} // closed when cmd.Wait returned
	waitErr error         // set before done is closed
	log     *tailBuffer
	mntNS   string          // containerd's mount namespace, e.g. "mnt:[4026532]"
	mntFile *os.File        // holds that namespace open, for Restart
	opts    Options         // what Start was given, for Restart
	cgroups map[string]bool // cgroup directories that existed at Start

	cgroupParents []string // Options.CgroupParents

	mu      sync.Mutex // serializes image builds and Stop
	stopped bool
}

// Start prepares the directories and configuration, creates the CNI bridge,
// starts containerd and waits until CRI reports the runtime and the network
// ready. On error nothing is left behind.
func Start(ctx context.Context, opts Options) (_ *Containerd, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("harness: containerd needs root")
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = DefaultBinDir(); err != nil {
			return nil, err
		}
	}
	if opts.BinDir, err = filepath.Abs(opts.BinDir); err != nil {
		return nil, err
	}
	if err := CheckPrerequisites(opts.BinDir); err != nil {
		return nil, err
	}
	runc, _ := exec.LookPath("runc") // checked by CheckPrerequisites
	if opts.CNIBinDir == "" {
		opts.CNIBinDir = "/usr/lib/cni"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}

	c := &Containerd{binDir: opts.BinDir, log: &tailBuffer{max: 32 << 10}, cgroupParents: slices.Clone(opts.CgroupParents), opts: opts}
	defer func() {
		if err != nil {
			if cerr := c.cleanup(context.WithoutCancel(ctx)); cerr != nil {
				err = errors.Join(err, cerr)
			}
			if tail := c.log.String(); tail != "" {
				err = fmt.Errorf("%w\ncontainerd log (tail):\n%s", err, tail)
			}
		}
	}()
	if opts.BaseDir == "" {
		if c.base, err = os.MkdirTemp("/tmp", "mh-"); err != nil {
			return nil, err
		}
	} else {
		if c.base, err = filepath.Abs(opts.BaseDir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(c.base, 0o700); err != nil {
			return nil, err
		}
	}
	// Sockets: <sockDir>/containerd.sock(.ttrpc), <sockDir>/s/<64 hex>.
	c.sockDir = filepath.Join(c.base, "run")
	if len(c.sockDir)+len("/s") > maxShimSocketDir || len(c.sockDir)+len("/containerd.sock.ttrpc") > maxSocketPath {
		if c.sockDir, err = os.MkdirTemp("/tmp", "mhs-"); err != nil {
			return nil, err
		}
		c.ownSockDir = true
	}
	c.sandboxer = opts.SandboxerSocket
	if c.sandboxer == "" {
		c.sandboxer = filepath.Join(c.sockDir, "sandboxer.sock")
	}
	if len(c.sandboxer) > maxSocketPath {
		return nil, fmt.Errorf("harness: sandboxer socket path %q is longer than %d bytes", c.sandboxer, maxSocketPath)
	}
	if opts.Registry != "" {
		host, _, err := net.SplitHostPort(opts.Registry)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("harness: registry %q is not a loopback host:port", opts.Registry)
		}
	}
	if opts.ShimPath != "" {
		if opts.ShimPath, err = filepath.Abs(opts.ShimPath); err != nil {
			return nil, err
		}
		if fi, err := os.Stat(opts.ShimPath); err != nil || fi.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("harness: shim %s is not an executable file (%v)", opts.ShimPath, err)
		}
	}

	dirs := []string{"root", "state", "varlib", "cni/net.d", "cni/ipam", "cdi", "opt/image-verifier/bin",
		"certs.d/_default", "images", "logs"}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(c.base, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(c.sockDir, "s"), 0o700); err != nil {
		return nil, err
	}

	if opts.SharedDir != "" {
		if err := c.shareDir(opts.SharedDir); err != nil {
			return nil, err
		}
	}
	if err := c.createBridge(ctx); err != nil {
		return nil, err
	}
	if c.cgroups, err = snapshotCgroups(); err != nil {
		return nil, err
	}

	cfg, err := renderConfig(configData{
		Root:            c.path("root"),
		State:           c.path("state"),
		GRPC:            c.Address(),
		LogLevel:        opts.LogLevel,
		PauseImage:      PauseImage,
		CertsDir:        c.path("certs.d"),
		CDIDir:          c.path("cdi"),
		Runc:            runc,
		RuncRoot:        c.path("state/runc"),
		Handlers:        append(slices.Clone(MagnetarHandlers), UnknownKindHandler),
		RuntimeType:     RuntimeType,
		Sandboxer:       SandboxerName,
		ShimPath:        opts.ShimPath,
		CNIBinDir:       opts.CNIBinDir,
		CNIConfDir:      c.path("cni/net.d"),
		OptDir:          c.path("opt"),
		VerifierDir:     c.path("opt/image-verifier/bin"),
		ShimSocks:       filepath.Join(c.sockDir, "s"),
		SandboxerSocket: c.sandboxer,
	})
	if err != nil {
		return nil, err
	}
	conflist, err := cniConflist("magnetar-"+c.bridge, c.bridge, c.subnet, c.path("cni/ipam"), opts.ReachablePods)
	if err != nil {
		return nil, err
	}
	crictlYAML := fmt.Sprintf("runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: 60\ndebug: false\npull-image-on-create: false\n",
		c.CRIEndpoint(), c.CRIEndpoint())
	c.crictlConfig = c.path("crictl.yaml")
	files := map[string]string{
		"config.toml":                    string(cfg),
		"cni/net.d/10-magnetar.conflist": string(conflist),
		"certs.d/_default/hosts.toml":    hostsTOML(opts.Registry),
		"crictl.yaml":                    crictlYAML,
	}
	for name, content := range files {
		if err := os.WriteFile(c.path(name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}

	if err := c.startProcess(opts); err != nil {
		return nil, err
	}
	if err := c.waitReady(ctx, opts.StartTimeout); err != nil {
		return nil, err
	}
	// Stop kills every process in this namespace: make sure it is not ours.
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("harness: containerd mount namespace: %w", err)
	}
	if self, err := os.Readlink("/proc/self/ns/mnt"); err != nil || self == ns {
		return nil, fmt.Errorf("harness: containerd is not in a private mount namespace (%s, %v)", ns, err)
	}
	c.mntNS = ns
	// Hold the namespace, so that a restarted containerd joins it: the
	// netns and rootfs mounts of the running pods are there.
	if c.mntFile, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", c.cmd.Process.Pid)); err != nil {
		return nil, fmt.Errorf("harness: hold containerd's mount namespace: %w", err)
	}
	return c, nil
}

// Kill ends containerd with SIGKILL, as a crash does, and waits until it
// is gone. Its mount namespace, shims, sandboxers and pods stay; Restart
// starts it again.
func (c *Containerd) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped || !c.running() {
		return errors.New("harness: containerd is not running")
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("harness: containerd (pid %d) did not exit after SIGKILL", c.cmd.Process.Pid)
	}
}

// Restart starts containerd again after Kill, with the same configuration
// and state, in the same mount namespace, and waits until CRI reports the
// runtime and the network ready.
func (c *Containerd) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped || c.running() {
		return errors.New("harness: Restart needs a containerd ended by Kill")
	}
	if err := c.startProcess(c.opts); err != nil {
		return err
	}
	if err := c.waitReady(ctx, c.opts.StartTimeout); err != nil {
		return fmt.Errorf("%w\ncontainerd log (tail):\n%s", err, c.log.String())
	}
	return nil
}

// hostsTOML is the registry configuration for every host name: all pulls
// go to registry (plain HTTP on the loopback) or, without one, to a closed
// port. Tests never reach a registry off the machine.
func hostsTOML(registry string) string {
	if registry == "" {
		return "# Route every pull to a closed port: tests never reach a registry.\nserver = \"http://127.0.0.1:1\"\n"
	}
	return fmt.Sprintf("# Route every pull to the harness's local registry (StartRegistry).\nserver = %q\n", "http://"+registry)
}

// startProcess runs containerd in a private mount namespace with /var/lib
// bound to <base>/varlib.
func (c *Containerd) startProcess(opts Options) error {
	logFile, err := os.OpenFile(c.path("logs/containerd.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	var out io.Writer = io.MultiWriter(logFile, c.log)
	if opts.LogWriter != nil {
		out = io.MultiWriter(logFile, c.log, opts.LogWriter)
	}

	path := c.binDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if opts.ShimPath != "" {
		path = filepath.Dir(opts.ShimPath) + ":" + path
	}
	env := []string{"PATH=" + path}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "CONTAINERD_") && !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			env = append(env, kv)
		}
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `mount --bind "$1" /var/lib && exec "$2" --config "$3"`, "sh",
		c.path("varlib"), filepath.Join(c.binDir, "containerd"), c.path("config.toml"))
	if c.sharedDir != "" {
		// Keep the shared directory in the host's peer group: make every
		// other mount private one by one (mountinfo's field 5, octal
		// escapes undone by printf %b) instead of recursively.
		cmd = exec.Command("unshare", "--mount", "--propagation", "unchanged", "--",
			"/bin/sh", "-c", `set -e
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
	m="$(printf '%b' "$m")"
	[ "$m" = "$4" ] || mount --make-private "$m"
done
mount --bind "$1" /var/lib
exec "$2" --config "$3"`, "sh",
			c.path("varlib"), filepath.Join(c.binDir, "containerd"), c.path("config.toml"), c.sharedDir)
	}
	if c.mntFile != nil {
		// A restart: join the first containerd's namespace, where
		// /var/lib is bound already.
		cmd = exec.Command("nsenter", "--mount=/proc/self/fd/3", "--",
			filepath.Join(c.binDir, "containerd"), "--config", c.path("config.toml"))
		cmd.ExtraFiles = []*os.File{c.mntFile}
	}
	cmd.Dir = c.base
	cmd.Env = env
	cmd.Stdout = out
	cmd.Stderr = out
	// Do not outlive a crashed test binary; shims are cleaned up by Stop.
	// Pdeathsig through pdeathsig.Start: forked from a thread that lives
	// as long as the test binary, not from one that a goroutine locking
	// its thread (netnsrun) may end, taking containerd with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Shims do not inherit containerd's stdio, but never hang in Wait if a
	// descendant keeps the log pipe open.
	cmd.WaitDelay = 5 * time.Second
	if err := pdeathsig.Start(cmd, syscall.SIGKILL); err != nil {
		logFile.Close()
		return fmt.Errorf("harness: start containerd: %w", err)
	}
	c.cmd = cmd
	c.done = make(chan struct{})
	go func() {
		c.waitErr = cmd.Wait()
		logFile.Close() // written by Wait's copying goroutine until now
		close(c.done)
	}()
	return nil
}

// criInfo is the part of `crictl info` the readiness check reads.
type criInfo struct {
	Status struct {
		Conditions []struct {
			Type   string `json:"type"`
			Status bool   `json:"status"`
			Reason string `json:"reason"`
		} `json:"conditions"`
	} `json:"status"`
}

// waitReady polls `crictl info` until RuntimeReady and NetworkReady.
func (c *Containerd) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		select {
		case <-c.done:
			return fmt.Errorf("harness: containerd exited during start: %v", c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("harness: CRI not ready after %v: %w (last: %v)", timeout, ctx.Err(), last)
		case <-tick.C:
		}
		if _, err := os.Stat(c.Address()); err != nil {
			last = err
			continue
		}
		out, err := c.crictl(ctx, 2*time.Second, "info")
		if err != nil {
			last = err
			continue
		}
		var info criInfo
		if err := json.Unmarshal(out, &info); err != nil {
			last = fmt.Errorf("crictl info: %w", err)
			continue
		}
		ready := map[string]bool{}
		var reasons []string
		for _, cond := range info.Status.Conditions {
			ready[cond.Type] = cond.Status
			if !cond.Status {
				reasons = append(reasons, cond.Type+": "+cond.Reason)
			}
		}
		if ready["RuntimeReady"] && ready["NetworkReady"] {
			return nil
		}
		last = fmt.Errorf("CRI not ready: %s", strings.Join(reasons, "; "))
	}
}

// Stop removes every pod through CRI, stops containerd (SIGTERM, then
// SIGKILL after 10s), kills what is left in its mount namespace (shims),
// removes the pods' cgroups and the cgroup parents created since Start (see
// Options.CgroupParents), deletes the CNI bridge, detaches leftover mounts
// under the base directory (deepest first) and removes it. It keeps going after errors and
// returns them all. Calling it again is a no-op.
func (c *Containerd) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	return c.cleanup(ctx)
}

func (c *Containerd) cleanup(ctx context.Context) error {
	var (
		errs    []error
		ids     []string // pods and containers
		parents = slices.Clone(c.cgroupParents)
	)
	if c.running() {
		// Collect the IDs and the pods' cgroup parents first: their
		// cgroups are removed at the end.
		for _, args := range [][]string{{"pods", "-q"}, {"ps", "-a", "-q"}} {
			out, err := c.crictl(ctx, 30*time.Second, args...)
			if err != nil {
				errs = append(errs, err)
			}
			ids = append(ids, strings.Fields(string(out))...)
		}
		for _, id := range ids {
			if parent, ok := c.podCgroupParent(ctx, id); ok {
				parents = append(parents, parent)
			}
		}
		if len(ids) > 0 {
			if _, err := c.crictl(ctx, 60*time.Second, "rmp", "--all", "--force"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.cmd != nil {
		if err := c.terminate(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if c.mntNS != "" {
		if err := killNamespace(c.mntNS, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if c.mntFile != nil {
		c.mntFile.Close()
	}
	if c.cgroups != nil {
		if err := removeCgroups(ids, parents, c.cgroups); err != nil {
			errs = append(errs, err)
		}
	}
	if c.sharedDir != "" {
		if err := syscall.Unmount(c.sharedDir, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("harness: unmount %s: %w", c.sharedDir, err))
		}
	}
	if c.bridge != "" {
		if err := deleteLink(ctx, c.bridge); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range []string{c.base, c.sockDir} {
		if dir == "" || (dir == c.sockDir && !c.ownSockDir) {
			continue
		}
		errs = append(errs, RemoveTree(dir))
	}
	return errors.Join(errs...)
}

// RemoveTree unmounts every mount point at or below dir (lazily, deepest
// first), then removes dir, so that the removal cannot reach through a
// mount into what it shows. A test's directory left with a sandbox's
// mounts in it goes this way.
func RemoveTree(dir string) error {
	if err := unmountUnder(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("harness: remove %s: %w", dir, err)
	}
	return nil
}

// podCgroupParent returns the cgroup parent of pod id; ok is false if id
// is not a pod. An empty parent means containerd's default, /k8s.io.
func (c *Containerd) podCgroupParent(ctx context.Context, id string) (parent string, ok bool) {
	out, err := c.crictl(ctx, 30*time.Second, "inspectp", "-o", "json", id)
	if err != nil {
		return "", false
	}
	var inspect struct {
		Info struct {
			Config struct {
				Linux struct {
					CgroupParent string `json:"cgroup_parent"`
				} `json:"linux"`
			} `json:"config"`
		} `json:"info"`
	}
	if err := json.Unmarshal(out, &inspect); err != nil {
		return "", false
	}
	if parent = inspect.Info.Config.Linux.CgroupParent; parent == "" {
		parent = "/k8s.io"
	}
	return parent, true
}

// Exited reports whether the containerd process of the last Start or
// Restart has ended, and how (its Wait error).
func (c *Containerd) Exited() (bool, error) {
	if c.cmd == nil {
		return false, nil
	}
	select {
	case <-c.done:
		return true, c.waitErr
	default:
		return false, nil
	}
}

// LogTail returns the end of containerd's log (its last 32 KiB).
func (c *Containerd) LogTail() string { return c.log.String() }

func (c *Containerd) running() bool {
	ended, _ := c.Exited()
	return c.cmd != nil && !ended
}

// terminate stops containerd and waits for it.
func (c *Containerd) terminate(grace time.Duration) error {
	if !c.running() {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return nil
	case <-time.After(grace):
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("harness: containerd (pid %d) did not exit after SIGKILL", c.cmd.Process.Pid)
	}
}

// createBridge creates a fresh bridge named mgh<4 hex> and derives a /24
// from the same number, so that live instances never share either. The
// bridge has no address and IPv6 disabled before it comes up.
func (c *Containerd) createBridge(ctx context.Context) error {
	for range 20 {
		n := rand.IntN(1 << 14)
		name := fmt.Sprintf("mgh%04x", n)
		out, err := exec.CommandContext(ctx, "ip", "link", "add", "name", name, "type", "bridge").CombinedOutput()
		if err != nil {
			if bytes.Contains(out, []byte("exists")) {
				continue
			}
			return fmt.Errorf("harness: ip link add %s: %w: %s", name, err, bytes.TrimSpace(out))
		}
		c.bridge = name
		c.subnet = fmt.Sprintf("10.%d.%d.0/24", 64+n>>8, n&0xff)
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("harness: disable IPv6 on %s: %w", name, err)
		}
		if out, err := exec.CommandContext(ctx, "ip", "link", "set", name, "up").CombinedOutput(); err != nil {
			return fmt.Errorf("harness: ip link set %s up: %w: %s", name, err, bytes.TrimSpace(out))
		}
		return nil
	}
	return errors.New("harness: no free bridge name after 20 attempts")
}

// shareDir bind-mounts dir on itself and makes it a shared mount.
func (c *Containerd) shareDir(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("harness: shared directory %s is not a directory (%v)", dir, err)
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("harness: bind %s: %w", dir, err)
	}
	c.sharedDir = dir
	if err := syscall.Mount("", dir, "", syscall.MS_SHARED, ""); err != nil {
		return fmt.Errorf("harness: make %s shared: %w", dir, err)
	}
	return nil
}

func deleteLink(ctx context.Context, name string) error {
	out, err := exec.CommandContext(ctx, "ip", "link", "del", name).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("Cannot find device")) {
		return fmt.Errorf("harness: ip link del %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

func (c *Containerd) path(rel string) string { return filepath.Join(c.base, rel) }

// BaseDir returns the scratch directory.
func (c *Containerd) BaseDir() string { return c.base }

// Address returns containerd's gRPC socket path (CONTAINERD_ADDRESS).
func (c *Containerd) Address() string { return filepath.Join(c.sockDir, "containerd.sock") }

// TTRPCAddress returns containerd's ttrpc socket path, where a sandboxer
// forwards task events (containerd.services.events.ttrpc.v1.Events).
func (c *Containerd) TTRPCAddress() string { return c.Address() + ".ttrpc" }

// CRIEndpoint returns the CRI endpoint, "unix://" + Address().
func (c *Containerd) CRIEndpoint() string { return "unix://" + c.Address() }

// SandboxerSocket returns the socket path containerd dials for the
// "magnetar" sandbox controller.
func (c *Containerd) SandboxerSocket() string { return c.sandboxer }

// CrictlConfig returns the path of the crictl configuration file.
func (c *Containerd) CrictlConfig() string { return c.crictlConfig }

// Bridge returns the name of the instance's CNI bridge.
func (c *Containerd) Bridge() string { return c.bridge }

// Subnet returns the instance's pod subnet (IPv4 CIDR).
func (c *Containerd) Subnet() string { return c.subnet }

// Pid returns containerd's process ID.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }

// Env returns the environment that points containerd and CRI clients at this
// instance, as KEY=value lines.
func (c *Containerd) Env() []string {
	return []string{
		"CONTAINERD_ADDRESS=" + c.Address(),
		"CONTAINERD_TTRPC_ADDRESS=" + c.TTRPCAddress(),
		"CONTAINERD_NAMESPACE=" + Namespace,
		"CONTAINER_RUNTIME_ENDPOINT=" + c.CRIEndpoint(),
		"IMAGE_SERVICE_ENDPOINT=" + c.CRIEndpoint(),
		"CRI_CONFIG_FILE=" + c.crictlConfig,
		"MAGNETAR_SANDBOXER_SOCKET=" + c.sandboxer,
		"HARNESS_BASE_DIR=" + c.base,
		// containerd runs in a private mount namespace; a sandboxer must
		// join it (nsenter --mount=/proc/$CONTAINERD_PID/ns/mnt) to see the
		// network namespaces CRI bind-mounts there.
		fmt.Sprintf("CONTAINERD_PID=%d", c.Pid()),
	}
}

// Crictl runs crictl against this instance and returns its standard output.
// The error includes standard error.
func (c *Containerd) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	return c.crictl(ctx, 0, args...)
}

// Ctr runs ctr against this instance in the k8s.io namespace and returns its
// standard output. The error includes standard error.
func (c *Containerd) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, 0, filepath.Join(c.binDir, "ctr"),
		append([]string{"--address", c.Address(), "--namespace", Namespace}, args...)...)
}

func (c *Containerd) crictl(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	return run(ctx, timeout, filepath.Join(c.binDir, "crictl"), append([]string{"--config", c.crictlConfig}, args...)...)
}

// run runs a command, bounded by timeout if positive, and returns its stdout.
func run(ctx context.Context, timeout time.Duration, name string, args ...string) ([]byte, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
