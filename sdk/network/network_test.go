//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// inNetNS runs fn on a locked thread that joined the namespace at path;
// the thread is thrown away afterwards.
func inNetNS(t testing.TB, path string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// testNet is a network of a test: a bridge name and a /24 of 10.213/16
// no other live test uses, and an "outside" namespace holding an HTTP
// server on 198.18.<n>.2 that the host reaches through a veth pair.
type testNet struct {
	cfg    NetworkConfig
	server string // 198.18.n.2
	hostIP string // 198.18.n.1
}

func newTestNet(t *testing.T, dir string, nat bool) testNet {
	t.Helper()
	testutil.RequireRoot(t, "network namespaces, bridges")
	m := &Manager{dirs: DefaultPluginDirs}
	if err := m.Check(); err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	n := rand.IntN(200) + 20
	tn := testNet{
		cfg:    NetworkConfig{Name: "t", Bridge: fmt.Sprintf("mgt%04x", rand.IntN(1<<16)), Subnet: fmt.Sprintf("10.213.%d.0/24", n), NAT: nat},
		server: fmt.Sprintf("198.18.%d.2", n), hostIP: fmt.Sprintf("198.18.%d.1", n),
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(tn.cfg.Bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	ext := testutil.NetNS(t, dir, "outside")
	host := fmt.Sprintf("mgv%04x", rand.IntN(1<<16))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "peer" + host[3:]}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(host); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	peer, err := netlink.LinkByName(veth.PeerName)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(ext)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	hl, _ := netlink.LinkByName(host)
	addr, _ := netlink.ParseAddr(tn.hostIP + "/30")
	if err := netlink.AddrAdd(hl, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	var lns []net.Listener
	if err := inNetNS(t, ext, func() error {
		l, _ := netlink.LinkByName(veth.PeerName)
		a, _ := netlink.ParseAddr(tn.server + "/30")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		for _, port := range []string{"8080", "8081"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(tn.server, port))
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, ln := range lns {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			io.WriteString(w, host)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
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
	a, err := m.Attach(ctx, id, "", Policy{})
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
	if err := m.SetPolicy(id, Policy{Default: ActionDeny, Allow: []Rule{mustRule(t, tn.server+"/32:8080")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, allowed); err != nil {
		t.Errorf("allowed %s: %v", allowed, err)
	}
	if _, err := get(t, a.NetNS, other); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("%s outside the allow-list: %v, want ECONNREFUSED (rejected)", other, err)
	}
	// Changed live: a deny-list of the server's 8080 only.
	if err := m.SetPolicy(id, Policy{Deny: []Rule{mustRule(t, tn.server+":8080")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, a.NetNS, allowed); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("denied %s: %v, want ECONNREFUSED", allowed, err)
	}
	if _, err := get(t, a.NetNS, other); err != nil {
		t.Errorf("%s, not denied: %v", other, err)
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
		if _, err := m.Attach(ctx, id, "", Policy{Default: ActionDeny}); err != nil {
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
