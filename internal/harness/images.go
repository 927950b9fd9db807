package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/magnetar-io/magnetar/internal/ociimage"
)

// pausePackage is the stand-in pause program ImportPause compiles.
const pausePackage = modulePath + "/internal/harness/pause"

// ImportImage imports an OCI or Docker image archive into the k8s.io
// namespace (`ctr images import`), under the names its index annotates.
func (c *Containerd) ImportImage(ctx context.Context, tarPath string) error {
	if _, err := c.Ctr(ctx, "images", "import", tarPath); err != nil {
		return fmt.Errorf("harness: import %s: %w", tarPath, err)
	}
	return nil
}

// ImportBusybox imports a busybox image built from the host's static
// busybox (internal/ociimage) as BusyboxImage. The archive is built once per
// instance and kept in the base directory.
func (c *Containerd) ImportBusybox(ctx context.Context) error {
	archive, err := c.cachedArchive(ctx, "busybox.tar", func(tmp string) (ociimage.Image, error) {
		return ociimage.BusyboxImage(ctx, "", BusyboxImage, tmp)
	})
	if err != nil {
		return err
	}
	return c.ImportImage(ctx, archive)
}

// ImportPause compiles the stand-in pause program (internal/harness/pause,
// static, with the go command from PATH in the module root) and imports it
// as PauseImage, the sandbox image of the stock runc handler.
func (c *Containerd) ImportPause(ctx context.Context) error {
	archive, err := c.cachedArchive(ctx, "pause.tar", func(tmp string) (ociimage.Image, error) {
		return pauseImage(ctx, tmp, PauseImage)
	})
	if err != nil {
		return err
	}
	return c.ImportImage(ctx, archive)
}

// pauseImage builds the stand-in pause image named name in the scratch
// directory tmp.
func pauseImage(ctx context.Context, tmp, name string) (ociimage.Image, error) {
	rootfs := filepath.Join(tmp, "pause-rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return ociimage.Image{}, err
	}
	if err := buildProgram(ctx, pausePackage, filepath.Join(rootfs, "pause")); err != nil {
		return ociimage.Image{}, err
	}
	layer, err := ociimage.BuildLayer(ctx, rootfs)
	if err != nil {
		return ociimage.Image{}, err
	}
	return ociimage.Image{
		Name:   name,
		Config: ociimage.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"},
		Layers: []ociimage.Layer{layer},
	}, nil
}

// buildProgram compiles the main package pkg of this module into out,
// static and stripped, with the go command from PATH in the module root.
func buildProgram(ctx context.Context, pkg, out string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", pkg, err, out)
	}
	return nil
}

// cachedArchive returns <base>/images/<name>, building it with build (given
// a scratch directory) if it does not exist yet.
func (c *Containerd) cachedArchive(ctx context.Context, name string, build func(tmp string) (ociimage.Image, error)) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return "", errors.New("harness: containerd stopped")
	}
	archive := c.path(filepath.Join("images", name))
	if _, err := os.Stat(archive); err == nil {
		return archive, nil
	}
	tmp, err := os.MkdirTemp(c.path("images"), "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	img, err := build(tmp)
	if err != nil {
		return "", fmt.Errorf("harness: image %s: %w", name, err)
	}
	if err := ociimage.WriteArchiveFile(ctx, archive, img); err != nil {
		return "", fmt.Errorf("harness: image %s: %w", name, err)
	}
	return archive, nil
}
