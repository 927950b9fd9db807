package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	gorunc "github.com/containerd/go-runc"
)

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
version = 1
state_dir = "/var/lib/m"
default_kind = "runc"
log_level = "debug"
default_network_mode = "bridge"
[containerd]
  ttrpc_address = "/run/containerd/containerd.sock.ttrpc"
  [containerd.handlers]
    magnetar = "runc"
[[networks]]
  name = "web"
  bridge = "br-web"
  subnet = "10.30.0.0/16"
  nat = true
  dns = ["10.30.0.53"]
[backends.runc]
  binary = "/usr/sbin/runc"
[backends.vm]
  vcpus = 2
  memory_mib = 512
  max_vcpus = 4
  memory_overhead_mib = 96
  boot_timeout = "90s"
  health_interval = "5s"
  health_failures = 2
  [backends.vm.pool]
    memory_budget_mib = 768
    [[backends.vm.pool.classes]]
      count = 2
    [[backends.vm.pool.classes]]
      count = 1
      vcpus = 2
      memory_mib = 256
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/var/lib/m" || cfg.RunDir != DefaultRunDir || cfg.Listen != DefaultListen || cfg.DefaultKind != "runc" ||
		cfg.Containerd.TTRPCAddress != "/run/containerd/containerd.sock.ttrpc" || cfg.Containerd.Handlers["magnetar"] != "runc" ||
		cfg.Backends.Runc.Binary != "/usr/sbin/runc" || cfg.LogLevel != "debug" ||
		!reflect.DeepEqual(cfg.Backends.VM, VMConfig{VCPUs: 2, MemoryMiB: 512, MaxVCPUs: 4, MemoryOverheadMiB: 96,
			BootTimeout: Duration(90 * time.Second), HealthInterval: Duration(5 * time.Second), HealthFailures: 2,
			Pool: VMPoolConfig{MemoryBudgetMiB: 768, Classes: []VMPoolClass{{Count: 2}, {Count: 1, VCPUs: 2, MemoryMiB: 256}}}}) {
		t.Errorf("config: %+v", cfg)
	}
	if cfg.DefaultNetworkMode != "bridge" || len(cfg.Networks) != 1 || cfg.Networks[0].Name != "web" || cfg.Networks[0].Bridge != "br-web" ||
		cfg.Networks[0].Subnet != "10.30.0.0/16" || !cfg.Networks[0].NAT || len(cfg.Networks[0].DNS) != 1 {
		t.Errorf("networks: %q %+v", cfg.DefaultNetworkMode, cfg.Networks)
	}

	for name, doc := range map[string]string{
		"unknown field":       "version = 1\nstate_dri = \"/x\"\n",
		"future version":      "version = 2\n",
		"relative path":       "run_dir = \"run\"\n",
		"bad log level":       "log_level = \"loud\"\n",
		"negative file bound": "api_max_file_bytes = -1\n",
		"empty kind":          "[containerd.handlers]\nx = \"\"\n",
		"not toml":            "version = = 1",
		"negative vcpus":      "[backends.vm]\nmax_vcpus = -1\n",
		"bad duration":        "[backends.vm]\nhealth_interval = \"often\"\n",
		"neg duration":        "[backends.vm]\nboot_timeout = \"-1s\"\n",
		"neg failures":        "[backends.vm]\nhealth_failures = -1\n",
		"neg pool count":      "[[backends.vm.pool.classes]]\ncount = -1\n",
		"neg pool budget":     "[backends.vm.pool]\nmemory_budget_mib = -1\n",
		"gvisor platform":     "[backends.gvisor]\nplatform = \"kvmm\"\n",
		"network mode":        "default_network_mode = \"nat\"\n",
		"network subnet":      "[[networks]]\nname = \"a\"\nbridge = \"br-a\"\nsubnet = \"10.0.0.1/33\"\n",
		"network name":        "[[networks]]\nname = \"A/B\"\nbridge = \"br-a\"\nsubnet = \"10.0.0.0/24\"\n",
		"network bridge":      "[[networks]]\nname = \"a\"\nbridge = \"a-bridge-name-too-long\"\nsubnet = \"10.0.0.0/24\"\n",
		"networks overlap":    "[[networks]]\nname = \"a\"\nbridge = \"br-a\"\nsubnet = \"10.0.0.0/16\"\n[[networks]]\nname = \"b\"\nbridge = \"br-b\"\nsubnet = \"10.0.1.0/24\"\n",
		"network dns":         "[[networks]]\nname = \"a\"\nbridge = \"br-a\"\nsubnet = \"10.0.0.0/24\"\ndns = [\"resolver\"]\n",
	} {
		if _, err := ParseConfig([]byte(doc)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
}

func TestMainFlags(t *testing.T) {
	var out bytes.Buffer
	if code := Main(context.Background(), []string{"--version"}, &out); code != 0 || !strings.Contains(out.String(), "magnetar-sandboxer") {
		t.Errorf("--version: %d %q", code, out.String())
	}
	if code := Main(context.Background(), []string{"--no-such-flag"}, &out); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("version = 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := Main(context.Background(), []string{"--config", bad}, &out); code != 2 || !strings.Contains(out.String(), "version 7") {
		t.Errorf("bad config: exit %d, %q", code, out.String())
	}
	if code := Main(context.Background(), []string{"--log-level", "loud"}, &out); code != 2 {
		t.Errorf("bad log level flag: exit %d", code)
	}
	// A remote listener needs TLS and tenants: refused before anything
	// starts.
	out.Reset()
	if code := Main(context.Background(), []string{"--api-listen", "tcp://127.0.0.1:0"}, &out); code != 2 || !strings.Contains(out.String(), "TLS only") || !strings.Contains(out.String(), "tenants_file") {
		t.Errorf("remote listener without TLS: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := Main(context.Background(), []string{"--api-listen", "tcp://nowhere", "--api-tls-cert", "/c", "--api-tls-key", "/k", "--api-tenants", "/t"}, &out); code != 2 || !strings.Contains(out.String(), "tcp://nowhere") {
		t.Errorf("remote listener without a port: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := Main(context.Background(), []string{"--gvisor-platform", "warp"}, &out); code != 2 || !strings.Contains(out.String(), `backends.gvisor.platform "warp"`) {
		t.Errorf("unknown gvisor platform: exit %d, %q", code, out.String())
	}
}

func TestParseRemoteConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
version = 1
[api_remote]
  listen = ["tcp://0.0.0.0:7443", "tcp://[::1]:7443"]
  tls_cert = "/etc/magnetar/server.crt"
  tls_key = "/etc/magnetar/server.key"
  client_ca = "/etc/magnetar/ca.crt"
  tenants_file = "/etc/magnetar/tenants.toml"
  reload_interval = "5s"
  max_request_bytes = 65536
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Remote
	if len(r.Listen) != 2 || r.TLSCert != "/etc/magnetar/server.crt" || r.ClientCA != "/etc/magnetar/ca.crt" || r.TenantsFile != "/etc/magnetar/tenants.toml" ||
		r.ReloadInterval != Duration(5*time.Second) || r.MaxRequestBytes != 65536 {
		t.Errorf("api_remote: %+v", r)
	}
	if _, err := ParseConfig([]byte("[api_remote]\nlisten = [\"tcp://0.0.0.0:1\"]\nmax_request_bytes = 999999999\n")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("huge max_request_bytes: %v", err)
	}
}

func TestParseTenants(t *testing.T) {
	h := strings.Repeat("ab", 32)
	ts, err := ParseTenants([]byte(`version = 1
[[tenant]]
  name = "acme"
  token_sha256 = ["` + h + `"]
  max_sandboxes = 3
  max_lifetime = "1h"
  rate_limit = 5.5
`))
	if err != nil || ts.Len() != 1 {
		t.Fatalf("ParseTenants = %v, %v", ts, err)
	}
	for name, doc := range map[string]string{
		"plain token":    "[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"secret\"]\n",
		"no token":       "[[tenant]]\nname = \"a\"\n",
		"bad name":       "[[tenant]]\nname = \"a/b\"\ntoken_sha256 = [\"" + h + "\"]\n",
		"duplicate name": "[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"" + h + "\"]\n[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"" + strings.Repeat("cd", 32) + "\"]\n",
		"shared token":   "[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"" + h + "\"]\n[[tenant]]\nname = \"b\"\ntoken_sha256 = [\"" + h + "\"]\n",
		"negative quota": "[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"" + h + "\"]\nmax_sandboxes = -1\n",
		"unknown field":  "[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"" + h + "\"]\nmax_sandbox = 1\n",
		"version":        "version = 2\n",
	} {
		if _, err := ParseTenants([]byte(doc)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listen(path); err == nil {
		t.Fatal("listen over a regular file succeeded")
	}
	if data, _ := os.ReadFile(path); string(data) != "keep me" {
		t.Error("listen clobbered a regular file")
	}
}

// TestLockStateDir: a second sandboxer on the same state dir is refused
// with a clear error; once the first lets go, the dir can be taken.
func TestLockStateDir(t *testing.T) {
	dir := t.TempDir()
	lock, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(dir); err == nil || !strings.Contains(err.Error(), "another magnetar-sandboxer serves state dir") {
		t.Fatalf("second lock = %v, want refused", err)
	}
	lock.Close()
	lock2, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	lock2.Close()
}

func TestScratchDirIsEmptiedAndUsed(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/nowhere")
	dir := filepath.Join(t.TempDir(), "tmp")
	// What a worker killed in the middle of a runc call leaves behind.
	stale := filepath.Join(dir, "pty123", "pty.sock")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := useScratchDir(dir); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Fatalf("scratch dir holds %v (%v), want it empty", entries, err)
	}
	if got := os.Getenv("XDG_RUNTIME_DIR"); got != dir {
		t.Fatalf("XDG_RUNTIME_DIR = %q, want %q", got, dir)
	}
	// go-runc's temporary console sockets now go there.
	sock, err := gorunc.NewTempConsoleSocket()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	if !strings.HasPrefix(sock.Path(), dir+"/") {
		t.Fatalf("console socket %s is outside %s", sock.Path(), dir)
	}
}
