package embedded_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/embedded"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
)

func TestEmbeddedWithBackends(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c, err := embedded.New(ctx, embedded.WithStateDir(dir), embedded.WithBackends(apitest.Stub{}))
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := c.Kinds(ctx)
	if err != nil || len(kinds) != 1 || kinds[0].Name != apitest.StubKind {
		t.Fatalf("Kinds = %v, %v", kinds, err)
	}
	if _, err := c.CreateSandbox(ctx, apitest.StubKind, sdk.WithID("embedded")); err != nil {
		t.Fatal(err)
	}
	if imgs, err := c.Images(ctx); err != nil || len(imgs) != 0 {
		t.Errorf("Images = %v, %v", imgs, err)
	}
	if _, err := c.Sandbox(ctx, "missing"); !errdefs.IsNotFound(err) {
		t.Errorf("Sandbox(missing) = %v, want NotFound", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Close deleted the sandbox; the state dir stays.
	if ents, err := os.ReadDir(filepath.Join(dir, "sandboxes")); err != nil || len(ents) != 0 {
		t.Errorf("state dir after Close: %v, %v", ents, err)
	}
	if _, err := embedded.New(ctx, embedded.WithStateDir("")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("WithStateDir(\"\") = %v", err)
	}
}

func TestEmbeddedImages(t *testing.T) {
	testutil.RequireRunc(t)
	testutil.RequireOverlay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := embedded.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	archive := apitest.BusyboxArchive(t, "docker.io/library/bbsdk:1")
	var progress []sdk.ImportProgress
	imgs, err := c.ImportImage(ctx, archive, func(p sdk.ImportProgress) { progress = append(progress, p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].Name != "docker.io/library/bbsdk:1" || len(progress) == 0 {
		t.Fatalf("ImportImage = %+v (progress %v)", imgs, progress)
	}
	if img, err := c.Image(ctx, "bbsdk:1"); err != nil || img.Digest != imgs[0].Digest {
		t.Errorf("Image = %+v, %v", img, err)
	}
	sb, err := c.CreateSandbox(ctx, "runc")
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := sb.Run(ctx, sdk.FromImage("bbsdk:1"), sdk.Args("echo", "from", "image"))
	if err != nil {
		t.Fatalf("run from an image: %v", err)
	}
	out, st, err := ctr.CombinedOutput(ctx)
	if err != nil || string(out) != "from image\n" || st.Code != 0 {
		t.Errorf("CombinedOutput = %q, %+v, %v", out, st, err)
	}
	if err := c.RemoveImage(ctx, "bbsdk:1"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("RemoveImage of an image in use = %v, want FailedPrecondition", err)
	}
	if err := ctr.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveImage(ctx, "bbsdk:1"); err != nil {
		t.Errorf("RemoveImage = %v", err)
	}
	if err := c.RemoveImage(ctx, "bbsdk:1"); !errdefs.IsNotFound(err) {
		t.Errorf("RemoveImage again = %v, want NotFound", err)
	}
}
