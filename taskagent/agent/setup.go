package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Setup configures the guest: log level, host name, DNS, mounts, network
// interfaces, routes, clock and sysctls, in that order, stopping at the
// first error; then it creates the pod sandbox of the Task API. Invalid
// sysctls are refused before anything is done.
func (a *Agent) Setup(ctx context.Context, req *agentv1.SetupRequest) error {
	start := time.Now()
	sysctls, err := backend.ParseSysctls(req.GetSysctls())
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if !(a.level != nil && a.level.Level() == slog.LevelDebug) { // magnetar.debug=1 wins
		a.setLevel(req.GetLogLevel())
	}
	if req.GetSandboxId() != "" {
		a.logp.Store(a.log().With("sandbox", req.GetSandboxId()))
	}
	if e := req.GetEntropy(); len(e) > 0 {
		if err := addEntropy(e); err != nil {
			return fmt.Errorf("setup: entropy: %w", err)
		}
	}
	if h := req.GetHostname(); h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return fmt.Errorf("setup: hostname: %w", err)
		}
		if err := atomicfile.WriteFile(filepath.Join(a.opts.EtcDir, "hostname"), []byte(h+"\n"), 0o644); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(a.opts.EtcDir, "hosts"), []byte(RenderHosts(req.GetHostname())), 0o644); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(a.opts.EtcDir, "resolv.conf"), []byte(RenderResolvConf(req.GetDns())), 0o644); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	for _, m := range req.GetMounts() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := mount(m); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		a.log().Debug("mounted", "type", m.GetType(), "source", m.GetSource(), "target", m.GetTarget())
	}
	for _, ifc := range req.GetInterfaces() {
		if err := configureInterface(ifc); err != nil {
			return fmt.Errorf("setup: interface %s (%s): %w", ifc.GetName(), ifc.GetMacAddress(), err)
		}
	}
	for _, r := range req.GetRoutes() {
		if err := addRoute(r); err != nil {
			return fmt.Errorf("setup: route %q via %q dev %q: %w", r.GetDestination(), r.GetGateway(), r.GetDevice(), err)
		}
	}
	if err := setClock(req.GetHostTime()); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if err := setGuestSysctls(a.opts.SysctlDir, sysctls); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	if a.tasks != nil {
		if err := a.tasks.setup(ctx, req); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	a.log().Info("setup done", "hostname", req.GetHostname(), "mounts", len(req.GetMounts()),
		"interfaces", len(req.GetInterfaces()), "routes", len(req.GetRoutes()), "took", time.Since(start))
	return nil
}

// RenderResolvConf renders /etc/resolv.conf. A nil config gives an empty
// file (no resolver).
func RenderResolvConf(dns *typesv1.DNSConfig) string {
	var b strings.Builder
	for _, s := range dns.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(dns.GetSearches()) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(dns.GetSearches(), " "))
	}
	if len(dns.GetOptions()) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(dns.GetOptions(), " "))
	}
	return b.String()
}

// RenderHosts renders /etc/hosts with the loopback names and, if set, the
// host name on 127.0.1.1 (as Debian does).
func RenderHosts(hostname string) string {
	s := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
	if hostname != "" {
		s += "127.0.1.1\t" + hostname + "\n"
	}
	return s
}

// mountFlags maps mount(8) options to mount(2) flags; the bool is true for
// flags that are cleared.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"ro": {false, unix.MS_RDONLY}, "rw": {true, unix.MS_RDONLY},
	"nosuid": {false, unix.MS_NOSUID}, "suid": {true, unix.MS_NOSUID},
	"nodev": {false, unix.MS_NODEV}, "dev": {true, unix.MS_NODEV},
	"noexec": {false, unix.MS_NOEXEC}, "exec": {true, unix.MS_NOEXEC},
	"sync": {false, unix.MS_SYNCHRONOUS}, "async": {true, unix.MS_SYNCHRONOUS},
	"noatime": {false, unix.MS_NOATIME}, "atime": {true, unix.MS_NOATIME},
	"nodiratime": {false, unix.MS_NODIRATIME}, "relatime": {false, unix.MS_RELATIME},
	"strictatime": {false, unix.MS_STRICTATIME},
	"bind":        {false, unix.MS_BIND}, "rbind": {false, unix.MS_BIND | unix.MS_REC},
	"remount": {false, unix.MS_REMOUNT}, "defaults": {false, 0},
}

// ParseMountOptions splits mount(8) options into mount(2) flags and the
// file-system data string. For 9p it adds the defaults trans=virtio,
// version=9p2000.L and msize=524288 unless they are given.
func ParseMountOptions(fstype string, options []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		data = append(data, o)
	}
	if fstype == "9p" {
		for _, d := range []string{"trans=virtio", "version=9p2000.L", "msize=524288"} {
			key, _, _ := strings.Cut(d, "=")
			has := false
			for _, o := range data {
				if strings.HasPrefix(o, key+"=") {
					has = true
				}
			}
			if !has {
				data = append(data, d)
			}
		}
	}
	return flags, strings.Join(data, ",")
}

func mount(m *types.Mount) error {
	if m.GetTarget() == "" || !filepath.IsAbs(m.GetTarget()) {
		return fmt.Errorf("mount %s: target %q is not an absolute path: %w", m.GetSource(), m.GetTarget(), errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(m.GetTarget(), 0o755); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	flags, data := ParseMountOptions(m.GetType(), m.GetOptions())
	if err := unix.Mount(m.GetSource(), m.GetTarget(), m.GetType(), flags, data); err != nil {
		return fmt.Errorf("mount -t %s -o %s %s %s: %w", m.GetType(), data, m.GetSource(), m.GetTarget(), err)
	}
	return nil
}

func configureInterface(ifc *agentv1.Interface) error {
	mac, err := net.ParseMAC(ifc.GetMacAddress())
	if err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	// A NIC of a VM booted ahead of its pod (a warm pool) is found by the
	// address it has and given the pod's.
	find := mac
	if d := ifc.GetDeviceMacAddress(); d != "" {
		if find, err = net.ParseMAC(d); err != nil {
			return fmt.Errorf("device mac: %w: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	var link netlink.Link
	deadline := time.Now().Add(5 * time.Second) // the NIC may still be probing
	for link == nil {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if strings.EqualFold(l.Attrs().HardwareAddr.String(), find.String()) {
				link = l
				break
			}
		}
		if link == nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("no interface with MAC %s: %w", find, errdefs.ErrNotFound)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("set down: %w", err)
	}
	if !bytes.Equal(find, mac) {
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return fmt.Errorf("set mac %s: %w", mac, err)
		}
	}
	if n := ifc.GetName(); n != "" && n != link.Attrs().Name {
		if err := netlink.LinkSetName(link, n); err != nil {
			return fmt.Errorf("rename %s: %w", link.Attrs().Name, err)
		}
	}
	if mtu := int(ifc.GetMtu()); mtu > 0 {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set mtu: %w", err)
		}
	}
	for _, ad := range ifc.GetAddresses() {
		ip := net.ParseIP(ad.GetAddress())
		if ip == nil {
			return fmt.Errorf("bad address %q: %w", ad.GetAddress(), errdefs.ErrInvalidArgument)
		}
		bits := 128
		if ip.To4() != nil {
			ip, bits = ip.To4(), 32
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(int(ad.GetPrefixLength()), bits)}}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", addr.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}

// BuildRoute turns a Route into a netlink route; the link index is
// looked up by the caller.
func BuildRoute(r *agentv1.Route) (*netlink.Route, error) {
	nr := &netlink.Route{}
	if d := r.GetDestination(); d != "" {
		_, dst, err := net.ParseCIDR(d)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		nr.Dst = dst
	}
	if g := r.GetGateway(); g != "" {
		if nr.Gw = net.ParseIP(g); nr.Gw == nil {
			return nil, fmt.Errorf("bad gateway %q: %w", g, errdefs.ErrInvalidArgument)
		}
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if s := r.GetSource(); s != "" {
		if nr.Src = net.ParseIP(s); nr.Src == nil {
			return nil, fmt.Errorf("bad source %q: %w", s, errdefs.ErrInvalidArgument)
		}
	}
	switch {
	case nr.Dst != nil && nr.Dst.IP.To4() == nil, nr.Gw != nil && nr.Gw.To4() == nil:
		nr.Family = netlink.FAMILY_V6
	default:
		nr.Family = netlink.FAMILY_V4
	}
	return nr, nil
}

func addRoute(r *agentv1.Route) error {
	nr, err := BuildRoute(r)
	if err != nil {
		return err
	}
	if d := r.GetDevice(); d != "" {
		l, err := netlink.LinkByName(d)
		if err != nil {
			return fmt.Errorf("link %s: %w", d, err)
		}
		nr.LinkIndex = l.Attrs().Index
	}
	return netlink.RouteReplace(nr)
}

// setGuestSysctls writes the pod's sysctls (validated by
// backend.ParseSysctls) below dir, the guest's /proc/sys: the guest's
// network, UTS and IPC namespaces are the pod's (its containers share
// them).
func setGuestSysctls(dir string, sysctls []backend.Sysctl) error {
	for _, sc := range sysctls {
		if err := os.WriteFile(filepath.Join(dir, sc.Path), []byte(sc.Value), 0); err != nil {
			return fmt.Errorf("sysctl %q=%q: %w", sc.Key, sc.Value, err)
		}
	}
	return nil
}

// addEntropy credits the host's random bytes to the kernel's input pool
// and reseeds its generator at once (RNDADDENTROPY, RNDRESEEDCRNG): a VM
// restored from a template starts with its siblings' generator state.
func addEntropy(b []byte) error {
	if len(b) > 4096 {
		b = b[:4096]
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(8*len(b)))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}
