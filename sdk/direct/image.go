package direct

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/image"
)

// PullLimits limit the pulls of a caller (see [WithPullLimits]).
type PullLimits struct {
	// DialCheck, if set, is called with the address of every connection
	// the pull is about to open; its error refuses it and fails the pull
	// (see [image.WithDialCheck]).
	DialCheck func(netip.Addr) error
	// MaxBytes, if not 0, bounds the size of the image pulled
	// (errdefs.ErrResourceExhausted; see [image.WithMaxBytes]); below 0
	// refuses every pull.
	MaxBytes int64
}

type pullLimitsKey struct{}

// WithPullLimits returns a context whose PullImage calls are held to l:
// the API server's callers that are tenants.
func WithPullLimits(ctx context.Context, l PullLimits) context.Context {
	return context.WithValue(ctx, pullLimitsKey{}, l)
}

// imageStore returns the image store, or FAILED_PRECONDITION when the
// service has none.
func (s *Service) imageStore() (*image.Store, error) {
	if s.images == nil {
		return nil, fmt.Errorf("this server has no image store: %w", errdefs.ErrFailedPrecondition)
	}
	return s.images, nil
}

// ImageOptions configures ImportImage and PullImage.
type ImageOptions struct {
	// Unpack unpacks the images' root file systems too.
	Unpack bool
	// Insecure lets PullImage talk plain HTTP to the registry.
	Insecure bool
	// Started, if set, is called once the request is found valid, before
	// any work; its error ends the call.
	Started func() error
	// Progress, if set, receives progress reports. The store may report
	// from another request's goroutine (an unpack shared with it), also
	// after the call returned.
	Progress func(image.Progress)
}

func (o ImageOptions) started() error {
	if o.Started == nil {
		return nil
	}
	return o.Started()
}

// ImportImage imports the images of an archive at path, an absolute, clean
// path on the service's host.
func (s *Service) ImportImage(ctx context.Context, path string, o ImageOptions) ([]image.Image, error) {
	st, err := s.imageStore()
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return nil, fmt.Errorf("path %q must be an absolute, clean path: %w", path, errdefs.ErrInvalidArgument)
	}
	if err := o.started(); err != nil {
		return nil, err
	}
	imgs, err := st.Import(ctx, path, image.WithProgress(o.Progress))
	if err != nil {
		return nil, err
	}
	if o.Unpack {
		for _, img := range imgs {
			if _, err := st.Rootfs(ctx, img.Digest, o.Progress); err != nil {
				return nil, err
			}
		}
	}
	return imgs, nil
}

// PullImage pulls an image from its registry.
func (s *Service) PullImage(ctx context.Context, ref string, o ImageOptions) (image.Image, error) {
	st, err := s.imageStore()
	if err != nil {
		return image.Image{}, err
	}
	if _, err := image.NormalizeRef(ref); err != nil {
		return image.Image{}, err
	}
	if err := o.started(); err != nil {
		return image.Image{}, err
	}
	opts := []image.Option{image.WithProgress(o.Progress)}
	if l, ok := ctx.Value(pullLimitsKey{}).(PullLimits); ok {
		if l.DialCheck != nil {
			opts = append(opts, image.WithDialCheck(l.DialCheck))
		}
		if l.MaxBytes != 0 {
			if l.MaxBytes < 0 {
				return image.Image{}, fmt.Errorf("no bytes left for images: %w", errdefs.ErrResourceExhausted)
			}
			opts = append(opts, image.WithMaxBytes(l.MaxBytes))
		}
	}
	if o.Insecure {
		opts = append(opts, image.WithInsecure())
	}
	img, err := st.Pull(ctx, ref, opts...)
	if err != nil {
		return image.Image{}, err
	}
	if o.Unpack {
		if _, err := st.Rootfs(ctx, img.Digest, o.Progress); err != nil {
			return image.Image{}, err
		}
	}
	return img, nil
}

// ListImages lists the store's images.
func (s *Service) ListImages(ctx context.Context) ([]image.Image, error) {
	st, err := s.imageStore()
	if err != nil {
		return nil, err
	}
	return st.List(ctx)
}

// Image returns one image.
func (s *Service) Image(ctx context.Context, ref string) (image.Image, error) {
	st, err := s.imageStore()
	if err != nil {
		return image.Image{}, err
	}
	return st.Get(ctx, ref)
}

// RemoveImage removes an image. Uses registered by containers that no
// longer exist (deleted with their sandbox, say) are released first.
func (s *Service) RemoveImage(ctx context.Context, ref string) error {
	st, err := s.imageStore()
	if err != nil {
		return err
	}
	s.imageMu.Lock()
	defer s.imageMu.Unlock()
	if err := s.releaseStaleImageUses(ctx, st); err != nil {
		return err
	}
	return st.Remove(ctx, ref)
}

// releaseStaleImageUses releases the image uses of containers the engine
// no longer has, except those being created right now. The caller holds
// s.imageMu.
func (s *Service) releaseStaleImageUses(ctx context.Context, st *image.Store) error {
	for _, h := range st.Holders(ctx) {
		if s.creating[h] {
			continue
		}
		if _, err := s.e.SandboxOf(ctx, h); errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) {
			if err := st.Release(ctx, h); err != nil {
				return err
			}
		}
	}
	return nil
}

// useImage registers container id as a user of image ref's root file
// system and returns the image. Until doneCreating, the use counts as
// fresh: RemoveImage does not take it for a leftover.
func (s *Service) useImage(ctx context.Context, ref, id string) (image.Image, error) {
	st, err := s.imageStore()
	if err != nil {
		return image.Image{}, err
	}
	img, err := st.Get(ctx, ref)
	if err != nil {
		return image.Image{}, err
	}
	s.imageMu.Lock()
	defer s.imageMu.Unlock()
	// Pin the digest just read, not whatever ref names by now.
	if err := st.Use(ctx, img.Digest, id); err != nil {
		return image.Image{}, err
	}
	s.creating[id] = true
	return img, nil
}

// doneCreating ends the creation of container id; if it failed, its image
// use is released.
func (s *Service) doneCreating(ctx context.Context, id string, failed bool) {
	s.imageMu.Lock()
	defer s.imageMu.Unlock()
	delete(s.creating, id)
	if failed && s.images != nil {
		_ = s.images.Release(ctx, id)
	}
}
