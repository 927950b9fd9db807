// Package apitest runs Magnetar's API (sdk/engine + sdk/apiserver) on a unix
// socket for the tests of the Go SDK and the magnetar CLI, like the
// sandboxer daemon serves it, and offers a stub sandbox kind (the in-memory
// backendfake) for tests that need no root.
package apitest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// Serve serves the API over an engine with the given backends and an
// image store on a fresh unix socket and returns the socket's path. Everything, sandboxes
// included, is removed when the test ends.
func Serve(t testing.TB, backends ...backend.Backend) string {
	t.Helper()
	stateDir := t.TempDir()
	e, err := engine.New(context.Background(), engine.Config{StateDir: stateDir, Backends: backends, StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	t.Cleanup(func() { // leave nothing behind, also when a test failed
		for _, sb := range e.ListSandboxes(context.Background()) {
			_ = e.DeleteSandbox(context.Background(), sb.ID)
		}
	})
	images, err := image.Open(filepath.Join(stateDir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { images.Close() })
	api := apiserver.New(e, apiserver.WithImageStore(images), apiserver.WithHostAccess(true))
	t.Cleanup(func() { api.Close() })
	srv := connect.NewServer()
	api.Register(srv)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv)
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "magnetar-api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve API: %v", err)
		}
	})
	t.Cleanup(func() {
		hs.Close()
		wg.Wait()
	})
	return sock
}

// BusyboxArchive writes an OCI archive of a busybox image named name and
// returns its path.
func BusyboxArchive(t testing.TB, name string) string {
	t.Helper()
	ctx := context.Background()
	img, err := ociimage.BusyboxImage(ctx, "", name, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "busybox.oci.tar")
	if err := ociimage.WriteArchiveFile(ctx, path, img); err != nil {
		t.Fatal(err)
	}
	return path
}

// StubKind is the kind name of [Stub].
const StubKind = "stub"

// Stub is a sandbox kind for tests that need no root: the in-memory
// backendfake under the name StubKind. The zero value is ready to use;
// every Stub runs its sandboxes on one fake host.
type Stub struct{}

var stub = sync.OnceValue(func() *backendfake.Backend {
	return backendfake.New(backendfake.Config{Kind: StubKind})
})

// Info describes the stub kind.
func (Stub) Info() backend.Info { return stub().Info() }

// Check always succeeds.
func (Stub) Check(ctx context.Context) error { return stub().Check(ctx) }

// Create makes a fake sandbox.
func (Stub) Create(ctx context.Context, cfg backend.SandboxConfig) (backend.Sandbox, error) {
	return stub().Create(ctx, cfg)
}

// Recover re-attaches to a fake sandbox.
func (Stub) Recover(ctx context.Context, cfg backend.SandboxConfig, state []byte) (backend.Sandbox, error) {
	return stub().Recover(ctx, cfg, state)
}
