package embedded_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/embedded"
	"github.com/magnetar-io/magnetar/sdk/network"
)

// TestBridgeNetwork: runc sandboxes on a bridge network reach a server in
// a namespace of the test through NAT, under an egress policy that can
// be changed while they run and that their processes cannot lift; a
// sandbox without a network reaches nothing; nothing remains after
// removal.
func TestBridgeNetwork(t *testing.T) {
	if rootfs == "" {
		testutil.SkipOrFail(t, "needs root, runc and busybox-static")
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testutil.SkipOrFail(t, "needs the CNI plugins (containernetworking-plugins)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	out := testutil.NewOutside(t, dir)
	nc := network.NetworkConfig{Name: "test", Bridge: fmt.Sprintf("mgt%04x", rand.IntN(1<<16)), Subnet: fmt.Sprintf("10.214.%d.0/24", rand.IntN(200)+20), NAT: true}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(nc.Bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	state := filepath.Join(dir, "state")
	c, err := embedded.New(ctx, embedded.WithStateDir(state), embedded.WithNetworks(nc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	kinds, err := c.Kinds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kinds {
		if want := k.Name != "wasm"; k.Capabilities.EgressPolicy != want {
			t.Errorf("kind %s: egress_policy capability %v, want %v", k.Name, k.Capabilities.EgressPolicy, want)
		}
	}

	// run runs a shell script in sb and returns its output and exit code.
	run := func(sb *sdk.Sandbox, script string) (string, int) {
		t.Helper()
		ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args("sh", "-c", script))
		if err != nil {
			t.Fatal(err)
		}
		var o strings.Builder
		st, err := ctr.Attach(ctx, &o, &o)
		if err != nil {
			t.Fatal(err)
		}
		if err := ctr.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(o.String()), st.Code
	}
	url := func(port int) string {
		// (busybox's wget crashes on Debian; nc does the request.)
		return fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 %s %d > /dev/shm/out || exit 1; tail -n 1 /dev/shm/out`, out.Server, port)
	}

	sb, err := c.CreateSandbox(ctx, "runc", sdk.WithBridgeNetwork("", sdk.EgressPolicy{}))
	if err != nil {
		t.Fatal(err)
	}
	if sb.Network == nil || sb.Network.Name != "test" || len(sb.Network.IPs) != 1 || sb.Network.Gateway == "" {
		t.Fatalf("sandbox network %+v", sb.Network)
	}
	if got, code := run(sb, url(8080)); code != 0 || got != out.HostIP {
		t.Fatalf("bridge sandbox -> outside server: %q (exit %d), want the host's address %s (NAT)", got, code, out.HostIP)
	}
	// Its processes have neither CAP_NET_ADMIN (12) nor CAP_NET_RAW (13).
	got, _ := run(sb, "grep CapEff /proc/self/status")
	capEff, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(got, "CapEff:")), 16, 64)
	if err != nil {
		t.Fatalf("CapEff %q: %v", got, err)
	}
	if capEff&(1<<12|1<<13) != 0 {
		t.Errorf("container capabilities %#x include NET_ADMIN or NET_RAW", capEff)
	}

	// A process of the sandbox (root in its container) cannot lift the
	// policy: flushing the ruleset or deleting the table fails.
	if err := buildNftFlush(filepath.Join(rootfs, "nftflush")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(rootfs, "nftflush")) })
	if err := sb.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true}); err != nil {
		t.Fatal(err)
	}
	if got, code := run(sb, "/nftflush"); code != 1 || !strings.Contains(got, "operation not permitted") {
		t.Errorf("nft flush in the sandbox: %q (exit %d), want a refusal", got, code)
	}
	if got, code := run(sb, url(8080)); code == 0 {
		t.Errorf("deny-all after the flush attempt: the server answered %q", got)
	}

	// Allow-list: the server's port 8080 only.
	if err := sb.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + "/32:8080"}}); err != nil {
		t.Fatal(err)
	}
	if p := sb.Network.Egress; !p.DenyByDefault || len(p.Allow) != 1 || p.Allow[0] != out.Server+"/32:8080" {
		t.Errorf("policy after the update: %+v", p)
	}
	if got, code := run(sb, url(8080)); code != 0 || got != out.HostIP {
		t.Errorf("allowed port: %q (exit %d)", got, code)
	}
	if got, code := run(sb, url(8081)); code == 0 {
		t.Errorf("port outside the allow-list answered %q", got)
	}
	// Changed while a process runs: it loses 8080, gains 8081.
	long, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args("sleep", "60"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + ":8081"}}); err != nil {
		t.Fatal(err)
	}
	if got, code := run(sb, url(8080)); code == 0 {
		t.Errorf("port 8080 answered %q after the policy change", got)
	}
	if got, code := run(sb, url(8081)); code != 0 || got != out.HostIP {
		t.Errorf("port 8081 after the policy change: %q (exit %d)", got, code)
	}
	_ = long.Delete(ctx, sdk.Force())
	if err := sb.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{Allow: []string{"not-an-address"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad rule: %v, want InvalidArgument", err)
	}

	// No network: nothing outside is reached, and a policy has no place.
	none, err := c.CreateSandbox(ctx, "runc", sdk.WithNetwork(sdk.NetworkNone))
	if err != nil {
		t.Fatal(err)
	}
	if got, code := run(none, url(8080)); code == 0 {
		t.Errorf("sandbox without network reached the server: %q", got)
	}
	if err := none.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("policy on a sandbox without network: %v, want FailedPrecondition", err)
	}

	// gVisor runs its own network stack on the sandbox's interface (a
	// packet socket, which the namespace's output hook does not see): its
	// policy is enforced on the host side of the veth, and binds it the
	// same way, changed live too.
	all := []*sdk.Sandbox{sb, none}
	if slices.ContainsFunc(kinds, func(k sdk.Kind) bool { return k.Name == "gvisor" && k.Available }) {
		gv, err := c.CreateSandbox(ctx, "gvisor", sdk.WithBridgeNetwork("", sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + "/32:8080"}}))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, gv)
		if got, code := run(gv, url(8080)); code != 0 || got != out.HostIP {
			t.Errorf("gvisor bridge sandbox, allowed port: %q (exit %d), want %s", got, code, out.HostIP)
		}
		if got, code := run(gv, url(8081)); code == 0 {
			t.Errorf("gvisor bridge sandbox, port outside the allow-list answered %q", got)
		}
		if err := gv.UpdateNetworkPolicy(ctx, sdk.EgressPolicy{DenyByDefault: true, Allow: []string{out.Server + ":8081"}}); err != nil {
			t.Fatal(err)
		}
		if got, code := run(gv, url(8080)); code == 0 {
			t.Errorf("gvisor: port 8080 answered %q after the policy change", got)
		}
		if got, code := run(gv, url(8081)); code != 0 || got != out.HostIP {
			t.Errorf("gvisor: port 8081 after the policy change: %q (exit %d)", got, code)
		}
	} else {
		t.Log("no gvisor kind here: its part is not run")
	}

	netnsPath := sb.NetNSPath
	for _, s := range all {
		if err := s.Delete(ctx, sdk.Force()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(netnsPath); !os.IsNotExist(err) {
		t.Errorf("network namespace %s remains: %v", netnsPath, err)
	}
	assertNoAttachment(t, state, nc.Bridge)
	for _, s := range all {
		assertNoHostTables(t, s.ID)
	}
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

// assertNoAttachment checks that no lease, record or namespace is left in
// the embedded client's state dir, and no interface on the bridge.
func assertNoAttachment(t *testing.T, state, bridge string) {
	t.Helper()
	for _, d := range []string{"netns", "network/attachments", "network/ipam/magnetar-test"} {
		ents, _ := os.ReadDir(filepath.Join(state, d))
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

// buildNftFlush builds internal/testdata/nftflush, statically, to path.
func buildNftFlush(path string) error {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			return fmt.Errorf("no go toolchain to build nftflush: %w", err)
		}
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", path, "./internal/testdata/nftflush")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build nftflush: %v\n%s", err, out)
	}
	return nil
}
