//go:build linux

package network

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Enforcement says where a sandbox's egress policy is enforced.
type Enforcement string

const (
	// EnforceNetNS enforces the policy with an nftables table (family
	// inet, output hook) in the sandbox's own network namespace: for kinds
	// whose processes send through the IP stack of that namespace (runc).
	EnforceNetNS Enforcement = ""
	// EnforceHost enforces the policy in the host's network namespace,
	// keyed by the host side of the sandbox's veth: for kinds whose
	// packets bypass the IP stack of the sandbox's namespace (gVisor's
	// netstack writes frames to a packet socket; a microVM's frames are
	// tc-redirected from its tap). Two tables, both named after the
	// sandbox: a netdev table whose ingress chain on the veth's host side
	// lets through ARP and IPv4 from the sandbox's own address only (so
	// that the address identifies the sandbox), and an inet table whose
	// forward and input chains judge what comes from that address, with
	// the host's connection tracking. Nothing inside the sandbox (a guest
	// kernel included) reaches them.
	EnforceHost Enforcement = "host"
)

// hostTable is the name of sandbox id's host-side tables (inet and
// netdev). The prefix is the manager's own (a hash of its state
// directory), so that managers of several sandboxers on one host never
// sweep each other's tables.
func (m *Manager) hostTable(id string) string { return m.hostPrefix() + id }

func (m *Manager) hostPrefix() string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(m.stateDir))
	return fmt.Sprintf("magnetar-%08x-", h.Sum32())
}

// hostTables lists the names of the host-side tables of this manager
// (inet or netdev) with the sandbox IDs they belong to.
func (m *Manager) hostTables() (map[string]bool, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTables()
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, err
	}
	ids := map[string]bool{}
	for _, t := range ts {
		if t.Family != nftables.TableFamilyINet && t.Family != nftables.TableFamilyNetdev {
			continue
		}
		if id, ok := strings.CutPrefix(t.Name, m.hostPrefix()); ok {
			ids[id] = true
		}
	}
	return ids, nil
}

// removeHostPolicy deletes sandbox id's host-side tables, if there are.
func (m *Manager) removeHostPolicy(id string) error {
	ids, err := m.hostTables()
	if err != nil {
		return fmt.Errorf("list host nftables tables: %w", err)
	}
	if !ids[id] {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return err
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyNetdev} {
		t := &nftables.Table{Name: m.hostTable(id), Family: fam}
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove host egress tables of %s: %w", id, err)
	}
	return nil
}

// hostEndpoint is the host side of sandbox a's interface and the
// sandbox's IPv4 address.
func (m *Manager) hostEndpoint(a *Attachment) (string, netip.Addr, error) {
	var addr netip.Addr
	for _, s := range a.IPs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			addr = p.Addr()
			break
		}
	}
	if !addr.IsValid() {
		return "", addr, fmt.Errorf("sandbox %s has no IPv4 address on its network: %w", a.ID, errdefs.ErrFailedPrecondition)
	}
	veth := a.HostVeth
	if veth == "" {
		var err error
		if veth, err = peerOf(a.NetNS); err != nil {
			return "", addr, fmt.Errorf("sandbox %s: find the host side of its interface: %w", a.ID, err)
		}
	}
	n, err := m.Network(a.Network)
	if err != nil {
		return "", addr, err
	}
	l, err := netlink.LinkByName(veth)
	if err != nil {
		return "", addr, fmt.Errorf("sandbox %s: host interface %s: %w", a.ID, veth, err)
	}
	br, err := netlink.LinkByName(n.Bridge)
	if err != nil || l.Attrs().MasterIndex != br.Attrs().Index || l.Type() != "veth" {
		return "", addr, fmt.Errorf("sandbox %s: host interface %s is not a veth on bridge %s: %w", a.ID, veth, n.Bridge, errdefs.ErrFailedPrecondition)
	}
	return veth, addr, nil
}

// peerOf returns the name, in the caller's namespace, of the peer of the
// sandbox's interface in the namespace at path.
func peerOf(path string) (string, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	l, err := h.LinkByName(Interface)
	if err != nil {
		return "", err
	}
	peer, err := netlink.LinkByIndex(l.Attrs().ParentIndex)
	if err != nil {
		return "", err
	}
	return peer.Attrs().Name, nil
}

// bridgeNetfilter makes sure that frames bridged between the ports of
// bridge (a sandbox to another on the same network) go through the
// host's inet hooks (br_netfilter), where the host-side policy judges
// them: the global bridge-nf-call-iptables, else the bridge's own switch.
func bridgeNetfilter(bridge string) error {
	if b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	} else if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("br_netfilter is not loaded (modprobe br_netfilter): without it, traffic between sandboxes of a network would bypass host-side egress policies: %w", errdefs.ErrFailedPrecondition)
	}
	if err := os.WriteFile(filepath.Join("/sys/class/net", bridge, "bridge", "nf_call_iptables"), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("bridge %s: enable nf_call_iptables: %w", bridge, err)
	}
	return nil
}

// applyHostPolicy replaces sandbox id's host-side tables with ones
// enforcing p for the sandbox whose traffic enters the host through veth
// from addr, in one atomic batch. A policy that allows everything
// removes them.
func (m *Manager) applyHostPolicy(id, bridge, veth string, addr netip.Addr, p Policy) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	ids, err := m.hostTables()
	if err != nil {
		return fmt.Errorf("list host nftables tables: %w", err)
	}
	name := m.hostTable(id)
	nd := &nftables.Table{Name: name, Family: nftables.TableFamilyNetdev}
	inet := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	if ids[id] {
		for _, t := range []*nftables.Table{nd, inet} {
			c.AddTable(t)
			c.DelTable(t)
		}
	}
	if p.AllowsAll() {
		if !ids[id] {
			return nil
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("remove host egress tables: %w", err)
		}
		return nil
	}
	if err := bridgeNetfilter(bridge); err != nil {
		return err
	}
	accept := nftables.ChainPolicyAccept
	acceptV := &expr.Verdict{Kind: expr.VerdictAccept}

	// The guard: only ARP and IPv4 from the sandbox's address leave its
	// veth; the rest (another source address, IPv6, other ethertypes) is
	// dropped.
	c.AddTable(nd)
	guard := c.AddChain(&nftables.Chain{
		Name: "guard", Table: nd, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookIngress,
		Priority: nftables.ChainPriorityFilter, Device: veth, Policy: &accept,
	})
	c.AddRule(&nftables.Rule{Table: nd, Chain: guard, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_ARP)},
		acceptV,
	}})
	c.AddRule(&nftables.Rule{Table: nd, Chain: guard, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr.AsSlice()},
		acceptV,
	}})
	c.AddRule(&nftables.Rule{Table: nd, Chain: guard, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})

	// The policy, on what the host routes (forward: to the outside, or
	// bridged to another sandbox through br_netfilter) and receives
	// (input: to the host itself) from the sandbox's address.
	c.AddTable(inet)
	addDenyChain(c, inet)
	eg := c.AddChain(&nftables.Chain{Name: "egress", Table: inet})
	for _, exprs := range policyRules(p, false) {
		c.AddRule(&nftables.Rule{Table: inet, Chain: eg, Exprs: exprs})
	}
	for _, hook := range []*nftables.ChainHook{nftables.ChainHookForward, nftables.ChainHookInput} {
		name := "forward"
		if hook == nftables.ChainHookInput {
			name = "input"
		}
		base := c.AddChain(&nftables.Chain{
			Name: name, Table: inet, Type: nftables.ChainTypeFilter, Hooknum: hook,
			Priority: nftables.ChainPriorityFilter, Policy: &accept,
		})
		c.AddRule(&nftables.Rule{Table: inet, Chain: base, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr.AsSlice()},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: "egress"},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply egress policy on the host: %w", err)
	}
	return nil
}
