package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/internal/podfiles"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

type sandboxState struct {
	VMDir string `json:"vm_dir,omitempty"`
	// CgroupPath is the VMM's cgroup; VCPUs and MemoryMiB the VM's size
	// (0: the driver's defaults), fixed at Start.
	CgroupPath string `json:"cgroup_path,omitempty"`
	VCPUs      int    `json:"vcpus,omitempty"`
	MemoryMiB  int    `json:"memory_mib,omitempty"`
	// Net is the pod network to tear down (see network.go).
	Net *netState `json:"net,omitempty"`
	// SharedDir is the 9p share of a VM adopted from the warm pool (under
	// the pool's directory, see warm.go); empty: <sandbox dir>/shared.
	SharedDir string `json:"shared_dir,omitempty"`
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
	// ended holds, after a recovery, how the containers that ran before
	// the restart ended (recover.go).
	ended map[string]endedContainer
	// mon holds the goroutines watching the running guest (health.go).
	mon *monitors

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
		mon: newMonitors(),
	}
}

// vmDir is <Dir>/vm, or a short directory under the run dir when socket
// paths below <Dir>/vm would be too long.
func (s *sandbox) vmDir() string {
	d := filepath.Join(s.cfg.Dir, "vm")
	if len(d)+len("/agent.sock") <= maxSockPath {
		return d
	}
	h := sha256.Sum256([]byte(s.cfg.Dir))
	return filepath.Join(s.b.shortVMRoot(), hex.EncodeToString(h[:8]))
}

func (s *sandbox) hvConfig() hypervisor.Config {
	return s.b.hvDefaults(hypervisor.Config{
		ID: s.cfg.ID, Dir: s.st.VMDir, Kernel: s.b.cfg.Kernel, Initrd: s.b.cfg.Initrd,
		VCPUs: s.st.VCPUs, MemoryMiB: s.st.MemoryMiB, CgroupPath: s.st.CgroupPath,
		Shares: []hypervisor.Share{{HostPath: s.shared, Tag: shareTag}},
	})
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
	// The guest kernel is the pod's: it has no way into the host's IPC
	// namespace. Pod sysctls are set in the guest by its agent (Setup).
	if s.cfg.HostIPC {
		return backend.StartInfo{}, fmt.Errorf("a microVM pod cannot share the host's IPC namespace (hostIPC): %w", errdefs.ErrInvalidArgument)
	}
	if _, err := backend.ParseSysctls(s.cfg.Sysctls); err != nil {
		return backend.StartInfo{}, err
	}
	if err := podfiles.WriteResolvConf(s.cfg.Dir, s.cfg.DNS); err != nil {
		return backend.StartInfo{}, err
	}
	cg, err := vmCgroupPath(s.cfg.CgroupParent, s.cfg.ID)
	if err != nil {
		return backend.StartInfo{}, err
	}
	sz := s.b.cfg.size(s.cfg.Resources)
	s.mu.Lock()
	s.st.CgroupPath, s.st.VCPUs, s.st.MemoryMiB = cg, sz.VCPUs, sz.MemoryMiB
	s.mu.Unlock()
	info := map[string]string{"network": "none"}
	if p := s.b.pool; p != nil {
		// A warm VM of this size, if the pool has one ready (warm.go).
		if pv := p.claim(sz.norm()); pv != nil {
			actx, acancel := context.WithTimeout(ctx, adoptTimeout)
			si, err := s.adopt(actx, pv.warm, info)
			acancel()
			if err == nil {
				return si, nil
			}
			s.b.destroyWarm(pv)
			info = map[string]string{"network": "none", "warm_vm_error": err.Error()}
			s.b.log("warm vm not adopted, booting cold", "sandbox_id", s.cfg.ID, "error", err)
		} else if p.pooled(sz.norm()) {
			info["warm_vm"] = "none ready"
		}
	}
	if s.b.tmpl != nil {
		// A VM restored from its size's template (template.go).
		t0 := time.Now()
		w, err := s.b.restoreWarm(ctx, sz.norm(), false)
		if err != nil {
			info["template_error"] = err.Error()
			s.b.log("vm restore failed, booting cold", "sandbox_id", s.cfg.ID, "error", err)
		}
		if w != nil {
			templateInfo(info, w, time.Since(t0))
			actx, acancel := context.WithTimeout(ctx, adoptTimeout)
			si, err := s.adopt(actx, w, info)
			acancel()
			if err == nil {
				return si, nil
			}
			s.b.destroyWarm(&pooledVM{warm: w})
			info = map[string]string{"network": "none", "template_error": err.Error()}
			s.b.log("restored vm not adopted, booting cold", "sandbox_id", s.cfg.ID, "error", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.b.cfg.BootTimeout)
	defer cancel()
	if err := os.MkdirAll(s.shared, 0o711); err != nil {
		return backend.StartInfo{}, err
	}
	s.st.VMDir = s.vmDir()
	if err := os.MkdirAll(s.st.VMDir, 0o700); err != nil {
		return backend.StartInfo{}, err
	}
	pn := &podNetwork{}
	if s.cfg.NetNSPath != "" {
		var err error
		if pn, err = setupPodNetwork(s.cfg.NetNSPath); err != nil {
			return backend.StartInfo{}, err
		}
		s.mu.Lock()
		s.st.Net = &pn.state
		s.mu.Unlock()
		info["network"] = pn.desc
		defer func() { // runs after the VM is stopped below
			if retErr != nil {
				_ = teardownPodNetwork(&pn.state)
			}
		}()
	}
	t0 := time.Now()
	hc := s.hvConfig()
	hc.Taps = pn.taps
	v, err := s.b.cfg.Driver.Start(ctx, hc)
	pn.closeFiles() // QEMU has its own copies
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
	info["cgroup"] = cg
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
	if err := s.setup(ctx, pn); err != nil {
		return backend.StartInfo{}, err
	}
	info["setup"] = time.Since(t2).String()
	info["boot_total"] = time.Since(t0).String()
	s.startMonitors()
	return backend.StartInfo{Pid: uint32(v.Pid()), Info: info}, nil
}

// setup configures the guest for the sandbox (agent Setup): host name,
// DNS, the 9p share, the pod network pn, sysctls, clock.
func (s *sandbox) setup(ctx context.Context, pn *podNetwork) error {
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return err
	}
	req := &agentv1.SetupRequest{
		Entropy:    entropy,
		SandboxId:  s.cfg.ID,
		Hostname:   s.cfg.Hostname,
		HostTime:   timestamppb.Now(),
		Mounts:     []*types.Mount{{Type: "9p", Source: shareTag, Target: guestShared}},
		Interfaces: pn.ifaces,
		Routes:     pn.routes,
		Sysctls:    s.cfg.Sysctls,
	}
	if d := s.cfg.DNS; len(d.Servers)+len(d.Searches)+len(d.Options) > 0 {
		req.Dns = &typesv1.DNSConfig{Servers: d.Servers, Searches: d.Searches, Options: d.Options}
	}
	s.mu.Lock()
	agent := s.agent
	s.mu.Unlock()
	if agent == nil {
		return fmt.Errorf("guest setup: no agent session: %w", errdefs.ErrFailedPrecondition)
	}
	if _, err := agent.Setup(ctx, req); err != nil {
		return fmt.Errorf("guest setup: %w", errgrpc.ToNative(err))
	}
	return nil
}

// connect dials the agent and calls Health until it answers, then opens
// the task stream. A failed attempt is followed at once by a fresh
// session: the handshake keeps it apart from the old one (see
// docs/guest.md, "EOF / reconnect").
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
		case <-time.After(50 * time.Millisecond): // no busy loop
		}
	}
}

func (s *sandbox) connectOnce(ctx context.Context) error {
	conn, err := s.vm.AgentConn(ctx)
	if err != nil {
		return err
	}
	hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
	err = agentmux.Handshake(hctx, conn)
	hcancel()
	if err != nil {
		conn.Close()
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
	s.stopMonitors()
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
		_, err := agent.Shutdown(actx, &agentv1.ShutdownRequest{GracePeriod: durationpb.New(timeout)})
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
		c.closeIO()
	}
	if err := unmountUnder(filepath.Join(s.cfg.Dir, rootsDir)); err != nil {
		return err
	}
	if err := unmountUnder(s.shared); err != nil {
		return err
	}
	var errs []error
	if err := os.RemoveAll(filepath.Join(s.cfg.Dir, rootsDir)); err != nil {
		errs = append(errs, err)
	}
	if err := teardownPodNetwork(s.st.Net); err != nil {
		errs = append(errs, err)
	}
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

// muxClient is the session to the agent, for stdio streams.
func (s *sandbox) muxClient() (*agentmux.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mux == nil || s.isGone() {
		return nil, fmt.Errorf("sandbox %s: vm not running: %w", s.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	return s.mux, nil
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
