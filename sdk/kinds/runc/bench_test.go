package runc_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
)

// BenchmarkContainerRun measures a container's whole life through the
// engine and runc: create, start, wait for `true` to exit, delete.
func BenchmarkContainerRun(b *testing.B) {
	testutil.RequireRunc(b)
	bk, err := runc.New(runc.Config{Root: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	ctx := context.Background()
	e, err := engine.New(ctx, engine.Config{StateDir: b.TempDir(), Backends: []backend.Backend{bk}})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateSandbox(ctx, engine.SandboxSpec{ID: "bench", Kind: runc.Kind}); err != nil {
		b.Fatal(err)
	}
	if _, err := e.StartSandbox(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	defer e.DeleteSandbox(ctx, "bench")
	i := 0
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		spec := testutil.BusyboxBundle(b, dir, "true")
		id := fmt.Sprintf("c%d", i)
		i++
		b.StartTimer()
		if _, err := e.CreateContainer(ctx, "bench", engine.ContainerSpec{ID: id, Bundle: dir, Spec: spec}); err != nil {
			b.Fatal(err)
		}
		if _, err := e.Start(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
		if st, err := e.Wait(ctx, "bench", id, ""); err != nil || st.Code != 0 {
			b.Fatalf("wait: %+v, %v", st, err)
		}
		if _, err := e.Delete(ctx, "bench", id, ""); err != nil {
			b.Fatal(err)
		}
	}
}
