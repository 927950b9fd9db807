package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
)

// procStatus reads a field (in bytes) of /proc/<pid>/status.
func procStatus(t *testing.T, pid int, name string) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == name+":" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return 0
}

type chacha struct{ r *rand.ChaCha8 }

func (c chacha) Read(b []byte) (int, error) { return c.r.Read(b) }

func pattern(n int64) io.Reader { return io.LimitReader(chacha{rand.NewChaCha8([32]byte{9})}, n) }

// TestAPIFiles drives the file service of a sandboxer (direct mode) for a
// runc container made from an image (an overlay root): a 100 MB file
// written and read back through the Go SDK with the sandboxer's resident
// size checked (the bytes stream, they are never held whole), the
// container seeing the file, a watch, and a link to the host's
// /etc/shadow resolved inside the container.
func TestAPIFiles(t *testing.T) {
	s := startAPISandboxer(t)
	testutil.RequireOverlay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, "unix://"+filepath.Join(s.runDir, "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := ociimage.BusyboxImage(ctx, "", "docker.io/library/bbfiles:1", s.dir)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(s.dir, "bb.oci.tar")
	if err := ociimage.WriteArchiveFile(ctx, archive, img); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ImportImage(ctx, archive, nil); err != nil {
		t.Fatal(err)
	}
	sb, err := c.CreateSandbox(ctx, "runc")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sb.Delete(context.Background(), sdk.Force()) }()
	ctr, err := sb.Run(ctx, sdk.FromImage("docker.io/library/bbfiles:1"), sdk.Args("sleep", "300"))
	if err != nil {
		t.Fatal(err)
	}
	files := ctr.Files()

	w, err := files.Watch(ctx, "/tmp", false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	// 100 MB in and out, the sandboxer's peak resident size watched.
	const size = 100 << 20
	pids := []int{s.cmd.Process.Pid}
	if wp := s.worker(); wp != 0 {
		pids = append(pids, wp)
	}
	base := map[int]int64{}
	for _, pid := range pids {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
			t.Fatal(err)
		}
		base[pid] = procStatus(t, pid, "VmRSS")
	}
	start := time.Now()
	info, err := files.WriteFile(ctx, "/tmp/big", pattern(size), sdk.WriteOptions{Atomic: true})
	if err != nil || info.Bytes != size {
		t.Fatalf("WriteFile = %+v, %v", info, err)
	}
	r, err := files.Open(ctx, "/tmp/big")
	if err != nil {
		t.Fatal(err)
	}
	got, want := sha256.New(), sha256.New()
	if _, err := io.Copy(got, r); err != nil {
		t.Fatal(err)
	}
	r.Close()
	_, _ = io.Copy(want, pattern(size))
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("100 MB file read back differs")
	}
	t.Logf("100 MB written and read back in %v", time.Since(start).Round(time.Millisecond))
	for _, pid := range pids {
		rise := procStatus(t, pid, "VmHWM") - base[pid]
		t.Logf("sandboxer process %d: peak resident size %d MiB above its size before", pid, rise>>20)
		if rise > 40<<20 {
			t.Errorf("sandboxer process %d: resident size rose by %d MiB for a 100 MiB transfer", pid, rise>>20)
		}
	}

	// The container sees the file; the watch saw it arrive.
	p, err := ctr.Exec(ctx, sdk.Args("sh", "-c", "wc -c < /tmp/big; ln -s /etc/shadow /tmp/shadow"))
	if err != nil {
		t.Fatal(err)
	}
	out, st, err := p.CombinedOutput(ctx)
	if err != nil || st.Code != 0 || strings.TrimSpace(string(out)) != strconv.Itoa(size) {
		t.Errorf("wc in the container = %q, %+v, %v", out, st, err)
	}
	for {
		ev, err := w.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type == sdk.FileCreated && ev.Path == "/tmp/big" {
			break
		}
	}
	// A link to /etc/shadow reads the container's, never the host's.
	host, _ := os.ReadFile("/etc/shadow")
	b, err := files.ReadFile(ctx, "/tmp/shadow")
	if len(host) > 0 && string(b) == string(host) {
		t.Fatal("read the host's /etc/shadow")
	}
	if err != nil && !errdefs.IsNotFound(err) {
		t.Errorf("read /tmp/shadow = %v", err)
	}

	// After the container exited and until it is deleted.
	if err := ctr.Signal(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := ctr.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := files.Stat(ctx, "/tmp/big"); err != nil || info.Bytes != size {
		t.Errorf("Stat after exit = %+v, %v", info, err)
	}
	if err := ctr.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := files.Stat(ctx, "/"); !errdefs.IsNotFound(err) {
		t.Errorf("files of a deleted container = %v", err)
	}
	// The watch ends with the container's root.
	for {
		if _, err := w.Next(); err != nil {
			break
		}
	}
}
