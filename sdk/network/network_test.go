//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

func inNetNS(t testing.TB, path string, fn func() error) error {
	t.Helper()
	return testutil.InNetNS(path, fn)
}

// testNet is a network of a test: a bridge name and a /24 of 10.213/16
// no other live test uses, and an outside world (testutil.Outside).
type testNet struct {
	cfg    NetworkConfig
	server string
	hostIP string
}

func newTestNet(t *testing.T, dir string, nat bool) testNet {
	t.Helper()
	testutil.RequireRoot(t, "network namespaces, bridges")
	m := &Manager{dirs: DefaultPluginDirs}
	if err := m.Check(); err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	tn := testNet{cfg: NetworkConfig{Name: "t", Bridge: fmt.Sprintf("mgt%04x", rand.IntN(1<<16)), Subnet: fmt.Sprintf("10.213.%d.0/24", rand.IntN(200)+20), NAT: nat}}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(tn.cfg.Bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	o := testutil.NewOutside(t, dir)
	tn.server, tn.hostIP = o.Server, o.HostIP
	return tn
}

// get fetches http://addr/ from the namespace at path: the server's
// answer (the client's address as it saw it), or the error.
func get(t *testing.T, path, addr string) (string, error) {
	var body string
	err := inNetNS(t, path, func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		_, body, _ = strings.Cut(string(b), "\r\n\r\n")
		return nil
	})
	return body, err
}

func TestAttachNATPolicyDetach(t *testing.T) {
	dir := t.TempDir()
	tn := newTestNet(t, dir, true)
	cfg := Config{Networks: []NetworkConfig{tn.cfg}, NetNSDir: filepath.Join(dir, "netns"), StateDir: filepath.Join(dir, "state")}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := fmt.Sprintf("nettest-%d", rand.IntN(1<<20))
	a, err := m.Attach(ctx, id, "", Policy{}, EnforceNetNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(context.Background(), id) })
	if len(a.IPs) != 1 || a.Gateway == "" {
		t.Fatalf("attachment %+v: want one address and a gateway", a)
	}
	allowed, other := net.JoinHostPort(tn.server, "8080"), net.JoinHostPort(tn.server, "8081")
	got, err := get(t, a.NetNS, allowed)
	if err != nil {
		t.Fatalf("sandbox -> outside server: %v", err)
	}
	if got != tn.hostIP {
		t.Errorf("the server saw %q, want the host's address %s (NAT)", got, tn.hostIP)
	}

	// Allow-list: only the server's port 8080.
	if err := m.SetPolicy(id, Policy{Default: ActionDeny, Allow: []Rule{mustRule(t, tn.server+"/32:8080")}}, EnforceNetNS); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, allowed); err != nil {
		t.Errorf("allowed %s: %v", allowed, err)
	}
	if _, err := get(t, a.NetNS, other); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("%s outside the allow-list: %v, want ECONNREFUSED (rejected)", other, err)
	}
	// Changed live: a deny-list of the server's 8080 only.
	if err := m.SetPolicy(id, Policy{Deny: []Rule{mustRule(t, tn.server+":8080")}}, EnforceNetNS); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, allowed); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("denied %s: %v, want ECONNREFUSED", allowed, err)
	}
	if _, err := get(t, a.NetNS, other); err != nil {
		t.Errorf("%s, not denied: %v", other, err)
	}

	// DNS allowed under deny-all, then denied under allow-all.
	dns := net.JoinHostPort(tn.server, "53")
	if err := m.SetPolicy(id, Policy{Default: ActionDeny, DNS: ActionAllow}, EnforceNetNS); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, dns); err != nil {
		t.Errorf("DNS allowed under deny-all: %v", err)
	}
	if _, err := get(t, a.NetNS, allowed); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("%s under deny-all with DNS allowed: %v, want ECONNREFUSED", allowed, err)
	}
	if err := m.SetPolicy(id, Policy{DNS: ActionDeny}, EnforceNetNS); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, dns); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("DNS denied: %v, want ECONNREFUSED", err)
	}
	if _, err := get(t, a.NetNS, allowed); err != nil {
		t.Errorf("%s with only DNS denied: %v", allowed, err)
	}

	if err := m.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	assertGone(t, m, id, tn.cfg.Bridge, 0)
	if err := m.Detach(ctx, id); err != nil {
		t.Errorf("second detach: %v", err)
	}
}

// TestSweepAfterCrash: what a sandbox left when the process that attached
// it died is removed by the next manager's Sweep; a kept one stays.
func TestSweepAfterCrash(t *testing.T) {
	dir := t.TempDir()
	tn := newTestNet(t, dir, true)
	cfg := Config{Networks: []NetworkConfig{tn.cfg}, NetNSDir: filepath.Join(dir, "netns"), StateDir: filepath.Join(dir, "state")}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gone, kept := fmt.Sprintf("sweep-a-%d", rand.IntN(1<<20)), fmt.Sprintf("sweep-b-%d", rand.IntN(1<<20))
	for _, id := range []string{gone, kept} {
		if _, err := m.Attach(ctx, id, "", Policy{Default: ActionDeny}, EnforceNetNS); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Detach(context.Background(), id) })
	}
	m2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	swept, err := m2.Sweep(ctx, func(id string) bool { return id == kept })
	if err != nil {
		t.Fatal(err)
	}
	if len(swept) != 1 || swept[0] != gone {
		t.Errorf("swept %v, want [%s]", swept, gone)
	}
	assertGone(t, m2, gone, tn.cfg.Bridge, 1)
	if ok, err := hasTable(m2.netnsPath(kept)); err != nil || !ok {
		t.Errorf("kept sandbox's policy table: %v %v", ok, err)
	}
	if err := m2.Detach(ctx, kept); err != nil {
		t.Fatal(err)
	}
	assertGone(t, m2, kept, tn.cfg.Bridge, 0)
}

func mustRule(t *testing.T, s string) Rule {
	t.Helper()
	r, err := ParseRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// assertGone checks that nothing of sandbox id's attachment remains:
// namespace, record, lease, CNI cache, NAT rules, veth on the bridge.
func assertGone(t *testing.T, m *Manager, id, bridge string, ports int) {
	t.Helper()
	if _, err := os.Lstat(m.netnsPath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("network namespace of %s remains: %v", id, err)
	}
	if _, err := m.Attachment(id); err == nil {
		t.Errorf("record of %s remains", id)
	}
	for _, l := range m.leases() {
		if l.owner == id {
			t.Errorf("lease %s of %s remains", l.path, id)
		}
	}
	_ = filepath.WalkDir(m.cacheDir(), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), id) {
			t.Errorf("CNI cache %s remains", p)
		}
		return nil
	})
	if out, err := exec.Command("iptables-save", "-t", "nat").CombinedOutput(); err == nil && strings.Contains(string(out), id) {
		t.Errorf("NAT rules of %s remain:\n%s", id, out)
	}
	if br, err := netlink.LinkByName(bridge); err == nil {
		links, _ := netlink.LinkList()
		var on []string
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				on = append(on, l.Attrs().Name)
			}
		}
		if len(on) != ports {
			t.Errorf("bridge %s has interfaces %v, want %d", bridge, on, ports)
		}
	}
}

// TestPolicyHoldsWithoutNetAdmin: a process in the sandbox's namespace
// without CAP_NET_ADMIN (what containers get) cannot flush the rules.
func TestPolicyHoldsWithoutNetAdmin(t *testing.T) {
	testutil.RequireRoot(t, "network namespaces")
	dir := t.TempDir()
	m, err := New(Config{Networks: []NetworkConfig{{Name: "t", Bridge: "mgtunused", Subnet: "10.213.250.0/24"}}, NetNSDir: filepath.Join(dir, "netns"), StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "netns", "flush")
	if err := newNetNS(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeNetNS(p) })
	// Every kind of rule the kernel must accept: IPv4 and IPv6, prefixes
	// of every length class, with and without a port, and DNS.
	var rules []Rule
	for _, r := range []string{"0.0.0.0/0:443", "10.0.0.0/8", "192.0.2.1:53", "10.1.2.0/23:8080", "[fd00::/8]:443", "fd00::1", "::/0"} {
		rules = append(rules, mustRule(t, r))
	}
	if err := applyPolicy(p, Policy{Default: ActionDeny, DNS: ActionAllow, Allow: rules, Deny: rules[:2]}); err != nil {
		t.Fatal(err)
	}
	err = inNetNS(t, p, func() error {
		// Drop CAP_NET_ADMIN from this (disposable) thread, then flush
		// over a netlink socket it opens.
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			return err
		}
		for i := range data {
			data[i].Effective &^= 1 << unix.CAP_NET_ADMIN
			data[i].Permitted &^= 1 << unix.CAP_NET_ADMIN
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			return err
		}
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.FlushRuleset()
		return c.Flush()
	})
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("flush without CAP_NET_ADMIN: %v, want EPERM", err)
	}
	if ok, err := hasTable(p); err != nil || !ok {
		t.Errorf("policy table after the attempt: %v %v", ok, err)
	}
	_ = m
}

// TestHostPolicy: a policy enforced on the host side of the sandbox's veth
// (EnforceHost, for kinds whose packets bypass the namespace's IP stack)
// lets exactly the allowed destination through, changes live, drops what
// the sandbox sends from another address, and goes with the sandbox,
// also when a later manager sweeps it after a crash.
func TestHostPolicy(t *testing.T) {
	dir := t.TempDir()
	tn := newTestNet(t, dir, true)
	cfg := Config{Networks: []NetworkConfig{tn.cfg}, NetNSDir: filepath.Join(dir, "netns"), StateDir: filepath.Join(dir, "state")}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := fmt.Sprintf("hosttest-%d", rand.IntN(1<<20))
	allowed, other := net.JoinHostPort(tn.server, "8080"), net.JoinHostPort(tn.server, "8081")
	a, err := m.Attach(ctx, id, "", Policy{Default: ActionDeny, Allow: []Rule{mustRule(t, tn.server+"/32:8080")}}, EnforceHost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Detach(context.Background(), id) })
	if a.HostVeth == "" {
		t.Errorf("attachment %+v: no host veth", a)
	}
	if ok, _ := hasTable(a.NetNS); ok {
		t.Errorf("host enforcement left a table in the sandbox's namespace")
	}
	if got, err := get(t, a.NetNS, allowed); err != nil || got != tn.hostIP {
		t.Errorf("allowed %s: %q, %v", allowed, got, err)
	}
	if _, err := get(t, a.NetNS, other); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("%s outside the allow-list: %v, want ECONNREFUSED", other, err)
	}
	// The host itself (a server on the bridge's address) is outside the
	// allow-list too.
	ln, err := net.Listen("tcp", net.JoinHostPort(a.Gateway, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.ReadFull(c, make([]byte, len("GET / HTTP/1.0\r\n\r\n")))
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nhost")
			c.Close()
		}
	}()
	if _, err := get(t, a.NetNS, ln.Addr().String()); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("server on the host's bridge address: %v, want ECONNREFUSED", err)
	}
	// Another source address (a guest that changes its own) reaches the
	// server without a policy, and is dropped at the veth with one.
	var spoof netlink.Addr
	err = inNetNS(t, a.NetNS, func() error {
		l, err := netlink.LinkByName(Interface)
		if err != nil {
			return err
		}
		for _, s := range a.IPs {
			addr, _ := netlink.ParseAddr(s)
			if err := netlink.AddrDel(l, addr); err != nil {
				return err
			}
		}
		p := netip.MustParsePrefix(a.IPs[0])
		spoof = netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().Next().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
		if err := netlink.AddrAdd(l, &spoof); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(a.Gateway)})
	})
	if err != nil {
		t.Fatal(err)
	}
	// (The host's server: NAT masquerades the sandbox's own address only.)
	if err := m.SetPolicy(id, Policy{}, EnforceHost); err != nil {
		t.Fatal(err)
	}
	if got, err := get(t, a.NetNS, ln.Addr().String()); err != nil || got != "host" {
		t.Errorf("from another source address without a policy: %q, %v", got, err)
	}
	if err := m.SetPolicy(id, Policy{Default: ActionDeny, Allow: []Rule{mustRule(t, a.Gateway+"/32")}}, EnforceHost); err != nil {
		t.Fatal(err)
	}
	if got, err := get(t, a.NetNS, ln.Addr().String()); err == nil {
		t.Errorf("from another source address, the allowed host server answered %q", got)
	}
	err = inNetNS(t, a.NetNS, func() error {
		l, _ := netlink.LinkByName(Interface)
		_ = netlink.AddrDel(l, &spoof)
		for _, s := range a.IPs {
			addr, _ := netlink.ParseAddr(s)
			if err := netlink.AddrAdd(l, addr); err != nil {
				return err
			}
		}
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(a.Gateway)})
	})
	if err != nil {
		t.Fatal(err)
	}

	// Changed live: 8081 instead of 8080.
	if err := m.SetPolicy(id, Policy{Default: ActionDeny, Allow: []Rule{mustRule(t, tn.server+":8081")}}, EnforceHost); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, allowed); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("%s after the change: %v, want ECONNREFUSED", allowed, err)
	}
	if _, err := get(t, a.NetNS, other); err != nil {
		t.Errorf("%s after the change: %v", other, err)
	}
	// Allow-all removes the host tables; a deny-list puts them back.
	if err := m.SetPolicy(id, Policy{}, EnforceHost); err != nil {
		t.Fatal(err)
	}
	if ids, err := m.hostTables(); err != nil || ids[id] {
		t.Errorf("host tables under allow-all: %v %v", ids, err)
	}
	if _, err := get(t, a.NetNS, allowed); err != nil {
		t.Errorf("%s under allow-all: %v", allowed, err)
	}
	if got, err := get(t, a.NetNS, ln.Addr().String()); err != nil || got != "host" {
		t.Errorf("server on the host's bridge address under allow-all: %q, %v", got, err)
	}
	if err := m.SetPolicy(id, Policy{Deny: []Rule{mustRule(t, tn.server+"/32")}}, EnforceHost); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, other); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("denied server: %v, want ECONNREFUSED", err)
	}

	// A crash: the next manager sweeps the tables with the rest.
	m2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if swept, err := m2.Sweep(ctx, func(string) bool { return false }); err != nil || len(swept) != 1 || swept[0] != id {
		t.Errorf("swept %v, %v; want [%s]", swept, err, id)
	}
	if ids, err := m2.hostTables(); err != nil || ids[id] {
		t.Errorf("host tables after the sweep: %v %v", ids, err)
	}
	assertGone(t, m2, id, tn.cfg.Bridge, 0)
}
