package apiserver_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"google.golang.org/protobuf/types/known/durationpb"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

type clients struct {
	sb  sandboxv1connect.SandboxServiceClient
	ctr containerv1connect.ContainerServiceClient
}

// serve runs the API on a unix socket with a runc backend and returns
// clients for the Connect, gRPC and gRPC-Web protocols.
func serve(t *testing.T) map[string]clients {
	t.Helper()
	testutil.RequireRunc(t)
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	e, err := engine.New(context.Background(), engine.Config{StateDir: t.TempDir(), Backends: []backend.Backend{b}, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	t.Cleanup(func() { // leave nothing behind, also when a test failed
		for _, sb := range e.ListSandboxes(context.Background()) {
			_ = e.DeleteSandbox(context.Background(), sb.ID)
		}
	})
	api := apiserver.New(e, apiserver.WithHostAccess(true))
	t.Cleanup(func() { api.Close() })
	srv := connect.NewServer()
	api.Register(srv)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv)
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}
	h1 := &http.Client{Transport: &http.Transport{DialContext: dial}}
	out := map[string]clients{}
	for name, tr := range map[string]connect.Transport{
		"connect": connecthttp.NewTransport(h1, "http://magnetar"),
		"grpc":    connecthttp.NewTransport(h2c(dial), "http://magnetar", connecthttp.WithGRPC()),
		"grpcweb": connecthttp.NewTransport(h1, "http://magnetar", connecthttp.WithGRPCWeb()),
	} {
		c := connect.NewClient(tr)
		out[name] = clients{sb: sandboxv1connect.NewSandboxServiceClient(c), ctr: containerv1connect.NewContainerServiceClient(c)}
	}
	return out
}

func h2c(dial func(ctx context.Context, n, a string) (net.Conn, error)) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{DialContext: dial, Protocols: p}}
}

func busyboxRootfs(t *testing.T) string {
	return testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
}

func TestContainerLifecycleOverAPI(t *testing.T) {
	all := serve(t)
	rootfs := busyboxRootfs(t)
	for proto, c := range all {
		t.Run(proto, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			kinds, err := c.sb.ListKinds(ctx, &sandboxv1.ListKindsRequest{})
			if err != nil || len(kinds.GetKinds()) != 1 || kinds.GetKinds()[0].GetName() != "runc" || !kinds.GetKinds()[0].GetAvailable() {
				t.Fatalf("ListKinds = %v, %v", kinds, err)
			}
			sb, err := c.sb.CreateSandbox(ctx, &sandboxv1.CreateSandboxRequest{Kind: "runc", Hostname: "api-" + proto})
			if err != nil {
				t.Fatalf("CreateSandbox: %v", err)
			}
			id := sb.GetSandbox().GetId()
			if _, err := c.sb.StartSandbox(ctx, &sandboxv1.StartSandboxRequest{SandboxId: id}); err != nil {
				t.Fatalf("StartSandbox: %v", err)
			}
			cr, err := c.ctr.CreateContainer(ctx, &containerv1.CreateContainerRequest{
				SandboxId: id, Source: &containerv1.CreateContainerRequest_RootfsPath{RootfsPath: rootfs},
				Process: &containerv1.ProcessSpec{Args: []string{"sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 4"}, OpenStdin: true},
			})
			if err != nil {
				t.Fatalf("CreateContainer: %v", err)
			}
			cid := cr.GetContainer().GetId()
			if _, err := c.ctr.StartContainer(ctx, &containerv1.StartContainerRequest{ContainerId: cid}); err != nil {
				t.Fatalf("StartContainer: %v", err)
			}
			if _, err := c.ctr.WriteStdin(ctx, &containerv1.WriteStdinRequest{ContainerId: cid, Data: []byte("shout\n"), Eof: true}); err != nil {
				t.Fatalf("WriteStdin: %v", err)
			}
			stream, err := c.ctr.AttachOutput(ctx, &containerv1.AttachOutputRequest{ContainerId: cid})
			if err != nil {
				t.Fatalf("AttachOutput: %v", err)
			}
			var stdout, stderr strings.Builder
			var exit *containerv1.ProcessExit
			for {
				msg, err := stream.Receive()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("receive: %v", err)
				}
				switch {
				case msg.GetOutput().GetStream() == containerv1.OutputStream_OUTPUT_STREAM_STDOUT:
					stdout.Write(msg.GetOutput().GetData())
				case msg.GetOutput().GetStream() == containerv1.OutputStream_OUTPUT_STREAM_STDERR:
					stderr.Write(msg.GetOutput().GetData())
				case msg.GetExit() != nil:
					exit = msg.GetExit()
				}
			}
			if stdout.String() != "SHOUT\n" || stderr.String() != "to-stderr\n" || exit.GetExitStatus() != 4 {
				t.Errorf("got stdout %q stderr %q exit %v; want SHOUT, to-stderr, 4", stdout.String(), stderr.String(), exit)
			}
			got, err := c.ctr.GetContainer(ctx, &containerv1.GetContainerRequest{ContainerId: cid})
			if err != nil || got.GetContainer().GetState() != containerv1.ContainerState_CONTAINER_STATE_STOPPED || got.GetContainer().GetRootfsPath() != rootfs {
				t.Errorf("GetContainer = %v, %v", got, err)
			}
			if _, err := c.ctr.DeleteContainer(ctx, &containerv1.DeleteContainerRequest{ContainerId: cid}); err != nil {
				t.Fatalf("DeleteContainer: %v", err)
			}
			if _, err := c.ctr.GetContainer(ctx, &containerv1.GetContainerRequest{ContainerId: cid}); connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("GetContainer after delete: %v, want NotFound", err)
			}
			if _, err := c.sb.DeleteSandbox(ctx, &sandboxv1.DeleteSandboxRequest{SandboxId: id}); connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Errorf("DeleteSandbox of a ready sandbox without force: %v, want FailedPrecondition", err)
			}
			if _, err := c.sb.DeleteSandbox(ctx, &sandboxv1.DeleteSandboxRequest{SandboxId: id, Force: true}); err != nil {
				t.Fatalf("DeleteSandbox: %v", err)
			}
			list, err := c.sb.ListSandboxes(ctx, &sandboxv1.ListSandboxesRequest{})
			if err != nil || len(list.GetSandboxes()) != 0 {
				t.Errorf("ListSandboxes after delete = %v, %v", list, err)
			}
		})
	}
}

func TestAPIErrors(t *testing.T) {
	c := serve(t)["connect"]
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() error
		want connect.Code
	}{
		{"path-like sandbox id", func() error {
			_, err := c.sb.CreateSandbox(ctx, &sandboxv1.CreateSandboxRequest{SandboxId: "../x", Kind: "runc"})
			return err
		}, connect.CodeInvalidArgument},
		{"unknown kind", func() error {
			_, err := c.sb.CreateSandbox(ctx, &sandboxv1.CreateSandboxRequest{Kind: "nope"})
			return err
		}, connect.CodeInvalidArgument},
		{"missing sandbox", func() error {
			_, err := c.sb.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: "missing"})
			return err
		}, connect.CodeNotFound},
		{"negative stop timeout", func() error {
			_, err := c.sb.StopSandbox(ctx, &sandboxv1.StopSandboxRequest{SandboxId: "missing", Timeout: durationpb.New(-time.Second)})
			return err
		}, connect.CodeInvalidArgument},
		{"missing container", func() error {
			_, err := c.ctr.WaitProcess(ctx, &containerv1.WaitProcessRequest{ContainerId: "missing"})
			return err
		}, connect.CodeNotFound},
	} {
		if err := tc.call(); connect.CodeOf(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
}
