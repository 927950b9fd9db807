package apiserver

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"

	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/image/v1/imagev1connect"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// imageStore returns the image store, or FAILED_PRECONDITION when the
// server has none.
func (s *Server) imageStore() (*image.Store, error) {
	if s.images == nil {
		return nil, fmt.Errorf("this server has no image store: %w", errdefs.ErrFailedPrecondition)
	}
	return s.images, nil
}

// toImage converts an image of the store.
func toImage(img image.Image) *imagev1.Image {
	return &imagev1.Image{
		Name: img.Name, Digest: img.Digest, Size: uint64(max(img.Size, 0)),
		Platform: &imagev1.Platform{Os: img.Platform.OS, Architecture: img.Platform.Architecture, Variant: img.Platform.Variant},
		Config: &imagev1.ImageConfig{
			Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env,
			WorkingDir: img.Config.WorkingDir, User: img.Config.User, Labels: img.Config.Labels,
		},
	}
}

func toImages(imgs []image.Image) []*imagev1.Image {
	out := make([]*imagev1.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, toImage(img))
	}
	return out
}

var phases = map[image.Phase]imagev1.ProgressPhase{
	image.PhaseCopy:   imagev1.ProgressPhase_PROGRESS_PHASE_COPY,
	image.PhaseUnpack: imagev1.ProgressPhase_PROGRESS_PHASE_UNPACK,
}

func toProgress(p image.Progress) *imagev1.Progress {
	return &imagev1.Progress{
		Phase: phases[p.Phase], Image: p.Image, Layer: p.Layer,
		LayersDone: uint32(max(p.LayersDone, 0)), LayersTotal: uint32(max(p.LayersTotal, 0)),
		BytesDone: uint64(max(p.BytesDone, 0)), BytesTotal: uint64(max(p.BytesTotal, 0)),
	}
}

// progressSink sends progress messages on a stream until it is stopped.
// The store may report from another request's goroutine (a shared unpack),
// so sends are serialized and none happens after stop.
type progressSink struct {
	mu      sync.Mutex
	stopped bool
	send    func(*imagev1.Progress) error
}

// report sends p; a client that went away just misses it (its context
// ends the work).
func (ps *progressSink) report(p image.Progress) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if !ps.stopped {
		_ = ps.send(toProgress(p))
	}
}

// stop ends reporting; afterwards the stream is the caller's alone.
func (ps *progressSink) stop() {
	ps.mu.Lock()
	ps.stopped = true
	ps.mu.Unlock()
}

// ImportImage imports images from a path on the server's host, streaming
// progress and then the imported images.
func (s *Server) ImportImage(ctx context.Context, req *imagev1.ImportImageRequest, stream imagev1connect.ImageServiceImportImageServerStream) error {
	st, err := s.imageStore()
	if err != nil {
		return toConnect(err)
	}
	p := req.GetPath()
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return toConnect(fmt.Errorf("path %q must be an absolute, clean path: %w", p, errdefs.ErrInvalidArgument))
	}
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	sink := &progressSink{send: func(p *imagev1.Progress) error {
		return stream.Send(&imagev1.ImportImageResponse{Payload: &imagev1.ImportImageResponse_Progress{Progress: p}})
	}}
	defer sink.stop()
	imgs, err := st.Import(ctx, p, image.WithProgress(sink.report))
	if err != nil {
		return toConnect(err)
	}
	if req.GetUnpack() {
		for _, img := range imgs {
			if _, err := st.Rootfs(ctx, img.Digest, sink.report); err != nil {
				return toConnect(err)
			}
		}
	}
	sink.stop()
	return stream.Send(&imagev1.ImportImageResponse{Payload: &imagev1.ImportImageResponse_Images{
		Images: &imagev1.ImportedImages{Images: toImages(imgs)},
	}})
}

// PullImage pulls an image from its registry, streaming progress and then
// the image.
func (s *Server) PullImage(ctx context.Context, req *imagev1.PullImageRequest, stream imagev1connect.ImageServicePullImageServerStream) error {
	st, err := s.imageStore()
	if err != nil {
		return toConnect(err)
	}
	if _, err := image.NormalizeRef(req.GetRef()); err != nil {
		return toConnect(err)
	}
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	sink := &progressSink{send: func(p *imagev1.Progress) error {
		return stream.Send(&imagev1.PullImageResponse{Payload: &imagev1.PullImageResponse_Progress{Progress: p}})
	}}
	defer sink.stop()
	opts := []image.Option{image.WithProgress(sink.report)}
	if req.GetInsecure() {
		opts = append(opts, image.WithInsecure())
	}
	img, err := st.Pull(ctx, req.GetRef(), opts...)
	if err != nil {
		return toConnect(err)
	}
	if req.GetUnpack() {
		if _, err := st.Rootfs(ctx, img.Digest, sink.report); err != nil {
			return toConnect(err)
		}
	}
	sink.stop()
	return stream.Send(&imagev1.PullImageResponse{Payload: &imagev1.PullImageResponse_Image{Image: toImage(img)}})
}

// ListImages lists the store's images.
func (s *Server) ListImages(ctx context.Context, req *imagev1.ListImagesRequest) (*imagev1.ListImagesResponse, error) {
	st, err := s.imageStore()
	if err != nil {
		return nil, toConnect(err)
	}
	imgs, err := st.List(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	return &imagev1.ListImagesResponse{Images: toImages(imgs)}, nil
}

// GetImage returns one image.
func (s *Server) GetImage(ctx context.Context, req *imagev1.GetImageRequest) (*imagev1.GetImageResponse, error) {
	st, err := s.imageStore()
	if err != nil {
		return nil, toConnect(err)
	}
	img, err := st.Get(ctx, req.GetRef())
	if err != nil {
		return nil, toConnect(err)
	}
	return &imagev1.GetImageResponse{Image: toImage(img)}, nil
}

// RemoveImage removes an image. Uses registered by containers that no
// longer exist (deleted with their sandbox, say) are released first.
func (s *Server) RemoveImage(ctx context.Context, req *imagev1.RemoveImageRequest) (*imagev1.RemoveImageResponse, error) {
	st, err := s.imageStore()
	if err != nil {
		return nil, toConnect(err)
	}
	s.imageMu.Lock()
	defer s.imageMu.Unlock()
	if err := s.releaseStaleImageUses(ctx, st); err != nil {
		return nil, toConnect(err)
	}
	if err := st.Remove(ctx, req.GetRef()); err != nil {
		return nil, toConnect(err)
	}
	return &imagev1.RemoveImageResponse{}, nil
}

// releaseStaleImageUses releases the image uses of containers the engine
// no longer has, except those being created right now. The caller holds
// s.imageMu.
func (s *Server) releaseStaleImageUses(ctx context.Context, st *image.Store) error {
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
func (s *Server) useImage(ctx context.Context, ref, id string) (image.Image, error) {
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
func (s *Server) doneCreating(ctx context.Context, id string, failed bool) {
	s.imageMu.Lock()
	defer s.imageMu.Unlock()
	delete(s.creating, id)
	if failed && s.images != nil {
		_ = s.images.Release(ctx, id)
	}
}
