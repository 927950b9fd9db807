package vm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// Pod networking of the vm kind (Kata's "tcfilter" model): for each CNI
// interface of the pod's network namespace (the veth end CRI's plugins
// made, e.g. eth0) the sandboxer creates a tap in that namespace and
// redirects every frame arriving on one to the other with tc ingress
// qdiscs and "mirred egress redirect" filters. QEMU stays in the host
// namespace and gets the open tap as an inherited fd; the guest NIC has
// the veth's MAC, MTU, addresses and routes (configured by the agent's
// Setup), so the rest of the pod network sees the VM exactly where CRI put
// the pod. The veth keeps its addresses, but the namespace's own stack no
// longer receives anything on it.
//
// Taps are not persistent: a tap disappears with the last open fd (QEMU's),
// so a dead VM leaves none behind even if the sandboxer crashed. Teardown
// removes what is left (a tap still held, the veth's ingress qdisc); the
// namespace itself belongs to CRI and may already be gone.

// netState is what teardown needs; it is part of the sandbox state.
type netState struct {
	// NetNS is the pod network namespace (a bind-mounted nsfs file).
	NetNS string `json:"netns"`
	// Links pairs each tap with the CNI interface it is bridged to.
	Links []netLink `json:"links,omitempty"`
}

// netLink is one tap and its CNI interface, both in NetNS.
type netLink struct {
	Tap  string `json:"tap"`
	Peer string `json:"peer"`
}

// podNIC is what the guest needs of one CNI interface.
type podNIC struct {
	Name  string
	MAC   net.HardwareAddr
	MTU   int
	Addrs []*net.IPNet
}

// podNetwork is the result of [setupPodNetwork].
type podNetwork struct {
	state  netState
	taps   []hypervisor.Tap
	ifaces []*agentv1.Interface
	routes []*agentv1.Route
	desc   string
}

// closeFiles closes the sandboxer's copies of the tap fds (once QEMU
// inherited them, or after a failed start).
func (p *podNetwork) closeFiles() {
	for _, t := range p.taps {
		if t.File != nil {
			t.File.Close()
		}
	}
}

// tapName is the name of the i-th tap in the pod namespace.
func tapName(i int) string { return "tap" + strconv.Itoa(i) }

// isCNIInterface reports whether l may be an interface to hand to the
// guest: a link with a non-zero Ethernet address, except loopback and taps
// (ours, or anything else's). Whether it has addresses is checked too
// (see setupPodNetwork): that leaves out the fallback devices some tunnel
// modules put in every namespace (gretap0, erspan0).
func isCNIInterface(l netlink.Link) bool {
	a := l.Attrs()
	if a.Flags&net.FlagLoopback != 0 || l.Type() == "tuntap" || l.Type() == "loopback" {
		return false
	}
	if len(a.HardwareAddr) != 6 {
		return false
	}
	for _, b := range a.HardwareAddr {
		if b != 0 {
			return true
		}
	}
	return false
}

// guestAddrs keeps the addresses the guest should own: global ones, no
// IPv6 link-local (the guest kernel makes its own from the same MAC).
func guestAddrs(addrs []netlink.Addr) []*net.IPNet {
	var out []*net.IPNet
	for _, a := range addrs {
		if a.IPNet == nil || a.IP.IsLinkLocalUnicast() || a.IP.IsLoopback() {
			continue
		}
		out = append(out, a.IPNet)
	}
	return out
}

// guestRoutes turns the routes of the namespace that leave through a CNI
// interface into agent routes: routes the kernel made for an address (proto
// kernel) are left out, as the guest kernel makes them too; directly
// connected routes come before those through a gateway.
func guestRoutes(routes []netlink.Route, devs map[int]string) []*agentv1.Route {
	var direct, viaGW []*agentv1.Route
	for _, r := range routes {
		dev, ok := devs[r.LinkIndex]
		if !ok || r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST && r.Type != 0 {
			continue
		}
		if r.Table != 0 && r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
			continue
		}
		ar := &agentv1.Route{Device: dev}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				ar.Destination = r.Dst.String()
			}
		}
		if r.Src != nil {
			ar.Source = r.Src.String()
		}
		if r.Gw != nil {
			ar.Gateway = r.Gw.String()
			viaGW = append(viaGW, ar)
		} else {
			direct = append(direct, ar)
		}
	}
	return append(direct, viaGW...)
}

// guestInterface is the agent's view of nic.
func guestInterface(nic podNIC) *agentv1.Interface {
	ifc := &agentv1.Interface{Name: nic.Name, MacAddress: nic.MAC.String(), Mtu: uint32(max(nic.MTU, 0))}
	for _, a := range nic.Addrs {
		ones, _ := a.Mask.Size()
		ifc.Addresses = append(ifc.Addresses, &agentv1.IPAddress{Address: a.IP.String(), PrefixLength: uint32(ones)})
	}
	return ifc
}

// describeNetwork renders the sandbox info "network" value, e.g.
// "tap0 <-> eth0 10.88.0.5/16".
func describeNetwork(links []netLink, nics []podNIC) string {
	if len(links) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(links))
	for i, l := range links {
		s := l.Tap + " <-> " + l.Peer
		if i < len(nics) {
			for _, a := range nics[i].Addrs {
				s += " " + a.String()
			}
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// inNetNS runs fn on a goroutine of its own, locked to an OS thread
// switched into the network namespace at path. If that thread cannot be
// switched back, the goroutine exits still locked, so the Go runtime ends
// the thread instead of reusing it; the caller's thread never changes
// namespace.
func inNetNS(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := inNS(target, fn); err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	return nil
}

// inNS is inNetNS for an open namespace.
func inNS(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			orig, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				return fmt.Errorf("current netns: %w", err)
			}
			defer orig.Close()
			if err := netns.Set(target); err != nil {
				runtime.UnlockOSThread()
				return fmt.Errorf("enter netns: %w", err)
			}
			ferr := fn()
			if err := netns.Set(orig); err != nil {
				return errors.Join(ferr, fmt.Errorf("return from netns: %w", err))
			}
			runtime.UnlockOSThread()
			return ferr
		}()
	}()
	return <-errc
}

// newPrivateNetNS returns a new network namespace, known only by the
// handle (no bind mount): it ends when the handle is closed and nothing
// else holds it, or with the process.
func newPrivateNetNS() (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("current netns: %w", err)}
			return
		}
		defer orig.Close()
		h, err := netns.New() // unshares this thread's network namespace
		if err != nil {
			// The thread may be half-switched: it ends locked.
			ch <- result{err: fmt.Errorf("new netns: %w", err)}
			return
		}
		if err := netns.Set(orig); err != nil {
			h.Close()
			ch <- result{err: fmt.Errorf("return from the new netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{h: h}
	}()
	r := <-ch
	return r.h, r.err
}

// setupPodNetwork bridges every CNI interface of the namespace at nsPath to
// a new tap and returns the taps (open files for the VMM) and the guest
// configuration. On error nothing it made is left.
func setupPodNetwork(nsPath string) (*podNetwork, error) {
	return bridgePodNetwork(nsPath, func(i int, peer netlink.Link) (string, *os.File, error) {
		return bridgeToTap(peer, tapName(i))
	})
}

// bridgePodNetwork is setupPodNetwork with the taps from tapFor: it gives
// the i-th CNI interface its tap (running in the pod namespace) and
// returns the tap's name once it exists there, and its open file if the
// VMM still needs it.
func bridgePodNetwork(nsPath string, tapFor func(i int, peer netlink.Link) (string, *os.File, error)) (_ *podNetwork, retErr error) {
	pn := &podNetwork{state: netState{NetNS: nsPath}}
	defer func() {
		if retErr != nil {
			pn.closeFiles()
			if err := teardownPodNetwork(&pn.state); err != nil {
				retErr = errors.Join(retErr, err)
			}
		}
	}()
	var nics []podNIC
	err := inNetNS(nsPath, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
		devs := map[int]string{}
		for _, l := range links {
			if !isCNIInterface(l) {
				continue
			}
			a := l.Attrs()
			addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return fmt.Errorf("addresses of %s: %w", a.Name, err)
			}
			nic := podNIC{Name: a.Name, MAC: a.HardwareAddr, MTU: a.MTU, Addrs: guestAddrs(addrs)}
			if len(nic.Addrs) == 0 {
				continue // not configured by CNI
			}
			tap, f, err := tapFor(len(nics), l)
			if tap != "" {
				pn.state.Links = append(pn.state.Links, netLink{Tap: tap, Peer: a.Name})
			}
			if f != nil {
				pn.taps = append(pn.taps, hypervisor.Tap{Name: tap, File: f, MAC: a.HardwareAddr.String()})
			}
			if err != nil {
				return fmt.Errorf("bridge %s: %w", a.Name, err)
			}
			nics = append(nics, nic)
			devs[a.Index] = a.Name
			pn.ifaces = append(pn.ifaces, guestInterface(nic))
		}
		if len(devs) == 0 {
			return nil
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		pn.routes = guestRoutes(routes, devs)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pod network %s: %w", nsPath, err)
	}
	pn.desc = describeNetwork(pn.state.Links, nics)
	return pn, nil
}

// bridgeToTap creates the tap name next to peer (same MTU), brings it up
// and redirects each one's ingress to the other's egress. It runs in the
// pod namespace. It returns the tap's name once it exists and its open
// file (non-persistent tap: it lives as long as an fd is open).
func bridgeToTap(peer netlink.Link, name string) (string, *os.File, error) {
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return "", nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	if len(tap.Fds) != 1 {
		for _, f := range tap.Fds {
			f.Close()
		}
		return tap.Name, nil, fmt.Errorf("tap %s: got %d fds, want 1", tap.Name, len(tap.Fds))
	}
	f := tap.Fds[0]
	tl, err := netlink.LinkByName(tap.Name)
	if err != nil {
		return tap.Name, f, fmt.Errorf("tap %s: %w", tap.Name, err)
	}
	return tap.Name, f, bridgeTap(tl, peer)
}

// bridgeTap gives the tap tl peer's MTU, brings both up and redirects
// each one's ingress to the other's egress.
func bridgeTap(tl, peer netlink.Link) error {
	name := tl.Attrs().Name
	if err := netlink.LinkSetMTU(tl, peer.Attrs().MTU); err != nil {
		return fmt.Errorf("tap %s mtu: %w", name, err)
	}
	if err := netlink.LinkSetUp(tl); err != nil {
		return fmt.Errorf("tap %s up: %w", name, err)
	}
	if err := netlink.LinkSetUp(peer); err != nil {
		return fmt.Errorf("%s up: %w", peer.Attrs().Name, err)
	}
	for _, p := range [][2]netlink.Link{{peer, tl}, {tl, peer}} {
		if err := redirect(p[0], p[1]); err != nil {
			return err
		}
	}
	return nil
}

// newPoolTap creates a tap for a warm VM in the current (the pool's)
// namespace, down, and returns its open file.
func newPoolTap(name string) (*os.File, error) {
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	if len(tap.Fds) != 1 {
		for _, f := range tap.Fds {
			f.Close()
		}
		return nil, fmt.Errorf("tap %s: got %d fds, want 1", name, len(tap.Fds))
	}
	return tap.Fds[0], nil
}

// adoptTap moves a warm VM's tap from the pool's namespace into the
// current one (the pod's), names it name and bridges it to peer. It
// returns the tap's name in the pod namespace once it is there.
func adoptTap(pool netns.NsHandle, poolTap string, peer netlink.Link, name string) (string, error) {
	ph, err := netlink.NewHandleAt(pool)
	if err != nil {
		return "", fmt.Errorf("pool netns: %w", err)
	}
	defer ph.Close()
	l, err := ph.LinkByName(poolTap)
	if err != nil {
		return "", fmt.Errorf("warm tap %s: %w", poolTap, err)
	}
	cur, err := netns.Get()
	if err != nil {
		return "", fmt.Errorf("pod netns: %w", err)
	}
	defer cur.Close()
	if err := ph.LinkSetNsFd(l, int(cur)); err != nil {
		return "", fmt.Errorf("move warm tap %s into the pod netns: %w", poolTap, err)
	}
	tl, err := netlink.LinkByName(poolTap)
	if err != nil {
		return poolTap, fmt.Errorf("warm tap %s: %w", poolTap, err)
	}
	if err := netlink.LinkSetName(tl, name); err != nil {
		return poolTap, fmt.Errorf("rename warm tap %s to %s: %w", poolTap, name, err)
	}
	if tl, err = netlink.LinkByName(name); err != nil {
		return name, fmt.Errorf("tap %s: %w", name, err)
	}
	return name, bridgeTap(tl, peer)
}

// ingressHandle is the handle of an ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// redirect adds an ingress qdisc to from and a match-all u32 filter that
// steals every frame and sends it out of to.
func redirect(from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: from.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS,
	}}
	if err := netlink.QdiscAdd(q); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s -> %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// teardownPodNetwork removes the taps and the CNI interfaces' ingress
// qdiscs (with their filters). A namespace or link that is gone is not an
// error: the namespace belongs to CRI, which may have removed it already.
func teardownPodNetwork(st *netState) error {
	if st == nil || st.NetNS == "" || len(st.Links) == 0 {
		return nil
	}
	if _, err := os.Stat(st.NetNS); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := inNetNS(st.NetNS, func() error {
		var errs []error
		for _, l := range st.Links {
			if tl, err := netlink.LinkByName(l.Tap); err == nil {
				if tl.Type() != "tuntap" {
					errs = append(errs, fmt.Errorf("%s is a %s, not our tap: left alone", l.Tap, tl.Type()))
				} else if err := netlink.LinkDel(tl); err != nil && !isNotFound(err) {
					errs = append(errs, fmt.Errorf("delete tap %s: %w", l.Tap, err))
				}
			} else if !isNotFound(err) {
				errs = append(errs, fmt.Errorf("tap %s: %w", l.Tap, err))
			}
			pl, err := netlink.LinkByName(l.Peer)
			if err != nil {
				if !isNotFound(err) {
					errs = append(errs, fmt.Errorf("%s: %w", l.Peer, err))
				}
				continue
			}
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
				LinkIndex: pl.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS,
			}}
			if err := netlink.QdiscDel(q); err != nil && !isNotFound(err) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("ingress qdisc of %s: %w", l.Peer, err))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil && isNotNetNS(st.NetNS) {
		return nil // unmounted and replaced by a plain file, or gone
	}
	if err != nil {
		return fmt.Errorf("tear down pod network %s: %w", st.NetNS, err)
	}
	return nil
}

// isNotFound reports whether err says a link or qdisc does not exist.
func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

// isNotNetNS reports whether path no longer is a network namespace.
func isNotNetNS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return true
	}
	return st.Type != unix.NSFS_MAGIC
}
