package apiserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/containerd/errdefs"

	filev1 "github.com/magnetar-io/magnetar/gen/magnetar/file/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/file/v1/filev1connect"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/inroot"
)

// fileServer implements magnetar.file.v1.FileService over direct mode.
type fileServer struct {
	filev1connect.UnimplementedFileServiceHandler
	d *direct.Service
}

var fileTypes = map[inroot.FileType]filev1.FileType{
	inroot.TypeRegular: filev1.FileType_FILE_TYPE_REGULAR,
	inroot.TypeDir:     filev1.FileType_FILE_TYPE_DIRECTORY,
	inroot.TypeSymlink: filev1.FileType_FILE_TYPE_SYMLINK,
	inroot.TypeFIFO:    filev1.FileType_FILE_TYPE_FIFO,
	inroot.TypeSocket:  filev1.FileType_FILE_TYPE_SOCKET,
	inroot.TypeDevice:  filev1.FileType_FILE_TYPE_DEVICE,
}

func fileInfo(i direct.FileInfo) *filev1.FileInfo {
	return &filev1.FileInfo{
		Path: i.Path, Type: fileTypes[i.Type], Size: uint64(max(i.Size, 0)), Mode: i.Mode,
		Uid: i.UID, Gid: i.GID, ModifiedAt: ts(i.ModTime), SymlinkTarget: i.SymlinkTarget,
	}
}

// Stat describes a path.
func (f *fileServer) Stat(ctx context.Context, req *filev1.StatRequest) (*filev1.StatResponse, error) {
	info, err := f.d.StatFile(ctx, req.GetContainerId(), req.GetPath())
	if err != nil {
		return nil, err
	}
	return &filev1.StatResponse{Info: fileInfo(info)}, nil
}

// List lists a directory.
func (f *fileServer) List(ctx context.Context, req *filev1.ListRequest) (*filev1.ListResponse, error) {
	if req.GetLimit() > direct.MaxListLimit {
		return nil, fmt.Errorf("limit %d is more than %d: %w", req.GetLimit(), direct.MaxListLimit, errdefs.ErrInvalidArgument)
	}
	entries, truncated, err := f.d.ListFiles(ctx, req.GetContainerId(), req.GetPath(), req.GetRecursive(), int(req.GetLimit()))
	if err != nil {
		return nil, err
	}
	out := &filev1.ListResponse{Truncated: truncated, Entries: make([]*filev1.FileInfo, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, fileInfo(e))
	}
	return out, nil
}

// Read streams a file.
func (f *fileServer) Read(ctx context.Context, req *filev1.ReadRequest, stream filev1connect.FileServiceReadServerStream) error {
	if req.GetOffset() > math.MaxInt64 || req.GetLength() > math.MaxInt64 {
		return fmt.Errorf("offset or length is too large: %w", errdefs.ErrInvalidArgument)
	}
	return f.d.ReadFile(ctx, req.GetContainerId(), req.GetPath(), int64(req.GetOffset()), int64(req.GetLength()), func(b []byte) error {
		// A copy: ReadFile reuses b, and a message given to Send must
		// not change afterwards (an in-process transport hands it over).
		return stream.Send(&filev1.ReadResponse{Data: bytes.Clone(b)})
	})
}

var writeModes = map[filev1.WriteMode]inroot.WriteMode{
	filev1.WriteMode_WRITE_MODE_UNSPECIFIED: inroot.Truncate,
	filev1.WriteMode_WRITE_MODE_TRUNCATE:    inroot.Truncate,
	filev1.WriteMode_WRITE_MODE_APPEND:      inroot.Append,
	filev1.WriteMode_WRITE_MODE_CREATE_NEW:  inroot.CreateNew,
}

// Write writes a file from the client stream.
func (f *fileServer) Write(ctx context.Context, stream filev1connect.FileServiceWriteServerStream) (*filev1.WriteResponse, error) {
	first, err := stream.Receive()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("write: the first message must carry a header: %w", errdefs.ErrInvalidArgument)
		}
		return nil, err
	}
	h := first.GetHeader()
	if h == nil {
		return nil, fmt.Errorf("write: the first message must carry a header: %w", errdefs.ErrInvalidArgument)
	}
	mode, ok := writeModes[h.GetMode()]
	if !ok {
		return nil, fmt.Errorf("write mode %v: %w", h.GetMode(), errdefs.ErrInvalidArgument)
	}
	w, err := f.d.WriteFile(ctx, h.GetContainerId(), h.GetPath(), direct.WriteOptions{Mode: mode, Perm: h.GetPermissions(), Atomic: h.GetAtomic()})
	if err != nil {
		return nil, err
	}
	committed := false
	defer func() {
		if !committed {
			w.Abort()
		}
	}()
	msg := first
	for {
		if msg.GetHeader() != nil && msg != first {
			return nil, fmt.Errorf("write: a header after the first message: %w", errdefs.ErrInvalidArgument)
		}
		if _, err := w.Write(msg.GetData()); err != nil {
			return nil, err
		}
		msg, err = stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	committed = true
	info, n, err := w.Commit()
	if err != nil {
		return nil, err
	}
	return &filev1.WriteResponse{BytesWritten: uint64(n), Info: fileInfo(info)}, nil
}

// MakeDir creates a directory.
func (f *fileServer) MakeDir(ctx context.Context, req *filev1.MakeDirRequest) (*filev1.MakeDirResponse, error) {
	if err := f.d.MakeDir(ctx, req.GetContainerId(), req.GetPath(), req.GetParents(), req.GetPermissions()); err != nil {
		return nil, err
	}
	return &filev1.MakeDirResponse{}, nil
}

// Remove removes a path.
func (f *fileServer) Remove(ctx context.Context, req *filev1.RemoveRequest) (*filev1.RemoveResponse, error) {
	if err := f.d.RemoveFile(ctx, req.GetContainerId(), req.GetPath(), req.GetRecursive()); err != nil {
		return nil, err
	}
	return &filev1.RemoveResponse{}, nil
}

// Rename renames a path.
func (f *fileServer) Rename(ctx context.Context, req *filev1.RenameRequest) (*filev1.RenameResponse, error) {
	if err := f.d.RenameFile(ctx, req.GetContainerId(), req.GetOldPath(), req.GetNewPath()); err != nil {
		return nil, err
	}
	return &filev1.RenameResponse{}, nil
}

var fileEventTypes = map[inroot.EventType]filev1.FileEventType{
	inroot.Created:  filev1.FileEventType_FILE_EVENT_TYPE_CREATED,
	inroot.Modified: filev1.FileEventType_FILE_EVENT_TYPE_MODIFIED,
	inroot.Removed:  filev1.FileEventType_FILE_EVENT_TYPE_REMOVED,
}

// Watch streams changes under a directory.
func (f *fileServer) Watch(ctx context.Context, req *filev1.WatchRequest, stream filev1connect.FileServiceWatchServerStream) error {
	return f.d.WatchFiles(ctx, req.GetContainerId(), req.GetPath(), req.GetRecursive(),
		func() error { return stream.Send(&filev1.WatchResponse{Started: true}) },
		func(evs []inroot.Event, overflow bool) error {
			out := &filev1.WatchResponse{Overflow: overflow, Events: make([]*filev1.FileEvent, 0, len(evs))}
			for _, e := range evs {
				out.Events = append(out.Events, &filev1.FileEvent{Type: fileEventTypes[e.Type], Path: e.Path, IsDir: e.IsDir})
			}
			return stream.Send(out)
		})
}

// DownloadTar streams a directory as a tar archive.
func (f *fileServer) DownloadTar(ctx context.Context, req *filev1.DownloadTarRequest, stream filev1connect.FileServiceDownloadTarServerStream) error {
	// Buffer so that the tar writer's small writes make full messages.
	bw := &bufferedSender{send: func(b []byte) error { return stream.Send(&filev1.DownloadTarResponse{Data: b}) }}
	if err := f.d.DownloadTar(ctx, req.GetContainerId(), req.GetPath(), bw); err != nil {
		return err
	}
	return bw.flush()
}

// bufferedSender collects writes into messages of direct.ReadChunkSize.
type bufferedSender struct {
	buf  []byte
	send func([]byte) error
}

func (b *bufferedSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if b.buf == nil {
			b.buf = make([]byte, 0, direct.ReadChunkSize)
		}
		k := min(len(p), direct.ReadChunkSize-len(b.buf))
		b.buf = append(b.buf, p[:k]...)
		p = p[k:]
		if len(b.buf) == direct.ReadChunkSize {
			if err := b.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (b *bufferedSender) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	err := b.send(b.buf)
	b.buf = nil // sent as it is: the next chunk gets a buffer of its own
	return err
}

// streamReader reads the data of a client stream's messages.
type streamReader struct {
	recv func() ([]byte, error)
	buf  []byte
	err  error
}

func (s *streamReader) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		s.buf, s.err = s.recv()
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// UploadTar extracts a tar archive from the client stream.
func (f *fileServer) UploadTar(ctx context.Context, stream filev1connect.FileServiceUploadTarServerStream) (*filev1.UploadTarResponse, error) {
	first, err := stream.Receive()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	h := first.GetHeader()
	if h == nil {
		return nil, fmt.Errorf("upload tar: the first message must carry a header: %w", errdefs.ErrInvalidArgument)
	}
	pending := first.GetData()
	var recvErr error
	rd := &streamReader{recv: func() ([]byte, error) {
		if pending != nil {
			b := pending
			pending = nil
			return b, nil
		}
		msg, err := stream.Receive()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				recvErr = err
			}
			return nil, err
		}
		if msg.GetHeader() != nil {
			return nil, fmt.Errorf("upload tar: a header after the first message: %w", errdefs.ErrInvalidArgument)
		}
		return msg.GetData(), nil
	}}
	n, bytes, err := f.d.UploadTar(ctx, h.GetContainerId(), h.GetPath(), rd)
	if err != nil {
		if recvErr != nil {
			return nil, recvErr
		}
		return nil, err
	}
	return &filev1.UploadTarResponse{Entries: uint64(n), Bytes: uint64(bytes)}, nil
}
