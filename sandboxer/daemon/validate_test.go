package daemon

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sandboxer/controller"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
)

// apiJSON is a client of Magnetar's API speaking Connect's JSON over the
// daemon's unix socket, as a user with curl would.
type apiJSON struct {
	t  *testing.T
	hc *http.Client
}

func newAPIJSON(t *testing.T, cfg Config) *apiJSON {
	sock := cfg.apiSocket()
	testutil.Eventually(t, 10*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "API socket %s never came up", sock)
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &apiJSON{t: t, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// call posts req (a JSON-encodable value or raw bytes) to procedure and
// returns the Connect error code ("" on success) and the body.
func (a *apiJSON) call(procedure string, req any) (code string, body map[string]any) {
	a.t.Helper()
	data, ok := req.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(req); err != nil {
			a.t.Fatal(err)
		}
	}
	resp, err := a.hc.Post("http://magnetar/"+procedure, "application/json", bytes.NewReader(data))
	if err != nil {
		a.t.Fatalf("%s: %v", procedure, err)
	}
	defer resp.Body.Close()
	body = map[string]any{}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		c, _ := body["code"].(string)
		if c == "" {
			c = resp.Status
		}
		return c, body
	}
	return "", body
}

const (
	createSandbox   = "magnetar.sandbox.v1.SandboxService/CreateSandbox"
	startSandbox    = "magnetar.sandbox.v1.SandboxService/StartSandbox"
	listSandboxes   = "magnetar.sandbox.v1.SandboxService/ListSandboxes"
	deleteSandbox   = "magnetar.sandbox.v1.SandboxService/DeleteSandbox"
	createContainer = "magnetar.container.v1.ContainerService/CreateContainer"
	listContainers  = "magnetar.container.v1.ContainerService/ListContainers"
)

// TestAPIRefusesBadRequests replays, over the daemon's real API socket, the
// requests that were once accepted (issue 15): each fails with the code a
// user can act on and a message naming the field, and nothing is created.
func TestAPIRefusesBadRequests(t *testing.T) {
	cfg := testConfig(t)
	startDaemon(t, cfg, backendfake.New(backendfake.Config{}))
	api := newAPIJSON(t, cfg)

	if code, body := api.call(createSandbox, map[string]any{"sandbox_id": "good", "kind": "fake"}); code != "" {
		t.Fatalf("create a good sandbox: %s %v", code, body)
	}
	if code, body := api.call(startSandbox, map[string]any{"sandbox_id": "good"}); code != "" {
		t.Fatalf("start it: %s %v", code, body)
	}
	hostRootfs := t.TempDir()
	big := strings.Repeat("x", 300<<10)
	sb := func(extra map[string]any) map[string]any {
		m := map[string]any{"sandbox_id": "bad", "kind": "fake"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	ctr := func(extra map[string]any) map[string]any {
		m := map[string]any{"sandbox_id": "good", "container_id": "bad", "image": "docker.io/library/busybox:1.36", "process": map[string]any{"args": []string{"true"}}}
		for k, v := range extra {
			if k == "rootfs_path" {
				delete(m, "image")
			}
			m[k] = v
		}
		return m
	}
	rawSpec := base64.StdEncoding.EncodeToString([]byte(`{"process":{"args":["sh"],"capabilities":{"bounding":["CAP_SYS_ADMIN"]}},"root":{"path":"/"},"linux":{"namespaces":[{"type":"mount"}]}}`))
	for _, tc := range []struct {
		name, procedure string
		req             any
		code, field     string
	}{
		{"cgroup parent outside the hierarchy", createSandbox, sb(map[string]any{"cgroup_parent": "../../../../tmp"}), "invalid_argument", "cgroup_parent"},
		{"netns not a namespace", createSandbox, sb(map[string]any{"network": map[string]any{"mode": "NETWORK_MODE_NETNS", "netns_path": "/etc/passwd"}}), "invalid_argument", "netns_path"},
		{"the host's netns", createSandbox, sb(map[string]any{"network": map[string]any{"mode": "NETWORK_MODE_NETNS", "netns_path": "/proc/1/ns/net"}}), "invalid_argument", "netns_path"},
		{"DNS option with a newline", createSandbox, sb(map[string]any{"dns": map[string]any{"options": []string{"ndots:1\nnameserver 6.6.6.6"}}}), "invalid_argument", "dns.options[0]"},
		{"DNS server with a newline", createSandbox, sb(map[string]any{"dns": map[string]any{"servers": []string{"1.1.1.1\noptions debug"}}}), "invalid_argument", "dns.servers[0]"},
		{"DNS search with a control character", createSandbox, sb(map[string]any{"dns": map[string]any{"searches": []string{"a\x01b"}}}), "invalid_argument", "dns.searches[0]"},
		{"hostname with / and NUL", createSandbox, sb(map[string]any{"hostname": "a/b\x00c"}), "invalid_argument", "hostname"},
		{"300-character hostname", createSandbox, sb(map[string]any{"hostname": strings.Repeat("h", 300)}), "invalid_argument", "hostname"},
		{"negative memory", createSandbox, sb(map[string]any{"resources": map[string]any{"memory_limit_bytes": -5}}), "invalid_argument", "resources.memory_limit_bytes"},
		{"negative CPU quota", createSandbox, sb(map[string]any{"resources": map[string]any{"cpu_quota_us": -5}}), "invalid_argument", "resources.cpu_quota_us"},
		{"negative pids", createSandbox, sb(map[string]any{"resources": map[string]any{"pids_limit": -5}}), "invalid_argument", "resources.pids_limit"},
		{"1-byte memory", createSandbox, sb(map[string]any{"resources": map[string]any{"memory_limit_bytes": 1}}), "invalid_argument", "resources.memory_limit_bytes"},
		{"more memory than the host", createSandbox, sb(map[string]any{"resources": map[string]any{"memory_limit_bytes": int64(1) << 60}}), "invalid_argument", "resources.memory_limit_bytes"},
		{"300 KB label", createSandbox, sb(map[string]any{"labels": map[string]string{"big": big}}), "invalid_argument", "labels"},
		{"10 MB label", createSandbox, []byte(`{"sandbox_id":"bad","kind":"fake","labels":{"big":"` + strings.Repeat("x", 10<<20) + `"}}`), "resource_exhausted", ""},
		{"unknown network mode", createSandbox, sb(map[string]any{"network": map[string]any{"mode": 42}}), "invalid_argument", "network.mode"},
		{"uid 4294967295", createContainer, ctr(map[string]any{"process": map[string]any{"args": []string{"true"}, "user": map[string]any{"uid": 4294967295}}}), "invalid_argument", "process.user.uid"},
		{"env with NUL", createContainer, ctr(map[string]any{"process": map[string]any{"args": []string{"true"}, "env": []string{"A=b\x00c"}}}), "invalid_argument", "process.env[0]"},
		{"cpuset 999-1000", createContainer, ctr(map[string]any{"resources": map[string]any{"cpuset_cpus": "999-1000"}}), "invalid_argument", "resources.cpuset_cpus"},
		{"missing rootfs", createContainer, ctr(map[string]any{"rootfs_path": "/nonexistent/rootfs"}), "invalid_argument", "rootfs_path"},
		{"host rootfs", createContainer, ctr(map[string]any{"rootfs_path": hostRootfs}), "permission_denied", "rootfs_path"},
		{"rw bind mount of /", createContainer, ctr(map[string]any{"mounts": []map[string]any{{"source": "/", "destination": "/host", "type": "bind"}}}), "permission_denied", "mounts[0]"},
		{"raw OCI spec with a host root", createContainer, ctr(map[string]any{"rootfs_path": hostRootfs, "oci_spec_json": rawSpec}), "permission_denied", "rootfs_path"},
		{"raw OCI spec without an image", createContainer, map[string]any{"sandbox_id": "good", "container_id": "bad", "oci_spec_json": rawSpec}, "permission_denied", "oci_spec_json.root"},
	} {
		code, body := api.call(tc.procedure, tc.req)
		msg, _ := body["message"].(string)
		if code != tc.code || !strings.Contains(msg, tc.field) {
			t.Errorf("%s: %s %q, want %s naming %q", tc.name, code, msg, tc.code, tc.field)
		}
	}

	// Nothing was made: one sandbox (the good one), no container, no
	// state of a refused sandbox.
	_, body := api.call(listSandboxes, map[string]any{})
	if sbs, _ := body["sandboxes"].([]any); len(sbs) != 1 {
		t.Errorf("sandboxes after refused requests: %v", body)
	}
	_, body = api.call(listContainers, map[string]any{})
	if cs, _ := body["containers"].([]any); len(cs) != 0 {
		t.Errorf("containers after refused requests: %v", body)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "sandboxes", "bad")); !os.IsNotExist(err) {
		t.Errorf("state of a refused sandbox: %v", err)
	}

	// A network namespace in a configured directory is accepted.
	netns := testutil.NetNS(t, cfg.NetNSDirs[0], "ok")
	if code, body := api.call(createSandbox, sb(map[string]any{"sandbox_id": "netns", "network": map[string]any{"mode": "NETWORK_MODE_NETNS", "netns_path": netns}})); code != "" {
		t.Errorf("sandbox in %s: %s %v", netns, code, body)
	}
}

// TestDeletedRecoveredSandboxClosesTaskSocket: a sandbox whose Task API a
// restarted daemon serves again (Recover) and that is then deleted
// through Magnetar's API has its task socket closed and removed at once,
// not when the daemon stops.
func TestDeletedRecoveredSandboxClosesTaskSocket(t *testing.T) {
	cfg := testConfig(t)
	host := backendfake.NewHost()
	_, stop := startDaemon(t, cfg, backendfake.New(backendfake.Config{Host: host}))
	api := newAPIJSON(t, cfg)
	if code, body := api.call(createSandbox, map[string]any{"sandbox_id": "rec", "kind": "fake"}); code != "" {
		t.Fatalf("create: %s %v", code, body)
	}
	if code, body := api.call(startSandbox, map[string]any{"sandbox_id": "rec"}); code != "" {
		t.Fatalf("start: %s %v", code, body)
	}
	stop()

	startDaemon(t, cfg, backendfake.New(backendfake.Config{Host: host}))
	api = newAPIJSON(t, cfg)
	sock := controller.TaskSocketPath(cfg.RunDir, "rec")
	if c, err := net.Dial("unix", sock); err != nil {
		t.Fatalf("task socket of the recovered sandbox: %v", err)
	} else {
		c.Close()
	}
	if code, body := api.call(deleteSandbox, map[string]any{"sandbox_id": "rec", "force": true}); code != "" {
		t.Fatalf("delete: %s %v", code, body)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := os.Stat(sock)
		return os.IsNotExist(err)
	}, "task socket %s still there after the sandbox was deleted", sock)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Error("task socket still accepts connections")
	}
}
