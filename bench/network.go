package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/netnsrun"
	"github.com/magnetar-io/magnetar/sdk"
)

// Ports of the outside server: the bytes, and the client's report.
const (
	bytesPort = 9000
	donePort  = 9001
)

// networkConfig is the sandboxer configuration's part for the network
// benchmark: one bridge network of the run (NAT on), and host access so
// that a sandbox may share the host's network (the baseline).
func networkConfig(bridge, subnet string) string {
	return fmt.Sprintf("api_allow_host_access = true\n[[networks]]\n  name = \"bench\"\n  bridge = %q\n  subnet = %q\n  nat = true\n", bridge, subnet)
}

// outside is a network namespace the run made, reached from the host
// through a veth pair (198.18.0.0/15, never routed off the machine), where
// a server sends bytes to whoever connects to bytesPort and takes the
// client's report of what it received on donePort.
type outside struct {
	nsPath, hostVeth string
	server           string
	bytesLn, doneLn  *net.TCPListener
}

// newOutside makes the outside namespace under dir.
func newOutside(dir string) (_ *outside, err error) {
	base := 198<<24 | 18<<16 | uint32(rand.IntN(1<<15))<<2
	ip := func(i uint32) string {
		v := base + i
		return fmt.Sprintf("%d.%d.%d.%d", v>>24, v>>16&0xff, v>>8&0xff, v&0xff)
	}
	o := &outside{nsPath: filepath.Join(dir, "outside"), hostVeth: fmt.Sprintf("mgb%04x", rand.IntN(1<<16)), server: ip(2)}
	defer func() {
		if err != nil {
			o.close()
		}
	}()
	if err := os.WriteFile(o.nsPath, nil, 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.Command("unshare", "--net="+o.nsPath, "true").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("unshare --net=%s: %v: %s", o.nsPath, err, out)
	}
	peer := "peer" + o.hostVeth[3:]
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: o.hostVeth}, PeerName: peer}); err != nil {
		return nil, err
	}
	ns, err := netns.GetFromPath(o.nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	pl, err := netlink.LinkByName(peer)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetNsFd(pl, int(ns)); err != nil {
		return nil, err
	}
	hl, err := netlink.LinkByName(o.hostVeth)
	if err != nil {
		return nil, err
	}
	addr, _ := netlink.ParseAddr(ip(1) + "/30")
	if err := netlink.AddrAdd(hl, addr); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return nil, err
	}
	err = netnsrun.Run(o.nsPath, func() error {
		l, err := netlink.LinkByName(peer)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(o.server + "/30")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, p := range []struct {
			port int
			ln   **net.TCPListener
		}{{bytesPort, &o.bytesLn}, {donePort, &o.doneLn}} {
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.ParseIP(o.server), Port: p.port})
			if err != nil {
				return err
			}
			*p.ln = ln
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// close removes the namespace and the veth pair.
func (o *outside) close() {
	for _, ln := range []*net.TCPListener{o.bytesLn, o.doneLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if l, err := netlink.LinkByName(o.hostVeth); err == nil {
		_ = netlink.LinkDel(l)
	}
	_ = unix.Unmount(o.nsPath, unix.MNT_DETACH)
	_ = os.Remove(o.nsPath)
}

// clientScript is the container's part of a transfer: receive everything
// from the server, count it, report the count.
func (o *outside) clientScript() string {
	return fmt.Sprintf("n=$(nc %s %d </dev/null | wc -c); echo $n | nc %s %d", o.server, bytesPort, o.server, donePort)
}

// serve sends size bytes to the next client of bytesPort and returns the
// time from its connection until its report on donePort (which must
// count size bytes).
func (o *outside) serve(size int64, timeout time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	_ = o.bytesLn.SetDeadline(deadline)
	_ = o.doneLn.SetDeadline(deadline)
	c, err := o.bytesLn.Accept()
	if err != nil {
		return 0, fmt.Errorf("outside server: accept: %w", err)
	}
	t0 := time.Now()
	_ = c.SetDeadline(deadline)
	_, err = io.CopyN(c, zeros{}, size)
	c.Close()
	if err != nil {
		return 0, fmt.Errorf("outside server: send: %w", err)
	}
	d, err := o.doneLn.Accept()
	if err != nil {
		return 0, fmt.Errorf("outside server: the client's report: %w", err)
	}
	el := time.Since(t0)
	_ = d.SetDeadline(deadline)
	b, _ := io.ReadAll(io.LimitReader(d, 64))
	d.Close()
	if got, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err != nil || got != size {
		return 0, fmt.Errorf("outside server: the client received %q bytes, want %d", strings.TrimSpace(string(b)), size)
	}
	return el, nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// netKinds are the kinds of the network benchmark (wasm has no network).
func (b *bench) netKinds() []*kind {
	var out []*kind
	for _, k := range b.kinds {
		if k.direct != "" && k.direct != "wasm" && k.directN > 0 {
			out = append(out, k)
		}
	}
	return out
}

// network measures, through Magnetar's API, sandbox create + start per
// network mode (none, bridge) and kind, interleaved; then the throughput
// of a TCP download from the outside server into a bridge sandbox of each
// kind, without and with an egress policy (deny all but the server), next
// to a runc sandbox on the host's network.
func (b *bench) network(ctx context.Context) error {
	ks := b.netKinds()
	if len(ks) == 0 {
		return nil
	}
	if b.e.bridge == "" {
		if b.o.required {
			return fmt.Errorf("needs the CNI plugins (%s)", cniBridge)
		}
		b.res.Notes = append(b.res.Notes, "Networks not measured: no CNI plugins ("+cniBridge+").")
		return nil
	}
	n := &Network{Start: map[string]map[string][]float64{}, Throughput: map[string][]float64{}, TransferBytes: b.o.transferBytes()}
	b.res.Network = n
	most := 0
	for _, k := range ks {
		most = max(most, k.directN)
		n.Start[k.direct] = map[string][]float64{}
	}
	modes := []struct {
		name string
		opt  sdk.SandboxOption
	}{{"none", sdk.WithNetwork(sdk.NetworkNone)}, {"bridge", sdk.WithBridgeNetwork("", sdk.EgressPolicy{})}}
	for i := range most {
		for _, k := range rotated(ks, i) {
			if i >= k.directN {
				continue
			}
			for j := range modes {
				m := modes[(i+j)%len(modes)]
				s, err := b.directOnce(ctx, k, m.opt)
				if err != nil {
					return fmt.Errorf("network %s: %w", m.name, err)
				}
				n.Start[k.direct][m.name] = append(n.Start[k.direct][m.name], ms(s.run))
			}
		}
	}

	o, err := newOutside(b.e.base)
	if err != nil {
		return fmt.Errorf("outside namespace: %w", err)
	}
	defer o.close()
	samples := b.o.transferSamples()
	policy := sdk.EgressPolicy{DenyByDefault: true, Allow: []string{fmt.Sprintf("%s/32", o.server)}}
	type variant struct {
		name, kind string
		opt        sdk.SandboxOption
		policy     bool
	}
	vs := []variant{{"runc, host network", "runc", sdk.WithNetwork(sdk.NetworkHost), false}}
	for _, k := range ks {
		vs = append(vs, variant{k.direct + ", bridge", k.direct, sdk.WithBridgeNetwork("", sdk.EgressPolicy{}), false},
			variant{k.direct + ", bridge + egress policy", k.direct, sdk.WithBridgeNetwork("", policy), true})
	}
	for _, v := range vs {
		cnt := samples
		if v.kind == "vm" {
			cnt = max(1, samples/3)
		}
		for range cnt {
			mbps, err := b.transferOnce(ctx, o, v.kind, v.opt)
			if err != nil {
				return fmt.Errorf("throughput, %s: %w", v.name, err)
			}
			n.Throughput[v.name] = append(n.Throughput[v.name], mbps)
		}
		n.Variants = append(n.Variants, v.name)
	}
	return nil
}

// transferOnce downloads the run's transfer size from the outside server
// into a new sandbox of kind and returns the rate in MB/s.
func (b *bench) transferOnce(ctx context.Context, o *outside, kind string, opt sdk.SandboxOption) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	sb, err := b.e.api.CreateSandbox(ctx, kind, opt)
	if err != nil {
		return 0, err
	}
	defer func() { _ = sb.Delete(context.WithoutCancel(ctx), sdk.Force()) }()
	size := b.o.transferBytes()
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := o.serve(size, 4*time.Minute)
		done <- result{d, err}
	}()
	c, err := sb.Run(ctx, sdk.FromImage(harness.BusyboxImage), sdk.Args("sh", "-c", o.clientScript()))
	if err != nil {
		// The server stops at its deadline; the listener's is cut short.
		_ = o.bytesLn.SetDeadline(time.Now())
		<-done
		return 0, err
	}
	var out strings.Builder
	st, err := c.Attach(ctx, &out, &out)
	if err == nil && st.Code != 0 {
		err = fmt.Errorf("client exited %d: %s", st.Code, strings.TrimSpace(out.String()))
	}
	if err != nil {
		_ = o.bytesLn.SetDeadline(time.Now())
		_ = o.doneLn.SetDeadline(time.Now())
	}
	r := <-done
	if err := errors.Join(err, r.err); err != nil {
		return 0, err
	}
	return float64(size) / 1e6 / r.d.Seconds(), nil
}
