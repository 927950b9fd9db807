package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/network"
)

// TestNetworkAttachmentLifecycle: the engine attaches a sandbox that asks
// for a network, records it, refuses policies its kind would not obey,
// detaches it on delete, and on start removes the attachment of a sandbox
// it does not know (a crash between attaching and recording) while
// keeping those it knows.
func TestNetworkAttachmentLifecycle(t *testing.T) {
	testutil.RequireRoot(t, "network namespaces, bridges")
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		testutil.SkipOrFail(t, "needs the CNI plugins (containernetworking-plugins)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	nc := network.NetworkConfig{Name: "t", Bridge: fmt.Sprintf("mgt%04x", rand.IntN(1<<16)), Subnet: fmt.Sprintf("10.216.%d.0/24", rand.IntN(200)+20)}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(nc.Bridge); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	ncfg := network.Config{Networks: []network.NetworkConfig{nc}, NetNSDir: filepath.Join(dir, "netns"), StateDir: filepath.Join(dir, "network")}
	open := func() (*engine.Engine, *network.Manager) {
		nm, err := network.New(ncfg)
		if err != nil {
			t.Fatal(err)
		}
		e, err := engine.New(ctx, engine.Config{StateDir: filepath.Join(dir, "state"), Backends: []backend.Backend{backendfake.New(backendfake.Config{})}, StopTimeout: 200 * time.Millisecond, Network: nm})
		if err != nil {
			t.Fatal(err)
		}
		return e, nm
	}
	e, nm := open()
	// The fake kind does not claim to obey policies.
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "refused", Kind: backendfake.Kind, Network: &engine.NetworkSpec{Egress: network.Policy{Default: network.ActionDeny}}}); !errdefs.IsNotImplemented(err) {
		t.Errorf("policy for a kind without egress_policy: %v, want NotImplemented", err)
	}
	if _, err := nm.Attachment("refused"); !errdefs.IsNotFound(err) {
		t.Errorf("refused sandbox has an attachment: %v", err)
	}
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "bad", Kind: backendfake.Kind, Network: &engine.NetworkSpec{Name: "nope"}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown network: %v, want InvalidArgument", err)
	}
	st, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "kept", Kind: backendfake.Kind, Network: &engine.NetworkSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Network == nil || len(st.Network.IPs) != 1 || st.NetNSPath != filepath.Join(dir, "netns", "kept") {
		t.Fatalf("status %+v / %+v", st, st.Network)
	}
	if _, err := e.SetEgressPolicy(ctx, "kept", network.Policy{Default: network.ActionDeny}); !errdefs.IsNotImplemented(err) {
		t.Errorf("policy update for the fake kind: %v, want NotImplemented", err)
	}
	// A crash right after attaching "lost": no sandbox record.
	if _, err := nm.Attach(ctx, "lost", "", network.Policy{}, network.EnforceNetNS); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e, nm = open()
	defer e.Close()
	if err := e.NetworkSweepError(); err != nil {
		t.Errorf("sweep: %v", err)
	}
	if _, err := nm.Attachment("lost"); !errdefs.IsNotFound(err) {
		t.Errorf("the lost attachment survived the restart: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "netns", "lost")); !os.IsNotExist(err) {
		t.Errorf("the lost namespace survived the restart: %v", err)
	}
	if _, err := nm.Attachment("kept"); err != nil {
		t.Errorf("the kept sandbox's attachment: %v", err)
	}
	if err := e.DeleteSandbox(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"netns", "network/attachments"} {
		if ents, _ := os.ReadDir(filepath.Join(dir, d)); len(ents) != 0 {
			t.Errorf("%s after delete: %v", d, ents)
		}
	}
}
