package daemon

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// tenantCaller makes calls of the remote API with JSON bodies.
type tenantCaller struct {
	t    *testing.T
	d    *remoteDaemon
	addr string
}

func (c *tenantCaller) call(token, method, body string) rpcResult {
	c.t.Helper()
	md, ok := methods()[method]
	if !ok {
		c.t.Fatalf("no method %s", method)
	}
	hc := httpClient(c.t, c.d.pki.caPool, "", "")
	return callJSON(c.t, hc, "https://"+c.addr, token, md, body)
}

func (c *tenantCaller) must(token, method, body string) rpcResult {
	c.t.Helper()
	r := c.call(token, method, body)
	if r.code != "" {
		c.t.Fatalf("%s %s: %s %s", token, method, r.code, r.message)
	}
	return r
}

// TestRemoteTenantIDNamespaces has two tenants use the same sandbox and
// container IDs: each has its own, sees only its own IDs, and the admin
// sees both with their tenant; the IDs, and the events of a deleted
// sandbox, survive a restart.
func TestRemoteTenantIDNamespaces(t *testing.T) {
	const reg = "\nallow_insecure_registries = true\nallow_private_registries = true"
	d := startRemote(t, tenantsDoc(
		`name = "a"`+"\n"+tokenLine("token-a")+reg,
		`name = "b"`+"\n"+tokenLine("token-b")+reg,
		`name = "root"`+"\nadmin = true\n"+tokenLine("token-admin"),
	), false)
	c := &tenantCaller{t: t, d: d, addr: d.addr}
	ref := pushImage(t)
	for _, tk := range []string{"token-a", "token-b"} {
		c.must(tk, "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":true}`, ref))
		if r := c.must(tk, "SandboxService/CreateSandbox", `{"sandboxId":"foo","kind":"fake","labels":{"who":"`+tk+`"}}`); !strings.Contains(r.msgs[0], `"id":"foo"`) {
			t.Errorf("%s creates foo: %s", tk, r.msgs[0])
		}
		c.must(tk, "SandboxService/StartSandbox", `{"sandboxId":"foo"}`)
		r := c.must(tk, "ContainerService/CreateContainer", fmt.Sprintf(`{"sandboxId":"foo","containerId":"web","image":%q,"process":{"args":["sleep","1000"]}}`, ref))
		if !strings.Contains(r.msgs[0], `"id":"web"`) || !strings.Contains(r.msgs[0], `"sandboxId":"foo"`) {
			t.Errorf("%s creates web: %s", tk, r.msgs[0])
		}
		// Once more: the tenant's own ID is taken.
		if r := c.call(tk, "SandboxService/CreateSandbox", `{"sandboxId":"foo","kind":"fake"}`); r.code != "already_exists" || strings.Contains(r.message, "--") {
			t.Errorf("%s creates foo again: %q %q", tk, r.code, r.message)
		}
	}
	// Each sees its own, by its own IDs.
	for _, tk := range []string{"token-a", "token-b"} {
		if r := c.must(tk, "SandboxService/GetSandbox", `{"sandboxId":"foo"}`); !strings.Contains(r.msgs[0], `"who":"`+tk+`"`) || !strings.Contains(r.msgs[0], `"id":"foo"`) {
			t.Errorf("%s gets foo: %s", tk, r.msgs[0])
		}
		r := c.must(tk, "ContainerService/ListContainers", `{}`)
		if strings.Count(r.msgs[0], `"id":"web"`) != 1 || strings.Contains(r.msgs[0], "--") {
			t.Errorf("%s lists containers: %s", tk, r.msgs[0])
		}
	}
	// The admin sees both, with their tenant.
	r := c.must("token-admin", "SandboxService/ListSandboxes", `{}`)
	for _, tn := range []string{"a", "b"} {
		if !strings.Contains(r.msgs[0], `"id":"`+tn+`--foo"`) || !strings.Contains(r.msgs[0], `"magnetar.io/tenant":"`+tn+`"`) {
			t.Errorf("the admin's list lacks %s's foo: %s", tn, r.msgs[0])
		}
	}
	if r := c.must("token-admin", "ContainerService/GetContainer", `{"containerId":"b--web"}`); !strings.Contains(r.msgs[0], `"sandboxId":"b--foo"`) {
		t.Errorf("the admin gets b--web: %s", r.msgs[0])
	}
	// A tenant's namespace is its own: the admin cannot make IDs there.
	if r := c.call("token-admin", "SandboxService/CreateSandbox", `{"sandboxId":"a--x","kind":"fake"}`); r.code != "invalid_argument" || !strings.Contains(r.message, "sandbox_id") {
		t.Errorf("the admin creates a--x: %q %q", r.code, r.message)
	}
	// IDs are checked as ever, with the room the namespace leaves.
	for name, id := range map[string]string{"too long": strings.Repeat("x", 126), "a path": "../../etc", "empty-ish": "-x"} {
		if r := c.call("token-a", "SandboxService/CreateSandbox", fmt.Sprintf(`{"sandboxId":%q,"kind":"fake"}`, id)); r.code != "invalid_argument" {
			t.Errorf("%s: %q %q", name, r.code, r.message)
		}
	}
	// A sandbox of a tenant from before namespaces (a bare ID with the
	// tenant's label) is still the tenant's, under its ID.
	c.must("token-admin", "SandboxService/CreateSandbox", `{"sandboxId":"legacy","kind":"fake","labels":{"magnetar.io/tenant":"a"}}`)
	if r := c.must("token-a", "SandboxService/GetSandbox", `{"sandboxId":"legacy"}`); !strings.Contains(r.msgs[0], `"id":"legacy"`) {
		t.Errorf("A gets its legacy sandbox: %s", r.msgs[0])
	}
	if r := c.call("token-b", "SandboxService/GetSandbox", `{"sandboxId":"legacy"}`); r.code != "not_found" {
		t.Errorf("B gets A's legacy sandbox: %q", r.code)
	}
	// A deletes its foo; B's stays.
	c.must("token-a", "SandboxService/DeleteSandbox", `{"sandboxId":"foo","force":true}`)
	if r := c.call("token-a", "SandboxService/GetSandbox", `{"sandboxId":"foo"}`); r.code != "not_found" || strings.Contains(r.message, "--") {
		t.Errorf("A's foo after its delete: %q %q", r.code, r.message)
	}
	c.must("token-b", "ContainerService/GetContainer", `{"containerId":"web"}`)

	// After a restart: the same, and A's event log replays its deleted
	// foo (and none of B's events, which would show B's IDs).
	d.stop()
	c.addr, _ = runRemote(t, d.cfg, d.logs)
	if r := c.must("token-b", "SandboxService/GetSandbox", `{"sandboxId":"foo"}`); !strings.Contains(r.msgs[0], `"who":"token-b"`) {
		t.Errorf("B's foo after a restart: %s", r.msgs[0])
	}
	if r := c.call("token-a", "SandboxService/GetSandbox", `{"sandboxId":"foo"}`); r.code != "not_found" {
		t.Errorf("A's foo after a restart: %q", r.code)
	}
	hc := httpClient(t, d.pki.caPool, "", "")
	ev := callJSONUntil(t, hc, "https://"+c.addr, "token-a", methods()["SandboxService/WatchEvents"], `{"afterSequence":"0"}`, `"sandboxId":"foo"`, "SANDBOX_DELETED")
	if n := len(ev.msgs); n == 0 || !strings.Contains(ev.msgs[n-1], "SANDBOX_DELETED") {
		t.Errorf("A's events after a restart end with %+v", ev)
	}
	for _, m := range ev.msgs {
		if strings.Contains(m, "--") {
			t.Errorf("A's events after a restart: %s", m)
		}
	}
}

// TestRemoteRegistries holds tenants' pulls to their registries: no plain
// HTTP and no private addresses unless allowed, and an allow-list of
// hosts.
func TestRemoteRegistries(t *testing.T) {
	d := startRemote(t, tenantsDoc(
		`name = "strict"`+"\n"+tokenLine("token-strict"),
		`name = "http"`+"\n"+tokenLine("token-http")+"\nallow_insecure_registries = true",
		`name = "listed"`+"\n"+tokenLine("token-listed")+"\nallow_insecure_registries = true\nallow_private_registries = true\nregistries = [\"registry.example:5000\", \"*.example.com\"]",
		`name = "open"`+"\n"+tokenLine("token-open")+"\nallow_insecure_registries = true\nallow_private_registries = true",
		`name = "root"`+"\nadmin = true\n"+tokenLine("token-admin"),
	), false)
	c := &tenantCaller{t: t, d: d, addr: d.addr}
	host := serveRegistry(t)
	ref, _ := pushImageTo(t, host, "test/app:v1", 64)
	_, port, _ := strings.Cut(host, ":")
	pull := func(token, ref string, insecure bool) rpcResult {
		return c.call(token, "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":%v}`, ref, insecure))
	}
	for name, tc := range map[string]struct {
		token, ref string
		insecure   bool
		field      string
	}{
		"plain HTTP":            {"token-strict", ref, true, "allow_insecure_registries"},
		"loopback over HTTPS":   {"token-strict", ref, false, "allow_private_registries"},
		"loopback":              {"token-http", ref, true, "allow_private_registries"},
		"loopback by its name":  {"token-http", "localhost:" + port + "/test/app:v1", true, "allow_private_registries"},
		"a registry not listed": {"token-listed", ref, true, "registries"},
	} {
		r := pull(tc.token, tc.ref, tc.insecure)
		if r.code != "permission_denied" || !strings.Contains(r.message, tc.field) {
			t.Errorf("%s: %q %q, want permission_denied naming %s", name, r.code, r.message, tc.field)
		}
	}
	// Nothing was pulled.
	if r := c.must("token-admin", "ImageService/ListImages", `{}`); strings.Contains(r.msgs[0], "test/app") {
		t.Errorf("images after refused pulls: %s", r.msgs[0])
	}
	c.must("token-open", "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":true}`, ref))
	if r := c.must("token-open", "ImageService/ListImages", `{}`); !strings.Contains(r.msgs[0], ref) {
		t.Errorf("open's images: %s", r.msgs[0])
	}
	// The admin's pulls are not held.
	c.must("token-admin", "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":true}`, "localhost:"+port+"/test/app:v1"))
	// A bad allow-list entry is refused with the file.
	if _, err := ParseTenants([]byte(tenantsDoc(`name = "x"` + "\n" + tokenLine("t") + "\nregistries = [\"http://evil/\"]"))); err == nil || !strings.Contains(err.Error(), "registries") {
		t.Errorf("a bad registries entry: %v", err)
	}
}

// TestRemoteImageQuota bounds the bytes of a tenant's images.
func TestRemoteImageQuota(t *testing.T) {
	host := serveRegistry(t)
	one, size1 := pushImageTo(t, host, "test/one:v1", 4096)
	two, size2 := pushImageTo(t, host, "test/two:v1", 4096)
	d := startRemote(t, tenantsDoc(
		`name = "q"`+"\n"+tokenLine("token-q")+fmt.Sprintf("\nallow_insecure_registries = true\nallow_private_registries = true\nmax_image_bytes = %d", size1+size2-1),
		`name = "root"`+"\nadmin = true\n"+tokenLine("token-admin"),
	), false)
	c := &tenantCaller{t: t, d: d, addr: d.addr}
	pull := func(ref string) rpcResult {
		return c.call("token-q", "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":true}`, ref))
	}
	if r := pull(one); r.code != "" {
		t.Fatalf("first image: %q %q", r.code, r.message)
	}
	// Pulled again, it is not counted twice.
	if r := pull(one); r.code != "" {
		t.Fatalf("first image again: %q %q", r.code, r.message)
	}
	r := pull(two)
	if r.code != "resource_exhausted" || !strings.Contains(r.message, "max_image_bytes") {
		t.Fatalf("second image over the quota: %q %q", r.code, r.message)
	}
	// Nothing changed: the store does not have it.
	if r := c.must("token-admin", "ImageService/ListImages", `{}`); strings.Contains(r.msgs[0], "test/two") {
		t.Errorf("the refused image is in the store: %s", r.msgs[0])
	}
	c.must("token-q", "ImageService/RemoveImage", fmt.Sprintf(`{"ref":%q}`, one))
	if r := pull(two); r.code != "" {
		t.Errorf("second image after removing the first: %q %q", r.code, r.message)
	}
	if r := pull(one); r.code != "resource_exhausted" {
		t.Errorf("first image next to the second: %q %q", r.code, r.message)
	}
}

// TestRemoteClientCAReload replaces the client CA file: new connections
// verify client certificates against the new CAs.
func TestRemoteClientCAReload(t *testing.T) {
	d := startRemote(t, tenantsDoc(`name = "a"`+"\n"+tokenLine("token-a")), true)
	kinds := methods()["SandboxService/ListKinds"]
	proc := "https://" + d.addr + "/" + string(kinds.Parent().FullName()) + "/" + string(kinds.Name())
	works := func(cert, key string) bool {
		hc := httpClient(t, d.pki.caPool, cert, key)
		defer hc.CloseIdleConnections()
		req, _ := http.NewRequest("POST", proc, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer token-a")
		res, err := hc.Do(req)
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}
	if !works(d.pki.clientCert, d.pki.clientKey) || works(d.pki.strangerCert, d.pki.strangerKey) {
		t.Fatal("before the change: the CA's client must work, the other CA's not")
	}
	other, err := os.ReadFile(d.pki.otherCAFile)
	if err != nil {
		t.Fatal(err)
	}
	tmp := d.pki.caFile + ".tmp"
	if err := os.WriteFile(tmp, other, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, d.pki.caFile); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return works(d.pki.strangerCert, d.pki.strangerKey) }, "the new CA's client never got in")
	if works(d.pki.clientCert, d.pki.clientKey) {
		t.Error("the old CA's client still gets in")
	}
	// A broken file keeps the CAs in use.
	if err := os.WriteFile(tmp, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, d.pki.caFile); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(d.logs.String(), "client CA not reloaded") }, "the broken CA file was not reported")
	if !works(d.pki.strangerCert, d.pki.strangerKey) {
		t.Error("the CAs in use were dropped for a broken file")
	}
}
