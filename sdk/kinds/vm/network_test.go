package vm

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestIsCNIInterface(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:ac:11:00:02")
	for name, tc := range map[string]struct {
		l    netlink.Link
		want bool
	}{
		"veth":     {&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: mac}}, true},
		"loopback": {&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Flags: net.FlagLoopback, HardwareAddr: make(net.HardwareAddr, 6)}}, false},
		"tap":      {&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tap0", HardwareAddr: mac}}, false},
		"no mac":   {&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "tun0"}}, false},
		"zero mac": {&netlink.Gretap{LinkAttrs: netlink.LinkAttrs{Name: "gretap0", HardwareAddr: make(net.HardwareAddr, 6)}}, false},
	} {
		if got := isCNIInterface(tc.l); got != tc.want {
			t.Errorf("%s: isCNIInterface = %v, want %v", name, got, tc.want)
		}
	}
}

func TestGuestAddrsAndInterface(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:ac:11:00:02")
	addrs := guestAddrs([]netlink.Addr{
		{IPNet: mustCIDR(t, "10.88.0.5/16")},
		{IPNet: mustCIDR(t, "fe80::42:acff:fe11:2/64")},
		{IPNet: mustCIDR(t, "fd00::5/64")},
	})
	ifc := guestInterface(podNIC{Name: "eth0", MAC: mac, MTU: 1450, Addrs: addrs})
	if ifc.GetName() != "eth0" || ifc.GetMacAddress() != "02:42:ac:11:00:02" || ifc.GetMtu() != 1450 {
		t.Errorf("interface = %v", ifc)
	}
	var got []string
	for _, a := range ifc.GetAddresses() {
		got = append(got, fmt.Sprintf("%s/%d", a.GetAddress(), a.GetPrefixLength()))
	}
	if strings.Join(got, " ") != "10.88.0.5/16 fd00::5/64" {
		t.Errorf("addresses = %v, want the global ones without link-local", got)
	}
	if d := describeNetwork([]netLink{{Tap: "tap0", Peer: "eth0"}}, []podNIC{{Addrs: addrs[:1]}}); d != "tap0 <-> eth0 10.88.0.5/16" {
		t.Errorf("describeNetwork = %q", d)
	}
	if d := describeNetwork(nil, nil); d != "none" {
		t.Errorf("describeNetwork(nothing) = %q, want none", d)
	}
}

func TestGuestRoutes(t *testing.T) {
	devs := map[int]string{2: "eth0"}
	routes := []netlink.Route{
		// the default route through the gateway, listed first
		{LinkIndex: 2, Dst: mustCIDR(t, "0.0.0.0/0"), Gw: net.ParseIP("10.88.0.1"), Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST},
		// made by the kernel for the address: the guest makes it too
		{LinkIndex: 2, Dst: mustCIDR(t, "10.88.0.0/16"), Src: net.ParseIP("10.88.0.5"), Protocol: unix.RTPROT_KERNEL, Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST},
		// a directly connected extra network
		{LinkIndex: 2, Dst: mustCIDR(t, "192.168.7.0/24"), Protocol: unix.RTPROT_BOOT, Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST},
		// another device (not a CNI interface)
		{LinkIndex: 9, Dst: mustCIDR(t, "172.16.0.0/12"), Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST},
		// IPv6 link-local
		{LinkIndex: 2, Dst: mustCIDR(t, "fe80::/64"), Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST},
		// a default route with a nil Dst (older netlink) and a source
		{LinkIndex: 2, Gw: net.ParseIP("fd00::1"), Src: net.ParseIP("fd00::5"), Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST},
	}
	got := guestRoutes(routes, devs)
	b, _ := json.Marshal(got)
	want := `[{"destination":"192.168.7.0/24","device":"eth0"},{"gateway":"10.88.0.1","device":"eth0"},{"gateway":"fd00::1","device":"eth0","source":"fd00::5"}]`
	if string(b) != want {
		t.Errorf("guestRoutes =\n%s\nwant\n%s", b, want)
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPodNetworkSetupTeardown builds what a CNI bridge plugin makes (a
// netns with one end of a veth pair, an address and a default route),
// bridges it to a tap, checks the tap, the tc redirects (an ARP request
// sent to the pod address comes out of the tap's fd) and the guest
// configuration, then checks that teardown leaves no tap and no qdisc.
func TestPodNetworkSetupTeardown(t *testing.T) {
	testutil.RequireRoot(t, "netns, veth, tap")
	for _, bin := range []string{"ip", "tc"} {
		testutil.RequireBinary(t, bin)
	}
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	ns, host := "mgnet-"+suffix, "mgv"+suffix
	nsPath := "/var/run/netns/" + ns
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", host).Run()
		_ = exec.Command("ip", "netns", "del", ns).Run()
	})
	run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(t, "ip", "addr", "add", "10.231.0.1/24", "dev", host)
	run(t, "ip", "link", "set", host, "up")
	run(t, "ip", "-n", ns, "link", "set", "eth0", "mtu", "1400", "up")
	run(t, "ip", "-n", ns, "addr", "add", "10.231.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", ns, "route", "add", "default", "via", "10.231.0.1")
	mac := strings.Fields(run(t, "cat", "/sys/class/net/"+host+"/address"))[0]
	out := run(t, "ip", "-n", ns, "-o", "link", "show", "eth0")
	i := strings.Index(out, "link/ether ")
	if i < 0 {
		t.Fatalf("no MAC in %q", out)
	}
	nsMAC := strings.Fields(out[i+len("link/ether "):])[0]

	pn, err := setupPodNetwork(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pn.closeFiles)
	if pn.desc != "tap0 <-> eth0 10.231.0.2/24" {
		t.Errorf("desc = %q", pn.desc)
	}
	if len(pn.taps) != 1 || pn.taps[0].File == nil || pn.taps[0].MAC != nsMAC {
		t.Fatalf("taps = %+v, want one open tap with MAC %s", pn.taps, nsMAC)
	}
	if len(pn.ifaces) != 1 || pn.ifaces[0].GetMacAddress() != nsMAC || pn.ifaces[0].GetMtu() != 1400 ||
		len(pn.ifaces[0].GetAddresses()) != 1 || pn.ifaces[0].GetAddresses()[0].GetAddress() != "10.231.0.2" {
		t.Errorf("guest interfaces = %v", pn.ifaces)
	}
	if len(pn.routes) != 1 || pn.routes[0].GetGateway() != "10.231.0.1" || pn.routes[0].GetDestination() != "" || pn.routes[0].GetDevice() != "eth0" {
		t.Errorf("guest routes = %v, want the default route via 10.231.0.1 only", pn.routes)
	}
	if out := run(t, "ip", "-n", ns, "-d", "link", "show", "tap0"); !strings.Contains(out, "tun type tap") || !strings.Contains(out, "mtu 1400") {
		t.Errorf("tap0 = %s", out)
	}
	for _, dev := range []string{"eth0", "tap0"} {
		if out := run(t, "tc", "-n", ns, "filter", "show", "dev", dev, "ingress"); !strings.Contains(out, "mirred (Egress Redirect to device") {
			t.Errorf("filters of %s lack the redirect:\n%s", dev, out)
		}
	}

	// Traffic to the pod address reaches the tap: the host's ARP request
	// for 10.231.0.2 enters eth0 and is redirected to tap0.
	conn, err := net.Dial("udp4", "10.231.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	f := pn.taps[0].File
	buf := make([]byte, 2048)
	found := false
	for deadline := time.Now().Add(10 * time.Second); !found && time.Now().Before(deadline); {
		_, _ = conn.Write([]byte("x"))
		_ = f.SetReadDeadline(time.Now().Add(time.Second))
		n, err := f.Read(buf)
		if err != nil {
			continue
		}
		// virtio_net_hdr (10 bytes), then the Ethernet frame
		frame := buf[10:n]
		if len(frame) >= 14 && net.HardwareAddr(frame[6:12]).String() == mac {
			found = true
		}
	}
	if !found {
		t.Errorf("no frame from %s (%s) came out of the tap", host, mac)
	}

	pn.closeFiles()
	if err := teardownPodNetwork(&pn.state); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	if out := run(t, "ip", "-n", ns, "-o", "link", "show"); strings.Contains(out, "tap0") {
		t.Errorf("tap left after teardown:\n%s", out)
	}
	if out := run(t, "tc", "-n", ns, "qdisc", "show", "dev", "eth0"); strings.Contains(out, "ingress") {
		t.Errorf("ingress qdisc left on eth0:\n%s", out)
	}
	if err := teardownPodNetwork(&pn.state); err != nil {
		t.Errorf("second teardown: %v", err)
	}
	run(t, "ip", "netns", "del", ns)
	if err := teardownPodNetwork(&pn.state); err != nil {
		t.Errorf("teardown after the netns is gone: %v", err)
	}
}

// TestPodNetworkTeardownHeldTap: teardown deletes a tap that is
// still held open (the VMM not yet gone) too.
func TestPodNetworkTeardownHeldTap(t *testing.T) {
	testutil.RequireRoot(t, "netns, veth, tap")
	ns := fmt.Sprintf("mgnet2-%d", os.Getpid()%100000)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	run(t, "ip", "-n", ns, "addr", "add", "10.232.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", ns, "addr", "add", "10.232.0.3/24", "dev", "peer0")
	// not configured: no tap for it
	run(t, "ip", "-n", ns, "link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
	pn, err := setupPodNetwork("/var/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer pn.closeFiles()
	// peer0 is a CNI-looking interface too: both get a tap, spare0 and spare1 none.
	if len(pn.state.Links) != 2 || strings.Contains(pn.state.Links[0].Peer+pn.state.Links[1].Peer, "spare") {
		t.Fatalf("links = %+v, want two", pn.state.Links)
	}
	if err := teardownPodNetwork(&pn.state); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "-n", ns, "-o", "link", "show", "type", "tun"); strings.TrimSpace(out) != "" {
		t.Errorf("taps left while their fds are open:\n%s", out)
	}
}
