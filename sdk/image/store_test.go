package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// entry is one tar entry of a test layer.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func file(name, body string) entry {
	return entry{name: name, body: body, typ: tar.TypeReg, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, link: target, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(name, target string) entry {
	return entry{name: name, link: target, typ: tar.TypeLink, mode: 0o644}
}

// tarOf returns an uncompressed tar of entries, written as given (no
// cleaning), so that malicious names can be tested.
func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)), ModTime: ociimage.Epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layer returns an ociimage layer (gzip) of entries.
func layer(t *testing.T, entries ...entry) ociimage.Layer {
	t.Helper()
	raw := tarOf(t, entries...)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	return ociimage.Layer{Blob: gz.Bytes(), Digest: digest.FromBytes(gz.Bytes()), DiffID: digest.FromBytes(raw)}
}

// ggcrLayer returns a go-containerregistry layer of entries.
func ggcrLayer(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	raw := tarOf(t, entries...)
	// LayerFromReader would buffer raw in a file under $TMPDIR and leave it.
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// ggcrImage returns an image of layers for platform os/arch.
func ggcrImage(t *testing.T, os, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = os, arch, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return mutate.MediaType(img, types.OCIManifestSchema1)
}

func open(t *testing.T) *image.Store {
	t.Helper()
	s, err := image.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// testImage is a two-layer image: the second layer deletes a file and makes
// a directory opaque.
func testImage(t *testing.T) ociimage.Image {
	base := layer(t,
		dir("etc/"), file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
		file("etc/group", "root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
		dir("a/"), file("a/keep", "keep"), file("a/gone", "gone"),
		dir("d/"), file("d/old1", "1"), file("d/old2", "2"),
	)
	top := layer(t,
		dir("a/"), file("a/.wh.gone", ""),
		dir("d/"), file("d/.wh..wh..opq", ""), file("d/new", "new"),
		dir("bin/"), file("bin/tool", "#!/bin/sh\n"),
	)
	return ociimage.Image{
		Name: "docker.io/library/test:1",
		Config: ociimage.Config{
			Entrypoint: []string{"/bin/tool"}, Cmd: []string{"--flag"}, Env: []string{"A=1"},
			WorkingDir: "/a", User: "app", Labels: map[string]string{"l": "v"},
		},
		Layers: []ociimage.Layer{base, top},
	}
}

func writeArchive(t *testing.T, imgs ...ociimage.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.oci.tar")
	if err := ociimage.WriteArchiveFile(context.Background(), p, imgs...); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImportOCIArchiveAndRootfs(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	var progress []image.Progress
	imgs, err := s.Import(ctx, writeArchive(t, testImage(t)), image.WithProgress(func(p image.Progress) { progress = append(progress, p) }))
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 {
		t.Fatalf("Import = %+v", imgs)
	}
	img := imgs[0]
	if img.Name != "docker.io/library/test:1" || !strings.HasPrefix(img.Digest, "sha256:") || img.Size <= 0 ||
		img.Platform != (image.Platform{OS: "linux", Architecture: runtime.GOARCH}) ||
		!slices.Equal(img.Config.Entrypoint, []string{"/bin/tool"}) || !slices.Equal(img.Config.Cmd, []string{"--flag"}) ||
		!slices.Contains(img.Config.Env, "A=1") || img.Config.WorkingDir != "/a" || img.Config.User != "app" || img.Config.Labels["l"] != "v" {
		t.Errorf("imported image = %+v", img)
	}
	last := progress[len(progress)-1]
	if last.Phase != image.PhaseCopy || last.LayersDone != 2 || last.LayersTotal != 2 || last.BytesDone != last.BytesTotal || last.BytesTotal == 0 {
		t.Errorf("last progress = %+v", last)
	}

	for _, ref := range []string{"test:1", "docker.io/library/test:1", "index.docker.io/library/test:1", img.Digest, "docker.io/library/test@" + img.Digest} {
		if got, err := s.Get(ctx, ref); err != nil || got.Digest != img.Digest {
			t.Errorf("Get(%q) = %+v, %v", ref, got, err)
		}
	}
	if _, err := s.Get(ctx, "test:2"); !errdefs.IsNotFound(err) {
		t.Errorf("Get(missing) = %v, want NotFound", err)
	}
	if _, err := s.Get(ctx, "UPPER/Case!"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Get(bad ref) = %v, want InvalidArgument", err)
	}
	if list, err := s.List(ctx); err != nil || len(list) != 1 || list[0].Name != img.Name {
		t.Errorf("List = %+v, %v", list, err)
	}

	progress = nil
	root, err := s.Rootfs(ctx, "test:1", func(p image.Progress) { progress = append(progress, p) })
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{"a/keep": true, "a/gone": false, "a/.wh.gone": false, "d/old1": false, "d/old2": false, "d/new": true, "d/.wh..wh..opq": false, "bin/tool": true} {
		if got := exists(filepath.Join(root, p)); got != want {
			t.Errorf("%s exists = %v, want %v", p, got, want)
		}
	}
	last = progress[len(progress)-1]
	if last.Phase != image.PhaseUnpack || last.LayersDone != 2 || last.BytesDone != last.BytesTotal {
		t.Errorf("last unpack progress = %+v", last)
	}
	if again, err := s.Rootfs(ctx, img.Digest, nil); err != nil || again != root {
		t.Errorf("second Rootfs = %q, %v; want %q", again, err, root)
	}
	u, err := image.ResolveUser(root, img.Config.User)
	if err != nil || u.UID != 1000 || u.GID != 1000 || !slices.Equal(u.AdditionalGids, []uint32{2000}) {
		t.Errorf("ResolveUser(app) = %+v, %v", u, err)
	}
	if u, err := image.ResolveUser(root, "42:43"); err != nil || u.UID != 42 || u.GID != 43 {
		t.Errorf("ResolveUser(42:43) = %+v, %v", u, err)
	}
	if _, err := image.ResolveUser(root, "nobody-here"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("ResolveUser(unknown) = %v, want InvalidArgument", err)
	}

	if err := s.Remove(ctx, "test:1"); err != nil {
		t.Fatal(err)
	}
	if exists(root) {
		t.Errorf("rootfs %s left after Remove", root)
	}
	if blobs, _ := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256")); len(blobs) != 0 {
		t.Errorf("blobs left after Remove: %v", blobs)
	}
	if err := s.Remove(ctx, "test:1"); !errdefs.IsNotFound(err) {
		t.Errorf("second Remove = %v, want NotFound", err)
	}
}

func TestImportOCILayoutPlatforms(t *testing.T) {
	ctx := context.Background()
	foreign := "s390x"
	if runtime.GOARCH == foreign {
		foreign = "ppc64le"
	}
	host := ggcrImage(t, "linux", runtime.GOARCH, v1.Config{Cmd: []string{"host"}}, ggcrLayer(t, file("host", "h")))
	other := ggcrImage(t, "linux", foreign, v1.Config{Cmd: []string{"foreign"}}, ggcrLayer(t, file("foreign", "f")))
	wasm := ggcrImage(t, "wasip1", "wasm", v1.Config{Entrypoint: []string{"/app.wasm"}}, ggcrLayer(t, file("app.wasm", "\x00asm")))
	index := func(imgs ...v1.Image) v1.ImageIndex {
		var adds []mutate.IndexAddendum
		for _, img := range imgs {
			cf, _ := img.ConfigFile()
			adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture}}})
		}
		return mutate.IndexMediaType(mutate.AppendManifests(empty.Index, adds...), types.OCIImageIndex)
	}
	dirWith := func(t *testing.T, add func(layout.Path)) string {
		d := t.TempDir()
		p, err := layout.Write(d, empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		add(p)
		return d
	}
	named := func(n string) layout.Option {
		return layout.WithAnnotations(map[string]string{"io.containerd.image.name": n, "org.opencontainers.image.ref.name": "tag"})
	}

	t.Run("host from multi-platform", func(t *testing.T) {
		s := open(t)
		d := dirWith(t, func(p layout.Path) {
			if err := p.AppendIndex(index(other, wasm, host), named("example.com/multi:1")); err != nil {
				t.Fatal(err)
			}
		})
		imgs, err := s.Import(ctx, d)
		if err != nil || len(imgs) != 1 || imgs[0].Name != "example.com/multi:1" || imgs[0].Platform.Architecture != runtime.GOARCH || imgs[0].Config.Cmd[0] != "host" {
			t.Fatalf("Import = %+v, %v", imgs, err)
		}
		hd, _ := host.Digest()
		if imgs[0].Digest != hd.String() {
			t.Errorf("digest %s, want the host image's %s", imgs[0].Digest, hd)
		}
	})
	t.Run("wasm only", func(t *testing.T) {
		s := open(t)
		d := dirWith(t, func(p layout.Path) {
			if err := p.AppendIndex(index(other, wasm), named("example.com/wasm:1")); err != nil {
				t.Fatal(err)
			}
		})
		imgs, err := s.Import(ctx, d)
		if err != nil || len(imgs) != 1 || imgs[0].Platform != (image.Platform{OS: "wasip1", Architecture: "wasm"}) {
			t.Fatalf("Import = %+v, %v", imgs, err)
		}
		root, err := s.Rootfs(ctx, "example.com/wasm:1", nil)
		if err != nil || !exists(filepath.Join(root, "app.wasm")) {
			t.Errorf("Rootfs = %q, %v", root, err)
		}
	})
	t.Run("single unnamed wasm manifest", func(t *testing.T) {
		s := open(t)
		d := dirWith(t, func(p layout.Path) {
			if err := p.AppendImage(wasm); err != nil {
				t.Fatal(err)
			}
		})
		imgs, err := s.Import(ctx, d)
		wd, _ := wasm.Digest()
		if err != nil || len(imgs) != 1 || imgs[0].Name != wd.String() {
			t.Fatalf("Import = %+v, %v; want named %s", imgs, err, wd)
		}
	})
	t.Run("no usable platform", func(t *testing.T) {
		s := open(t)
		d := dirWith(t, func(p layout.Path) {
			if err := p.AppendIndex(index(other), named("example.com/other:1")); err != nil {
				t.Fatal(err)
			}
		})
		if _, err := s.Import(ctx, d); !errdefs.IsNotFound(err) {
			t.Errorf("Import = %v, want NotFound", err)
		}
		if _, err := s.Import(ctx, d, image.WithPlatform(image.Platform{OS: "linux", Architecture: foreign})); err != nil {
			t.Errorf("Import with WithPlatform(%s) = %v", foreign, err)
		}
	})
	t.Run("corrupt blob", func(t *testing.T) {
		s := open(t)
		d := dirWith(t, func(p layout.Path) {
			if err := p.AppendImage(host, named("example.com/corrupt:1")); err != nil {
				t.Fatal(err)
			}
		})
		ls, _ := host.Layers()
		ld, _ := ls[0].Digest()
		if err := os.WriteFile(filepath.Join(d, "blobs", "sha256", ld.Hex), []byte("tampered"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Import(ctx, d); !errdefs.IsDataLoss(err) {
			t.Errorf("Import of a tampered layer = %v, want DataLoss", err)
		}
		if _, err := s.Get(ctx, "example.com/corrupt:1"); !errdefs.IsNotFound(err) {
			t.Errorf("Get after failed import = %v, want NotFound", err)
		}
	})
}

// writeDockerSave writes a `docker save` archive: manifest.json with
// RepoTags, the config and an uncompressed layer.tar.
func writeDockerSave(t *testing.T, tags []string, cfg v1.Config, entries ...entry) string {
	t.Helper()
	layerTar := tarOf(t, entries...)
	diffID := sha256.Sum256(layerTar)
	config, err := json.Marshal(v1.ConfigFile{
		Architecture: runtime.GOARCH, OS: "linux", Config: cfg,
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{{Algorithm: "sha256", Hex: hex.EncodeToString(diffID[:])}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgSum := sha256.Sum256(config)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	layerName := hex.EncodeToString(diffID[:]) + "/layer.tar"
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": tags, "Layers": []string{layerName}}})
	p := filepath.Join(t.TempDir(), "save.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		data []byte
	}{{cfgName, config}, {layerName, layerTar}, {"manifest.json", manifest}} {
		if strings.Contains(e.name, "/") {
			tw.WriteHeader(&tar.Header{Name: filepath.Dir(e.name) + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.data))})
		tw.Write(e.data)
	}
	if err := errors.Join(tw.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImportDockerSave(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	p := writeDockerSave(t, []string{"example.com/app:v1", "example.com/app:latest"}, v1.Config{Cmd: []string{"/app"}, User: "7"}, dir("bin/"), file("bin/app", "app"))
	imgs, err := s.Import(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 2 || imgs[0].Name != "example.com/app:v1" || imgs[1].Name != "example.com/app:latest" || imgs[0].Digest != imgs[1].Digest || imgs[0].Config.User != "7" {
		t.Fatalf("Import = %+v", imgs)
	}
	root, err := s.Rootfs(ctx, "example.com/app:latest", nil)
	if err != nil || !exists(filepath.Join(root, "bin", "app")) {
		t.Fatalf("Rootfs = %q, %v", root, err)
	}
	// Untagging one name keeps the content of the other.
	if err := s.Use(ctx, "example.com/app:v1", "c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "example.com/app:latest"); err != nil {
		t.Errorf("Remove of one of two names = %v", err)
	}
	if err := s.Remove(ctx, "example.com/app:v1"); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Remove of an image in use = %v, want FailedPrecondition", err)
	}
	if !exists(root) {
		t.Fatal("rootfs of an image in use was removed")
	}
	if got := s.Holders(ctx); !slices.Equal(got, []string{"c1"}) {
		t.Errorf("Holders = %v", got)
	}
	if err := s.Release(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "example.com/app:v1"); err != nil {
		t.Errorf("Remove after Release = %v", err)
	}
	if exists(root) {
		t.Error("rootfs left after the last name was removed")
	}
}

func TestPull(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	img := ggcrImage(t, "linux", runtime.GOARCH, v1.Config{Cmd: []string{"/pulled"}}, ggcrLayer(t, file("pulled", "yes")))
	ref, err := name.ParseReference(host + "/test/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	wasm := ggcrImage(t, "wasip1", "wasm", v1.Config{}, ggcrLayer(t, file("app.wasm", "\x00asm")))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: wasm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "wasip1", Architecture: "wasm"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	multi, _ := name.ParseReference(host + "/test/multi:v1")
	if err := remote.WriteIndex(multi, idx); err != nil {
		t.Fatal(err)
	}

	s := open(t)
	if _, err := s.Pull(ctx, host+"/test/app:v1"); err == nil {
		t.Fatal("Pull over plain HTTP without WithInsecure succeeded")
	}
	var progress []image.Progress
	got, err := s.Pull(ctx, host+"/test/app:v1", image.WithInsecure(), image.WithProgress(func(p image.Progress) { progress = append(progress, p) }))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got.Name != host+"/test/app:v1" || got.Digest != want.String() || got.Config.Cmd[0] != "/pulled" {
		t.Errorf("Pull = %+v", got)
	}
	if len(progress) == 0 || progress[len(progress)-1].LayersDone != 1 {
		t.Errorf("progress = %+v", progress)
	}
	root, err := s.Rootfs(ctx, got.Name, nil)
	if err != nil || !exists(filepath.Join(root, "pulled")) {
		t.Errorf("Rootfs = %q, %v", root, err)
	}
	got, err = s.Pull(ctx, host+"/test/multi:v1", image.WithInsecure())
	if err != nil || got.Digest != want.String() {
		t.Errorf("Pull of a multi-platform image = %+v, %v; want the host image", got, err)
	}
	if _, err := s.Pull(ctx, host+"/test/missing:v1", image.WithInsecure()); !errdefs.IsNotFound(err) {
		t.Errorf("Pull of a missing image = %v, want NotFound", err)
	}
	if _, err := s.Pull(ctx, "not a ref", image.WithInsecure()); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Pull of a bad ref = %v, want InvalidArgument", err)
	}
}

// TestPullLimits checks WithDialCheck (every connection's address, after
// name resolution) and WithMaxBytes (before any layer is fetched).
func TestPullLimits(t *testing.T) {
	ctx := context.Background()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	_, port, _ := strings.Cut(host, ":")
	img := ggcrImage(t, "linux", runtime.GOARCH, v1.Config{}, ggcrLayer(t, file("f", strings.Repeat("x", 4096))))
	ref, _ := name.ParseReference(host + "/test/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	m, _ := img.Manifest()
	size := int64(len(raw)) + m.Config.Size + m.Layers[0].Size

	s := open(t)
	var seen []netip.Addr
	refuse := image.WithDialCheck(func(a netip.Addr) error {
		seen = append(seen, a)
		return fmt.Errorf("no: %w", errdefs.ErrPermissionDenied)
	})
	for _, r := range []string{host + "/test/app:v1", "localhost:" + port + "/test/app:v1"} {
		seen = nil
		if _, err := s.Pull(ctx, r, image.WithInsecure(), refuse); !errdefs.IsPermissionDenied(err) {
			t.Errorf("Pull of %s with a refusing dial check = %v, want PermissionDenied", r, err)
		}
		if len(seen) == 0 || !seen[0].IsLoopback() {
			t.Errorf("Pull of %s: the check saw %v", r, seen)
		}
	}
	if _, err := s.Pull(ctx, host+"/test/app:v1", image.WithInsecure(), image.WithMaxBytes(size-1)); !errdefs.IsResourceExhausted(err) {
		t.Errorf("Pull over WithMaxBytes = %v, want ResourceExhausted", err)
	}
	if imgs, _ := s.List(ctx); len(imgs) != 0 {
		t.Errorf("refused pulls stored %+v", imgs)
	}
	allow := image.WithDialCheck(func(netip.Addr) error { return nil })
	got, err := s.Pull(ctx, host+"/test/app:v1", image.WithInsecure(), image.WithMaxBytes(size), allow)
	if err != nil || got.Size != size {
		t.Errorf("Pull within the limits = %+v, %v; want size %d", got, err, size)
	}
}

func TestRootfsTraversal(t *testing.T) {
	ctx := context.Background()
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	dots := strings.Repeat("../", 16)
	for _, tc := range []struct {
		name    string
		entries []entry
	}{
		{"dot-dot name", []entry{file("../../../../pwned", "x"), file(dots+strings.TrimPrefix(outside, "/")+"/pwned", "x")}},
		{"absolute name", []entry{file(outside+"/pwned", "x")}},
		{"absolute symlink", []entry{symlink("evil", outside), file("evil/pwned", "x")}},
		{"relative symlink", []entry{symlink("rel", dots+strings.TrimPrefix(outside, "/")), file("rel/pwned", "x")}},
		{"symlink chain", []entry{dir("a/"), symlink("a/b", "/"), symlink("c", "a/b"+outside), file("c/pwned", "x")}},
		{"hard link out", []entry{hardlink("hl", secret), hardlink("hl2", dots+strings.TrimPrefix(secret, "/"))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			if _, err := s.Import(ctx, writeArchive(t, ociimage.Image{Name: "example.com/evil:1", Layers: []ociimage.Layer{layer(t, tc.entries...)}})); err != nil {
				t.Fatal(err)
			}
			root, err := s.Rootfs(ctx, "example.com/evil:1", nil)
			t.Logf("Rootfs = %q, %v", root, err)
			entries, _ := os.ReadDir(outside)
			if len(entries) != 1 {
				t.Errorf("the layer wrote outside the root file system: %v", entries)
			}
			if data, _ := os.ReadFile(secret); string(data) != "secret" {
				t.Errorf("secret changed: %q", data)
			}
			if err == nil {
				// Whatever landed, landed inside; a hard link must not
				// share the outside file's inode.
				for _, hl := range []string{"hl", "hl2"} {
					fi, err1 := os.Stat(filepath.Join(root, hl))
					si, err2 := os.Stat(secret)
					if err1 == nil && err2 == nil && os.SameFile(fi, si) {
						t.Errorf("%s is a hard link to a file outside the root file system", hl)
					}
				}
				for _, p := range []string{filepath.Dir(root), filepath.Dir(filepath.Dir(root))} {
					if exists(filepath.Join(p, "pwned")) {
						t.Errorf("pwned written to %s", p)
					}
				}
			}
		})
	}
}

func TestRootfsConcurrentAndCrashSafe(t *testing.T) {
	ctx := context.Background()
	dirPath := filepath.Join(t.TempDir(), "images")
	s, err := image.Open(dirPath)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	if _, err := s.Import(ctx, writeArchive(t, ociimage.Image{Name: "example.com/big:1", Layers: []ociimage.Layer{layer(t, file("big", string(big)), file("small", "s"))}})); err != nil {
		t.Fatal(err)
	}
	const n = 8
	var (
		wg    sync.WaitGroup
		dirs  [n]string
		errs  [n]error
		mu    sync.Mutex
		first = map[int]bool{} // callers that saw progress
	)
	for i := range n {
		wg.Go(func() {
			dirs[i], errs[i] = s.Rootfs(ctx, "example.com/big:1", func(image.Progress) {
				mu.Lock()
				first[i] = true
				mu.Unlock()
			})
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || dirs[i] != dirs[0] {
			t.Errorf("caller %d: %q, %v; want %q", i, dirs[i], errs[i], dirs[0])
		}
	}
	if data, err := os.ReadFile(filepath.Join(dirs[0], "big")); err != nil || !bytes.Equal(data, big) {
		t.Errorf("big file: %d bytes, %v", len(data), err)
	}
	if len(first) == 0 {
		t.Error("no caller saw progress")
	}
	rootfsDir := filepath.Dir(dirs[0])
	entries, _ := os.ReadDir(rootfsDir)
	if len(entries) != 1 {
		t.Errorf("rootfs dir holds %v, want one root file system", entries)
	}

	// A crash mid-unpack leaves a temporary directory; Open removes it. A
	// second Store on the same directory is refused.
	if _, err := image.Open(dirPath); !errdefs.IsUnavailable(err) {
		t.Errorf("second Open = %v, want Unavailable", err)
	}
	leftovers := []string{filepath.Join(rootfsDir, ".tmp-deadbeef-123"), filepath.Join(dirPath, "blobs", "sha256", ".tmp-abc-1")}
	os.Mkdir(leftovers[0], 0o755)
	os.WriteFile(leftovers[1], nil, 0o644)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = image.Open(dirPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, l := range leftovers {
		if exists(l) {
			t.Errorf("leftover %s survived Open", l)
		}
	}
	if got, err := s.Rootfs(ctx, "example.com/big:1", nil); err != nil || got != dirs[0] {
		t.Errorf("Rootfs after reopen = %q, %v", got, err)
	}

	// A cancelled caller does not break the unpack of another one.
	if err := s.Remove(ctx, "example.com/big:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, writeArchive(t, ociimage.Image{Name: "example.com/big:2", Layers: []ociimage.Layer{layer(t, file("big", string(big)), file("other", "o"))}})); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Rootfs(cctx, "example.com/big:2", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Rootfs with a cancelled context = %v", err)
	}
	tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
	defer tcancel()
	if root, err := s.Rootfs(tctx, "example.com/big:2", nil); err != nil || !exists(filepath.Join(root, "other")) {
		t.Errorf("Rootfs after a cancelled one = %q, %v", root, err)
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"alpine":                        "docker.io/library/alpine:latest",
		"alpine:3.22":                   "docker.io/library/alpine:3.22",
		"docker.io/library/alpine:3":    "docker.io/library/alpine:3",
		"index.docker.io/user/app":      "docker.io/user/app:latest",
		"ghcr.io/a/b:c":                 "ghcr.io/a/b:c",
		"localhost:5000/x":              "localhost:5000/x:latest",
		"ghcr.io/a/b@sha256:" + hex64(): "ghcr.io/a/b@sha256:" + hex64(),
	} {
		if got, err := image.NormalizeRef(in); err != nil || got != want {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "UPPER", "a b", "../x", "x:tag:tag"} {
		if _, err := image.NormalizeRef(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("NormalizeRef(%q) = %v, want InvalidArgument", bad, err)
		}
	}
}

func hex64() string { return fmt.Sprintf("%064x", 1) }

// Importing a FIFO, or a layout whose index or blob is a FIFO, fails at
// once as invalid_argument instead of blocking in open(2); nothing is
// stored.
func TestImportRefusesFIFOs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := open(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "image.tar")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, fifo); !errdefs.IsInvalidArgument(err) {
		t.Errorf("import of a FIFO: %v, want InvalidArgument", err)
	}
	layoutDir := filepath.Join(dir, "layout")
	if _, err := layout.Write(layoutDir, empty.Index); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(layoutDir, "index.json")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(layoutDir, "index.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(ctx, layoutDir); !errdefs.IsInvalidArgument(err) {
		t.Errorf("import of a layout with a FIFO index.json: %v, want InvalidArgument", err)
	}
	if imgs, err := s.List(ctx); err != nil || len(imgs) != 0 {
		t.Errorf("images after refused imports: %v, %v", imgs, err)
	}
}
