//go:build linux

package inroot

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// WriteMode says what [Root.Create] does with an existing file.
type WriteMode int

// Write modes.
const (
	// Truncate creates the file or replaces the content of an existing one.
	Truncate WriteMode = iota
	// Append creates the file or adds to the end of an existing one.
	Append
	// CreateNew creates the file and fails if the path exists.
	CreateNew
)

// WriteOptions are the options of [Root.Create].
type WriteOptions struct {
	Mode WriteMode
	// Perm is the permission of a new file (07777); 0 means 0644. It is
	// not masked by the umask.
	Perm uint32
	// Atomic writes a new file in the same directory and renames it over
	// the target on Commit (Truncate and CreateNew only).
	Atomic bool
	// MaxSize bounds the bytes written through the writer (0: unbounded);
	// beyond, Write fails with errdefs.ErrResourceExhausted.
	MaxSize int64
}

// FileWriter writes a file opened by [Root.Create]. Call Commit when done,
// or Abort.
type FileWriter struct {
	f       *os.File
	dirfd   int
	name    string // target name in dirfd
	tmp     string // temporary name in dirfd (atomic), or ""
	p       string
	noRepl  bool
	n, max  int64
	settled bool
}

// Create opens the regular file p for writing. Its directory must exist. A
// last symbolic link is never followed: a non-atomic write to one fails with
// errdefs.ErrInvalidArgument, an atomic one replaces it. FIFOs, devices and
// other special files are refused without being opened.
func (r *Root) Create(p string, o WriteOptions) (_ *FileWriter, retErr error) {
	p, err := Clean(p)
	if err != nil {
		return nil, err
	}
	if o.Atomic && o.Mode == Append {
		return nil, fmt.Errorf("write %s: atomic appends are not supported: %w", p, errdefs.ErrInvalidArgument)
	}
	perm := o.Perm & 0o7777
	if perm == 0 {
		perm = 0o644
	}
	dirfd, name, err := r.parent("write", p)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			unix.Close(dirfd)
		}
	}()
	w := &FileWriter{dirfd: dirfd, name: name, p: p, max: o.MaxSize}
	if o.Atomic {
		if o.Mode == CreateNew {
			if _, err := statAt(dirfd, name, p); err == nil {
				return nil, fmt.Errorf("write %s: %w", p, errdefs.ErrAlreadyExists)
			}
			w.noRepl = true
		}
		var b [8]byte
		_, _ = rand.Read(b[:])
		w.tmp = "." + name + ".magnetar-" + hex.EncodeToString(b[:])
		if len(w.tmp) > 255 {
			w.tmp = ".magnetar-" + hex.EncodeToString(b[:])
		}
		fd, err := unix.Openat(dirfd, w.tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err != nil {
			return nil, mapErr("write", p, err)
		}
		w.f = os.NewFile(uintptr(fd), p)
		if err := unix.Fchmod(fd, perm); err != nil {
			w.Abort()
			return nil, mapErr("chmod", p, err)
		}
		return w, nil
	}
	// Open an existing regular file, or create a new one; a file created
	// between the two attempts is retried.
	for range 3 {
		fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			if o.Mode == CreateNew {
				unix.Close(fd)
				return nil, fmt.Errorf("write %s: %w", p, errdefs.ErrAlreadyExists)
			}
			flags := os.O_WRONLY | os.O_TRUNC
			if o.Mode == Append {
				flags = os.O_WRONLY | os.O_APPEND
			}
			f, err := reopen("write", p, fd, flags)
			if err != nil {
				return nil, err
			}
			w.f = f
			return w, nil
		}
		if err != unix.ENOENT {
			return nil, mapErr("write", p, err)
		}
		fd, err = unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err == unix.EEXIST {
			continue
		}
		if err != nil {
			return nil, mapErr("write", p, err)
		}
		w.f = os.NewFile(uintptr(fd), p)
		if err := unix.Fchmod(fd, perm); err != nil {
			w.f.Close()
			return nil, mapErr("chmod", p, err)
		}
		return w, nil
	}
	return nil, fmt.Errorf("write %s: the path keeps changing: %w", p, errdefs.ErrUnavailable)
}

// Write writes b.
func (w *FileWriter) Write(b []byte) (int, error) {
	if w.max > 0 && w.n+int64(len(b)) > w.max {
		return 0, fmt.Errorf("write %s: larger than %d bytes: %w", w.p, w.max, errdefs.ErrResourceExhausted)
	}
	n, err := w.f.Write(b)
	w.n += int64(n)
	if err != nil {
		var errno unix.Errno
		if pe, ok := err.(*os.PathError); ok {
			if e, ok := pe.Err.(unix.Errno); ok {
				errno = e
			}
		}
		if errno != 0 {
			return n, mapErr("write", w.p, errno)
		}
		return n, fmt.Errorf("write %s: %w", w.p, err)
	}
	return n, nil
}

// Written returns the number of bytes written.
func (w *FileWriter) Written() int64 { return w.n }

// Commit finishes the write: an atomic write is synced and renamed over the
// target. It returns the file's description.
func (w *FileWriter) Commit() (Info, error) {
	if w.settled {
		return Info{}, fmt.Errorf("write %s: already finished: %w", w.p, errdefs.ErrFailedPrecondition)
	}
	w.settled = true
	defer unix.Close(w.dirfd)
	if w.tmp == "" {
		if err := w.f.Close(); err != nil {
			return Info{}, fmt.Errorf("write %s: %w", w.p, err)
		}
		return statAt(w.dirfd, w.name, w.p)
	}
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if w.noRepl {
			err = unix.Renameat2(w.dirfd, w.tmp, w.dirfd, w.name, unix.RENAME_NOREPLACE)
		} else {
			err = unix.Renameat(w.dirfd, w.tmp, w.dirfd, w.name)
		}
	}
	if err != nil {
		_ = unix.Unlinkat(w.dirfd, w.tmp, 0)
		if errno, ok := err.(unix.Errno); ok {
			return Info{}, mapErr("write", w.p, errno)
		}
		return Info{}, fmt.Errorf("write %s: %w", w.p, err)
	}
	return statAt(w.dirfd, w.name, w.p)
}

// Abort gives up the write: an atomic write leaves the target as it was; a
// non-atomic one leaves what was written.
func (w *FileWriter) Abort() {
	if w.settled {
		return
	}
	w.settled = true
	w.f.Close()
	if w.tmp != "" {
		_ = unix.Unlinkat(w.dirfd, w.tmp, 0)
	}
	unix.Close(w.dirfd)
}
