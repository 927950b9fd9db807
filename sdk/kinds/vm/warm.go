package vm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// Warm VMs (pool.go keeps them). A pooled VM is booted like a sandbox's,
// with its own work directory <RunDir>/vmpool/<id> (QEMU's sockets and
// logs, and shared/, the 9p share), its own cgroup
// (/magnetar/magnetar-vm-pool-<id>) and one NIC backed by a tap in a
// network namespace private to the pool; its agent has answered, nothing
// is set up in the guest yet. A sandbox whose size is pooled adopts one at
// Start: it writes <dir>/claimed (its own directory, for the crash sweep),
// moves QEMU into its cgroup, moves the tap into the pod's network
// namespace (renamed tap0 and bridged to the CNI interface as for a cold
// boot: the guest NIC is found by its pool MAC and given the CNI
// interface's), takes over the agent session and runs the same Setup
// (hostname, DNS, mounts, addresses, routes, sysctls, clock). From then on
// the VM is the sandbox's like a cold-booted one, except that its work
// directory and share stay under the pool's directory (recorded in the
// sandbox state). Any failure while adopting destroys the warm VM and the
// sandbox boots cold.
//
// A sandboxer that stops destroys its pooled VMs; one that starts after a
// crash kills what an earlier run left in the pool's directory, except
// VMs claimed by a sandbox whose directory still exists (its recovery
// owns them).

// adoptTimeout bounds the adoption of a warm VM (its guest Setup, mostly);
// past it the sandbox boots cold.
const adoptTimeout = 30 * time.Second

const (
	poolDirName  = "vmpool"
	claimedFile  = "claimed"
	poolTapPfx   = "mgw"
	poolIDPrefix = "pool-"
)

// warmNIC is a NIC of a warm VM: its tap in the pool namespace and the
// MAC the guest sees.
type warmNIC struct {
	tap string
	mac string
}

// warmVM is a VM booted by the pool.
type warmVM struct {
	id     string // "pool-<hex>", the VM's name
	dir    string // its work directory
	shared string // its 9p share
	nics   []warmNIC
	vm     hypervisor.VM
	// ps holds the agent session (and watches the VM) until a sandbox
	// takes them over.
	ps *sandbox
	// pooled: the pool's VM (else restored for one sandbox).
	pooled bool
}

// poolRoot holds the pool's VMs' directories.
func (b *Backend) poolRoot() string { return filepath.Join(b.cfg.RunDir, poolDirName) }

// startPool sweeps what an earlier run left, then starts the pool (when
// configured).
func (b *Backend) startPool() error {
	sizes, counts, budget, err := b.cfg.validatePool(b.cfg.Pool)
	if err != nil {
		return err
	}
	if len(sizes) == 0 && !b.cfg.Template.Enabled {
		return b.sweepPool()
	}
	if n := len(b.poolRoot()) + 1 + 12 + len("/agent.sock"); n > maxSockPath {
		return fmt.Errorf("vm pool: run dir %s too long for the pool's sockets: %w", b.cfg.RunDir, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(b.poolRoot(), 0o700); err != nil {
		return fmt.Errorf("vm pool: %w", err)
	}
	if err := b.sweepPool(); err != nil {
		return err
	}
	ns, err := newPrivateNetNS()
	if err != nil {
		return fmt.Errorf("vm pool: %w", err)
	}
	b.poolNS = ns
	if len(sizes) == 0 {
		return nil // the restored vms' namespace and directory only
	}
	b.pool = newPool(sizes, counts, budget, b.cfg.Pool.RetryInterval, b.bootWarm, b.destroyWarm)
	b.pool.start()
	return nil
}

// ClosePool destroys the pool's unclaimed VMs and stops building VM
// templates (template.go); sandboxes keep running.
// (Not Close: the backend's sandboxes keep their agent sessions, so it
// cannot stand for the process's end, as io.Closer does for the backend
// conformance suite's restart.)
func (b *Backend) ClosePool() error {
	b.closeTemplates()
	if b.pool != nil {
		b.pool.close()
	}
	if b.poolNS.IsOpen() {
		return b.poolNS.Close()
	}
	return nil
}

// pokePool has the pool look for VMs to make (a template is ready).
func (b *Backend) pokePool() {
	if b.pool != nil {
		b.pool.poke()
	}
}

// hvDefaults adds the backend-wide VM options to hc.
func (b *Backend) hvDefaults(hc hypervisor.Config) hypervisor.Config {
	hc.TCGCacheMiB = b.cfg.TCGCacheMiB
	hc.FreePageReporting = b.cfg.FreePageReporting
	return hc
}

// PoolStats describes the warm pool; ok is false when there is none.
func (b *Backend) PoolStats() (_ PoolStats, ok bool) {
	if b.pool == nil {
		return PoolStats{}, false
	}
	return b.pool.stats(), true
}

func (b *Backend) log(msg string, kv ...any) {
	if b.cfg.Log != nil {
		b.cfg.Log(msg, kv...)
	}
}

// sweepPool ends the VMs an earlier run left in the pool's directory,
// except those a sandbox claimed whose directory still exists.
func (b *Backend) sweepPool() error {
	ents, err := os.ReadDir(b.poolRoot())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm pool: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !isPoolHex(e.Name()) {
			continue
		}
		dir := filepath.Join(b.poolRoot(), e.Name())
		if owner, err := os.ReadFile(filepath.Join(dir, claimedFile)); err == nil && filepath.IsAbs(string(owner)) {
			if _, err := os.Stat(string(owner)); err == nil {
				continue // its sandbox's: recovered (or removed) with it
			}
		}
		if err := b.endLeftVM(dir, poolIDPrefix+e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isPoolHex reports whether name is a pooled VM's directory name.
func isPoolHex(name string) bool {
	if len(name) != 12 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

// endLeftVM kills the QEMU of a pool directory left by an earlier run (if
// it still runs), removes its cgroup, unmounts and removes the directory.
func (b *Backend) endLeftVM(dir, id string) error {
	cg, err := vmCgroupPath("", id)
	if err != nil {
		return err
	}
	if r, ok := b.cfg.Driver.(hypervisor.Recoverer); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		v, err := r.Recover(ctx, hypervisor.Config{ID: id, Dir: dir, CgroupPath: cg})
		if err == nil {
			err = v.Stop(ctx, true)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("vm pool: end the vm left in %s: %w", dir, err)
		}
	}
	if err := unmountUnder(filepath.Join(dir, "shared")); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// bootWarm makes a VM for the pool: restored from its size's template
// when there is one (template.go), else booted.
func (b *Backend) bootWarm(ctx context.Context, sz vmSize) (*pooledVM, error) {
	w, err := b.restoreWarm(ctx, sz, true)
	if err != nil && ctx.Err() == nil {
		b.log("vm restore failed, booting cold", "size", sz.String(), "error", err)
	}
	if w == nil {
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		hx := hex.EncodeToString(rnd[:])
		dir := filepath.Join(b.poolRoot(), hx)
		w, err = b.startWarm(ctx, sz, warmSpec{id: poolIDPrefix + hx, dir: dir, shared: filepath.Join(dir, "shared"),
			tap: poolTapPfx + hx, mac: hypervisorMAC(rnd), background: true, pooled: true})
		if err != nil {
			return nil, err
		}
	}
	return &pooledVM{gone: w.ps.gone, warm: w}, nil
}

// warmSpec describes a warm VM to start.
type warmSpec struct {
	id, dir, shared string
	// tap is the name of its tap in the pool namespace, mac its NIC's.
	tap, mac string
	// memory is the guest memory file: a template's to restore from
	// (incoming, its state), or to build one on (shared) when incoming is
	// empty. Empty: anonymous memory.
	memory, incoming string
	// background: the VM yields the CPU until adopted.
	background bool
	// pooled: the VM is the pool's (logged "warm vm ready" once ready).
	pooled bool
}

// startWarm boots (or restores) a VM as spec says and waits for its
// agent. On error, nothing of it is left.
func (b *Backend) startWarm(ctx context.Context, sz vmSize, spec warmSpec) (_ *warmVM, retErr error) {
	t0 := time.Now()
	defer func() {
		if retErr != nil && ctx.Err() == nil {
			b.log("warm vm start failed", "vm", spec.id, "size", sz.String(), "error", retErr, "took", time.Since(t0))
		}
	}()
	w := &warmVM{id: spec.id, dir: spec.dir, shared: spec.shared, pooled: spec.pooled}
	if err := os.MkdirAll(w.shared, 0o711); err != nil {
		return nil, err
	}
	if err := os.Chmod(w.dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(w.dir)
		}
	}()
	cg, err := vmCgroupPath("", w.id)
	if err != nil {
		return nil, err
	}
	nic := warmNIC{tap: spec.tap, mac: spec.mac}
	var tapf *os.File
	if err := inNS(b.poolNS, func() error {
		var err error
		tapf, err = newPoolTap(nic.tap)
		return err
	}); err != nil {
		return nil, fmt.Errorf("warm vm: %w", err)
	}
	w.nics = []warmNIC{nic}
	hc := b.hvDefaults(hypervisor.Config{
		ID: w.id, Dir: w.dir, Kernel: b.cfg.Kernel, Initrd: b.cfg.Initrd,
		VCPUs: sz.VCPUs, MemoryMiB: sz.MemoryMiB, CgroupPath: cg,
		Shares: []hypervisor.Share{{HostPath: w.shared, Tag: shareTag}},
		Taps:   []hypervisor.Tap{{File: tapf, MAC: nic.mac}},
	})
	hc.MemoryFile, hc.Incoming = spec.memory, spec.incoming
	hc.MemoryShared = spec.memory != "" && spec.incoming == ""
	bctx, cancel := context.WithTimeout(ctx, b.cfg.BootTimeout)
	defer cancel()
	v, err := b.cfg.Driver.Start(bctx, hc)
	tapf.Close() // QEMU has its own copy; the tap lives as long as QEMU
	if err != nil {
		return nil, fmt.Errorf("warm vm: %w", err)
	}
	w.vm = v
	// A pooled VM boots in the background: it yields the CPU to the
	// running pods (TCG boots are CPU-bound) until a sandbox adopts it.
	if spec.background {
		_ = renice(v.Pid(), poolNice)
	}
	ps := newSandbox(b, backend.SandboxConfig{ID: w.id, Dir: w.dir})
	ps.shared = w.shared
	ps.st.VMDir = w.dir
	ps.vm = v
	go ps.waitVM()
	w.ps = ps
	if err := ps.connect(bctx); err != nil {
		b.stopWarm(w)
		return nil, fmt.Errorf("warm vm: %w", err)
	}
	if spec.pooled {
		b.log("warm vm ready", "vm", w.id, "size", sz.String(), "restored", spec.incoming != "", "took", time.Since(t0))
	}
	return w, nil
}

// poolNice is the nice value of a pooled VM's threads.
const poolNice = 19

// renice sets the nice value of every thread of process pid (Linux nice
// values are per thread; threads started later inherit their creator's).
func renice(pid, nice int) error {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tasks {
		var tid int
		if _, err := fmt.Sscan(t.Name(), &tid); err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// hypervisorMAC is a locally administered unicast MAC from rnd.
func hypervisorMAC(rnd [6]byte) string {
	rnd[0] = rnd[0]&0xfc | 0x02
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5])
}

// stopWarm ends a warm VM: agent session, QEMU (its tap goes with it),
// cgroup and host files.
func (b *Backend) stopWarm(w *warmVM) {
	if w.ps != nil {
		w.ps.closeAgent()
	}
	if w.vm != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := w.vm.Stop(ctx, true); err != nil {
			b.log("stop warm vm", "vm", w.id, "error", err)
		}
		cancel()
	}
}

// destroyWarm ends a pooled VM and removes its directory.
func (b *Backend) destroyWarm(pv *pooledVM) {
	w := pv.warm
	b.stopWarm(w)
	if err := unmountUnder(w.shared); err != nil {
		b.log("warm vm cleanup", "vm", w.id, "error", err)
		return
	}
	if err := os.RemoveAll(w.dir); err != nil {
		b.log("warm vm cleanup", "vm", w.id, "error", err)
	}
}

// adopt makes the warm VM w this sandbox's (see the top of this file). On
// error it has undone what it did to the sandbox; the caller destroys w.
func (s *sandbox) adopt(ctx context.Context, w *warmVM, info map[string]string) (_ backend.StartInfo, retErr error) {
	t0 := time.Now()
	b := s.b
	prev := s.st
	s.mu.Lock()
	s.st.VMDir, s.st.SharedDir, s.shared = w.dir, w.shared, w.shared
	s.mu.Unlock()
	var pn *podNetwork
	defer func() {
		if retErr != nil {
			if pn != nil {
				_ = teardownPodNetwork(&pn.state)
			}
			_ = os.Remove(filepath.Join(w.dir, claimedFile))
			s.mu.Lock()
			s.st, s.shared = prev, filepath.Join(s.cfg.Dir, "shared")
			s.vm = nil
			s.mu.Unlock()
			s.closeAgent()
		}
	}()
	if err := atomicfile.WriteFile(filepath.Join(w.dir, claimedFile), []byte(s.cfg.Dir), 0o600); err != nil {
		return backend.StartInfo{}, err
	}
	if err := renice(w.vm.Pid(), 0); err != nil {
		return backend.StartInfo{}, fmt.Errorf("renice the warm vm: %w", err)
	}
	mv, ok := w.vm.(hypervisor.CgroupMover)
	if !ok {
		return backend.StartInfo{}, fmt.Errorf("the %s driver cannot move a vm to another cgroup", b.cfg.Driver.Name())
	}
	if err := mv.MoveCgroup(s.st.CgroupPath); err != nil {
		return backend.StartInfo{}, err
	}
	if s.cfg.NetNSPath != "" {
		var err error
		pn, err = bridgePodNetwork(s.cfg.NetNSPath, func(i int, peer netlink.Link) (string, *os.File, error) {
			if i >= len(w.nics) {
				return "", nil, fmt.Errorf("the pod has more interfaces than the %d of a warm vm", len(w.nics))
			}
			name, err := adoptTap(b.poolNS, w.nics[i].tap, peer, tapName(i))
			return name, nil, err
		})
		if err != nil {
			return backend.StartInfo{}, err
		}
		for i, ifc := range pn.ifaces {
			ifc.DeviceMacAddress = w.nics[i].mac
		}
		s.mu.Lock()
		s.st.Net = &pn.state
		s.mu.Unlock()
		info["network"] = pn.desc
	} else {
		pn = &podNetwork{}
	}
	// NICs the pod has no interface for lose their tap: the guest sees
	// no carrier on them.
	if ph, err := netlink.NewHandleAt(b.poolNS); err == nil {
		for _, n := range w.nics[len(pn.ifaces):] {
			if l, err := ph.LinkByName(n.tap); err == nil {
				_ = ph.LinkDel(l)
			}
		}
		ph.Close()
	}
	// The agent session, kept since the pool booted the VM.
	ps := w.ps
	ps.mu.Lock()
	conn, mux, cls, agent, task := ps.conn, ps.mux, ps.cls, ps.agent, ps.task
	ps.conn, ps.mux, ps.cls, ps.agent, ps.task = nil, nil, nil, nil, nil
	ps.mu.Unlock()
	s.mu.Lock()
	s.vm = w.vm
	s.conn, s.mux, s.cls, s.agent, s.task = conn, mux, cls, agent, task
	s.mu.Unlock()
	if agent == nil || ps.isGone() {
		return backend.StartInfo{}, errors.New("the warm vm has exited")
	}
	info["warm_vm"] = w.id
	info["cgroup"] = s.st.CgroupPath
	for k, val := range w.vm.Info() {
		if k == "accel" || k == "accel_reason" || k == "console_log" {
			info[k] = val
		}
	}
	t1 := time.Now()
	if err := s.setup(ctx, pn); err != nil {
		return backend.StartInfo{}, err
	}
	go s.waitVM() // only now: a failed adoption leaves s.gone open for a cold boot
	info["setup"] = time.Since(t1).String()
	info["claim_total"] = time.Since(t0).String()
	s.startMonitors()
	msg := "warm vm claimed"
	if !w.pooled {
		msg = "restored vm claimed"
	}
	b.log(msg, "vm", w.id, "sandbox_id", s.cfg.ID, "took", time.Since(t0))
	return backend.StartInfo{Pid: uint32(w.vm.Pid()), Info: info}, nil
}

// sharedDirOK checks a share directory read from a sandbox state: the
// sandbox's own, or a pooled VM's.
func (b *Backend) sharedDirOK(dir string) bool {
	rel, err := filepath.Rel(b.poolRoot(), dir)
	if err != nil || strings.HasPrefix(rel, "..") {
		return false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	return len(parts) == 2 && isPoolHex(parts[0]) && parts[1] == "shared"
}
