package apiserver

import (
	"context"
	"sync"

	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/image/v1/imagev1connect"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/image"
)

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
	sink := &progressSink{send: func(p *imagev1.Progress) error {
		return stream.Send(&imagev1.ImportImageResponse{Payload: &imagev1.ImportImageResponse_Progress{Progress: p}})
	}}
	defer sink.stop()
	imgs, err := s.d.ImportImage(ctx, req.GetPath(), direct.ImageOptions{Unpack: req.GetUnpack(), Started: stream.SendHeaders, Progress: sink.report})
	if err != nil {
		return err
	}
	sink.stop()
	return stream.Send(&imagev1.ImportImageResponse{Payload: &imagev1.ImportImageResponse_Images{
		Images: &imagev1.ImportedImages{Images: toImages(imgs)},
	}})
}

// PullImage pulls an image from its registry, streaming progress and then
// the image.
func (s *Server) PullImage(ctx context.Context, req *imagev1.PullImageRequest, stream imagev1connect.ImageServicePullImageServerStream) error {
	sink := &progressSink{send: func(p *imagev1.Progress) error {
		return stream.Send(&imagev1.PullImageResponse{Payload: &imagev1.PullImageResponse_Progress{Progress: p}})
	}}
	defer sink.stop()
	img, err := s.d.PullImage(ctx, req.GetRef(), direct.ImageOptions{
		Unpack: req.GetUnpack(), Insecure: req.GetInsecure(), Started: stream.SendHeaders, Progress: sink.report,
	})
	if err != nil {
		return err
	}
	sink.stop()
	return stream.Send(&imagev1.PullImageResponse{Payload: &imagev1.PullImageResponse_Image{Image: toImage(img)}})
}

// ListImages lists the store's images.
func (s *Server) ListImages(ctx context.Context, req *imagev1.ListImagesRequest) (*imagev1.ListImagesResponse, error) {
	imgs, err := s.d.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	return &imagev1.ListImagesResponse{Images: toImages(imgs)}, nil
}

// GetImage returns one image.
func (s *Server) GetImage(ctx context.Context, req *imagev1.GetImageRequest) (*imagev1.GetImageResponse, error) {
	img, err := s.d.Image(ctx, req.GetRef())
	if err != nil {
		return nil, err
	}
	return &imagev1.GetImageResponse{Image: toImage(img)}, nil
}

// RemoveImage removes an image. Uses registered by containers that no
// longer exist (deleted with their sandbox, say) are released first.
func (s *Server) RemoveImage(ctx context.Context, req *imagev1.RemoveImageRequest) (*imagev1.RemoveImageResponse, error) {
	if err := s.d.RemoveImage(ctx, req.GetRef()); err != nil {
		return nil, err
	}
	return &imagev1.RemoveImageResponse{}, nil
}
