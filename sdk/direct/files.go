package direct

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/inroot"
)

// File service bounds.
const (
	// DefaultMaxFileSize bounds a file written by WriteFile and the file
	// bytes of an UploadTar unless [WithMaxFileSize] says otherwise.
	DefaultMaxFileSize = 8 << 30
	// DefaultListLimit is ListFiles' limit when none is given.
	DefaultListLimit = 1000
	// MaxListLimit is the largest limit ListFiles accepts.
	MaxListLimit = 100000
	// ReadChunkSize is the size of ReadFile's and DownloadTar's chunks.
	ReadChunkSize = 64 << 10
)

// WithMaxFileSize bounds the bytes of a file written through WriteFile and
// of the files of one UploadTar (default [DefaultMaxFileSize]); 0 keeps the
// default.
func WithMaxFileSize(n int64) Option {
	return func(s *Service) {
		if n > 0 {
			s.maxFileSize = n
		}
	}
}

// FileInfo describes a file of a container (see [inroot.Info]).
type FileInfo = inroot.Info

// WriteOptions says how WriteFile writes (see [inroot.WriteOptions]; its
// MaxSize is the service's bound).
type WriteOptions struct {
	Mode   inroot.WriteMode
	Perm   uint32
	Atomic bool
}

// root opens the root file system of container id; write is set for the
// calls that change it, which a read-only root refuses.
func (s *Service) root(ctx context.Context, id string, write bool) (*inroot.Root, string, error) {
	sb, err := s.locate(ctx, id)
	if err != nil {
		return nil, "", err
	}
	dir, ro, err := s.e.HostRoot(ctx, sb, id)
	if err != nil {
		return nil, "", err
	}
	if write && ro {
		return nil, "", fmt.Errorf("container %q has a read-only root file system: %w", id, errdefs.ErrPermissionDenied)
	}
	r, err := inroot.Open(dir)
	if err != nil {
		return nil, "", fmt.Errorf("root file system of container %q: %w", id, err)
	}
	return r, dir, nil
}

// StatFile describes path p in container id's root file system, without
// following a last symbolic link.
func (s *Service) StatFile(ctx context.Context, id, p string) (FileInfo, error) {
	r, _, err := s.root(ctx, id, false)
	if err != nil {
		return FileInfo{}, err
	}
	defer r.Close()
	return r.Stat(p)
}

// ListFiles lists the directory p, recursively if asked, at most limit
// entries (0: [DefaultListLimit]; more than [MaxListLimit] is invalid).
func (s *Service) ListFiles(ctx context.Context, id, p string, recursive bool, limit int) ([]FileInfo, bool, error) {
	if limit < 0 || limit > MaxListLimit {
		return nil, false, fmt.Errorf("limit %d is out of range [0, %d]: %w", limit, MaxListLimit, errdefs.ErrInvalidArgument)
	}
	if limit == 0 {
		limit = DefaultListLimit
	}
	r, _, err := s.root(ctx, id, false)
	if err != nil {
		return nil, false, err
	}
	defer r.Close()
	return r.List(p, recursive, limit)
}

// ReadFile sends the regular file p's bytes from offset, at most length of
// them (0: to the end), in chunks of at most [ReadChunkSize]; the buffer
// passed to send is reused after it returns.
func (s *Service) ReadFile(ctx context.Context, id, p string, offset, length int64, send func([]byte) error) error {
	if offset < 0 || length < 0 {
		return fmt.Errorf("offset and length must not be negative: %w", errdefs.ErrInvalidArgument)
	}
	r, _, err := s.root(ctx, id, false)
	if err != nil {
		return err
	}
	f, err := r.Open(p)
	r.Close()
	if err != nil {
		return err
	}
	defer f.Close()
	var src io.Reader = io.NewSectionReader(f, offset, 1<<62)
	if length > 0 {
		src = io.LimitReader(src, length)
	}
	buf := make([]byte, ReadChunkSize)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if serr := send(buf[:n]); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
	}
}

// FileWriter writes one file of a container; Commit or Abort it.
type FileWriter struct {
	w *inroot.FileWriter
	r *inroot.Root
}

// Write writes b; beyond the service's size bound it fails with
// errdefs.ErrResourceExhausted.
func (w *FileWriter) Write(b []byte) (int, error) { return w.w.Write(b) }

// Commit finishes the write and describes the file.
func (w *FileWriter) Commit() (FileInfo, int64, error) {
	defer w.r.Close()
	info, err := w.w.Commit()
	return info, w.w.Written(), err
}

// Abort gives the write up (an atomic write leaves the file as it was).
func (w *FileWriter) Abort() {
	w.w.Abort()
	w.r.Close()
}

// WriteFile opens the regular file p of container id for writing.
func (s *Service) WriteFile(ctx context.Context, id, p string, o WriteOptions) (*FileWriter, error) {
	switch o.Mode {
	case inroot.Truncate, inroot.Append, inroot.CreateNew:
	default:
		return nil, fmt.Errorf("write mode %d: %w", o.Mode, errdefs.ErrInvalidArgument)
	}
	if o.Perm > 0o7777 {
		return nil, fmt.Errorf("permissions %o are more than 07777: %w", o.Perm, errdefs.ErrInvalidArgument)
	}
	r, _, err := s.root(ctx, id, true)
	if err != nil {
		return nil, err
	}
	w, err := r.Create(p, inroot.WriteOptions{Mode: o.Mode, Perm: o.Perm, Atomic: o.Atomic, MaxSize: s.maxFileSize})
	if err != nil {
		r.Close()
		return nil, err
	}
	return &FileWriter{w: w, r: r}, nil
}

// MakeDir creates the directory p (with its parents if asked; perm 0 means
// 0755).
func (s *Service) MakeDir(ctx context.Context, id, p string, parents bool, perm uint32) error {
	if perm > 0o7777 {
		return fmt.Errorf("permissions %o are more than 07777: %w", perm, errdefs.ErrInvalidArgument)
	}
	if perm == 0 {
		perm = 0o755
	}
	r, _, err := s.root(ctx, id, true)
	if err != nil {
		return err
	}
	defer r.Close()
	if parents {
		return r.MkdirAll(p, perm)
	}
	return r.Mkdir(p, perm)
}

// RemoveFile removes p (a directory with what it holds if recursive).
func (s *Service) RemoveFile(ctx context.Context, id, p string, recursive bool) error {
	r, _, err := s.root(ctx, id, true)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.Remove(p, recursive)
}

// RenameFile renames oldp to newp.
func (s *Service) RenameFile(ctx context.Context, id, oldp, newp string) error {
	r, _, err := s.root(ctx, id, true)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.Rename(oldp, newp)
}

// WatchFiles watches the directory p (see [inroot.Watch]) until ctx ends,
// the directory goes or the container is deleted.
func (s *Service) WatchFiles(ctx context.Context, id, p string, recursive bool, started func() error, fn func([]inroot.Event, bool) error) error {
	r, dir, err := s.root(ctx, id, false)
	if err != nil {
		return err
	}
	r.Close()
	return inroot.Watch(ctx, dir, p, recursive, started, fn)
}

// DownloadTar writes the directory (or file) p as a tar archive to w.
func (s *Service) DownloadTar(ctx context.Context, id, p string, w io.Writer) error {
	r, _, err := s.root(ctx, id, false)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.WriteTar(p, &ctxWriter{ctx: ctx, w: w})
}

// UploadTar extracts the tar archive read from rd into the directory p.
func (s *Service) UploadTar(ctx context.Context, id, p string, rd io.Reader) (int, int64, error) {
	r, _, err := s.root(ctx, id, true)
	if err != nil {
		return 0, 0, err
	}
	defer r.Close()
	return r.ExtractTar(p, rd, inroot.TarLimits{MaxBytes: s.maxFileSize})
}

// ctxWriter stops writing once ctx ends.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(b)
}
