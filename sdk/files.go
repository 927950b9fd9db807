package sdk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	filev1 "github.com/magnetar-io/magnetar/gen/magnetar/file/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/file/v1/filev1connect"
)

// Files reads and writes the files of one container's root file system,
// while it runs and after it exited (until it is deleted). Paths are
// slash-separated and resolved by the sandboxer inside the container's root
// ("/etc/hosts" and "etc/hosts" are the same file): no symbolic link or
// ".." leads outside it. Only the root file system is seen, not the
// volumes mounted into the container. Get one with [Client.Files] or
// [Container.Files].
type Files struct {
	c  *Client
	id string
}

// Files returns the files of container containerID.
func (c *Client) Files(containerID string) *Files { return &Files{c: c, id: containerID} }

// Files returns the container's files.
func (c *Container) Files() *Files { return c.client.Files(c.ID) }

func (c *Client) fileClient() filev1connect.FileServiceClient {
	return c.files
}

// FileType is the type of a file.
type FileType string

// File types.
const (
	FileRegular FileType = "regular"
	FileDir     FileType = "directory"
	FileSymlink FileType = "symlink"
	FileFIFO    FileType = "fifo"
	FileSocket  FileType = "socket"
	FileDevice  FileType = "device"
	FileOther   FileType = "other"
)

var fileTypeNames = map[filev1.FileType]FileType{
	filev1.FileType_FILE_TYPE_REGULAR:   FileRegular,
	filev1.FileType_FILE_TYPE_DIRECTORY: FileDir,
	filev1.FileType_FILE_TYPE_SYMLINK:   FileSymlink,
	filev1.FileType_FILE_TYPE_FIFO:      FileFIFO,
	filev1.FileType_FILE_TYPE_SOCKET:    FileSocket,
	filev1.FileType_FILE_TYPE_DEVICE:    FileDevice,
}

// FileInfo describes a file of a container.
type FileInfo struct {
	// Path is the absolute, cleaned path inside the container's root.
	Path string `json:"path"`
	// Type is the file's type.
	Type FileType `json:"type"`
	// Bytes is the file's size.
	Bytes int64 `json:"size"`
	// Perm holds the permission, set-id and sticky bits (07777).
	Perm uint32 `json:"mode"`
	// UID and GID are the owner as stored in the file system.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// ModifiedAt is the last modification time.
	ModifiedAt time.Time `json:"modifiedAt"`
	// SymlinkTarget is a symbolic link's target, as stored.
	SymlinkTarget string `json:"symlinkTarget,omitempty"`
}

// FileMode returns the file's type and permission bits as an [fs.FileMode].
func (i FileInfo) FileMode() fs.FileMode {
	m := fs.FileMode(i.Perm & 0o777)
	if i.Perm&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if i.Perm&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if i.Perm&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch i.Type {
	case FileDir:
		m |= fs.ModeDir
	case FileSymlink:
		m |= fs.ModeSymlink
	case FileFIFO:
		m |= fs.ModeNamedPipe
	case FileSocket:
		m |= fs.ModeSocket
	case FileDevice:
		m |= fs.ModeDevice
	case FileOther:
		m |= fs.ModeIrregular
	}
	return m
}

// Stat returns i as an [fs.FileInfo].
func (i FileInfo) Stat() fs.FileInfo { return fileInfoFS{i} }

type fileInfoFS struct{ i FileInfo }

func (f fileInfoFS) Name() string       { return path.Base(f.i.Path) }
func (f fileInfoFS) Size() int64        { return f.i.Bytes }
func (f fileInfoFS) Mode() fs.FileMode  { return f.i.FileMode() }
func (f fileInfoFS) ModTime() time.Time { return f.i.ModifiedAt }
func (f fileInfoFS) IsDir() bool        { return f.i.Type == FileDir }
func (f fileInfoFS) Sys() any           { return f.i }

func fileInfoFromProto(p *filev1.FileInfo) FileInfo {
	t, ok := fileTypeNames[p.GetType()]
	if !ok {
		t = FileOther
	}
	return FileInfo{
		Path: p.GetPath(), Type: t, Bytes: int64(p.GetSize()), Perm: p.GetMode(), UID: p.GetUid(), GID: p.GetGid(),
		ModifiedAt: timeOf(p.GetModifiedAt()), SymlinkTarget: p.GetSymlinkTarget(),
	}
}

// Stat describes p; a symbolic link is described, not followed.
func (f *Files) Stat(ctx context.Context, p string) (FileInfo, error) {
	res, err := f.c.fileClient().Stat(ctx, &filev1.StatRequest{ContainerId: f.id, Path: p})
	if err != nil {
		return FileInfo{}, fromAPI(err)
	}
	return fileInfoFromProto(res.GetInfo()), nil
}

// ListOptions configures [Files.List].
type ListOptions struct {
	// Recursive lists subdirectories too, depth first.
	Recursive bool
	// Limit bounds the entries returned (0: the sandboxer's default, 1000).
	Limit int
}

// List returns the entries of the directory p in lexical order;
// truncated reports that there were more than the limit.
func (f *Files) List(ctx context.Context, p string, o ListOptions) (entries []FileInfo, truncated bool, err error) {
	if o.Limit < 0 || o.Limit > 100000 {
		return nil, false, fmt.Errorf("list limit %d is out of range [0, 100000]: %w", o.Limit, errdefs.ErrInvalidArgument)
	}
	res, err := f.c.fileClient().List(ctx, &filev1.ListRequest{ContainerId: f.id, Path: p, Recursive: o.Recursive, Limit: uint32(o.Limit)})
	if err != nil {
		return nil, false, fromAPI(err)
	}
	for _, e := range res.GetEntries() {
		entries = append(entries, fileInfoFromProto(e))
	}
	return entries, res.GetTruncated(), nil
}

// Open streams the regular file p (following symbolic links inside the
// container's root). Close the reader when done.
func (f *Files) Open(ctx context.Context, p string) (io.ReadCloser, error) {
	return f.OpenRange(ctx, p, 0, 0)
}

// OpenRange streams at most length bytes (0: all) of the regular file p
// from offset.
func (f *Files) OpenRange(ctx context.Context, p string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("offset and length must not be negative: %w", errdefs.ErrInvalidArgument)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := f.c.fileClient().Read(ctx, &filev1.ReadRequest{ContainerId: f.id, Path: p, Offset: uint64(offset), Length: uint64(length)})
	if err != nil {
		cancel()
		return nil, fromAPI(err)
	}
	r := &streamReadCloser{cancel: cancel, close: stream.Close, recv: func() ([]byte, error) {
		msg, err := stream.Receive()
		if err != nil {
			return nil, err
		}
		return msg.GetData(), nil
	}}
	// Fetch the first message so that a missing file fails here.
	if err := r.fill(); err != nil && !errors.Is(err, io.EOF) {
		r.Close()
		return nil, err
	}
	return r, nil
}

// streamReadCloser reads the data of a server stream's messages.
type streamReadCloser struct {
	recv   func() ([]byte, error)
	close  func() error
	cancel context.CancelFunc
	buf    []byte
	err    error
}

func (s *streamReadCloser) fill() error {
	for len(s.buf) == 0 && s.err == nil {
		b, err := s.recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				s.err = io.EOF
			} else {
				s.err = fromAPI(err)
			}
			break
		}
		s.buf = b
	}
	if len(s.buf) > 0 {
		return nil
	}
	return s.err
}

func (s *streamReadCloser) Read(p []byte) (int, error) {
	if err := s.fill(); err != nil {
		return 0, err
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

func (s *streamReadCloser) Close() error {
	s.cancel()
	_ = s.close()
	return nil
}

// ReadFile returns the whole content of the regular file p.
func (f *Files) ReadFile(ctx context.Context, p string) ([]byte, error) {
	r, err := f.Open(ctx, p)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// WriteMode says what a write does with an existing file.
type WriteMode int

// Write modes.
const (
	// WriteTruncate creates the file or replaces its content (default).
	WriteTruncate WriteMode = iota
	// WriteAppend creates the file or appends to it.
	WriteAppend
	// WriteCreateNew creates the file and fails with errdefs.ErrAlreadyExists
	// if the path exists.
	WriteCreateNew
)

var writeModesProto = map[WriteMode]filev1.WriteMode{
	WriteTruncate:  filev1.WriteMode_WRITE_MODE_TRUNCATE,
	WriteAppend:    filev1.WriteMode_WRITE_MODE_APPEND,
	WriteCreateNew: filev1.WriteMode_WRITE_MODE_CREATE_NEW,
}

// WriteOptions configures [Files.Create] and [Files.WriteFile].
type WriteOptions struct {
	// Mode says what to do with an existing file.
	Mode WriteMode
	// Perm is a new file's permission bits (07777; 0 means 0644).
	Perm uint32
	// Atomic writes a new file next to the target and renames it over the
	// target when the writer is closed: readers see the old content or the
	// new one, and an aborted write leaves the old one.
	Atomic bool
}

// FileWriter writes a file of a container as it streams; [FileWriter.Close]
// finishes the write (and reports whether it succeeded), [FileWriter.Abort]
// gives it up.
type FileWriter struct {
	stream filev1connect.FileServiceWriteClientStream
	cancel context.CancelFunc
	header *filev1.WriteHeader
	info   FileInfo
	n      int64
	err    error
	done   bool
}

// writeChunk is the largest message a writer sends.
const writeChunk = 1 << 20

// Create opens the file p for writing; nothing is written until the first
// Write (or Close, for an empty file).
func (f *Files) Create(ctx context.Context, p string, o WriteOptions) (*FileWriter, error) {
	mode, ok := writeModesProto[o.Mode]
	if !ok {
		return nil, fmt.Errorf("write mode %d: %w", o.Mode, errdefs.ErrInvalidArgument)
	}
	ctx, cancel := context.WithCancel(ctx)
	stream, err := f.c.fileClient().Write(ctx)
	if err != nil {
		cancel()
		return nil, fromAPI(err)
	}
	return &FileWriter{stream: stream, cancel: cancel, header: &filev1.WriteHeader{
		ContainerId: f.id, Path: p, Mode: mode, Permissions: o.Perm, Atomic: o.Atomic,
	}}, nil
}

func (w *FileWriter) send(data []byte) error {
	// A copy: a message given to Send must not change afterwards (an
	// in-process transport hands it over as it is), and Write must not
	// keep p.
	msg := &filev1.WriteRequest{Header: w.header, Data: bytes.Clone(data)}
	w.header = nil
	if err := w.stream.Send(msg); err != nil {
		// The server's error comes with the response.
		_, rerr := w.stream.CloseAndReceive()
		if rerr != nil {
			return fromAPI(rerr)
		}
		return fromAPI(err)
	}
	return nil
}

// Write sends p, in messages of at most 1 MiB.
func (w *FileWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.done {
		return 0, fmt.Errorf("write after close: %w", errdefs.ErrFailedPrecondition)
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeChunk)
		if err := w.send(p[:k]); err != nil {
			w.err = err
			w.cancel()
			return n, err
		}
		n += k
		p = p[k:]
	}
	w.n += int64(n)
	return n, nil
}

// Close finishes the write and returns its error, if any.
func (w *FileWriter) Close() error {
	if w.done || w.err != nil {
		return w.err
	}
	w.done = true
	defer w.cancel()
	if w.header != nil {
		if err := w.send(nil); err != nil {
			w.err = err
			return err
		}
	}
	res, err := w.stream.CloseAndReceive()
	if err != nil {
		w.err = fromAPI(err)
		return w.err
	}
	w.info = fileInfoFromProto(res.GetInfo())
	return nil
}

// Abort gives the write up: an atomic write leaves the file as it was.
func (w *FileWriter) Abort() {
	if !w.done {
		w.done = true
		w.err = fmt.Errorf("write aborted: %w", context.Canceled)
		w.cancel()
	}
}

// Info describes the file written, after a successful Close.
func (w *FileWriter) Info() FileInfo { return w.info }

// WriteFile writes the file p with what r yields, streamed.
func (f *Files) WriteFile(ctx context.Context, p string, r io.Reader, o WriteOptions) (FileInfo, error) {
	w, err := f.Create(ctx, p, o)
	if err != nil {
		return FileInfo{}, err
	}
	buf := make([]byte, writeChunk)
	if _, err := io.CopyBuffer(w, r, buf); err != nil {
		w.Abort()
		return FileInfo{}, err
	}
	if err := w.Close(); err != nil {
		return FileInfo{}, err
	}
	return w.Info(), nil
}

// Mkdir creates the directory p (perm 0 means 0755); its parent must exist.
func (f *Files) Mkdir(ctx context.Context, p string, perm uint32) error {
	_, err := f.c.fileClient().MakeDir(ctx, &filev1.MakeDirRequest{ContainerId: f.id, Path: p, Permissions: perm})
	return fromAPI(err)
}

// MkdirAll creates the directory p with its missing parents (perm 0 means
// 0755); an existing directory is not an error.
func (f *Files) MkdirAll(ctx context.Context, p string, perm uint32) error {
	_, err := f.c.fileClient().MakeDir(ctx, &filev1.MakeDirRequest{ContainerId: f.id, Path: p, Parents: true, Permissions: perm})
	return fromAPI(err)
}

// Remove removes a file, a symbolic link or an empty directory.
func (f *Files) Remove(ctx context.Context, p string) error {
	_, err := f.c.fileClient().Remove(ctx, &filev1.RemoveRequest{ContainerId: f.id, Path: p})
	return fromAPI(err)
}

// RemoveAll removes p and, for a directory, everything under it.
func (f *Files) RemoveAll(ctx context.Context, p string) error {
	_, err := f.c.fileClient().Remove(ctx, &filev1.RemoveRequest{ContainerId: f.id, Path: p, Recursive: true})
	return fromAPI(err)
}

// Rename moves oldPath to newPath (replacing a file there).
func (f *Files) Rename(ctx context.Context, oldPath, newPath string) error {
	_, err := f.c.fileClient().Rename(ctx, &filev1.RenameRequest{ContainerId: f.id, OldPath: oldPath, NewPath: newPath})
	return fromAPI(err)
}

// FileEventType is what happened to a path.
type FileEventType string

// File event types.
const (
	FileCreated  FileEventType = "created"
	FileModified FileEventType = "modified"
	FileRemoved  FileEventType = "removed"
)

var fileEventNames = map[filev1.FileEventType]FileEventType{
	filev1.FileEventType_FILE_EVENT_TYPE_CREATED:  FileCreated,
	filev1.FileEventType_FILE_EVENT_TYPE_MODIFIED: FileModified,
	filev1.FileEventType_FILE_EVENT_TYPE_REMOVED:  FileRemoved,
}

// FileEvent is a change under a watched directory.
type FileEvent struct {
	Type  FileEventType `json:"type"`
	Path  string        `json:"path"`
	IsDir bool          `json:"isDir,omitempty"`
	// Overflow: events were lost before this one (Type and Path are empty).
	Overflow bool `json:"overflow,omitempty"`
}

// FileWatch is a stream of changes from [Files.Watch].
type FileWatch struct {
	stream  filev1connect.FileServiceWatchClientStream
	cancel  context.CancelFunc
	pending []FileEvent
}

// Watch watches the directory p (and its subdirectories if recursive).
// It returns once the watch is in place: every change after it is
// reported by [FileWatch.Next].
func (f *Files) Watch(ctx context.Context, p string, recursive bool) (*FileWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := f.c.fileClient().Watch(ctx, &filev1.WatchRequest{ContainerId: f.id, Path: p, Recursive: recursive})
	if err != nil {
		cancel()
		return nil, fromAPI(err)
	}
	w := &FileWatch{stream: stream, cancel: cancel}
	msg, err := stream.Receive()
	if err != nil {
		w.Close()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("watch %s ended before it started: %w", p, errdefs.ErrUnavailable)
		}
		return nil, fromAPI(err)
	}
	w.queue(msg)
	return w, nil
}

func (w *FileWatch) queue(msg *filev1.WatchResponse) {
	if msg.GetOverflow() {
		w.pending = append(w.pending, FileEvent{Overflow: true})
	}
	for _, e := range msg.GetEvents() {
		w.pending = append(w.pending, FileEvent{Type: fileEventNames[e.GetType()], Path: e.GetPath(), IsDir: e.GetIsDir()})
	}
}

// Next returns the next change; io.EOF once the directory is gone (or the
// container deleted).
func (w *FileWatch) Next() (FileEvent, error) {
	for len(w.pending) == 0 {
		msg, err := w.stream.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return FileEvent{}, io.EOF
			}
			return FileEvent{}, fromAPI(err)
		}
		w.queue(msg)
	}
	e := w.pending[0]
	w.pending = w.pending[1:]
	return e, nil
}

// Close ends the watch.
func (w *FileWatch) Close() error {
	w.cancel()
	_ = w.stream.Close()
	return nil
}

// DownloadTar streams the directory (or file) p as a tar archive.
func (f *Files) DownloadTar(ctx context.Context, p string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := f.c.fileClient().DownloadTar(ctx, &filev1.DownloadTarRequest{ContainerId: f.id, Path: p})
	if err != nil {
		cancel()
		return nil, fromAPI(err)
	}
	r := &streamReadCloser{cancel: cancel, close: stream.Close, recv: func() ([]byte, error) {
		msg, err := stream.Receive()
		if err != nil {
			return nil, err
		}
		return msg.GetData(), nil
	}}
	if err := r.fill(); err != nil && !errors.Is(err, io.EOF) {
		r.Close()
		return nil, err
	}
	return r, nil
}

// UploadTar extracts the tar archive r yields into the directory p
// (created if missing) and returns the entries and file bytes extracted.
func (f *Files) UploadTar(ctx context.Context, p string, r io.Reader) (entries int64, bytes int64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := f.c.fileClient().UploadTar(ctx)
	if err != nil {
		return 0, 0, fromAPI(err)
	}
	header := &filev1.UploadTarHeader{ContainerId: f.id, Path: p}
	for {
		// A buffer per message: one given to Send must not change
		// afterwards (an in-process transport hands it over as it is).
		buf := make([]byte, writeChunk)
		n, rerr := io.ReadFull(r, buf)
		if n > 0 || header != nil {
			if err := stream.Send(&filev1.UploadTarRequest{Header: header, Data: buf[:n]}); err != nil {
				break // the server's error comes with the response
			}
			header = nil
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return 0, 0, rerr
		}
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		return 0, 0, fromAPI(err)
	}
	return int64(res.GetEntries()), int64(res.GetBytes()), nil
}

// FS returns the container's files as a read-only [fs.FS] (with
// [fs.ReadDirFS], [fs.StatFS] and [fs.ReadFileFS]); ctx bounds every call
// made through it. Directories are listed up to 100000 entries.
func (f *Files) FS(ctx context.Context) fs.FS { return filesFS{f: f, ctx: ctx} }

type filesFS struct {
	f   *Files
	ctx context.Context
}

func (x filesFS) pathErr(op, name string, err error) error {
	switch {
	case errdefs.IsNotFound(err):
		err = fmt.Errorf("%w (%v)", fs.ErrNotExist, err)
	case errdefs.IsPermissionDenied(err):
		err = fmt.Errorf("%w (%v)", fs.ErrPermission, err)
	case errdefs.IsAlreadyExists(err):
		err = fmt.Errorf("%w (%v)", fs.ErrExist, err)
	}
	return &fs.PathError{Op: op, Path: name, Err: err}
}

func (x filesFS) check(op, name string) error {
	if !fs.ValidPath(name) {
		return &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return nil
}

// stat follows a symbolic link (inside the container's root) to what it
// names, as fs.FS does.
func (x filesFS) stat(name string) (FileInfo, error) {
	p := "/" + name
	for range 40 {
		info, err := x.f.Stat(x.ctx, p)
		if err != nil || info.Type != FileSymlink {
			info.Path = "/" + name
			return info, err
		}
		t := info.SymlinkTarget
		if !strings.HasPrefix(t, "/") {
			t = path.Join(path.Dir(p), t)
		}
		p = path.Clean("/" + t)
	}
	return FileInfo{}, fmt.Errorf("too many symbolic links: %w", errdefs.ErrInvalidArgument)
}

func (x filesFS) Stat(name string) (fs.FileInfo, error) {
	if err := x.check("stat", name); err != nil {
		return nil, err
	}
	info, err := x.stat(name)
	if err != nil {
		return nil, x.pathErr("stat", name, err)
	}
	return info.Stat(), nil
}

func (x filesFS) ReadDir(name string) ([]fs.DirEntry, error) {
	if err := x.check("readdir", name); err != nil {
		return nil, err
	}
	entries, _, err := x.f.List(x.ctx, "/"+name, ListOptions{Limit: 100000})
	if err != nil {
		return nil, x.pathErr("readdir", name, err)
	}
	out := make([]fs.DirEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, fs.FileInfoToDirEntry(e.Stat()))
	}
	return out, nil
}

func (x filesFS) ReadFile(name string) ([]byte, error) {
	if err := x.check("readfile", name); err != nil {
		return nil, err
	}
	b, err := x.f.ReadFile(x.ctx, "/"+name)
	if err != nil {
		return nil, x.pathErr("readfile", name, err)
	}
	return b, nil
}

func (x filesFS) Open(name string) (fs.File, error) {
	if err := x.check("open", name); err != nil {
		return nil, err
	}
	info, err := x.stat(name)
	if err != nil {
		return nil, x.pathErr("open", name, err)
	}
	if info.Type == FileDir {
		entries, err := x.ReadDir(name)
		if err != nil {
			return nil, err
		}
		return &fsDir{info: info, entries: entries}, nil
	}
	r, err := x.f.Open(x.ctx, "/"+name)
	if err != nil {
		return nil, x.pathErr("open", name, err)
	}
	return &fsFile{info: info, r: r}, nil
}

type fsFile struct {
	info FileInfo
	r    io.ReadCloser
}

func (f *fsFile) Stat() (fs.FileInfo, error) { return f.info.Stat(), nil }
func (f *fsFile) Read(b []byte) (int, error) { return f.r.Read(b) }
func (f *fsFile) Close() error               { return f.r.Close() }

type fsDir struct {
	info    FileInfo
	entries []fs.DirEntry
	off     int
}

func (d *fsDir) Stat() (fs.FileInfo, error) { return d.info.Stat(), nil }
func (d *fsDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.Path, Err: errors.New("is a directory")}
}
func (d *fsDir) Close() error { return nil }

func (d *fsDir) ReadDir(n int) ([]fs.DirEntry, error) {
	rest := d.entries[d.off:]
	if n <= 0 {
		d.off = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	k := min(n, len(rest))
	d.off += k
	return rest[:k], nil
}
