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

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/image/v1/imagev1connect"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

type imageClients struct {
	sb  sandboxv1connect.SandboxServiceClient
	ctr containerv1connect.ContainerServiceClient
	img imagev1connect.ImageServiceClient
}

func requireOverlay(t *testing.T) { testutil.RequireOverlay(t) }

// serveImages runs the API with a runc backend and an image store, over
// Connect on a unix socket.
func serveImages(t *testing.T) imageClients {
	t.Helper()
	testutil.RequireRunc(t)
	requireOverlay(t)
	b, err := runc.New(runc.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	stateDir := t.TempDir()
	e, err := engine.New(context.Background(), engine.Config{StateDir: stateDir, Backends: []backend.Backend{b}, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	t.Cleanup(func() {
		for _, sb := range e.ListSandboxes(context.Background()) {
			_ = e.DeleteSandbox(context.Background(), sb.ID)
		}
	})
	st, err := image.Open(filepath.Join(stateDir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	api := apiserver.New(e, apiserver.WithImageStore(st))
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
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	h1 := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	c := connect.NewClient(connecthttp.NewTransport(h1, "http://magnetar"))
	return imageClients{
		sb: sandboxv1connect.NewSandboxServiceClient(c), ctr: containerv1connect.NewContainerServiceClient(c),
		img: imagev1connect.NewImageServiceClient(c),
	}
}

// runOutput attaches to a container's output until it exits.
func runOutput(t *testing.T, ctx context.Context, c containerv1connect.ContainerServiceClient, id string) (string, uint32) {
	t.Helper()
	if _, err := c.StartContainer(ctx, &containerv1.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	stream, err := c.AttachOutput(ctx, &containerv1.AttachOutputRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("AttachOutput: %v", err)
	}
	var out strings.Builder
	var exit *containerv1.ProcessExit
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		out.Write(msg.GetOutput().GetData())
		if msg.GetExit() != nil {
			exit = msg.GetExit()
		}
	}
	if exit == nil {
		t.Fatal("no exit message")
	}
	return out.String(), exit.GetExitStatus()
}

// TestImageServiceOverAPI checks the image service's messages and codes,
// and a container from an image over the API; what such containers get
// (overlay roots, image defaults, image uses) is tested in sdk/direct.
func TestImageServiceOverAPI(t *testing.T) {
	c := serveImages(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	bb, err := ociimage.BusyboxImage(ctx, "", "docker.io/library/bbtest:1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	bb.Config = ociimage.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{"echo $GREETING $EXTRA; pwd; id -u; id -g; echo written >/tmp/f; cat /tmp/f; exit 3"},
		Env:        []string{"GREETING=hello", "EXTRA=image"},
		WorkingDir: "/etc",
		User:       "daemon",
	}
	archive := filepath.Join(t.TempDir(), "bb.oci.tar")
	if err := ociimage.WriteArchiveFile(ctx, archive, bb); err != nil {
		t.Fatal(err)
	}

	// Import, with progress, unpacking at once.
	stream, err := c.img.ImportImage(ctx, &imagev1.ImportImageRequest{Path: archive, Unpack: true})
	if err != nil {
		t.Fatal(err)
	}
	var (
		progress []*imagev1.Progress
		imported *imagev1.ImportedImages
	)
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("ImportImage: %v", err)
		}
		if p := msg.GetProgress(); p != nil {
			progress = append(progress, p)
		}
		if imgs := msg.GetImages(); imgs != nil {
			imported = imgs
		}
	}
	if len(imported.GetImages()) != 1 || imported.GetImages()[0].GetName() != "docker.io/library/bbtest:1" || imported.GetImages()[0].GetConfig().GetUser() != "daemon" {
		t.Fatalf("imported %v", imported)
	}
	var sawUnpack bool
	for _, p := range progress {
		sawUnpack = sawUnpack || p.GetPhase() == imagev1.ProgressPhase_PROGRESS_PHASE_UNPACK && p.GetLayersDone() == 1
	}
	if len(progress) == 0 || !sawUnpack {
		t.Errorf("progress = %v", progress)
	}
	if got, err := c.img.GetImage(ctx, &imagev1.GetImageRequest{Ref: "bbtest:1"}); err != nil || got.GetImage().GetDigest() != imported.GetImages()[0].GetDigest() {
		t.Errorf("GetImage = %v, %v", got, err)
	}
	if list, err := c.img.ListImages(ctx, &imagev1.ListImagesRequest{}); err != nil || len(list.GetImages()) != 1 {
		t.Errorf("ListImages = %v, %v", list, err)
	}
	if _, err := c.img.GetImage(ctx, &imagev1.GetImageRequest{Ref: "missing:1"}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetImage(missing) = %v, want NotFound", err)
	}

	sb, err := c.sb.CreateSandbox(ctx, &sandboxv1.CreateSandboxRequest{Kind: "runc"})
	if err != nil {
		t.Fatal(err)
	}
	sbID := sb.GetSandbox().GetId()
	if _, err := c.sb.StartSandbox(ctx, &sandboxv1.StartSandboxRequest{SandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ctr.CreateContainer(ctx, &containerv1.CreateContainerRequest{
		SandboxId: sbID, Source: &containerv1.CreateContainerRequest_Image{Image: "missing:1"},
	}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("CreateContainer from a missing image = %v, want NotFound", err)
	}

	// The image's defaults, with the request's env on top.
	cr, err := c.ctr.CreateContainer(ctx, &containerv1.CreateContainerRequest{
		SandboxId: sbID, Source: &containerv1.CreateContainerRequest_Image{Image: "bbtest:1"},
		Process: &containerv1.ProcessSpec{Env: []string{"EXTRA=request"}},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	id := cr.GetContainer().GetId()
	if cr.GetContainer().GetImage() != "bbtest:1" || strings.Join(cr.GetContainer().GetProcess().GetArgs(), " ") != "/bin/sh -c "+bb.Config.Cmd[0] {
		t.Errorf("created %v", cr.GetContainer())
	}
	out, code := runOutput(t, ctx, c.ctr, id)
	if out != "hello request\n/etc\n1\n1\nwritten\n" || code != 3 {
		t.Errorf("output %q, exit %d; want the image's command as daemon in /etc, exit 3", out, code)
	}

	if _, err := c.img.RemoveImage(ctx, &imagev1.RemoveImageRequest{Ref: "bbtest:1"}); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("RemoveImage of an image in use = %v, want FailedPrecondition", err)
	}
	if _, err := c.ctr.DeleteContainer(ctx, &containerv1.DeleteContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("DeleteContainer: %v", err)
	}
	if _, err := c.img.RemoveImage(ctx, &imagev1.RemoveImageRequest{Ref: "bbtest:1"}); err != nil {
		t.Errorf("RemoveImage after the container is gone = %v", err)
	}
}

func TestImageServiceErrors(t *testing.T) {
	c := serveImages(t)
	ctx := context.Background()
	recv := func(s interface {
		Receive() (*imagev1.ImportImageResponse, error)
	}) error {
		for {
			if _, err := s.Receive(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}
	for path, want := range map[string]connect.Code{
		"relative.tar":           connect.CodeInvalidArgument,
		"/nonexistent/image.tar": connect.CodeNotFound,
		"/etc/hostname":          connect.CodeInvalidArgument,
	} {
		s, err := c.img.ImportImage(ctx, &imagev1.ImportImageRequest{Path: path})
		if err == nil {
			err = recv(s)
		}
		if connect.CodeOf(err) != want {
			t.Errorf("ImportImage(%s) = %v, want %v", path, err, want)
		}
	}
	if _, err := c.img.RemoveImage(ctx, &imagev1.RemoveImageRequest{Ref: "nope:1"}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("RemoveImage(missing) = %v, want NotFound", err)
	}
	if _, err := c.img.GetImage(ctx, &imagev1.GetImageRequest{Ref: "Not A Ref"}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("GetImage(bad ref) = %v, want InvalidArgument", err)
	}
}
