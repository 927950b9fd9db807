package direct_test

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
	"github.com/magnetar-io/magnetar/sdk/network"
)

// TestNetworkModesRefused: what the network part of a request may not ask
// for is refused before anything is made.
func TestNetworkModesRefused(t *testing.T) {
	ctx := context.Background()
	e, err := engine.New(ctx, engine.Config{StateDir: t.TempDir(), Backends: []backend.Backend{apitest.Stub{}}, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s := direct.New(e)
	defer s.Close()
	deny := network.Policy{Default: network.ActionDeny}
	for _, c := range []struct {
		name string
		net  direct.Network
		want func(error) bool
	}{
		{"host without host access", direct.Network{Mode: direct.NetworkHost}, errdefs.IsPermissionDenied},
		{"bridge without networks", direct.Network{Mode: direct.NetworkBridge}, errdefs.IsFailedPrecondition},
		{"network name with mode none", direct.Network{Mode: direct.NetworkNone, Name: "default"}, errdefs.IsInvalidArgument},
		{"policy with the default mode (none)", direct.Network{Egress: deny}, errdefs.IsInvalidArgument},
		{"bad policy action", direct.Network{Mode: direct.NetworkBridge, Egress: network.Policy{Default: "maybe"}}, errdefs.IsInvalidArgument},
		{"unknown mode", direct.Network{Mode: 9}, errdefs.IsInvalidArgument},
	} {
		if _, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: apitest.StubKind, Network: c.net}); !c.want(err) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if n := len(e.ListSandboxes(ctx)); n != 0 {
		t.Errorf("%d sandboxes made by refused requests", n)
	}
	// The default mode is none: a sandbox of its own, no bridge network.
	st, err := s.CreateSandbox(ctx, direct.SandboxRequest{Kind: apitest.StubKind})
	if err != nil {
		t.Fatal(err)
	}
	if st.HostNetwork || st.Network != nil {
		t.Errorf("default network: host %v, bridge %+v", st.HostNetwork, st.Network)
	}
	if _, err := s.SetEgressPolicy(ctx, st.ID, deny); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("policy of a sandbox without a bridge network: %v, want FailedPrecondition", err)
	}
}
