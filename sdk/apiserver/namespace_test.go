package apiserver

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	filev1 "github.com/magnetar-io/magnetar/gen/magnetar/file/v1"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

func TestTenantIDSplit(t *testing.T) {
	for _, c := range []struct{ tenant, id string }{
		{"a", "foo"}, {"a-", "foo"}, {"a.b", "c--d"}, {"x_y", "1"}, {"acme", "a-b.c_d"},
	} {
		q := TenantID(c.tenant, c.id)
		if err := engine.ValidateID("sandbox", q); err != nil {
			t.Errorf("%q is not a valid engine ID: %v", q, err)
		}
		tn, id, ok := SplitTenantID(q)
		if !ok || tn != c.tenant || id != c.id {
			t.Errorf("SplitTenantID(%q) = %q, %q, %v; want %q, %q", q, tn, id, ok, c.tenant, c.id)
		}
	}
	// Two tenants never share an engine ID: names have no "--" and IDs
	// start with a letter or digit ("a---x" is tenant "a-"'s "x").
	for _, q := range []string{"foo", "--foo", "a--", "a---", "a----x", "a--.x", "../a--x"} {
		if tn, id, ok := SplitTenantID(q); ok {
			t.Errorf("SplitTenantID(%q) = %q, %q: want none", q, tn, id)
		}
	}
	if _, err := NewTenants([]TenantToken{{Tenant: Tenant{Name: "a--b"}, TokenSHA256: []string{HashToken("t")}}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a tenant name with -- : %v", err)
	}
	if _, err := NewTenants([]TenantToken{{Tenant: Tenant{Name: "a", Registries: []string{"https://x/"}}, TokenSHA256: []string{HashToken("t")}}}); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "registries") {
		t.Errorf("a bad registry: %v", err)
	}
	if _, err := NewTenants([]TenantToken{{Tenant: Tenant{Name: "a", Quota: Quota{MaxImageBytes: -1}}, TokenSHA256: []string{HashToken("t")}}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a negative image quota: %v", err)
	}
}

func TestAllowsRegistry(t *testing.T) {
	tn := &Tenant{Registries: []string{"docker.io", "registry.example:5000", "*.example.com"}}
	for host, want := range map[string]bool{
		"docker.io": true, "index.docker.io": true, "registry.example:5000": true, "registry.example": false,
		"r.example.com": true, "r.example.com:443": true, "example.com": false, "evilexample.com": false, "ghcr.io": false,
	} {
		if got := tn.allowsRegistry(host); got != want {
			t.Errorf("allowsRegistry(%q) = %v, want %v", host, got, want)
		}
	}
	if !(&Tenant{}).allowsRegistry("anything.io") {
		t.Error("no list: every registry")
	}
}

// TestWalkIDs finds the IDs of every kind of message at any depth.
func TestWalkIDs(t *testing.T) {
	msgs := []proto.Message{
		&sandboxv1.GetSandboxRequest{SandboxId: "s"},
		&sandboxv1.WatchEventsRequest{SandboxIds: []string{"s", "s"}},
		&sandboxv1.DialPortRequest{Target: &sandboxv1.DialPortTarget{SandboxId: "s", Port: 1}},
		&sandboxv1.WatchEventsResponse{Event: &sandboxv1.Event{SandboxId: "s", ContainerId: "c"}},
		&sandboxv1.ListSandboxesResponse{Sandboxes: []*sandboxv1.Sandbox{{Id: "s"}, {Id: "s"}}},
		&containerv1.ListContainersResponse{Containers: []*containerv1.Container{{Id: "c", SandboxId: "s"}}},
		&filev1.WriteRequest{Header: &filev1.WriteHeader{ContainerId: "c", Path: "/s"}},
	}
	for _, m := range msgs {
		n := 0
		if err := walkIDs(m.ProtoReflect(), func(kind, id string) (string, error) {
			n++
			if (kind == idSandbox) != (id == "s") {
				t.Errorf("%T: %s id %q", m, kind, id)
			}
			return "t--" + id, nil
		}); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("%T: no ID found", m)
		}
		if s := m.(interface{ String() string }).String(); strings.Contains(s, `"s"`) || strings.Contains(s, `"c"`) {
			t.Errorf("%T: an ID left: %s", m, s)
		}
	}
}
