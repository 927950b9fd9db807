//go:build linux

package testutil

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/magnetar-io/magnetar/internal/netnsrun"
)

// Outside is an "outside world" a test made: a network namespace holding
// HTTP servers on Server, ports 8080, 8081 and 53 (TCP), that answer with the
// client's address as they see it, reached from the host through a veth
// pair whose host end has HostIP. Addresses are of 198.18.0.0/15 (for
// benchmarks, never routed off the machine).
type Outside struct {
	Server, HostIP string
}

// InNetNS runs fn on a locked thread that joined the network namespace at
// path; the thread is thrown away afterwards.
func InNetNS(path string, fn func() error) error { return netnsrun.Run(path, fn) }

// NewOutside makes an Outside under dir, removed when the test ends.
func NewOutside(t testing.TB, dir string) Outside {
	t.Helper()
	// One /30 of the 32768 in 198.18.0.0/15, at random: tests of several
	// packages run at once.
	base := 198<<24 | 18<<16 | uint32(rand.IntN(1<<15))<<2
	ip := func(i uint32) string {
		v := base + i
		return fmt.Sprintf("%d.%d.%d.%d", v>>24, v>>16&0xff, v>>8&0xff, v&0xff)
	}
	o := Outside{Server: ip(2), HostIP: ip(1)}
	ext := NetNS(t, dir, "outside")
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
	hl, err := netlink.LinkByName(host)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(o.HostIP + "/30")
	if err := netlink.AddrAdd(hl, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		t.Fatal(err)
	}
	var lns []net.Listener
	if err := InNetNS(ext, func() error {
		l, err := netlink.LinkByName(veth.PeerName)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(o.Server + "/30")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, port := range []string{"8080", "8081", "53"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(o.Server, port))
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
			h, _, _ := net.SplitHostPort(r.RemoteAddr)
			_, _ = io.WriteString(w, h)
		})}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	return o
}
