package ociimage

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationImageName is the index annotation containerd reads the full image
// reference from when it imports an OCI layout
// (github.com/containerd/containerd/v2/core/images.AnnotationImageName).
const AnnotationImageName = "io.containerd.image.name"

// DefaultPath is the PATH given to images whose Config.Env does not set one.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Config is the runtime part of an image configuration.
type Config struct {
	// Entrypoint and Cmd are the default process, as in a Dockerfile.
	Entrypoint []string
	Cmd        []string
	// Env holds KEY=value pairs. DefaultPath is added when no PATH is set.
	Env []string
	// WorkingDir is the initial working directory; "" means "/".
	WorkingDir string
	// User is "uid[:gid]" or a name from the image's /etc/passwd.
	User string
	// Labels become the image config labels.
	Labels map[string]string
}

// Image is one image to put in an archive.
type Image struct {
	// Name is the full reference, e.g. "docker.io/library/busybox:1.36".
	// containerd registers the image under exactly this name.
	Name string
	// Config is the runtime configuration.
	Config Config
	// Layers are applied in order, the first one is the base.
	Layers []Layer
	// Architecture defaults to runtime.GOARCH; the OS is always linux.
	Architecture string
}

// blob is a content-addressed file of the layout.
type blob struct {
	desc ocispec.Descriptor
	data []byte
}

// WriteArchive writes an OCI image layout containing images as a tar stream
// to w. Blobs shared between images are stored once. The output is
// deterministic.
func WriteArchive(ctx context.Context, w io.Writer, images ...Image) error {
	if len(images) == 0 {
		return errors.New("ociimage: no image to write")
	}
	var (
		blobs = map[digest.Digest][]byte{}
		index = ocispec.Index{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: ocispec.MediaTypeImageIndex,
		}
		names = map[string]bool{}
	)
	for _, img := range images {
		if err := ctx.Err(); err != nil {
			return err
		}
		if img.Name == "" {
			return errors.New("ociimage: image without a name")
		}
		if names[img.Name] {
			return fmt.Errorf("ociimage: image %q given twice", img.Name)
		}
		names[img.Name] = true
		manifest, parts, err := imageBlobs(img)
		if err != nil {
			return fmt.Errorf("ociimage: image %s: %w", img.Name, err)
		}
		for _, b := range parts {
			blobs[b.desc.Digest] = b.data
		}
		manifest.desc.Annotations = map[string]string{
			AnnotationImageName:       img.Name,
			ocispec.AnnotationRefName: refName(img.Name),
		}
		index.Manifests = append(index.Manifests, manifest.desc)
	}

	layout, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return err
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: Epoch})
	}
	file := func(name string, data []byte) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: Epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := file(ocispec.ImageLayoutFile, layout); err != nil {
		return err
	}
	if err := file(ocispec.ImageIndexFile, indexJSON); err != nil {
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	digests := make([]digest.Digest, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	slices.Sort(digests)
	for _, d := range digests {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := file("blobs/sha256/"+d.Encoded(), blobs[d]); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteArchiveFile writes the archive to path atomically (a temporary file in
// the same directory, renamed into place).
func WriteArchiveFile(ctx context.Context, path string, images ...Image) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := WriteArchive(ctx, f, images...); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// imageBlobs returns the manifest blob and every blob it references (config,
// layers and the manifest itself).
func imageBlobs(img Image) (manifest blob, all []blob, err error) {
	if len(img.Layers) == 0 {
		return blob{}, nil, errors.New("no layer")
	}
	arch := img.Architecture
	if arch == "" {
		arch = runtime.GOARCH
	}
	platform := ocispec.Platform{OS: "linux", Architecture: arch}

	env := slices.Clone(img.Config.Env)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		env = append([]string{DefaultPath}, env...)
	}
	config := ocispec.Image{
		Platform: platform,
		Config: ocispec.ImageConfig{
			User:       img.Config.User,
			Env:        env,
			Entrypoint: img.Config.Entrypoint,
			Cmd:        img.Config.Cmd,
			WorkingDir: img.Config.WorkingDir,
			Labels:     img.Config.Labels,
		},
		RootFS: ocispec.RootFS{Type: "layers"},
	}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
	}
	for _, l := range img.Layers {
		if l.Digest == "" || l.DiffID == "" || len(l.Blob) == 0 {
			return blob{}, nil, errors.New("layer without content or digests (use BuildLayer)")
		}
		config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, l.DiffID)
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: l.Digest, Size: int64(len(l.Blob))}
		m.Layers = append(m.Layers, desc)
		all = append(all, blob{desc: desc, data: l.Blob})
	}
	cfg, err := newBlob(ocispec.MediaTypeImageConfig, config)
	if err != nil {
		return blob{}, nil, err
	}
	m.Config = cfg.desc
	all = append(all, cfg)
	manifest, err = newBlob(ocispec.MediaTypeImageManifest, m)
	if err != nil {
		return blob{}, nil, err
	}
	manifest.desc.Platform = &platform
	all = append(all, manifest)
	return manifest, all, nil
}

func newBlob(mediaType string, v any) (blob, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return blob{}, err
	}
	return blob{
		desc: ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))},
		data: data,
	}, nil
}

// refName returns the value for org.opencontainers.image.ref.name: the tag of
// a "repo:tag" reference (what `ctr images export` writes), else the whole
// name (by-digest references, names without a tag).
func refName(name string) string {
	if strings.Contains(name, "@") {
		return name
	}
	if i := strings.LastIndexAny(name, ":/"); i >= 0 && name[i] == ':' {
		return name[i+1:]
	}
	return name
}

// Blobs returns img's manifest descriptor (with its platform) and every blob
// a registry serves for it, the manifest included, keyed by digest. The
// output is deterministic, as for WriteArchive.
func Blobs(img Image) (ocispec.Descriptor, map[digest.Digest][]byte, error) {
	manifest, parts, err := imageBlobs(img)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("ociimage: image %s: %w", img.Name, err)
	}
	blobs := make(map[digest.Digest][]byte, len(parts))
	for _, b := range parts {
		blobs[b.desc.Digest] = b.data
	}
	return manifest.desc, blobs, nil
}
