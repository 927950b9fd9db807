package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/magnetar-io/magnetar/internal/testutil/prereq"
)

// entry is the part of a tar header the tests compare.
type entry struct {
	Name     string
	Type     byte
	Mode     int64
	Linkname string
	Size     int64
	Body     string
}

// makeTree writes a small tree covering every supported entry kind. created
// varies the order in which files are created and their mtimes, which must
// not change the layer.
func makeTree(t *testing.T, reverse bool) string {
	t.Helper()
	root := t.TempDir()
	steps := []func(){
		func() { mkdir(t, root, "bin", 0o755) },
		func() { mkdir(t, root, "etc", 0o755) },
		func() { mkdir(t, root, "tmp", os.ModeSticky|0o777) },
	}
	if reverse {
		slices.Reverse(steps)
	}
	for _, s := range steps {
		s()
	}
	write(t, root, "bin/tool", "#!/bin/sh\necho tool\n", 0o755)
	if err := os.Link(filepath.Join(root, "bin/tool"), filepath.Join(root, "bin/alias")); err != nil {
		t.Fatal(err)
	}
	write(t, root, "bin/suid", "x", os.ModeSetuid|0o755)
	write(t, root, "etc/passwd", "root:x:0:0::/:/bin/sh\n", 0o644)
	if err := os.Symlink("/bin/tool", filepath.Join(root, "bin/link")); err != nil {
		t.Fatal(err)
	}
	stamp := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if reverse {
		stamp = time.Now()
	}
	for _, p := range []string{"bin/tool", "bin/suid", "etc/passwd", "etc", "bin"} {
		if err := os.Chtimes(filepath.Join(root, p), stamp, stamp); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func mkdir(t *testing.T, root, name string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, root, name, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// readTar returns the entries of an uncompressed tar stream and checks the
// properties every entry of a deterministic layer must have.
func readTar(t *testing.T, r io.Reader) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: owner %d:%d (%q:%q), want 0:0", hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
		if !hdr.ModTime.Equal(Epoch) {
			t.Errorf("%s: mtime %v, want %v", hdr.Name, hdr.ModTime, Epoch)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Linkname, hdr.Size, string(body)})
	}
}

func gunzip(t *testing.T, blob []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestBuildLayer(t *testing.T) {
	ctx := context.Background()
	layer, err := BuildLayer(ctx, makeTree(t, false))
	if err != nil {
		t.Fatal(err)
	}
	if want := digest.FromBytes(layer.Blob); layer.Digest != want {
		t.Errorf("Digest = %s, want sha256 of the blob %s", layer.Digest, want)
	}
	raw := gunzip(t, layer.Blob)
	if want := digest.FromBytes(raw); layer.DiffID != want {
		t.Errorf("DiffID = %s, want sha256 of the uncompressed tar %s", layer.DiffID, want)
	}

	got := readTar(t, bytes.NewReader(raw))
	want := []entry{
		{Name: "bin/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "bin/alias", Type: tar.TypeReg, Mode: 0o755, Size: 20, Body: "#!/bin/sh\necho tool\n"},
		{Name: "bin/link", Type: tar.TypeSymlink, Mode: 0o777, Linkname: "/bin/tool"},
		{Name: "bin/suid", Type: tar.TypeReg, Mode: 0o4755, Size: 1, Body: "x"},
		{Name: "bin/tool", Type: tar.TypeLink, Mode: 0o755, Linkname: "bin/alias"},
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc/passwd", Type: tar.TypeReg, Mode: 0o644, Size: 22, Body: "root:x:0:0::/:/bin/sh\n"},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
	}
	if !slices.Equal(got, want) {
		t.Errorf("layer entries:\n got %+v\nwant %+v", got, want)
	}

	// Creation order and timestamps must not matter.
	again, err := BuildLayer(ctx, makeTree(t, true))
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != layer.Digest || again.DiffID != layer.DiffID {
		t.Errorf("layer not reproducible: %s/%s then %s/%s", layer.Digest, layer.DiffID, again.Digest, again.DiffID)
	}
}

func TestBuildLayerErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := BuildLayer(ctx, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("BuildLayer(missing dir) succeeded")
	}
	root := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := BuildLayer(ctx, root); err == nil || !strings.Contains(err.Error(), "unsupported file type") {
		t.Errorf("BuildLayer(fifo) error = %v, want unsupported file type", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := BuildLayer(cancelled, makeTree(t, false)); !errors.Is(err, context.Canceled) {
		t.Errorf("BuildLayer(cancelled) error = %v, want context.Canceled", err)
	}
}

// layout is an OCI image layout read back from an archive.
type layout struct {
	files map[string][]byte
	names []string // in archive order
}

func readLayout(t *testing.T, archive []byte) layout {
	t.Helper()
	l := layout{files: map[string][]byte{}}
	for _, e := range readTar(t, bytes.NewReader(archive)) {
		l.names = append(l.names, e.Name)
		if e.Type == tar.TypeReg {
			l.files[e.Name] = []byte(e.Body)
		}
	}
	return l
}

// blob returns the blob a descriptor points at, checking size and digest.
func (l layout) blob(t *testing.T, d ocispec.Descriptor) []byte {
	t.Helper()
	data, ok := l.files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok {
		t.Fatalf("blob %s (%s) missing", d.Digest, d.MediaType)
	}
	if int64(len(data)) != d.Size {
		t.Errorf("blob %s: size %d, descriptor says %d", d.Digest, len(data), d.Size)
	}
	return data
}

func TestWriteArchive(t *testing.T) {
	ctx := context.Background()
	base, err := BuildLayer(ctx, makeTree(t, false))
	if err != nil {
		t.Fatal(err)
	}
	extraRoot := t.TempDir()
	write(t, extraRoot, "hello", "hi\n", 0o644)
	extra, err := BuildLayer(ctx, extraRoot)
	if err != nil {
		t.Fatal(err)
	}
	images := []Image{
		{
			Name: "docker.io/library/app:1.0",
			Config: Config{
				Entrypoint: []string{"/bin/tool"},
				Cmd:        []string{"--flag"},
				Env:        []string{"A=b"},
				WorkingDir: "/tmp",
				User:       "65534",
			},
			Layers: []Layer{base, extra},
		},
		{Name: "registry.k8s.io/pause:3.10.2", Config: Config{Entrypoint: []string{"/pause"}}, Layers: []Layer{base}},
	}
	var buf bytes.Buffer
	if err := WriteArchive(ctx, &buf, images...); err != nil {
		t.Fatal(err)
	}
	l := readLayout(t, buf.Bytes())

	// Every blob is named after its content, and there are no others than
	// the two layers, two configs and two manifests.
	var blobNames []string
	for name, data := range l.files {
		enc, ok := strings.CutPrefix(name, "blobs/sha256/")
		if !ok {
			continue
		}
		blobNames = append(blobNames, name)
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != enc {
			t.Errorf("%s: content digest is sha256:%x", name, sum)
		}
	}
	if len(blobNames) != 6 {
		t.Errorf("archive has %d blobs, want 6 (shared layer stored once): %v", len(blobNames), blobNames)
	}
	if want := []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"}; !slices.Equal(l.names[:4], want) {
		t.Errorf("archive starts with %v, want %v", l.names[:4], want)
	}
	if !slices.IsSorted(l.names[4:]) {
		t.Errorf("blobs not sorted: %v", l.names[4:])
	}

	var ol ocispec.ImageLayout
	if err := json.Unmarshal(l.files["oci-layout"], &ol); err != nil || ol.Version != ocispec.ImageLayoutVersion {
		t.Errorf("oci-layout = %s (%v)", l.files["oci-layout"], err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(l.files["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if index.SchemaVersion != 2 || index.MediaType != ocispec.MediaTypeImageIndex || len(index.Manifests) != 2 {
		t.Fatalf("index.json = %s", l.files["index.json"])
	}
	wantRef := map[string]string{"docker.io/library/app:1.0": "1.0", "registry.k8s.io/pause:3.10.2": "3.10.2"}
	for i, md := range index.Manifests {
		img := images[i]
		if got := md.Annotations[AnnotationImageName]; got != img.Name {
			t.Errorf("manifest %d: %s = %q, want %q", i, AnnotationImageName, got, img.Name)
		}
		if got := md.Annotations[ocispec.AnnotationRefName]; got != wantRef[img.Name] {
			t.Errorf("manifest %d: %s = %q, want %q", i, ocispec.AnnotationRefName, got, wantRef[img.Name])
		}
		if md.MediaType != ocispec.MediaTypeImageManifest || md.Platform == nil || md.Platform.OS != "linux" {
			t.Errorf("manifest %d descriptor = %+v", i, md)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(l.blob(t, md), &m); err != nil {
			t.Fatal(err)
		}
		if m.SchemaVersion != 2 || m.Config.MediaType != ocispec.MediaTypeImageConfig || len(m.Layers) != len(img.Layers) {
			t.Fatalf("manifest %s = %+v", img.Name, m)
		}
		var cfg ocispec.Image
		if err := json.Unmarshal(l.blob(t, m.Config), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.OS != "linux" || cfg.Architecture != md.Platform.Architecture || cfg.RootFS.Type != "layers" {
			t.Errorf("config %s = %+v", img.Name, cfg)
		}
		for j, ld := range m.Layers {
			if ld.MediaType != ocispec.MediaTypeImageLayerGzip || ld.Digest != img.Layers[j].Digest {
				t.Errorf("%s layer %d = %+v", img.Name, j, ld)
			}
			if got := digest.FromBytes(gunzip(t, l.blob(t, ld))); cfg.RootFS.DiffIDs[j] != got {
				t.Errorf("%s layer %d: diff_id %s, uncompressed digest %s", img.Name, j, cfg.RootFS.DiffIDs[j], got)
			}
		}
		if !slices.Equal(cfg.Config.Entrypoint, img.Config.Entrypoint) || !slices.Equal(cfg.Config.Cmd, img.Config.Cmd) {
			t.Errorf("%s: entrypoint %q cmd %q", img.Name, cfg.Config.Entrypoint, cfg.Config.Cmd)
		}
		if cfg.Config.Env[0] != DefaultPath {
			t.Errorf("%s: env %q does not start with the default PATH", img.Name, cfg.Config.Env)
		}
	}
	var app ocispec.Image
	var appManifest ocispec.Manifest
	if err := json.Unmarshal(l.blob(t, index.Manifests[0]), &appManifest); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(l.blob(t, appManifest.Config), &app); err != nil {
		t.Fatal(err)
	}
	if app.Config.WorkingDir != "/tmp" || app.Config.User != "65534" || !slices.Equal(app.Config.Env, []string{DefaultPath, "A=b"}) {
		t.Errorf("app config = %+v", app.Config)
	}

	// Same input, same bytes.
	var again bytes.Buffer
	if err := WriteArchive(ctx, &again, images...); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("WriteArchive is not deterministic")
	}

	// WriteArchiveFile writes the same bytes.
	path := filepath.Join(t.TempDir(), "out.tar")
	if err := WriteArchiveFile(ctx, path, images...); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(path); err != nil || !bytes.Equal(data, buf.Bytes()) {
		t.Errorf("WriteArchiveFile content differs (err %v)", err)
	}
}

func TestWriteArchiveErrors(t *testing.T) {
	ctx := context.Background()
	layer, err := BuildLayer(ctx, makeTree(t, false))
	if err != nil {
		t.Fatal(err)
	}
	for name, images := range map[string][]Image{
		"none":      nil,
		"no name":   {{Layers: []Layer{layer}}},
		"no layer":  {{Name: "a:1"}},
		"empty":     {{Name: "a:1", Layers: []Layer{{}}}},
		"duplicate": {{Name: "a:1", Layers: []Layer{layer}}, {Name: "a:1", Layers: []Layer{layer}}},
	} {
		if err := WriteArchive(ctx, io.Discard, images...); err == nil {
			t.Errorf("%s: WriteArchive succeeded", name)
		}
	}
	dir := t.TempDir()
	if err := WriteArchiveFile(ctx, filepath.Join(dir, "x.tar")); err == nil {
		t.Error("WriteArchiveFile without images succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed WriteArchiveFile left %v", entries)
	}
}

func TestRefName(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/busybox:1.36":  "1.36",
		"localhost:5000/x":                "localhost:5000/x",
		"localhost:5000/x:v1":             "v1",
		"busybox":                         "busybox",
		"docker.io/x@sha256:0123456789ab": "docker.io/x@sha256:0123456789ab",
	} {
		if got := refName(in); got != want {
			t.Errorf("refName(%q) = %q, want %q", in, got, want)
		}
	}
}

func requireBusybox(t *testing.T) {
	t.Helper()
	if err := checkStatic(DefaultBusybox); err != nil {
		prereq.SkipOrFail(t, "no static busybox (run `make deps`): %v", err)
	}
}

func TestBuildBusyboxRootfs(t *testing.T) {
	requireBusybox(t)
	ctx := context.Background()
	dir := t.TempDir()
	if err := BuildBusyboxRootfs(ctx, "", dir); err != nil {
		t.Fatal(err)
	}
	bb, err := os.Stat(filepath.Join(dir, "bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "ls", "sleep", "cat"} {
		fi, err := os.Stat(filepath.Join(dir, "bin", applet))
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(bb, fi) {
			t.Errorf("bin/%s is not a hard link to bin/busybox", applet)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp mode = %v (%v), want 1777", fi.Mode(), err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "etc/passwd")); err != nil || !strings.HasPrefix(string(data), "root:x:0:0:") {
		t.Errorf("etc/passwd = %q (%v)", data, err)
	}
	if err := BuildBusyboxRootfs(ctx, "", dir); err == nil {
		t.Error("BuildBusyboxRootfs into a non-empty directory succeeded")
	}
	if err := BuildBusyboxRootfs(ctx, filepath.Join(dir, "etc/passwd"), t.TempDir()); err == nil {
		t.Error("BuildBusyboxRootfs from a non-ELF file succeeded")
	}
}

func TestBusyboxImage(t *testing.T) {
	requireBusybox(t)
	ctx := context.Background()
	img, err := BusyboxImage(ctx, "", "docker.io/library/busybox:1.36", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	entries := readTar(t, bytes.NewReader(gunzip(t, img.Layers[0].Blob)))
	// One copy of busybox (under the first applet name), the rest hard links to it.
	var regular []string
	links := 0
	for _, e := range entries {
		switch {
		case e.Type == tar.TypeReg && strings.HasPrefix(e.Name, "bin/"):
			regular = append(regular, e.Name)
		case e.Type == tar.TypeLink:
			links++
			if e.Linkname != regular[0] {
				t.Errorf("%s links to %s, want %s", e.Name, e.Linkname, regular[0])
			}
		}
	}
	if len(regular) != 1 || links < 100 {
		t.Errorf("bin/ has regular files %v and %d hard links, want one file and a link per applet", regular, links)
	}
	again, err := BusyboxImage(ctx, "", "docker.io/library/busybox:1.36", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if again.Layers[0].Digest != img.Layers[0].Digest {
		t.Error("busybox layer is not reproducible")
	}
}
