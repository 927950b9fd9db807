package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
)

// TestAPIBridgeNetwork drives bridge networks through the sandboxer and
// the CLI: `magnetar run --network bridge --deny-all --allow` reaches
// exactly the allowed port of a server in a namespace the test made
// (through NAT); a sandbox's policy survives a kill -9 of the worker and
// changes live with `magnetar sandbox egress` (an event says so); after
// removal nothing remains (namespace, record, lease, bridge port).
func TestAPIBridgeNetwork(t *testing.T) {
	testutil.RequireRoot(t, "network namespaces, bridges")
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testutil.SkipOrFail(t, "needs the CNI plugins (containernetworking-plugins)")
	}
	cfgDir := t.TempDir()
	bridge, cfg := bridgeConfig(t, cfgDir, true)
	s := startAPISandboxer(t, "--config", cfg)
	out := testutil.NewOutside(t, cfgDir)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(s.dir, "rootfs"))
	binDir, _ := harness.DefaultBinDir()
	sock := filepath.Join(s.runDir, "api.sock")
	cli := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "magnetar"), append([]string{"--address", "unix://" + sock}, args...)...)
		b, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(b)), err
	}
	// (busybox's wget crashes on Debian; nc does the request.)
	get := func(port int) []string {
		return []string{"sh", "-c", fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %d > /dev/shm/out || exit 1; tail -n 1 /dev/shm/out`, out.Server, port)}
	}
	allow := []string{"run", "--rm", "--network", "bridge", "--deny-all", "--allow", out.Server + ":8080", "--rootfs", rootfs, "--"}
	if got, err := cli(append(allow, get(8080)...)...); err != nil || got != out.HostIP {
		t.Fatalf("magnetar run, allowed port: %q, %v; want %s (NAT)", got, err, out.HostIP)
	}
	if got, err := cli(append(allow, get(8081)...)...); err == nil {
		t.Fatalf("magnetar run, port outside the allow-list: %q, want a failure", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The default mode is bridge here (default_network_mode).
	sb, err := c.CreateSandbox(ctx, "runc")
	if err != nil {
		t.Fatal(err)
	}
	if sb.Network == nil || sb.Network.Name != "e2e" {
		t.Fatalf("default network: %+v", sb.Network)
	}
	if err := sb.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + "/32:8080"}}); err != nil {
		t.Fatal(err)
	}
	runIn := func(port int) (string, error) {
		return cli(append([]string{"run", "--rm", "--sandbox", sb.ID, "--rootfs", rootfs, "--"}, get(port)...)...)
	}

	old := s.worker()
	if old == 0 {
		t.Fatalf("no worker\n%s", s.log)
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.newWorker(t, old)
	if err := waitSocket(sock, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { _, err := c.Sandbox(ctx, sb.ID); return err == nil }, "the sandbox after the restart")
	if got, err := runIn(8080); err != nil || got != out.HostIP {
		t.Errorf("after kill -9, allowed port: %q, %v", got, err)
	}
	if got, err := runIn(8081); err == nil {
		t.Errorf("after kill -9, port outside the allow-list answered %q", got)
	}

	if got, err := cli("sandbox", "egress", "--deny-all", "--allow", out.Server+":8081", sb.ID); err != nil {
		t.Fatalf("magnetar sandbox egress: %q, %v", got, err)
	}
	// Both changes are events (the log replays them from the start).
	changes := 0
	evctx, evcancel := context.WithTimeout(ctx, 10*time.Second)
	for ev, err := range c.EventsAfter(evctx, 0, sdk.InSandbox(sb.ID)) {
		if err != nil {
			t.Fatalf("events: %v (%d policy changes seen)", err, changes)
		}
		if ev.Type == "sandbox-network-policy-changed" {
			if changes++; changes == 2 {
				break
			}
		}
	}
	evcancel()
	if got, err := runIn(8080); err == nil {
		t.Errorf("after the change, port 8080 answered %q", got)
	}
	if got, err := runIn(8081); err != nil || got != out.HostIP {
		t.Errorf("after the change, port 8081: %q, %v", got, err)
	}

	if err := sb.Delete(ctx, sdk.Force()); err != nil {
		t.Fatal(err)
	}
	assertNoAttachments(t, s, bridge)
}

// bridgeConfig writes a sandboxer configuration with one bridge network
// "e2e" on a bridge and subnet of its own (removed when the test ends),
// the default mode if defaultBridge.
func bridgeConfig(t *testing.T, dir string, defaultBridge bool) (bridge, path string) {
	t.Helper()
	bridge = fmt.Sprintf("mgt%04x", rand.IntN(1<<16))
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	mode := "none"
	if defaultBridge {
		mode = "bridge"
	}
	path = filepath.Join(dir, "sandboxer.toml")
	if err := os.WriteFile(path, fmt.Appendf(nil, "version = 1\ndefault_network_mode = %q\n[[networks]]\n  name = \"e2e\"\n  bridge = %q\n  subnet = \"10.215.%d.0/24\"\n  nat = true\n", mode, bridge, rand.IntN(200)+20), 0o600); err != nil {
		t.Fatal(err)
	}
	return bridge, path
}

// assertNoAttachments checks that no namespace, record or lease of the
// sandboxer's networks remains, and no interface on the bridge.
func assertNoAttachments(t *testing.T, s *apiSandboxer, bridge string) {
	t.Helper()
	for _, d := range []string{filepath.Join(s.runDir, "netns"), filepath.Join(s.dir, "state", "network", "attachments"), filepath.Join(s.dir, "state", "network", "ipam", "magnetar-e2e")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.Name() != "lock" && !strings.HasPrefix(e.Name(), "last_reserved_ip") {
				t.Errorf("%s/%s remains", d, e.Name())
			}
		}
	}
	if br, err := netlink.LinkByName(bridge); err == nil {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				t.Errorf("interface %s remains on bridge %s", l.Attrs().Name, bridge)
			}
		}
	}
}

// TestAPIBridgeNetworkVM: a microVM sandbox on a bridge network (tap +
// tc redirect in the sandbox's namespace, as for CRI pods) reaches a
// server in a namespace of the test through NAT under an egress policy
// enforced on the host side of its veth (the guest's frames bypass the
// namespace's IP stack): exactly the allowed port, also after a live
// change (an event says so); nothing remains after removal (host tables
// included). One VM for all checks: it is slow under TCG.
func TestAPIBridgeNetworkVM(t *testing.T) {
	t.Parallel() // with the other VM tests, at the end: each keeps about one core busy under TCG
	testutil.RequireRoot(t, "network namespaces, bridges")
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testutil.SkipOrFail(t, "needs the CNI plugins (containernetworking-plugins)")
	}
	kernel, _ := testutil.GuestImage(t)
	cfgDir := t.TempDir()
	bridge, cfg := bridgeConfig(t, cfgDir, false)
	s := startAPISandboxer(t, "--config", cfg, "--vm-guest-dir", filepath.Dir(kernel))
	out := testutil.NewOutside(t, cfgDir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, "unix://"+filepath.Join(s.runDir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := ociimage.BusyboxImage(ctx, "", "docker.io/library/bbnet:1", s.dir)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(s.dir, "bb.oci.tar")
	if err := ociimage.WriteArchiveFile(ctx, archive, img); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImportImage(ctx, archive, nil); err != nil {
		t.Fatal(err)
	}
	sb, err := c.CreateSandbox(ctx, "vm", sdk.WithBridgeNetwork("", sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + "/32:8080"}}))
	if err != nil {
		t.Fatal(err)
	}
	if sb.Network == nil || len(sb.Network.IPs) != 1 {
		t.Fatalf("vm sandbox network %+v", sb.Network)
	}
	// One container (a VM boot's worth of time each) runs every check and
	// prints one line per check: the server's answer, or "fail".
	script := func(ports ...int) string {
		var b strings.Builder
		for _, p := range ports {
			fmt.Fprintf(&b, `if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 %s %d > /tmp/out 2>/dev/null; then echo "$(tail -n 1 /tmp/out)"; else echo fail; fi; `, out.Server, p)
		}
		return b.String()
	}
	run := func(sh string) []string {
		t.Helper()
		ctr, err := sb.Run(ctx, sdk.FromImage("docker.io/library/bbnet:1"), sdk.Args("sh", "-c", sh))
		if err != nil {
			t.Fatal(err)
		}
		var o strings.Builder
		if _, err := ctr.Attach(ctx, &o, &o); err != nil {
			t.Fatal(err)
		}
		_ = ctr.Delete(ctx)
		return strings.Fields(o.String())
	}
	if got, want := run(script(8080, 8081)), []string{out.HostIP, "fail"}; !slices.Equal(got, want) {
		t.Errorf("vm sandbox under the allow-list (8080, 8081): %q, want %q", got, want)
	}
	if err := sb.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + ":8081"}}); err != nil {
		t.Fatal(err)
	}
	if got, want := run(script(8080, 8081)), []string{"fail", out.HostIP}; !slices.Equal(got, want) {
		t.Errorf("vm sandbox after the policy change (8080, 8081): %q, want %q", got, want)
	}
	evctx, evcancel := context.WithTimeout(ctx, 10*time.Second)
	changed := false
	for ev, err := range c.EventsAfter(evctx, 0, sdk.InSandbox(sb.ID)) {
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		if changed = ev.Type == "sandbox-network-policy-changed"; changed {
			break
		}
	}
	evcancel()
	if !changed {
		t.Error("no sandbox-network-policy-changed event")
	}
	if err := sb.Delete(ctx, sdk.Force()); err != nil {
		t.Fatal(err)
	}
	assertNoAttachments(t, s, bridge)
	assertNoHostTables(t, sb.ID)
}

// assertNoHostTables checks that no nftables table of the host's namespace
// is named after sandbox id (host-side egress policies).
func assertNoHostTables(t *testing.T, id string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range ts {
		if strings.HasSuffix(tb.Name, "-"+id) {
			t.Errorf("nftables table %s of sandbox %s remains", tb.Name, id)
		}
	}
}
