package apiserver_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectinprocess"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/internal/testutil/wasmtest"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
)

func TestMain(m *testing.M) {
	// Wasm containers run in the wasm runner, which re-executes the test
	// binary.
	if wasm.RunnerMain() {
		return
	}
	os.Exit(m.Run())
}

// BenchmarkWasmContainerStartAPI measures a Wasm container's start-up
// through Magnetar's API (Connect, in process): CreateContainer,
// StartContainer and WaitProcess of a module that exits at once, with the
// compilation cache warm.
func BenchmarkWasmContainerStartAPI(b *testing.B) {
	testutil.RequireRoot(b, "the wasm kind")
	module := wasmtest.Build(b, "minish")
	rootfs := filepath.Join(b.TempDir(), "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(module)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "minish.wasm"), data, 0o755); err != nil {
		b.Fatal(err)
	}
	wb, err := wasm.New(wasm.Config{Root: wasmtest.CacheRoot(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer wb.Close()
	ctx := context.Background()
	e, err := engine.New(ctx, engine.Config{StateDir: b.TempDir(), Backends: []backend.Backend{wb}, StopTimeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	api := apiserver.New(e, apiserver.WithHostAccess(true))
	defer api.Close()
	srv := connect.NewServer()
	api.Register(srv)
	c := connect.NewClient(connectinprocess.New(srv))
	sbc, ctr := sandboxv1connect.NewSandboxServiceClient(c), containerv1connect.NewContainerServiceClient(c)
	sb, err := sbc.CreateSandbox(ctx, &sandboxv1.CreateSandboxRequest{Kind: wasm.Kind})
	if err != nil {
		b.Fatal(err)
	}
	id := sb.GetSandbox().GetId()
	defer sbc.DeleteSandbox(ctx, &sandboxv1.DeleteSandboxRequest{SandboxId: id, Force: true})
	if _, err := sbc.StartSandbox(ctx, &sandboxv1.StartSandboxRequest{SandboxId: id}); err != nil {
		b.Fatal(err)
	}
	run := func() {
		cr, err := ctr.CreateContainer(ctx, &containerv1.CreateContainerRequest{
			SandboxId: id, Source: &containerv1.CreateContainerRequest_RootfsPath{RootfsPath: rootfs},
			Process: &containerv1.ProcessSpec{Args: []string{"/bin/minish.wasm", "true"}},
		})
		if err != nil {
			b.Fatal(err)
		}
		cid := cr.GetContainer().GetId()
		if _, err := ctr.StartContainer(ctx, &containerv1.StartContainerRequest{ContainerId: cid}); err != nil {
			b.Fatal(err)
		}
		if w, err := ctr.WaitProcess(ctx, &containerv1.WaitProcessRequest{ContainerId: cid}); err != nil || w.GetExitStatus() != 0 {
			b.Fatalf("wait: %v, %v", w, err)
		}
		b.StopTimer()
		if _, err := ctr.DeleteContainer(ctx, &containerv1.DeleteContainerRequest{ContainerId: cid}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	run() // fills the compilation cache
	for b.Loop() {
		run()
	}
}
