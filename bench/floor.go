package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/pdeathsig"
)

// floorKey is the Direct entry of `runsc run` done by hand.
const floorKey = "runsc-floor"

// runscPlatform is the platform the sandboxer's gvisor kind chose: the
// choice it keeps in its runsc root.
func (e *env) runscPlatform() (string, error) {
	data, err := os.ReadFile(filepath.Join(e.runDir, "runsc", "platform.json"))
	if err != nil {
		return "", fmt.Errorf("the gvisor kind's platform choice: %w", err)
	}
	var rec struct{ Platform string }
	if err := json.Unmarshal(data, &rec); err != nil || rec.Platform == "" {
		return "", fmt.Errorf("the gvisor kind's platform choice: %q: %v", data, err)
	}
	return rec.Platform, nil
}

// runscFloor measures the floor of a gVisor container's start: `runsc
// run` of the same busybox workload done by hand (no containerd, no
// sandboxer, no image store, no network: a bundle made once), on the
// platform the gvisor kind chose. Run and first output are from the
// command's start until its first output byte; Delete is from there until
// runsc run returned (the container's exit and runsc's teardown).
func (b *bench) runscFloor(ctx context.Context, n int) error {
	platform, err := b.e.runscPlatform()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(b.e.base, "floor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bundle, root := filepath.Join(dir, "bundle"), filepath.Join(dir, "root")
	if err := ociimage.BuildBusyboxRootfs(ctx, "", filepath.Join(bundle, "rootfs")); err != nil {
		return err
	}
	spec, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, "bench"), nil, &containers.Container{ID: "floor"})
	if err != nil {
		return err
	}
	spec.Root = &specs.Root{Path: "rootfs"}
	spec.Process.Args = []string{"/bin/sh", "-c", "echo ready"}
	spec.Process.Env = []string{"PATH=/bin"}
	spec.Linux.CgroupsPath = ""
	data, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		return err
	}
	d := &Direct{}
	b.res.Direct[floorKey] = d
	for i := range n {
		first, total, err := runscOnce(ctx, root, platform, bundle, fmt.Sprintf("floor-%d", i))
		if err != nil {
			return err
		}
		d.Run = append(d.Run, ms(first))
		d.FirstOutput = append(d.FirstOutput, ms(first))
		d.Delete = append(d.Delete, ms(total-first))
	}
	return nil
}

// runscOnce runs the bundle once with runsc and returns the time to its
// first output and until runsc run returned.
func runscOnce(ctx context.Context, root, platform, bundle, id string) (first, total time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "runsc", "--root", root, "--platform="+platform, "--network=none", "run", "--bundle", bundle, id)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := pdeathsig.Start(cmd, syscall.SIGKILL); err != nil {
		return 0, 0, err
	}
	defer func() {
		if err != nil {
			_ = exec.Command("runsc", "--root", root, "delete", "-force", id).Run()
		}
	}()
	r := bufio.NewReader(out)
	if _, rerr := r.ReadByte(); rerr != nil {
		_ = cmd.Wait()
		return 0, 0, fmt.Errorf("runsc run by hand printed nothing: %v: %s", rerr, stderr.String())
	}
	first = time.Since(t0)
	_, _ = r.WriteTo(io.Discard)
	if err := cmd.Wait(); err != nil {
		return 0, 0, fmt.Errorf("runsc run by hand: %v: %s", err, stderr.String())
	}
	return first, time.Since(t0), nil
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
