package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/cli"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

type result struct {
	code           int
	stdout, stderr string
}

// run runs the CLI in-process against the API socket sock.
func run(t *testing.T, sock, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	c := &cli.CLI{Stdin: strings.NewReader(stdin), Stdout: &stdout, Stderr: &stderr}
	if sock != "" {
		args = append([]string{"--address", "unix://" + sock}, args...)
	}
	code := c.Run(ctx, args)
	return result{code, stdout.String(), stderr.String()}
}

func TestKinds(t *testing.T) {
	sock := apitest.Serve(t, apitest.Stub{})
	r := run(t, sock, "", "kinds")
	if r.code != 0 || !strings.Contains(r.stdout, "KIND") || !strings.Contains(r.stdout, "stub") || !strings.Contains(r.stdout, "yes") {
		t.Errorf("kinds = %+v", r)
	}
	// Global flags also after the command.
	r = run(t, "", "", "kinds", "--address", "unix://"+sock, "-o", "json")
	var kinds []sdk.Kind
	if err := json.Unmarshal([]byte(r.stdout), &kinds); err != nil || r.code != 0 || len(kinds) != 1 || kinds[0].Name != "stub" || !kinds[0].Available {
		t.Errorf("kinds -o json = %+v (%v)", r, err)
	}
	// The address from the environment.
	var stdout bytes.Buffer
	c := &cli.CLI{Stdout: &stdout, Getenv: func(k string) string {
		if k == "MAGNETAR_ADDRESS" {
			return sock
		}
		return ""
	}}
	if code := c.Run(context.Background(), []string{"kinds", "-o", "json"}); code != 0 || !strings.Contains(stdout.String(), `"stub"`) {
		t.Errorf("kinds with MAGNETAR_ADDRESS: %d, %q", code, stdout.String())
	}
}

func TestBadAddress(t *testing.T) {
	r := run(t, "/nonexistent/api.sock", "", "ps")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot reach the sandboxer at unix:///nonexistent/api.sock") || !strings.Contains(r.stderr, "is magnetar-sandboxer running?") {
		t.Errorf("ps with a bad address = %+v", r)
	}
	r = run(t, "", "", "--address", "http://127.0.0.1:1", "kinds")
	if r.code != 1 || !strings.Contains(r.stderr, "WithInsecure") {
		t.Errorf("kinds over http = %+v", r)
	}
	// run cannot run: 125.
	r = run(t, "/nonexistent/api.sock", "", "run", "--rootfs", "/", "true")
	if r.code != 125 || !strings.Contains(r.stderr, "cannot reach the sandboxer") {
		t.Errorf("run with a bad address = %+v", r)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"help"}, {"help", "run"}, {"kinds", "--help"}, {"run", "--help"}, {"exec", "-h"}, {"ps", "--help"},
		{"logs", "--help"}, {"stop", "--help"}, {"rm", "--help"}, {"inspect", "--help"}, {"events", "--help"},
		{"images", "--help"}, {"images", "import", "--help"}, {"images", "rm", "--help"}, {"images", "pull", "--help"},
		{"sandbox", "--help"}, {"sandbox", "create", "--help"}, {"sandbox", "rm", "--help"}, {"sandbox", "stop", "--help"},
		{"cp", "--help"}, {"files", "--help"}, {"files", "ls", "--help"}, {"files", "cat", "--help"}, {"files", "watch", "--help"},
	} {
		r := run(t, "", "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || !strings.Contains(r.stdout, "magnetar") || !strings.Contains(r.stdout, "Example") {
			t.Errorf("%v = %+v", args, r)
		}
	}
	if r := run(t, "", "", "frobnicate"); r.code != 1 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command = %+v", r)
	}
	if r := run(t, "", "", "run", "--bogus"); r.code != 125 || !strings.Contains(r.stderr, "bogus") {
		t.Errorf("run --bogus = %+v", r)
	}
	// Egress flags need a bridge network: refused before any call.
	if r := run(t, "/nonexistent/api.sock", "", "run", "--allow", "10.0.0.0/8", "--rootfs", "/", "true"); r.code != 125 || !strings.Contains(r.stderr, "--network bridge") {
		t.Errorf("run --allow without --network bridge = %+v", r)
	}
	if r := run(t, "/nonexistent/api.sock", "", "sandbox", "create", "--network", "none", "--deny-all"); r.code == 0 || !strings.Contains(r.stderr, "--network bridge") {
		t.Errorf("sandbox create --deny-all with --network none = %+v", r)
	}
	if r := run(t, "", "", "ps", "-o", "yaml"); r.code != 1 || !strings.Contains(r.stderr, "yaml") {
		t.Errorf("ps -o yaml = %+v", r)
	}
}

func TestSandboxCommands(t *testing.T) {
	sock := apitest.Serve(t, apitest.Stub{})
	if r := run(t, sock, "", "sandbox", "create", "--kind", "stub", "--id", "pod1", "--label", "app=web"); r.code != 0 || r.stdout != "pod1\n" {
		t.Fatalf("sandbox create = %+v", r)
	}
	r := run(t, sock, "", "ps", "--sandboxes", "-o", "json")
	var sbs []sdk.Sandbox
	if err := json.Unmarshal([]byte(r.stdout), &sbs); err != nil || len(sbs) != 1 || sbs[0].ID != "pod1" || sbs[0].Labels["app"] != "web" || sbs[0].State != sdk.SandboxReady {
		t.Errorf("ps --sandboxes -o json = %+v (%v)", r, err)
	}
	if r := run(t, sock, "", "sandbox"); r.code != 0 || !strings.Contains(r.stdout, "pod1") || !strings.Contains(r.stdout, "app=web") {
		t.Errorf("sandbox = %+v", r)
	}
	r = run(t, sock, "", "inspect", "pod1")
	var got []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 || got[0]["kind"] != "stub" {
		t.Errorf("inspect = %+v (%v)", r, err)
	}
	if r := run(t, sock, "", "inspect", "nothing"); r.code != 1 || !strings.Contains(r.stderr, `no container, sandbox or image "nothing"`) {
		t.Errorf("inspect nothing = %+v", r)
	}
	if r := run(t, sock, "", "sandbox", "egress", "--deny-all", "pod1"); r.code != 1 || !strings.Contains(r.stderr, "not on a bridge network") {
		t.Errorf("sandbox egress on a sandbox without a bridge network = %+v", r)
	}
	if r := run(t, sock, "", "sandbox", "rm", "pod1"); r.code != 1 || !strings.Contains(r.stderr, "pod1") {
		t.Errorf("sandbox rm of a ready sandbox = %+v", r)
	}
	if r := run(t, sock, "", "sandbox", "rm", "-f", "pod1"); r.code != 0 {
		t.Errorf("sandbox rm -f = %+v", r)
	}
	if r := run(t, sock, "", "ps", "-o", "json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("ps -o json with nothing = %+v", r)
	}
}

func TestSandboxTimeouts(t *testing.T) {
	sock := apitest.Serve(t, apitest.Stub{})
	if r := run(t, sock, "", "sandbox", "create", "--kind", "stub", "--id", "pod1", "--timeout", "1h", "--idle-timeout", "10m"); r.code != 0 {
		t.Fatalf("sandbox create --timeout = %+v", r)
	}
	inspect := func() sdk.Sandbox {
		t.Helper()
		r := run(t, sock, "", "ps", "--sandboxes", "-o", "json")
		var sbs []sdk.Sandbox
		if err := json.Unmarshal([]byte(r.stdout), &sbs); err != nil || len(sbs) != 1 {
			t.Fatalf("ps --sandboxes -o json = %+v (%v)", r, err)
		}
		return sbs[0]
	}
	if sb := inspect(); sb.IdleTimeout != 10*time.Minute || time.Until(sb.ExpiresAt) < 59*time.Minute {
		t.Errorf("created: expires at %v, idle timeout %v; want in an hour, 10m", sb.ExpiresAt, sb.IdleTimeout)
	}
	for _, bad := range [][]string{{"pod1", "soon"}, {"pod1", "--", "-5s"}, {"pod1"}} {
		if r := run(t, sock, "", append([]string{"sandbox", "timeout"}, bad...)...); r.code == 0 || !strings.Contains(r.stderr, "sandbox") {
			t.Errorf("sandbox timeout %q = %+v, want a usage error", bad, r)
		}
	}
	if sb := inspect(); sb.IdleTimeout != 10*time.Minute || sb.ExpiresAt.IsZero() {
		t.Errorf("refused timeouts changed the sandbox: %+v", sb)
	}
	if r := run(t, sock, "", "sandbox", "timeout", "pod1", "0"); r.code != 0 {
		t.Fatalf("sandbox timeout pod1 0 = %+v", r)
	}
	if sb := inspect(); !sb.ExpiresAt.IsZero() || sb.IdleTimeout != 0 {
		t.Errorf("after clearing: expires at %v, idle timeout %v; want neither", sb.ExpiresAt, sb.IdleTimeout)
	}
	if r := run(t, sock, "", "sandbox", "timeout", "nothing", "1m"); r.code != 1 || !strings.Contains(r.stderr, "nothing") {
		t.Errorf("sandbox timeout of an unknown sandbox = %+v", r)
	}
}

func serveRunc(t *testing.T) string {
	t.Helper()
	testutil.RequireRunc(t)
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return apitest.Serve(t, []backend.Backend{b}...)
}

func TestRun(t *testing.T) {
	sock := serveRunc(t)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))

	r := run(t, sock, "", "run", "--rm", "--rootfs", rootfs, "-e", "WHO=world", "--", "sh", "-c", "echo hello $WHO; echo oops >&2; exit 3")
	if r.code != 3 || r.stdout != "hello world\n" || r.stderr != "oops\n" {
		t.Errorf("run = %+v; want exit 3, hello world, oops", r)
	}
	r = run(t, sock, "shout\n", "run", "-i", "--rm", "--rootfs", rootfs, "tr", "a-z", "A-Z")
	if r.code != 0 || r.stdout != "SHOUT\n" {
		t.Errorf("run -i = %+v", r)
	}
	// --rm left nothing behind.
	if r := run(t, sock, "", "ps", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("ps after run --rm = %+v", r)
	}
	if r := run(t, sock, "", "sandbox", "ls", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("sandbox ls after run --rm = %+v", r)
	}
	if r := run(t, sock, "", "run", "--rm", "--rootfs", rootfs, "/no/such/command"); r.code == 0 {
		t.Errorf("run of a missing command = %+v", r)
	}
	if r := run(t, sock, "", "run", "--rm", "no-such-image:1", "true"); r.code != 125 || !strings.Contains(r.stderr, "images import") {
		t.Errorf("run of a missing image = %+v", r)
	}
}

func TestDetachedLifecycle(t *testing.T) {
	sock := serveRunc(t)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))

	if r := run(t, sock, "", "run", "-d", "--name", "web", "--memory", "64m", "--rootfs", rootfs, "--", "sh", "-c", "trap 'exit 0' TERM; echo started; while :; do sleep 0.1; done"); r.code != 0 || r.stdout != "web\n" {
		t.Fatalf("run -d = %+v", r)
	}
	if r := run(t, sock, "", "exec", "web", "--", "sh", "-c", "echo in exec; exit 7"); r.code != 7 || r.stdout != "in exec\n" {
		t.Errorf("exec = %+v", r)
	}
	if r := run(t, sock, "", "exec", "--exec-id", "e2", "web", "cat"); r.code != 0 || r.stdout != "" {
		t.Errorf("exec without -i = %+v", r)
	}
	if r := run(t, sock, "", "logs", "web"); r.code != 0 || r.stdout != "started\n" {
		t.Errorf("logs = %+v", r)
	}
	if r := run(t, sock, "", "logs", "--exec-id", "e2", "web"); r.code != 0 || r.stdout != "" {
		t.Errorf("logs --exec-id = %+v", r)
	}
	r := run(t, sock, "", "ps", "-o", "json")
	var ctrs []sdk.Container
	if err := json.Unmarshal([]byte(r.stdout), &ctrs); err != nil || len(ctrs) != 1 || ctrs[0].ID != "web" || ctrs[0].State != sdk.ContainerRunning || ctrs[0].SandboxID != "web" {
		t.Errorf("ps -o json = %+v (%v)", r, err)
	}
	if r := run(t, sock, "", "ps"); r.code != 0 || !strings.Contains(r.stdout, "CONTAINER") || !strings.Contains(r.stdout, "running") {
		t.Errorf("ps = %+v", r)
	}
	if r := run(t, sock, "", "rm", "web"); r.code != 1 || !strings.Contains(r.stderr, "-f") {
		t.Errorf("rm of a running container = %+v", r)
	}
	if r := run(t, sock, "", "stop", "-t", "5s", "web"); r.code != 0 || r.stdout != "web\n" {
		t.Errorf("stop = %+v", r)
	}
	r = run(t, sock, "", "ps", "--sandbox", "web", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &ctrs); err != nil || len(ctrs) != 1 || ctrs[0].State != sdk.ContainerStopped || ctrs[0].ExitStatus != 0 || ctrs[0].ExitedAt.IsZero() {
		t.Errorf("ps after stop = %+v (%v)", r, err)
	}
	if r := run(t, sock, "", "rm", "web"); r.code != 0 || r.stdout != "web\n" {
		t.Errorf("rm = %+v", r)
	}
	// The sandbox made by run went with its last container.
	if r := run(t, sock, "", "sandbox", "ls", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("sandbox ls after rm = %+v", r)
	}
}

func TestRunImageArchive(t *testing.T) {
	sock := serveRunc(t)
	archive := apitest.BusyboxArchive(t, "docker.io/library/bbcli:1")
	r := run(t, sock, "", "run", "--rm", archive, "--", "echo", "from", "image")
	if r.code != 0 || r.stdout != "from image\n" || !strings.Contains(r.stderr, "unpack docker.io/library/bbcli:1") {
		t.Fatalf("run ARCHIVE = %+v", r)
	}
	r = run(t, sock, "", "images", "-o", "json")
	var imgs []sdk.Image
	if err := json.Unmarshal([]byte(r.stdout), &imgs); err != nil || len(imgs) != 1 || imgs[0].Name != "docker.io/library/bbcli:1" {
		t.Errorf("images -o json = %+v (%v)", r, err)
	}
	if r := run(t, sock, "", "run", "--rm", "bbcli:1", "sh", "-c", "exit 5"); r.code != 5 {
		t.Errorf("run by reference = %+v", r)
	}
	if r := run(t, sock, "", "images", "rm", "bbcli:1"); r.code != 0 {
		t.Errorf("images rm = %+v", r)
	}
	if r := run(t, sock, "", "images"); r.code != 0 || strings.Contains(r.stdout, "bbcli") {
		t.Errorf("images after rm = %+v", r)
	}
}

func TestPortForward(t *testing.T) {
	sock := serveRunc(t)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	if err := os.MkdirAll(filepath.Join(rootfs, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "www", "index.html"), []byte("served from the sandbox\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := run(t, sock, "", "run", "-d", "--name", "web", "--rootfs", rootfs, "--", "httpd", "-f", "-p", "8080", "-h", "/www"); r.code != 0 {
		t.Fatalf("run httpd = %+v", r)
	}
	if r := run(t, sock, "", "port-forward", "web", "8080:http"); r.code == 0 || !strings.Contains(r.stderr, "remote port") {
		t.Errorf("port-forward with a bad port = %+v", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr := &testutil.Buffer{}, &testutil.Buffer{}
	done := make(chan int, 1)
	go func() {
		c := &cli.CLI{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr}
		done <- c.Run(ctx, []string{"--address", "unix://" + sock, "port-forward", "web", ":8080"})
	}()
	var addr string
	testutil.Eventually(t, 30*time.Second, func() bool {
		_, rest, ok := strings.Cut(stdout.String(), "Forwarding ")
		addr, _, _ = strings.Cut(rest, " ")
		return ok && addr != ""
	}, "port-forward listens (stderr %s)", stderr)
	var body []byte
	testutil.Eventually(t, 30*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/index.html")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK
	}, "a page through the forwarded port")
	if string(body) != "served from the sandbox\n" {
		t.Errorf("page = %q", body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("port-forward exited with %d after its context ended (stderr %s)", code, stderr)
	}
	if r := run(t, sock, "", "rm", "-f", "web"); r.code != 0 {
		t.Errorf("rm -f web = %+v", r)
	}
}
