// Package vm implements the "vm" sandbox kind: one microVM per sandbox,
// started through a [hypervisor.Hypervisor], whose guest agent
// (taskagent/agent) runs the containers with containerd's Task API v3.
//
// The host shares one directory per sandbox with the guest over 9p
// ("shared", mounted at /run/magnetar/shared in the guest by Setup). Each
// container gets <shared>/<cid>/ with its rewritten config.json, its rootfs
// (mounted on the host, seen by the guest through 9p), the host sources of
// its bind mounts, and regular files that collect its output in the guest;
// the host copies their growth into the stdio FIFOs containerd gave it.
//
// Not done yet: networking (the VM has no NIC: "network: none"), stdin and
// terminals, stats, and re-attaching to containers after a restart.
package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
	"github.com/magnetar-io/magnetar/internal/agentmux"
	"github.com/magnetar-io/magnetar/sandboxer/backend/internal/hoststdio"
	"github.com/magnetar-io/magnetar/sandboxer/backend/vm/hypervisor"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Kind is the name of this sandbox kind.
const Kind = "vm"

const (
	shareTag    = "shared"
	guestShared = "/run/magnetar/shared"
	// shortVMRoot holds VM work dirs when <sandbox dir>/vm would make unix
	// socket paths too long.
	shortVMRoot = "/run/magnetar/vm"
	maxSockPath = 100
	// tailQuiet is how long an output file must stop growing after its
	// process exited before its copy ends.
	tailQuiet = 250 * time.Millisecond
	tailPoll  = 50 * time.Millisecond
)

// Config configures the vm backend.
type Config struct {
	// Driver starts the VMs (qemu.New(...)).
	Driver hypervisor.Hypervisor
	// Kernel and Initrd are the guest image ("make guest").
	Kernel, Initrd string
	// VCPUs and MemoryMiB size each VM (driver defaults when 0).
	VCPUs     int
	MemoryMiB int
	// BootTimeout bounds VM start to a configured agent (default 2m).
	BootTimeout time.Duration
}

// Backend is the vm sandbox kind.
type Backend struct{ cfg Config }

// New returns the vm backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Driver == nil {
		return nil, fmt.Errorf("vm backend: no hypervisor driver: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 2 * time.Minute
	}
	return &Backend{cfg: cfg}, nil
}

// Info describes the kind.
func (b *Backend) Info() backend.Info {
	return backend.Info{
		Kind:         Kind,
		Description:  "a microVM per sandbox (" + b.cfg.Driver.Name() + "), containers run by the guest agent",
		Isolation:    backend.IsolationVM,
		Capabilities: backend.Capabilities{Exec: true},
	}
}

// Check reports whether the hypervisor and the guest image are usable.
func (b *Backend) Check(ctx context.Context) error {
	if err := b.cfg.Driver.Check(ctx); err != nil {
		return err
	}
	for _, p := range []string{b.cfg.Kernel, b.cfg.Initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("guest image: %w", err)
		}
	}
	if b.cfg.Kernel == "" {
		return errors.New("guest image: no kernel configured")
	}
	return nil
}

// Create prepares a sandbox; Start boots it.
func (b *Backend) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	return newSandbox(b, cfg), nil
}

// Recover re-attaches to the VM of a sandbox (when the driver can) so that
// it can be stopped and deleted; its containers are not recovered.
func (b *Backend) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	s := newSandbox(b, cfg)
	if len(state) > 0 {
		if err := json.Unmarshal(state, &s.st); err != nil {
			return nil, fmt.Errorf("decode vm sandbox state: %w", err)
		}
	}
	r, ok := b.cfg.Driver.(hypervisor.Recoverer)
	if !ok || s.st.VMDir == "" {
		return nil, fmt.Errorf("recover vm sandbox %s: %w", cfg.ID, errdefs.ErrNotImplemented)
	}
	v, err := r.Recover(ctx, s.hvConfig())
	if err != nil {
		return nil, fmt.Errorf("recover vm sandbox %s: %w", cfg.ID, err)
	}
	s.vm = v
	go s.waitVM()
	return s, nil
}

type sandboxState struct {
	VMDir string `json:"vm_dir,omitempty"`
}

type sandbox struct {
	b      *Backend
	cfg    backend.SandboxConfig
	shared string

	mu    sync.Mutex
	st    sandboxState
	vm    hypervisor.VM
	conn  net.Conn
	mux   *agentmux.Client
	cls   []*ttrpc.Client
	agent agentv1.TTRPCAgentServiceClient
	task  taskapi.TTRPCTaskService
	ctrs  map[string]*container

	// gone is closed when the VM process exited; exit is how.
	gone chan struct{}
	exit hypervisor.ExitStatus
	// life ends when the VM is gone; guest Waits run under it.
	life   context.Context
	cancel context.CancelFunc
}

func newSandbox(b *Backend, cfg backend.SandboxConfig) *sandbox {
	life, cancel := context.WithCancel(context.Background())
	return &sandbox{
		b: b, cfg: cfg, shared: filepath.Join(cfg.Dir, "shared"),
		ctrs: map[string]*container{}, gone: make(chan struct{}), life: life, cancel: cancel,
	}
}

// vmDir is <Dir>/vm, or a short directory under /run when socket paths
// below <Dir>/vm would be too long.
func (s *sandbox) vmDir() string {
	d := filepath.Join(s.cfg.Dir, "vm")
	if len(d)+len("/agent.sock") <= maxSockPath {
		return d
	}
	h := sha256.Sum256([]byte(s.cfg.Dir))
	return filepath.Join(shortVMRoot, hex.EncodeToString(h[:8]))
}

func (s *sandbox) hvConfig() hypervisor.Config {
	return hypervisor.Config{
		ID: s.cfg.ID, Dir: s.st.VMDir, Kernel: s.b.cfg.Kernel, Initrd: s.b.cfg.Initrd,
		VCPUs: s.b.cfg.VCPUs, MemoryMiB: s.b.cfg.MemoryMiB,
		Shares: []hypervisor.Share{{HostPath: s.shared, Tag: shareTag}},
	}
}

func (s *sandbox) ns(ctx context.Context) context.Context {
	ns := s.cfg.Namespace
	if ns == "" {
		ns = "default"
	}
	return namespaces.WithNamespace(ctx, ns)
}

func (s *sandbox) waitVM() {
	st, _ := s.vm.Wait(context.Background())
	s.mu.Lock()
	s.exit = st
	s.mu.Unlock()
	close(s.gone)
	s.cancel()
}

func (s *sandbox) isGone() bool {
	select {
	case <-s.gone:
		return true
	default:
		return false
	}
}

// Start boots the VM, waits for its agent and sets the guest up.
func (s *sandbox) Start(ctx context.Context) (_ backend.StartInfo, retErr error) {
	if err := os.MkdirAll(s.shared, 0o711); err != nil {
		return backend.StartInfo{}, err
	}
	s.st.VMDir = s.vmDir()
	if err := os.MkdirAll(s.st.VMDir, 0o700); err != nil {
		return backend.StartInfo{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.b.cfg.BootTimeout)
	defer cancel()
	info := map[string]string{"network": "none"}
	t0 := time.Now()
	v, err := s.b.cfg.Driver.Start(ctx, s.hvConfig())
	if err != nil {
		return backend.StartInfo{}, fmt.Errorf("start vm: %w", err)
	}
	s.mu.Lock()
	s.vm = v
	s.mu.Unlock()
	go s.waitVM()
	defer func() {
		if retErr != nil {
			s.closeAgent()
			sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_ = v.Stop(sctx, true)
		}
	}()
	info["vm_start"] = time.Since(t0).String()
	for k, val := range v.Info() {
		if k == "accel" || k == "accel_reason" || k == "console_log" {
			info[k] = val
		}
	}
	t1 := time.Now()
	if err := s.connect(ctx); err != nil {
		return backend.StartInfo{}, err
	}
	info["agent_ready"] = time.Since(t1).String()
	t2 := time.Now()
	req := &agentv1.SetupRequest{
		SandboxId: s.cfg.ID,
		Hostname:  s.cfg.Hostname,
		HostTime:  timestamppb.Now(),
		Mounts:    []*types.Mount{{Type: "9p", Source: shareTag, Target: guestShared}},
	}
	if d := s.cfg.DNS; len(d.Servers)+len(d.Searches)+len(d.Options) > 0 {
		req.Dns = &typesv1.DNSConfig{Servers: d.Servers, Searches: d.Searches, Options: d.Options}
	}
	if _, err := s.agent.Setup(ctx, req); err != nil {
		return backend.StartInfo{}, fmt.Errorf("guest setup: %w", errgrpc.ToNative(err))
	}
	info["setup"] = time.Since(t2).String()
	info["boot_total"] = time.Since(t0).String()
	return backend.StartInfo{Pid: uint32(v.Pid()), Info: info}, nil
}

// connect dials the agent and calls Health until it answers, then opens
// the task stream. A failed attempt is followed by a fresh session after a
// pause (see docs/guest.md, "EOF / reconnect").
func (s *sandbox) connect(ctx context.Context) error {
	var last error
	for {
		if s.isGone() {
			return fmt.Errorf("vm exited while waiting for the agent (last error: %v)", last)
		}
		err := s.connectOnce(ctx)
		if err == nil {
			return nil
		}
		last = err
		s.closeAgent()
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w (last error: %v)", ctx.Err(), last)
		case <-s.gone:
		case <-time.After(time.Second):
		}
	}
}

func (s *sandbox) connectOnce(ctx context.Context) error {
	conn, err := s.vm.AgentConn(ctx)
	if err != nil {
		return err
	}
	mc, err := agentmux.NewClient(conn)
	if err != nil {
		conn.Close()
		return err
	}
	s.mu.Lock()
	s.conn, s.mux = conn, mc
	s.mu.Unlock()
	st, err := mc.Dial()
	if err != nil {
		return err
	}
	acl := ttrpc.NewClient(st)
	s.mu.Lock()
	s.cls = append(s.cls, acl)
	s.mu.Unlock()
	agent := agentv1.NewTTRPCAgentServiceClient(acl)
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := agent.Health(hctx, &agentv1.HealthRequest{}); err != nil {
		return fmt.Errorf("health: %w", err)
	}
	st2, err := mc.Dial()
	if err != nil {
		return err
	}
	tcl := ttrpc.NewClient(st2)
	s.mu.Lock()
	s.cls = append(s.cls, tcl)
	s.agent, s.task = agent, taskapi.NewTTRPCTaskClient(tcl)
	s.mu.Unlock()
	return nil
}

func (s *sandbox) closeAgent() {
	s.mu.Lock()
	cls, mc, conn := s.cls, s.mux, s.conn
	s.cls, s.mux, s.conn = nil, nil, nil
	s.agent, s.task = nil, nil
	s.mu.Unlock()
	for _, c := range cls {
		c.Close()
	}
	if mc != nil {
		mc.Close()
	}
	if conn != nil {
		conn.Close()
	}
}

// Wait blocks until the VM exited.
func (s *sandbox) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-s.gone:
		s.mu.Lock()
		defer s.mu.Unlock()
		return backend.ExitStatus{Code: uint32(s.exit.Code), ExitedAt: s.exit.ExitedAt}, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

// Stop asks the agent to shut the guest down, then stops the VM (killing
// it if it did not power off in time).
func (s *sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	s.mu.Lock()
	v, agent := s.vm, s.agent
	s.mu.Unlock()
	if v == nil {
		return nil
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if !s.isGone() && agent != nil {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := agent.Shutdown(actx, &agentv1.ShutdownRequest{GracePeriod: durationpb.New(time.Second)})
		cancel()
		if err == nil {
			t := time.NewTimer(timeout + 2*time.Second)
			select {
			case <-s.gone:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
	s.closeAgent()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := v.Stop(sctx, true); err != nil {
		return fmt.Errorf("stop vm: %w", err)
	}
	return nil
}

// Delete stops the VM if needed, unmounts what is left under the shared
// directory and removes the sandbox's directories.
func (s *sandbox) Delete(ctx context.Context) error {
	if err := s.Stop(ctx, time.Second); err != nil {
		return err
	}
	s.cancel()
	s.mu.Lock()
	ctrs := make([]*container, 0, len(s.ctrs))
	for _, c := range s.ctrs {
		ctrs = append(ctrs, c)
	}
	s.mu.Unlock()
	for _, c := range ctrs {
		c.stopTails()
	}
	if err := unmountUnder(s.shared); err != nil {
		return err
	}
	var errs []error
	if err := os.RemoveAll(s.shared); err != nil {
		errs = append(errs, err)
	}
	if s.st.VMDir != "" {
		if err := os.RemoveAll(s.st.VMDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unmountUnder unmounts every mount at or below dir and checks none is
// left, so that removing dir cannot reach into a mounted file system.
func unmountUnder(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := mount.UnmountRecursive(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			return fmt.Errorf("mount %s still present after unmounting %s", f[4], dir)
		}
	}
	return nil
}

// State returns what Recover needs.
func (s *sandbox) State() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.st)
}

func (s *sandbox) taskClient() (taskapi.TTRPCTaskService, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.task == nil || s.isGone() {
		return nil, fmt.Errorf("sandbox %s: vm not running: %w", s.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	return s.task, nil
}

// guestPath maps a host path under the shared directory to the guest.
func (s *sandbox) guestPath(host string) string {
	rel, err := filepath.Rel(s.shared, host)
	if err != nil {
		return ""
	}
	return filepath.Join(guestShared, rel)
}

type container struct {
	s    *sandbox
	id   string
	dir  string // <shared>/<id>
	init *proc

	mu    sync.Mutex
	execs map[string]*proc
}

// CreateContainer mounts the rootfs and bind sources into the shared
// directory, writes the rewritten spec, and creates the task in the guest.
func (s *sandbox) CreateContainer(ctx context.Context, cfg backend.ContainerConfig) (_ backend.Container, retErr error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("container %q has no OCI spec: %w", cfg.ID, errdefs.ErrInvalidArgument)
	}
	if err := checkStdio(cfg.Stdio); err != nil {
		return nil, err
	}
	tc, err := s.taskClient()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.shared, cfg.ID)
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, fmt.Errorf("container dir: %w", err)
	}
	defer func() {
		if retErr != nil {
			if unmountUnder(dir) == nil {
				_ = os.RemoveAll(dir)
			}
		}
	}()
	spec, err := s.prepare(cfg, dir)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("write OCI spec: %w", err)
	}
	c := &container{s: s, id: cfg.ID, dir: dir, execs: map[string]*proc{}}
	p, err := c.newProc("", "", cfg.Stdio)
	if err != nil {
		return nil, err
	}
	resp, err := tc.Create(s.ns(ctx), &taskapi.CreateTaskRequest{
		ID: cfg.ID, Bundle: s.guestPath(dir),
		Stdout: p.guestOut, Stderr: p.guestErr,
	})
	if err != nil {
		return nil, fmt.Errorf("create container %q in the guest: %w", cfg.ID, errgrpc.ToNative(err))
	}
	p.pid = resp.GetPid()
	c.init = p
	s.mu.Lock()
	s.ctrs[cfg.ID] = c
	s.mu.Unlock()
	return c, nil
}

// prepare mounts the rootfs at dir/rootfs and the sources of bind mounts
// under dir/mounts, and returns the spec rewritten for the guest.
func (s *sandbox) prepare(cfg backend.ContainerConfig, dir string) (*specs.Spec, error) {
	spec := *cfg.Spec
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.Mkdir(rootfs, 0o711); err != nil {
		return nil, err
	}
	readonly := false
	if len(cfg.Rootfs) > 0 {
		if err := mount.All(cfg.Rootfs, rootfs); err != nil {
			return nil, fmt.Errorf("mount rootfs of container %q: %w", cfg.ID, err)
		}
	} else {
		if spec.Root == nil || spec.Root.Path == "" {
			return nil, fmt.Errorf("container %q has neither rootfs mounts nor root.path: %w", cfg.ID, errdefs.ErrInvalidArgument)
		}
		src := spec.Root.Path
		if !filepath.IsAbs(src) {
			src = filepath.Join(cfg.Bundle, src)
		}
		if err := unix.Mount(src, rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("bind rootfs %s of container %q: %w", src, cfg.ID, err)
		}
	}
	if spec.Root != nil {
		readonly = spec.Root.Readonly
	}
	spec.Root = &specs.Root{Path: "rootfs", Readonly: readonly}
	if spec.Linux != nil {
		lin := *spec.Linux
		lin.Namespaces = nil
		for _, n := range spec.Linux.Namespaces {
			if n.Path == "" {
				lin.Namespaces = append(lin.Namespaces, n)
			}
		}
		// The host's cgroup path (often systemd "slice:prefix:name")
		// means nothing in the guest; runc picks its default.
		lin.CgroupsPath = ""
		spec.Linux = &lin
	}
	// Bind mounts name host paths: share them through dir/mounts/<i>.
	mounts := make([]specs.Mount, len(spec.Mounts))
	copy(mounts, spec.Mounts)
	for i, m := range mounts {
		if !isBind(m) || !filepath.IsAbs(m.Source) {
			continue
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("bind source %s of container %q: %w", m.Source, cfg.ID, err)
		}
		target := filepath.Join(dir, "mounts", fmt.Sprint(i))
		if err := os.MkdirAll(filepath.Dir(target), 0o711); err != nil {
			return nil, err
		}
		if fi.IsDir() {
			err = os.Mkdir(target, 0o755)
		} else {
			err = os.WriteFile(target, nil, 0o644)
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Mount(m.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return nil, fmt.Errorf("share bind source %s of container %q: %w", m.Source, cfg.ID, err)
		}
		mounts[i].Source = s.guestPath(target)
	}
	spec.Mounts = mounts
	return &spec, nil
}

func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

func checkStdio(s backend.Stdio) error {
	if s.Stdin != "" {
		return fmt.Errorf("stdin for vm sandboxes: %w", errdefs.ErrNotImplemented)
	}
	if s.Terminal {
		return fmt.Errorf("terminals for vm sandboxes: %w", errdefs.ErrNotImplemented)
	}
	return nil
}

func (c *container) Init() backend.Process { return c.init }

// Exec adds a process in the guest.
func (c *container) Exec(ctx context.Context, cfg backend.ExecConfig) (backend.Process, error) {
	if err := checkStdio(cfg.Stdio); err != nil {
		return nil, err
	}
	tc, err := c.s.taskClient()
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(cfg.Process)
	if err != nil {
		return nil, err
	}
	p, err := c.newProc(cfg.ID, "exec-"+cfg.ID+".", cfg.Stdio)
	if err != nil {
		return nil, err
	}
	if _, err := tc.Exec(c.s.ns(ctx), &taskapi.ExecProcessRequest{
		ID: c.id, ExecID: cfg.ID, Stdout: p.guestOut, Stderr: p.guestErr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data},
	}); err != nil {
		p.removeFiles()
		return nil, fmt.Errorf("exec in container %q: %w", c.id, errgrpc.ToNative(err))
	}
	c.mu.Lock()
	c.execs[cfg.ID] = p
	c.mu.Unlock()
	return p, nil
}

// Delete unmounts and removes the container's shared directory.
func (c *container) Delete(ctx context.Context) error {
	c.stopTails()
	c.s.mu.Lock()
	delete(c.s.ctrs, c.id)
	c.s.mu.Unlock()
	if err := unmountUnder(c.dir); err != nil {
		return err
	}
	return os.RemoveAll(c.dir)
}

func (c *container) stopTails() {
	c.mu.Lock()
	ps := []*proc{c.init}
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	c.mu.Unlock()
	for _, p := range ps {
		if p != nil {
			p.stopTails()
		}
	}
}

// proc is a process in the guest.
type proc struct {
	c      *container
	execID string

	// hostOut/hostErr are the files in the shared dir the guest writes
	// (empty: none); guestOut/guestErr their guest paths; dstOut/dstErr
	// the caller's stdio.
	hostOut, hostErr   string
	guestOut, guestErr string
	dstOut, dstErr     string

	pid       uint32
	startOnce sync.Once
	exited    chan struct{}
	exit      backend.ExitStatus
	tails     sync.WaitGroup
	stop      chan struct{}
	stopOnce  sync.Once
}

func (c *container) newProc(execID, prefix string, stdio backend.Stdio) (*proc, error) {
	p := &proc{c: c, execID: execID, exited: make(chan struct{}), stop: make(chan struct{}), dstOut: stdio.Stdout, dstErr: stdio.Stderr}
	if stdio.Stdout != "" {
		p.hostOut = filepath.Join(c.dir, prefix+"stdout")
	}
	if stdio.Stderr != "" {
		p.hostErr = filepath.Join(c.dir, prefix+"stderr")
	}
	for _, f := range []string{p.hostOut, p.hostErr} {
		if f == "" {
			continue
		}
		if err := os.WriteFile(f, nil, 0o666); err != nil {
			return nil, err
		}
	}
	if p.hostOut != "" {
		p.guestOut = c.s.guestPath(p.hostOut)
	}
	if p.hostErr != "" {
		p.guestErr = c.s.guestPath(p.hostErr)
	}
	return p, nil
}

func (p *proc) removeFiles() {
	for _, f := range []string{p.hostOut, p.hostErr} {
		if f != "" {
			_ = os.Remove(f)
		}
	}
}

// Start starts the process in the guest and begins copying its output.
func (p *proc) Start(ctx context.Context) (uint32, error) {
	tc, err := p.c.s.taskClient()
	if err != nil {
		return 0, err
	}
	resp, err := tc.Start(p.c.s.ns(ctx), &taskapi.StartRequest{ID: p.c.id, ExecID: p.execID})
	if err != nil {
		return 0, fmt.Errorf("start %s/%s in the guest: %w", p.c.id, p.execID, errgrpc.ToNative(err))
	}
	p.pid = resp.GetPid()
	p.startOnce.Do(func() {
		if p.hostOut != "" {
			p.tails.Add(1)
			go p.tail(p.hostOut, p.dstOut)
		}
		if p.hostErr != "" {
			p.tails.Add(1)
			go p.tail(p.hostErr, p.dstErr)
		}
		go p.watch(tc)
	})
	return p.pid, nil
}

// Pid is the guest pid (known after create for the init).
func (p *proc) Pid() uint32 { return p.pid }

// watch waits for the exit in the guest. If the VM goes away first the
// process is reported killed.
func (p *proc) watch(tc taskapi.TTRPCTaskService) {
	s := p.c.s
	resp, err := tc.Wait(s.ns(s.life), &taskapi.WaitRequest{ID: p.c.id, ExecID: p.execID})
	if err != nil {
		p.exit = backend.ExitStatus{Code: 128 + uint32(syscall.SIGKILL), ExitedAt: time.Now().UTC()}
	} else {
		p.exit = backend.ExitStatus{Code: resp.GetExitStatus(), ExitedAt: resp.GetExitedAt().AsTime()}
	}
	close(p.exited)
}

func (p *proc) Wait(ctx context.Context) (backend.ExitStatus, error) {
	select {
	case <-p.exited:
		return p.exit, nil
	case <-ctx.Done():
		return backend.ExitStatus{}, ctx.Err()
	}
}

func (p *proc) Kill(ctx context.Context, sig syscall.Signal, all bool) error {
	tc, err := p.c.s.taskClient()
	if err != nil {
		return fmt.Errorf("kill %s/%s: %v: %w", p.c.id, p.execID, err, errdefs.ErrNotFound)
	}
	if _, err := tc.Kill(p.c.s.ns(ctx), &taskapi.KillRequest{ID: p.c.id, ExecID: p.execID, Signal: uint32(sig), All: all}); err != nil {
		return fmt.Errorf("kill %s/%s in the guest: %w", p.c.id, p.execID, errgrpc.ToNative(err))
	}
	return nil
}

func (p *proc) ResizePTY(ctx context.Context, width, height uint32) error {
	return fmt.Errorf("terminals for vm sandboxes: %w", errdefs.ErrNotImplemented)
}

func (p *proc) CloseStdin(ctx context.Context) error { return nil }

// Delete deletes the process in the guest (for the init: the container)
// and ends the copies of its output.
func (p *proc) Delete(ctx context.Context) error {
	var err error
	if tc, terr := p.c.s.taskClient(); terr == nil {
		if _, derr := tc.Delete(p.c.s.ns(ctx), &taskapi.DeleteRequest{ID: p.c.id, ExecID: p.execID}); derr != nil {
			if derr = errgrpc.ToNative(derr); !errdefs.IsNotFound(derr) {
				err = fmt.Errorf("delete %s/%s in the guest: %w", p.c.id, p.execID, derr)
			}
		}
	}
	p.stopTails()
	if p.execID != "" {
		p.removeFiles()
		p.c.mu.Lock()
		delete(p.c.execs, p.execID)
		p.c.mu.Unlock()
	}
	return err
}

// stopTails lets the output copies finish (they end shortly after the
// exit), forcing them after a few seconds.
func (p *proc) stopTails() {
	done := make(chan struct{})
	go func() { p.tails.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		p.stopOnce.Do(func() { close(p.stop) })
		<-done
	}
}

// tail copies the growth of src into dst until the process exited and
// src stopped growing for tailQuiet.
func (p *proc) tail(src, dst string) {
	defer p.tails.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	go func() {
		select {
		case <-p.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	w, err := hoststdio.OpenOutput(ctx, dst)
	cancel()
	if err != nil {
		return
	}
	defer w.Close()
	f, err := os.Open(src)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, 64*1024)
	var quietSince time.Time
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			quietSince = time.Time{}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		select {
		case <-p.exited:
			if quietSince.IsZero() {
				quietSince = time.Now()
			} else if time.Since(quietSince) >= tailQuiet {
				return
			}
		default:
		}
		select {
		case <-p.stop:
			return
		case <-time.After(tailPoll):
		}
	}
}
