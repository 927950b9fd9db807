package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
)

// TestAPISandboxFeatures drives sandboxes of the runc and gvisor kinds
// through a sandboxer's API (the Go SDK), as a code-execution platform
// does: a page of an httpd in the sandbox through DialPort, the sandbox's
// usage, pause and resume with a CPU burner (no CPU while paused), and a
// deadline that ends the sandbox; then the same sandbox features after a
// live upgrade of the sandboxer.
func TestAPISandboxFeatures(t *testing.T) {
	s := startAPISandboxer(t)
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(s.dir, "rootfs"))
	if err := os.MkdirAll(filepath.Join(rootfs, "www"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "www", "index.html"), []byte("hello from the sandbox\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, "unix://"+filepath.Join(s.runDir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kinds := []string{"runc"}
	if _, err := exec.LookPath("runsc"); err == nil || os.Getenv("MAGNETAR_E2E_REQUIRED") == "1" {
		kinds = append(kinds, "gvisor")
	}
	// gvisor's ports are reached through runsc, which needs gVisor's
	// netstack on a network namespace: one the test makes, with loopback.
	netns := "mgn-feat-" + filepath.Base(s.dir)
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", netns).Run() })
	if out, err := exec.Command("ip", "-n", netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up: %v: %s", err, out)
	}
	sbs := map[string]*sdk.Sandbox{}
	for _, kind := range kinds {
		opts := []sdk.SandboxOption{sdk.WithID("feat-" + kind)}
		if kind == "gvisor" {
			opts = append(opts, sdk.WithNetNS("/run/netns/"+netns))
		}
		sb, err := c.CreateSandbox(ctx, kind, opts...)
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		t.Cleanup(func() { _ = sb.Delete(context.Background(), sdk.Force()) })
		for _, args := range [][]string{{"httpd", "-f", "-p", "8080", "-h", "/www"}, {"sh", "-c", "while :; do :; done"}} {
			if _, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args(args...)); err != nil {
				t.Fatalf("%s: run %v: %v", kind, args, err)
			}
		}
		sbs[kind] = sb
	}
	check := func(t *testing.T, sb *sdk.Sandbox) {
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return sb.DialPort(ctx, 8080)
		}}}
		defer hc.CloseIdleConnections()
		var page []byte
		var lastErr error
		ok := testutil.Poll(30*time.Second, func() bool {
			resp, err := hc.Get("http://sandbox/index.html")
			if err != nil {
				lastErr = err
				return false
			}
			defer resp.Body.Close()
			page, _ = io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK
		})
		if !ok {
			t.Fatalf("no page of the sandbox's httpd through DialPort: %v", lastErr)
		}
		if string(page) != "hello from the sandbox\n" {
			t.Errorf("page = %q", page)
		}
		if _, err := sb.DialPort(ctx, 9); !errdefs.IsUnavailable(err) {
			t.Errorf("DialPort to a closed port: %v, want unavailable", err)
		}
		u0, err := sb.Usage(ctx)
		if err != nil || u0.Pids == 0 {
			t.Fatalf("Usage = %+v, %v", u0, err)
		}
		testutil.Eventually(t, 30*time.Second, func() bool {
			u, err := sb.Usage(ctx)
			return err == nil && u.CPU > u0.CPU
		}, "the burner's CPU time grows")
		if err := sb.Pause(ctx); err != nil || sb.State != sdk.SandboxPaused {
			t.Fatalf("Pause: %v, state %s", err, sb.State)
		}
		frozen, err := sb.Usage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The measuring window: frozen containers use no CPU at all.
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
		// gVisor's pause stops the sandbox's tasks; the sentry itself
		// still answers (the usage calls among others): a little CPU,
		// far from the burner's whole one.
		allowed := 10 * time.Millisecond
		if sb.Kind == "gvisor" {
			allowed = 50 * time.Millisecond
		}
		if u, err := sb.Usage(ctx); err != nil || u.CPU > frozen.CPU+allowed {
			t.Errorf("paused sandbox used %v of CPU in 500ms (%v), want at most %v", u.CPU-frozen.CPU, err, allowed)
		}
		if err := sb.Resume(ctx); err != nil || sb.State != sdk.SandboxReady {
			t.Fatalf("Resume: %v, state %s", err, sb.State)
		}
		testutil.Eventually(t, 30*time.Second, func() bool {
			u, err := sb.Usage(ctx)
			return err == nil && u.CPU > frozen.CPU+10*time.Millisecond
		}, "the burner runs again")
	}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) { check(t, sbs[kind]) })
	}

	// After a live upgrade of the sandboxer, the same sandboxes do all of
	// it again, and a deadline set before the upgrade ends one.
	if err := sbs["runc"].SetTimeout(ctx, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	old := s.worker()
	out, err := exec.CommandContext(ctx, s.bin, "upgrade", "--run-dir", s.runDir).CombinedOutput()
	if err != nil {
		t.Fatalf("magnetar-sandboxer upgrade: %v\n%s", err, out)
	}
	s.newWorker(t, old)
	for _, kind := range kinds {
		t.Run("after-upgrade/"+kind, func(t *testing.T) {
			sb, err := c.Sandbox(ctx, sbs[kind].ID)
			if err != nil {
				t.Fatal(err)
			}
			check(t, sb)
		})
	}
	sb, err := c.Sandbox(ctx, sbs["runc"].ID)
	if err != nil || time.Until(sb.ExpiresAt) < 50*time.Minute {
		t.Fatalf("deadline after the upgrade: %v (%v), want about an hour from now", sb.ExpiresAt, err)
	}
	if err := sb.SetTimeout(ctx, time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Minute, func() bool {
		_, err := c.Sandbox(ctx, sb.ID)
		return errdefs.IsNotFound(err)
	}, "the sandbox ends at its deadline")
}
