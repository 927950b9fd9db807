package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/containerd/errdefs"

	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
)

// Image is an image of the sandboxer's local image store.
type Image struct {
	// Name is the full reference, for example
	// "docker.io/library/alpine:3.22", or the manifest digest of an image
	// imported without a name.
	Name string `json:"name"`
	// Digest is the manifest digest.
	Digest string `json:"digest"`
	// Size is the stored size in bytes: manifest, configuration and
	// compressed layers.
	Size uint64 `json:"size"`
	// Platform is what the image runs on.
	Platform Platform `json:"platform"`
	// Config holds the image's defaults for its containers.
	Config ImageConfig `json:"config"`
}

// Platform is an operating system and CPU architecture.
type Platform struct {
	// OS is for example "linux", or "wasip1" for WebAssembly.
	OS string `json:"os"`
	// Architecture is for example "amd64", "arm64" or "wasm".
	Architecture string `json:"architecture"`
	// Variant is for example "v8"; usually empty.
	Variant string `json:"variant,omitempty"`
}

// String returns "os/architecture[/variant]".
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// IsWasm tells whether the image is a WebAssembly image, to be run by the
// "wasm" kind.
func (p Platform) IsWasm() bool { return p.Architecture == "wasm" }

// ImageConfig holds the runtime defaults an image gives its containers.
type ImageConfig struct {
	// Entrypoint is the command, to which Cmd or a container's Args are
	// appended.
	Entrypoint []string `json:"entrypoint,omitempty"`
	// Cmd holds the default arguments.
	Cmd []string `json:"cmd,omitempty"`
	// Env holds "KEY=value" environment variables.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the working directory; empty means "/".
	WorkingDir string `json:"workingDir,omitempty"`
	// User is "uid[:gid]" or a user name of the image; empty means root.
	User string `json:"user,omitempty"`
	// Labels are the image's labels.
	Labels map[string]string `json:"labels,omitempty"`
}

func imageFromProto(p *imagev1.Image) Image {
	cfg := p.GetConfig()
	return Image{
		Name: p.GetName(), Digest: p.GetDigest(), Size: p.GetSize(),
		Platform: Platform{OS: p.GetPlatform().GetOs(), Architecture: p.GetPlatform().GetArchitecture(), Variant: p.GetPlatform().GetVariant()},
		Config: ImageConfig{
			Entrypoint: cfg.GetEntrypoint(), Cmd: cfg.GetCmd(), Env: cfg.GetEnv(),
			WorkingDir: cfg.GetWorkingDir(), User: cfg.GetUser(), Labels: cfg.GetLabels(),
		},
	}
}

// ImportProgress reports how far an import or a pull is.
type ImportProgress struct {
	// Phase is "copy" (content into the store) or "unpack" (layers into
	// the root file system).
	Phase string `json:"phase"`
	// Image is the image being processed: its name, or its digest.
	Image string `json:"image"`
	// Layer is the digest of the layer being processed; empty between
	// layers.
	Layer string `json:"layer,omitempty"`
	// LayersDone of LayersTotal layers are done.
	LayersDone  uint32 `json:"layersDone"`
	LayersTotal uint32 `json:"layersTotal"`
	// BytesDone of BytesTotal compressed bytes are done.
	BytesDone  uint64 `json:"bytesDone"`
	BytesTotal uint64 `json:"bytesTotal"`
}

func progressFromProto(p *imagev1.Progress) ImportProgress {
	return ImportProgress{
		Phase: enumName(p.GetPhase().String(), "PROGRESS_PHASE_"), Image: p.GetImage(), Layer: p.GetLayer(),
		LayersDone: p.GetLayersDone(), LayersTotal: p.GetLayersTotal(), BytesDone: p.GetBytesDone(), BytesTotal: p.GetBytesTotal(),
	}
}

// ImportImage adds the images of an OCI image layout directory, an OCI
// archive or a `docker save` archive to the store, and unpacks them so
// that containers start without delay. The path is read by the sandboxer,
// on its host; a relative path is made absolute here. progress, if not
// nil, is called as the work advances. Images of the same name are
// replaced.
func (c *Client) ImportImage(ctx context.Context, path string, progress func(ImportProgress)) ([]Image, error) {
	abs, err := filepath.Abs(path)
	if err != nil || path == "" {
		return nil, fmt.Errorf("image path %q: %w", path, errdefs.ErrInvalidArgument)
	}
	stream, err := c.images.ImportImage(ctx, &imagev1.ImportImageRequest{Path: abs, Unpack: true})
	if err != nil {
		return nil, fromAPI(err)
	}
	defer stream.Close()
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("import of %s ended without a result: %w", abs, errdefs.ErrUnavailable)
		}
		if err != nil {
			return nil, fromAPI(err)
		}
		if p := msg.GetProgress(); p != nil && progress != nil {
			progress(progressFromProto(p))
		}
		if imgs := msg.GetImages(); imgs != nil {
			out := make([]Image, 0, len(imgs.GetImages()))
			for _, img := range imgs.GetImages() {
				out = append(out, imageFromProto(img))
			}
			return out, nil
		}
	}
}

// PullImage fetches an image from a registry (over HTTPS) into the store
// and unpacks it. progress, if not nil, is called as the work advances.
func (c *Client) PullImage(ctx context.Context, ref string, progress func(ImportProgress)) (Image, error) {
	stream, err := c.images.PullImage(ctx, &imagev1.PullImageRequest{Ref: ref, Unpack: true})
	if err != nil {
		return Image{}, fromAPI(err)
	}
	defer stream.Close()
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return Image{}, fmt.Errorf("pull of %s ended without a result: %w", ref, errdefs.ErrUnavailable)
		}
		if err != nil {
			return Image{}, fromAPI(err)
		}
		if p := msg.GetProgress(); p != nil && progress != nil {
			progress(progressFromProto(p))
		}
		if img := msg.GetImage(); img != nil {
			return imageFromProto(img), nil
		}
	}
}

// Images lists the images of the store, ordered by name.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	res, err := c.images.ListImages(ctx, &imagev1.ListImagesRequest{})
	if err != nil {
		return nil, fromAPI(err)
	}
	out := make([]Image, 0, len(res.GetImages()))
	for _, img := range res.GetImages() {
		out = append(out, imageFromProto(img))
	}
	return out, nil
}

// Image returns the image with the given reference or manifest digest.
// Short references are normalized the way Docker does ("alpine:3.22").
func (c *Client) Image(ctx context.Context, ref string) (Image, error) {
	res, err := c.images.GetImage(ctx, &imagev1.GetImageRequest{Ref: ref})
	if err != nil {
		return Image{}, fromAPI(err)
	}
	return imageFromProto(res.GetImage()), nil
}

// RemoveImage removes an image name from the store (a manifest digest
// removes every name of the image), and its content once no name refers
// to it. It fails with errdefs.ErrFailedPrecondition while a container
// uses the image.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	_, err := c.images.RemoveImage(ctx, &imagev1.RemoveImageRequest{Ref: ref})
	return fromAPI(err)
}
