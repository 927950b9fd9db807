//go:build linux

// Package network gives sandboxes made through Magnetar's API a network of
// their own: a network namespace per sandbox, made and removed by Magnetar,
// attached by CNI (the bridge and host-local plugins, with NAT for
// outbound traffic) to one of the networks the configuration names, and an
// egress policy enforced with nftables: inside that namespace, where the
// sandbox's processes, without CAP_NET_ADMIN there, cannot change it
// ([EnforceNetNS]), or, for kinds whose packets bypass the namespace's IP
// stack (gVisor, microVMs), on the host side of the sandbox's veth
// ([EnforceHost]).
//
// Everything an attachment creates (the namespace, the veth pair, the
// address lease, the NAT rules, the nftables tables) is removed by
// [Manager.Detach]; [Manager.Sweep] removes what a crash left behind.
package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
)

// DefaultPluginDirs are where CNI plugins are looked for: Debian's
// containernetworking-plugins package and the upstream default.
var DefaultPluginDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// DefaultNetwork is the network a configuration without one gets.
var DefaultNetwork = NetworkConfig{Name: "default", Bridge: "magnetar0", Subnet: "10.211.0.0/16", NAT: true}

// Interface is the sandbox's interface name in its namespace.
const Interface = "eth0"

// NetworkConfig is a named network: a Linux bridge on the host, a subnet
// whose addresses host-local leases to the sandboxes on it (the first one
// is the bridge's, the sandboxes' gateway), and optionally NAT (IP
// masquerade) for traffic leaving the subnet.
type NetworkConfig struct {
	Name   string `toml:"name"`
	Bridge string `toml:"bridge"`
	Subnet string `toml:"subnet"`
	NAT    bool   `toml:"nat"`
	// DNS are the name servers of the sandboxes on this network that ask
	// for none; empty: the host's resolv.conf, unchanged.
	DNS []string `toml:"dns"`
}

var nameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Validate checks n.
func (n NetworkConfig) Validate() error {
	if !nameRe.MatchString(n.Name) {
		return fmt.Errorf("network name %q: want 1-32 of a-z, 0-9, '-', '_': %w", n.Name, errdefs.ErrInvalidArgument)
	}
	if n.Bridge == "" || len(n.Bridge) >= unix.IFNAMSIZ || strings.ContainsAny(n.Bridge, "/ \t\n:") || n.Bridge == "." || n.Bridge == ".." {
		return fmt.Errorf("network %s: bridge name %q is not a valid interface name: %w", n.Name, n.Bridge, errdefs.ErrInvalidArgument)
	}
	p, err := netip.ParsePrefix(n.Subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 || p.Masked() != p {
		return fmt.Errorf("network %s: subnet %q: want an IPv4 network of /30 or larger, e.g. 10.211.0.0/16: %w", n.Name, n.Subnet, errdefs.ErrInvalidArgument)
	}
	for _, d := range n.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			return fmt.Errorf("network %s: DNS server %q is not an IP address: %w", n.Name, d, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// CheckNetworks validates each network and that no two share a name, a
// bridge or overlapping subnets.
func CheckNetworks(nets []NetworkConfig) error {
	names, bridges, subnets := map[string]bool{}, map[string]string{}, []netip.Prefix{}
	for _, n := range nets {
		if err := n.Validate(); err != nil {
			return err
		}
		if names[n.Name] {
			return fmt.Errorf("network %q declared twice: %w", n.Name, errdefs.ErrInvalidArgument)
		}
		if o, dup := bridges[n.Bridge]; dup {
			return fmt.Errorf("networks %s and %s share bridge %s: %w", o, n.Name, n.Bridge, errdefs.ErrInvalidArgument)
		}
		p := netip.MustParsePrefix(n.Subnet)
		for _, q := range subnets {
			if q.Overlaps(p) {
				return fmt.Errorf("network %s: subnet %s overlaps %s: %w", n.Name, p, q, errdefs.ErrInvalidArgument)
			}
		}
		names[n.Name], bridges[n.Bridge], subnets = true, n.Name, append(subnets, p)
	}
	return nil
}

// Config configures a [Manager].
type Config struct {
	// Networks are the named networks; empty: [DefaultNetwork] alone.
	Networks []NetworkConfig
	// PluginDirs are searched for the CNI plugins; default
	// [DefaultPluginDirs].
	PluginDirs []string
	// NetNSDir holds the sandboxes' network namespaces (bind mounts
	// named after the sandbox IDs), for example /run/magnetar/netns.
	NetNSDir string
	// StateDir holds the attachments' records, CNI's cache and the address
	// leases, for example /var/lib/magnetar/network.
	StateDir string
}

// Manager attaches sandboxes to networks. It is safe for concurrent use.
type Manager struct {
	nets     map[string]NetworkConfig
	names    []string
	netnsDir string
	stateDir string
	cni      *libcni.CNIConfig
	dirs     []string

	mu sync.Mutex
}

// Attachment is what Attach made for a sandbox.
type Attachment struct {
	// ID is the sandbox's.
	ID      string `json:"id"`
	Network string `json:"network"`
	// NetNS is the path of the sandbox's network namespace.
	NetNS string `json:"netns"`
	// IPs are the sandbox's addresses, with their prefix length.
	IPs []string `json:"ips,omitempty"`
	// Gateway is the address of the bridge.
	Gateway string `json:"gateway,omitempty"`
	// HostVeth is the host side of the sandbox's veth (on the bridge).
	HostVeth string `json:"host_veth,omitempty"`
}

// New returns a manager. It creates its directories; it does not touch
// the network until a sandbox is attached.
func New(cfg Config) (*Manager, error) {
	if cfg.NetNSDir == "" || cfg.StateDir == "" {
		return nil, fmt.Errorf("network: NetNSDir and StateDir are required: %w", errdefs.ErrInvalidArgument)
	}
	if len(cfg.Networks) == 0 {
		cfg.Networks = []NetworkConfig{DefaultNetwork}
	}
	if cfg.PluginDirs == nil {
		cfg.PluginDirs = DefaultPluginDirs
	}
	m := &Manager{nets: map[string]NetworkConfig{}, netnsDir: filepath.Clean(cfg.NetNSDir), stateDir: filepath.Clean(cfg.StateDir), dirs: cfg.PluginDirs}
	if err := CheckNetworks(cfg.Networks); err != nil {
		return nil, err
	}
	for _, n := range cfg.Networks {
		m.nets[n.Name] = n
		m.names = append(m.names, n.Name)
	}
	for _, d := range []string{m.netnsDir, m.recordDir(), m.cacheDir(), m.ipamDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	m.cni = libcni.NewCNIConfigWithCacheDir(cfg.PluginDirs, m.cacheDir(), nil)
	return m, nil
}

func (m *Manager) recordDir() string { return filepath.Join(m.stateDir, "attachments") }
func (m *Manager) cacheDir() string  { return filepath.Join(m.stateDir, "cni-cache") }
func (m *Manager) ipamDir() string   { return filepath.Join(m.stateDir, "ipam") }

// NetNSDir is where the sandboxes' network namespaces are.
func (m *Manager) NetNSDir() string { return m.netnsDir }

// Networks returns the configured networks; the first is the default.
func (m *Manager) Networks() []NetworkConfig {
	out := make([]NetworkConfig, 0, len(m.names))
	for _, n := range m.names {
		out = append(out, m.nets[n])
	}
	return out
}

// Network returns the network called name ("" is the first configured).
func (m *Manager) Network(name string) (NetworkConfig, error) {
	if name == "" {
		name = m.names[0]
	}
	n, ok := m.nets[name]
	if !ok {
		return NetworkConfig{}, fmt.Errorf("network %q is not configured (have %v): %w", name, m.names, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// Check reports what the host lacks to attach sandboxes: the CNI plugins.
func (m *Manager) Check() error {
	for _, p := range []string{"bridge", "host-local"} {
		found := false
		for _, d := range m.dirs {
			if fi, err := os.Stat(filepath.Join(d, p)); err == nil && fi.Mode().IsRegular() {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("CNI plugin %q not found in %v (install containernetworking-plugins): %w", p, m.dirs, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

func (m *Manager) conflist(n NetworkConfig) (*libcni.NetworkConfigList, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "magnetar-" + n.Name,
		"plugins": []map[string]any{{
			"type":        "bridge",
			"bridge":      n.Bridge,
			"isGateway":   true,
			"ipMasq":      n.NAT,
			"hairpinMode": false,
			"ipam": map[string]any{
				"type":    "host-local",
				"dataDir": m.ipamDir(),
				"ranges":  [][]map[string]string{{{"subnet": n.Subnet}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			},
		}},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	return libcni.NetworkConfFromBytes(b)
}

func (m *Manager) netnsPath(id string) string { return filepath.Join(m.netnsDir, id) }

func (m *Manager) recordPath(id string) string { return filepath.Join(m.recordDir(), id+".json") }

// checkID keeps IDs to names that cannot leave the manager's directories.
func checkID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") || len(id) > 200 {
		return fmt.Errorf("network: bad sandbox ID %q: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Attach makes a network namespace for sandbox id, attaches it to the
// network called name ("" is the default) and applies policy p where
// says. On failure, nothing of it remains.
func (m *Manager) Attach(ctx context.Context, id, name string, p Policy, where Enforcement) (_ *Attachment, retErr error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	n, err := m.Network(name)
	if err != nil {
		return nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := m.Check(); err != nil {
		return nil, err
	}
	a := &Attachment{ID: id, Network: n.Name, NetNS: m.netnsPath(id)}
	// The record first: a crash at any later step leaves something that
	// Sweep finds through it.
	if err := m.writeRecord(a); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = m.Detach(context.WithoutCancel(ctx), id)
		}
	}()
	if err := newNetNS(a.NetNS); err != nil {
		return nil, err
	}
	if err := loopbackUp(a.NetNS); err != nil {
		return nil, err
	}
	// The policy holds before the interface exists (in the namespace), or
	// before the sandbox runs (on the host).
	if where == EnforceNetNS {
		if err := applyPolicy(a.NetNS, p); err != nil {
			return nil, err
		}
	}
	list, err := m.conflist(n)
	if err != nil {
		return nil, err
	}
	res, err := m.cni.AddNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: id, NetNS: a.NetNS, IfName: Interface})
	if err != nil {
		return nil, fmt.Errorf("attach sandbox %s to network %s: %w", id, n.Name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("attach sandbox %s: CNI result: %w", id, err)
	}
	for _, ip := range r.IPs {
		a.IPs = append(a.IPs, ip.Address.String())
		if a.Gateway == "" && ip.Gateway != nil {
			a.Gateway = ip.Gateway.String()
		}
	}
	for _, i := range r.Interfaces {
		if i.Sandbox == "" && i.Name != n.Bridge {
			a.HostVeth = i.Name
		}
	}
	if err := m.writeRecord(a); err != nil {
		return nil, err
	}
	if where == EnforceHost {
		if err := m.setHostPolicy(a, p); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Attachment returns sandbox id's attachment (not found: none).
func (m *Manager) Attachment(id string) (*Attachment, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(m.recordPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sandbox %s has no network attachment: %w", id, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var a Attachment
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("network record of %s: %w", id, err)
	}
	return &a, nil
}

// SetPolicy replaces the egress policy of sandbox id, atomically, where
// says (see [Enforcement]).
func (m *Manager) SetPolicy(id string, p Policy, where Enforcement) error {
	if err := p.Validate(); err != nil {
		return err
	}
	a, err := m.Attachment(id)
	if err != nil {
		return err
	}
	if where == EnforceHost {
		return m.setHostPolicy(a, p)
	}
	return applyPolicy(a.NetNS, p)
}

// setHostPolicy applies p on the host side of a's veth.
func (m *Manager) setHostPolicy(a *Attachment, p Policy) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.AllowsAll() {
		return m.applyHostPolicy(a.ID, "", "", netip.Addr{}, p)
	}
	veth, addr, err := m.hostEndpoint(a)
	if err != nil {
		return err
	}
	n, err := m.Network(a.Network)
	if err != nil {
		return err
	}
	return m.applyHostPolicy(a.ID, n.Bridge, veth, addr, p)
}

// Detach removes everything Attach made for sandbox id: the host-side
// nftables tables, the CNI attachment (veth, address lease, NAT rules),
// the network namespace (and with it the nftables table inside) and the
// record. Detaching a sandbox with no
// attachment succeeds.
func (m *Manager) Detach(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	name := ""
	if a, err := m.Attachment(id); err == nil {
		name = a.Network
	} else if !errdefs.IsNotFound(err) {
		return err
	}
	var errs []error
	errs = append(errs, m.removeHostPolicy(id))
	if name != "" {
		if _, ok := m.nets[name]; ok {
			errs = append(errs, m.cniDel(ctx, id, name))
		} else {
			// A network removed from the configuration: its lease is
			// released by Sweep's look at the leases.
			errs = append(errs, m.releaseLeases(id))
		}
	}
	errs = append(errs, removeNetNS(m.netnsPath(id)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach sandbox %s: %w", id, err)
	}
	if err := os.Remove(m.recordPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// cniDel runs CNI DEL for sandbox id on network name; the namespace may
// be gone (DEL then releases what is outside it).
func (m *Manager) cniDel(ctx context.Context, id, name string) error {
	list, err := m.conflist(m.nets[name])
	if err != nil {
		return err
	}
	rt := &libcni.RuntimeConf{ContainerID: id, IfName: Interface}
	if isNetNS(m.netnsPath(id)) {
		rt.NetNS = m.netnsPath(id)
	}
	if err := m.cni.DelNetworkList(ctx, list, rt); err != nil {
		return fmt.Errorf("CNI DEL on network %s: %w", name, err)
	}
	return nil
}

// releaseLeases removes host-local's leases held by sandbox id.
func (m *Manager) releaseLeases(id string) error {
	var errs []error
	for _, l := range m.leases() {
		if l.owner == id {
			errs = append(errs, os.Remove(l.path))
		}
	}
	return errors.Join(errs...)
}

type lease struct{ network, path, owner string }

// leases lists host-local's lease files: <ipam>/<network>/<address>,
// holding the owner's ID on the first line.
func (m *Manager) leases() []lease {
	var out []lease
	nets, _ := os.ReadDir(m.ipamDir())
	for _, nd := range nets {
		if !nd.IsDir() {
			continue
		}
		files, _ := os.ReadDir(filepath.Join(m.ipamDir(), nd.Name()))
		for _, f := range files {
			if net.ParseIP(f.Name()) == nil {
				continue // last_reserved_ip.0, lock
			}
			p := filepath.Join(m.ipamDir(), nd.Name(), f.Name())
			data, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			owner, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
			out = append(out, lease{network: strings.TrimPrefix(nd.Name(), "magnetar-"), path: p, owner: strings.TrimSpace(owner)})
		}
	}
	return out
}

// Sweep detaches every sandbox that has something left here (a record, a
// namespace, an address lease or host-side nftables tables) and for which
// keep is false: what a crash left behind. It returns the IDs it
// detached.
func (m *Manager) Sweep(ctx context.Context, keep func(id string) bool) ([]string, error) {
	ids := map[string]bool{}
	if ents, err := os.ReadDir(m.recordDir()); err == nil {
		for _, e := range ents {
			if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
				ids[id] = true
			}
		}
	}
	if ents, err := os.ReadDir(m.netnsDir); err == nil {
		for _, e := range ents {
			ids[e.Name()] = true
		}
	}
	var errs []error
	if hosted, err := m.hostTables(); err != nil {
		errs = append(errs, fmt.Errorf("list host nftables tables: %w", err))
	} else {
		for id := range hosted {
			ids[id] = true
		}
	}
	leaseNet := map[string]string{}
	for _, l := range m.leases() {
		ids[l.owner] = true
		leaseNet[l.owner] = l.network
	}
	var swept []string
	for _, id := range slices.Sorted(func(yield func(string) bool) {
		for id := range ids {
			if !yield(id) {
				return
			}
		}
	}) {
		if keep(id) || checkID(id) != nil {
			continue
		}
		if _, err := m.Attachment(id); errdefs.IsNotFound(err) {
			if n, ok := leaseNet[id]; ok {
				// A lease without a record: release it through CNI
				// (with the NAT rules it may have) if its network is
				// still configured.
				if _, known := m.nets[n]; known {
					errs = append(errs, m.cniDel(ctx, id, n))
				} else {
					errs = append(errs, m.releaseLeases(id))
				}
			}
		}
		if err := m.Detach(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		swept = append(swept, id)
	}
	return swept, errors.Join(errs...)
}

func (m *Manager) writeRecord(a *Attachment) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(m.recordPath(a.ID), data, 0o600)
}

// newNetNS creates a network namespace held by a bind mount at path.
func newNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return fmt.Errorf("create network namespace file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread, in the new namespace, dies with
		// this goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind network namespace: %w", err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

// isNetNS reports whether path is a mounted namespace.
func isNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// removeNetNS unmounts and removes the namespace at path.
func removeNetNS(path string) error {
	for isNetNS(path) {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount network namespace %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// loopbackUp brings up lo in the namespace at path.
func loopbackUp(path string) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring up loopback: %w", err)
	}
	return nil
}
