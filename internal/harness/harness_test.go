package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

func TestRenderConfig(t *testing.T) {
	d := configData{
		Root: "/b/root", State: "/b/state", GRPC: "/b/run/containerd.sock", LogLevel: "debug",
		PauseImage: PauseImage, CertsDir: "/b/certs.d", CDIDir: "/b/cdi", Runc: "/usr/sbin/runc",
		RuncRoot: "/b/state/runc", Handlers: MagnetarHandlers, RuntimeType: RuntimeType,
		Sandboxer: SandboxerName, ShimPath: "/x/containerd-shim-magnetar-v2", CNIBinDir: "/usr/lib/cni",
		CNIConfDir: "/b/cni/net.d", OptDir: "/b/opt", VerifierDir: "/b/opt/image-verifier/bin",
		ShimSocks: "/b/run/s", SandboxerSocket: "/b/run/sandboxer.sock",
	}
	out, err := renderConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(out)
	for _, want := range []string{
		"version = 3\n",
		`address = "/b/run/containerd.sock"`,
		"restrict_oom_score_adj = true",
		"netns_mounts_under_state_dir = true",
		"[plugins.'io.containerd.nri.v1.nri']\n    disable = true",
		`socket_dir = "/b/run/s"`,
		"[proxy_plugins.\"magnetar\"]\n    type = 'sandbox'\n    address = \"/b/run/sandboxer.sock\"",
		"runtimes.runc]\n        runtime_type = 'io.containerd.runc.v2'\n        sandboxer = 'podsandbox'",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	for _, h := range StreamingHandlers {
		want := fmt.Sprintf("runtimes.%q]\n        runtime_type = %q\n        sandboxer = \"magnetar\"\n"+
			"        disable_pause_image_pull = true\n        io_type = 'streaming'\n", h, RuntimeType)
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks streaming handler %s:\n%s", h, cfg)
		}
	}
	for _, h := range MagnetarHandlers {
		want := fmt.Sprintf("runtimes.%q]\n        runtime_type = %q\n        sandboxer = \"magnetar\"\n"+
			"        disable_pause_image_pull = true\n        runtime_path = \"/x/containerd-shim-magnetar-v2\"\n", h, RuntimeType)
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks handler %s:\n%s", h, cfg)
		}
	}

	d.ShimPath = ""
	out, err = renderConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "runtime_path") {
		t.Errorf("runtime_path set without a shim path:\n%s", out)
	}
}

func TestCNIConflist(t *testing.T) {
	out, err := cniConflist("magnetar-mgh0001", "mgh0001", "10.64.1.0/24", "/b/cni/ipam", false)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type      string `json:"type"`
			Bridge    string `json:"bridge"`
			IsGateway bool   `json:"isGateway"`
			IPMasq    bool   `json:"ipMasq"`
			IPAM      struct {
				Type    string                `json:"type"`
				DataDir string                `json:"dataDir"`
				Ranges  [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(out, &conf); err != nil {
		t.Fatal(err)
	}
	p := conf.Plugins[0]
	if len(conf.Plugins) != 1 || p.Type != "bridge" || p.Bridge != "mgh0001" || p.IsGateway || p.IPMasq ||
		p.IPAM.Type != "host-local" || p.IPAM.DataDir != "/b/cni/ipam" || p.IPAM.Ranges[0][0]["subnet"] != "10.64.1.0/24" {
		t.Errorf("conflist = %s", out)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a/b`:          "/a/b",
		`/a\040b`:       "/a b",
		`/a\134b\011c`:  "/a\\b\tc",
		`/trailing\04`:  `/trailing\04`,
		`/not\999octal`: `/not\999octal`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// requireHarness skips unless the machine can run a private containerd;
// with MAGNETAR_E2E_REQUIRED=1 (make test-e2e) it fails instead.
func requireHarness(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real containerd; skipped with -short")
	}
	binDir, err := DefaultBinDir()
	if err != nil {
		testutil.SkipOrFail(t, "%v", err)
	}
	if err := CheckPrerequisites(binDir); err != nil {
		testutil.SkipOrFail(t, "%v\n(as root: `make deps tools`, then `go test ./internal/harness/`)", err)
	}
	_, err = exec.LookPath("go")
	testutil.Require(t, err == nil, "the go command is needed to build the pause image")
	return binDir
}

// TestRuncPod runs a pod and a busybox container with the stock runc
// handler (podsandbox mode, our pause stand-in), reads its log and checks
// that Stop leaves nothing behind.
func TestRuncPod(t *testing.T) {
	binDir := requireHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var log testutil.Buffer // containerd's log, for failure reports
	c, err := Start(ctx, Options{BinDir: binDir, LogWriter: &log})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			if err := c.Stop(context.WithoutCancel(ctx)); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("containerd log:\n%s", log.String())
		}
	}()
	base, pid, bridge := c.BaseDir(), c.Pid(), c.Bridge()

	if err := c.ImportPause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportBusybox(ctx); err != nil {
		t.Fatal(err)
	}
	images, err := c.Crictl(ctx, "images", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{PauseImage, BusyboxImage} {
		if !bytes.Contains(images, []byte(`"`+name+`"`)) {
			t.Fatalf("crictl images lacks %s:\n%s", name, images)
		}
	}

	cgroupParent := "/magnetar-harness-" + bridge
	pod := map[string]any{
		"metadata":      map[string]any{"name": "harness-pod", "namespace": "harness", "uid": "harness-" + bridge},
		"hostname":      "harness-pod",
		"log_directory": filepath.Join(base, "logs", "pods", "harness-pod"),
		"linux": map[string]any{
			"cgroup_parent": cgroupParent,
			"security_context": map[string]any{
				"namespace_options": map[string]any{"network": 0, "pid": 1, "ipc": 0},
			},
		},
	}
	ctr := map[string]any{
		"metadata": map[string]any{"name": "hello"},
		"image":    map[string]any{"image": BusyboxImage},
		"command":  []string{"sh", "-c", "echo hello from busybox; exec sleep 1000"},
		"log_path": "hello.log",
		"linux": map[string]any{"security_context": map[string]any{
			"namespace_options": map[string]any{"network": 0, "pid": 1, "ipc": 0},
		}},
	}
	podJSON, ctrJSON := writeJSON(t, "pod.json", pod), writeJSON(t, "ctr.json", ctr)

	podID := crictl(ctx, t, c, "runp", "--runtime", RuncHandler, podJSON)
	cid := crictl(ctx, t, c, "create", podID, ctrJSON, podJSON)
	crictl(ctx, t, c, "start", cid)

	if err := waitFor(ctx, 20*time.Second, func() (bool, error) {
		out, err := c.Crictl(ctx, "logs", cid)
		return strings.Contains(string(out), "hello from busybox"), err
	}); err != nil {
		t.Fatalf("container log: %v", err)
	}

	// The pod got an address from this instance's subnet, and the container
	// sees it next to loopback.
	var inspect struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(crictl(ctx, t, c, "inspectp", podID)), &inspect); err != nil {
		t.Fatal(err)
	}
	ip, err := netip.ParseAddr(inspect.Status.Network.IP)
	if err != nil || !netip.MustParsePrefix(c.Subnet()).Contains(ip) {
		t.Fatalf("pod IP %q not in %s (%v)", inspect.Status.Network.IP, c.Subnet(), err)
	}
	addrs := crictl(ctx, t, c, "exec", cid, "ip", "-4", "-o", "addr")
	for _, want := range []string{"127.0.0.1/8", ip.String() + "/24"} {
		if !strings.Contains(addrs, want) {
			t.Errorf("container addresses lack %s:\n%s", want, addrs)
		}
	}

	// Leave the pod running: Stop must remove it.
	stopped = true
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if mounts, err := MountsUnder(base); err != nil || len(mounts) > 0 {
		t.Errorf("mounts left under %s: %v (%v)", base, mounts, err)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("base dir %s still exists (%v)", base, err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) && !zombie(pid) {
		t.Errorf("containerd (pid %d) still running", pid)
	}
	if pids := namespacePids(c.mntNS); len(pids) > 0 {
		t.Errorf("processes left in containerd's mount namespace: %v", pids)
	}
	if out, err := exec.Command("ip", "link", "show", bridge).CombinedOutput(); err == nil {
		t.Errorf("bridge %s still exists: %s", bridge, out)
	}
	roots, err := cgroupRoots()
	if err != nil {
		t.Fatal(err)
	}
	for _, root := range roots {
		if _, err := os.Stat(filepath.Join(root, cgroupParent)); err == nil {
			t.Errorf("cgroup %s left in %s", cgroupParent, root)
		}
	}
}

func writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// crictl runs crictl and returns its trimmed output, failing the test on error.
func crictl(ctx context.Context, t *testing.T, c *Containerd, args ...string) string {
	t.Helper()
	out, err := c.Crictl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// waitFor polls cond every 100ms until it reports true or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
