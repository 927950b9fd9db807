package sdk_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

// protocols are the ways Dial talks to a socket.
var protocols = map[string][]sdk.Option{
	"connect": nil,
	"grpc":    {sdk.WithGRPC()},
}

func dial(t *testing.T, sock string, opts ...sdk.Option) *sdk.Client {
	t.Helper()
	c, err := sdk.Dial(context.Background(), "unix://"+sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDialSandboxLifecycle(t *testing.T) {
	sock := apitest.Serve(t, apitest.Stub{})
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := dial(t, sock, opts...)
			kinds, err := c.Kinds(ctx)
			if err != nil || len(kinds) != 1 || kinds[0].Name != apitest.StubKind || !kinds[0].Available || kinds[0].Capabilities.Isolation != "container" {
				t.Fatalf("Kinds = %+v, %v", kinds, err)
			}
			sb, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("sb-"+name), sdk.WithLabels(map[string]string{"proto": name}))
			if err != nil {
				t.Fatal(err)
			}
			if sb.ID != "sb-"+name || sb.State != sdk.SandboxReady || sb.Kind != apitest.StubKind || sb.StartedAt.IsZero() {
				t.Errorf("CreateSandbox = %+v", sb)
			}
			list, err := c.Sandboxes(ctx, sdk.WithLabel("proto", name), sdk.InState(sdk.SandboxReady))
			if err != nil || len(list) != 1 || list[0].ID != sb.ID {
				t.Errorf("Sandboxes = %v, %v", list, err)
			}
			if list, err := c.Sandboxes(ctx, sdk.WithLabel("proto", "other")); err != nil || len(list) != 0 {
				t.Errorf("Sandboxes(other label) = %v, %v", list, err)
			}
			if err := sb.Stop(ctx, sdk.WithTimeout(0)); err != nil || sb.State != sdk.SandboxStopped {
				t.Errorf("Stop: %v, state %s", err, sb.State)
			}
			if err := sb.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Sandbox(ctx, sb.ID); !errdefs.IsNotFound(err) {
				t.Errorf("Sandbox after Delete: %v, want NotFound", err)
			}
		})
	}
}

func TestErrorClasses(t *testing.T) {
	sock := apitest.Serve(t, apitest.Stub{})
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c := dial(t, sock, opts...)
			_, err := c.Sandbox(ctx, "missing")
			if !errdefs.IsNotFound(err) {
				t.Errorf("Sandbox(missing) = %v, want NotFound", err)
			}
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound {
				t.Errorf("Sandbox(missing) = %v, want a *connect.Error inside", err)
			}
			if !strings.Contains(err.Error(), `"missing"`) {
				t.Errorf("message %q does not name the sandbox", err)
			}
			if _, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("../escape")); !errdefs.IsInvalidArgument(err) {
				t.Errorf("CreateSandbox(../escape) = %v, want InvalidArgument", err)
			}
			if _, err := c.CreateSandbox(ctx, "no-such-kind"); !errdefs.IsInvalidArgument(err) {
				t.Errorf("CreateSandbox(no-such-kind) = %v, want InvalidArgument", err)
			}
			sb, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("dup-"+name))
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Delete(ctx, sdk.Force())
			if _, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("dup-"+name)); !errdefs.IsAlreadyExists(err) {
				t.Errorf("second CreateSandbox(dup) = %v, want AlreadyExists", err)
			}
			if err := sb.Delete(ctx); !errdefs.IsFailedPrecondition(err) {
				t.Errorf("Delete of a ready sandbox without Force = %v, want FailedPrecondition", err)
			}
			if _, err := sb.Run(ctx, sdk.FromRootfs("/nonexistent"), sdk.Args("true")); err == nil {
				t.Error("Run in a stub sandbox succeeded")
			}
			if _, err := c.Container(ctx, "missing"); !errdefs.IsNotFound(err) {
				t.Errorf("Container(missing) = %v, want NotFound", err)
			}
			if _, err := sb.Run(ctx, sdk.Args("true")); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Run without a root file system = %v, want InvalidArgument", err)
			}
		})
	}
}

func TestDialAddresses(t *testing.T) {
	ctx := context.Background()
	sock := apitest.Serve(t, apitest.Stub{})
	if c, err := sdk.Dial(ctx, sock); err != nil { // a bare path
		t.Errorf("Dial(%s) = %v", sock, err)
	} else if _, err := c.Kinds(ctx); err != nil {
		t.Errorf("Kinds over a bare path: %v", err)
	}
	notSocket := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr  string
		opts  []sdk.Option
		class func(error) bool
	}{
		{"", nil, errdefs.IsInvalidArgument},
		{"unix:///nonexistent/api.sock", nil, errdefs.IsUnavailable},
		{"unix://relative.sock", nil, errdefs.IsInvalidArgument},
		{notSocket, nil, errdefs.IsInvalidArgument},
		{"http://127.0.0.1:1", nil, errdefs.IsInvalidArgument},
		{"ftp://example.com", nil, errdefs.IsInvalidArgument},
		{"https://127.0.0.1:1", []sdk.Option{sdk.WithTLSConfig(nil)}, errdefs.IsInvalidArgument},
		{"unix://" + sock, []sdk.Option{sdk.WithTLSConfig(nil)}, errdefs.IsInvalidArgument},
		{"unix://" + sock, []sdk.Option{sdk.WithToken("t")}, errdefs.IsInvalidArgument},
		{"unix://" + sock, []sdk.Option{sdk.WithCAFile("/ca.pem")}, errdefs.IsInvalidArgument},
		{"http://127.0.0.1:1", []sdk.Option{sdk.WithInsecure(), sdk.WithCAFile("/ca.pem")}, errdefs.IsInvalidArgument},
		{"https://127.0.0.1:1", []sdk.Option{sdk.WithToken("a\nb")}, errdefs.IsInvalidArgument},
		{"https://127.0.0.1:1", []sdk.Option{sdk.WithToken("")}, errdefs.IsInvalidArgument},
		{"https://127.0.0.1:1", []sdk.Option{sdk.WithClientCertificate("", "")}, errdefs.IsInvalidArgument},
		{"https://127.0.0.1:1", []sdk.Option{sdk.WithCAFile(notSocket)}, errdefs.IsInvalidArgument}, // no PEM in it
	} {
		if _, err := sdk.Dial(ctx, tc.addr, tc.opts...); !tc.class(err) {
			t.Errorf("Dial(%q) = %v", tc.addr, err)
		}
	}
	// Plain http:// is allowed only when asked for; nothing listens there.
	c, err := sdk.Dial(ctx, "http://127.0.0.1:1", sdk.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kinds(ctx); !errdefs.IsUnavailable(err) {
		t.Errorf("Kinds with nothing listening = %v, want Unavailable", err)
	}
}

func TestDialEnv(t *testing.T) {
	ctx := context.Background()
	sock := apitest.Serve(t, apitest.Stub{})
	t.Setenv("MAGNETAR_ADDRESS", "unix://"+sock)
	c, err := sdk.DialEnv(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Kinds(ctx); err != nil {
		t.Errorf("Kinds through MAGNETAR_ADDRESS: %v", err)
	}
	// A token is for remote sandboxers: refused with the unix socket.
	t.Setenv("MAGNETAR_TOKEN", "secret")
	if _, err := sdk.DialEnv(ctx); !errdefs.IsInvalidArgument(err) {
		t.Errorf("DialEnv with a token and a socket = %v", err)
	}
	t.Setenv("MAGNETAR_TOKEN", "")
	t.Setenv("MAGNETAR_TOKEN_FILE", filepath.Join(t.TempDir(), "missing"))
	if _, err := sdk.DialEnv(ctx); err == nil {
		t.Error("DialEnv with a missing token file succeeded")
	}
}

// runcBackend opens the runc kind, or skips the test.
func runcBackend(t *testing.T) backend.Backend {
	t.Helper()
	testutil.RequireRunc(t)
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestDialContainers(t *testing.T) {
	sock := apitest.Serve(t, runcBackend(t))
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c := dial(t, sock, opts...)
			sb, err := c.CreateSandbox(ctx, "runc", sdk.WithHostname("h-"+name))
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Delete(context.Background(), sdk.Force())

			// stdin, stdout and stderr apart, the exit code.
			ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.WithContainerID("c1-"+name), sdk.WithStdin(),
				sdk.Args("sh", "-c", "tr a-z A-Z; echo to-stderr >&2; hostname; exit 4"))
			if err != nil {
				t.Fatal(err)
			}
			if ctr.State != sdk.ContainerRunning || ctr.PID == 0 || ctr.RootfsPath != rootfs {
				t.Errorf("Run = %+v", ctr)
			}
			in := ctr.Stdin()
			if _, err := io.WriteString(in, "shout\n"); err != nil {
				t.Fatal(err)
			}
			if err := in.Close(); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr strings.Builder
			st, err := ctr.Attach(ctx, &stdout, &stderr)
			if err != nil || st.Code != 4 || stdout.String() != "SHOUT\nh-"+name+"\n" || stderr.String() != "to-stderr\n" {
				t.Errorf("Attach = %+v, %v; stdout %q, stderr %q", st, err, stdout.String(), stderr.String())
			}
			if st, err := ctr.Wait(ctx); err != nil || st.Code != 4 {
				t.Errorf("Wait = %+v, %v", st, err)
			}
			if err := ctr.Refresh(ctx); err != nil || ctr.State != sdk.ContainerStopped || ctr.ExitStatus != 4 {
				t.Errorf("Refresh: %v, %+v", err, ctr)
			}

			// A long-running container: exec, Output, signal.
			long, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args("sleep", "300"))
			if err != nil {
				t.Fatal(err)
			}
			p, err := long.Exec(ctx, sdk.Args("sh", "-c", "echo exec $FOO; exit 2"), sdk.Env("FOO=bar"), sdk.WithExecID("e1"))
			if err != nil {
				t.Fatal(err)
			}
			if p.ExecID != "e1" || p.ContainerID != long.ID {
				t.Errorf("Exec = %+v", p)
			}
			var got []byte
			for chunk, err := range p.Output(ctx) {
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, chunk.Data...)
			}
			if string(got) != "exec bar\n" {
				t.Errorf("exec output %q", got)
			}
			if st, err := p.Wait(ctx); err != nil || st.Code != 2 {
				t.Errorf("exec Wait = %+v, %v", st, err)
			}
			if _, err := long.Exec(ctx, sdk.Args("true"), sdk.WithMemoryLimit(1<<20)); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Exec with a container option = %v, want InvalidArgument", err)
			}
			list, err := sb.Containers(ctx)
			if err != nil || len(list) != 2 {
				t.Errorf("Containers = %v, %v", list, err)
			}
			if err := long.Delete(ctx); !errdefs.IsFailedPrecondition(err) {
				t.Errorf("Delete of a running container = %v, want FailedPrecondition", err)
			}
			if err := long.Signal(ctx, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if st, err := long.Wait(ctx); err != nil || st.Code != 137 {
				t.Errorf("Wait after SIGKILL = %+v, %v", st, err)
			}
			for _, x := range []*sdk.Container{ctr, long} {
				if err := x.Delete(ctx); err != nil {
					t.Errorf("Delete %s: %v", x.ID, err)
				}
			}
			if _, err := c.Container(ctx, ctr.ID); !errdefs.IsNotFound(err) {
				t.Errorf("Container after Delete = %v, want NotFound", err)
			}
		})
	}
}
