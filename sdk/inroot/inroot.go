//go:build linux

// Package inroot reads and writes files under a directory taken as the root
// of a file system (a container's root file system on the host), never
// outside it: every path is resolved by the kernel with openat2(2) and
// RESOLVE_IN_ROOT, so that "..", absolute symbolic links and links to
// /proc/self/root stay inside the root, and with RESOLVE_NO_XDEV and
// RESOLVE_NO_MAGICLINKS, so that no mount point under the root and no
// magic link is crossed. Operations on a last path component work on a
// directory file descriptor with *at(2) calls that do not follow symbolic
// links, and only regular files are ever opened for reading or writing
// (a file is first opened with O_PATH, checked with fstat and then reopened
// through /proc/self/fd), so that FIFOs and device nodes are never opened
// and a file swapped for a symbolic link between a check and its use is
// not followed.
//
// Errors are containerd errdefs classes: ErrNotFound, ErrInvalidArgument,
// ErrAlreadyExists, ErrPermissionDenied, ErrResourceExhausted,
// ErrFailedPrecondition.
package inroot

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// MaxPathLen bounds the paths accepted.
const MaxPathLen = 4096

// maxDepth bounds the directory depth of recursive walks.
const maxDepth = 256

const (
	// inRoot resolves a path from the root, inside it.
	inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV
	// child resolves one name under a directory: no symbolic link, no
	// mount point.
	child = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV
)

// Root is an open root directory. It holds a file descriptor (O_PATH) of
// the directory, which keeps its mount busy: close it when done.
type Root struct {
	fd   int
	path string
}

// Open opens the directory dir (a trusted host path) as a root.
func Open(dir string) (*Root, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, mapErr("open root", dir, err)
	}
	return &Root{fd: fd, path: dir}, nil
}

// Close releases the root.
func (r *Root) Close() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Clean returns p as an absolute, cleaned path inside a root: "a/../b",
// "/b" and "../../b" are all "/b". It refuses empty paths, NUL bytes and
// paths longer than [MaxPathLen].
func Clean(p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("path is required: %w", errdefs.ErrInvalidArgument)
	}
	if len(p) > MaxPathLen {
		return "", fmt.Errorf("path is longer than %d bytes: %w", MaxPathLen, errdefs.ErrInvalidArgument)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("path %q contains a NUL byte: %w", p, errdefs.ErrInvalidArgument)
	}
	return path.Clean("/" + p), nil
}

// mapErr wraps a system call error with the errdefs class users see.
func mapErr(op, p string, err error) error {
	var class error
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("%s %s: %w", op, p, err)
	}
	switch errno {
	case unix.ENOENT:
		class = errdefs.ErrNotFound
	case unix.EEXIST:
		class = errdefs.ErrAlreadyExists
	case unix.EACCES, unix.EPERM, unix.EROFS, unix.ETXTBSY:
		class = errdefs.ErrPermissionDenied
	case unix.ENOSPC, unix.EDQUOT, unix.EFBIG, unix.EMFILE, unix.ENFILE, unix.ENOMEM:
		class = errdefs.ErrResourceExhausted
	case unix.ENOTEMPTY:
		class = errdefs.ErrFailedPrecondition
	case unix.EXDEV:
		return fmt.Errorf("%s %s: crosses a mount point: %w", op, p, errdefs.ErrInvalidArgument)
	case unix.ELOOP:
		return fmt.Errorf("%s %s: too many symbolic links, or a symbolic link where none may be: %w", op, p, errdefs.ErrInvalidArgument)
	case unix.EAGAIN:
		return fmt.Errorf("%s %s: the path changed while it was resolved, try again: %w", op, p, errdefs.ErrUnavailable)
	default:
		class = errdefs.ErrInvalidArgument
	}
	return fmt.Errorf("%s %s: %s: %w", op, p, errno.Error(), class)
}

// openat2 resolves p (cleaned, absolute) inside the root.
func (r *Root) openat2(p string, flags int, mode uint32) (int, error) {
	rel := "." + p
	if p == "/" {
		rel = "."
	}
	for {
		fd, err := unix.Openat2(r.fd, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Mode: uint64(mode), Resolve: inRoot})
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// openChild opens name (one component) under the directory dirfd, following
// no symbolic link and crossing no mount point.
func openChild(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: child})
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// parent opens the directory holding p and returns it with p's last
// component. p must not be the root.
func (r *Root) parent(op, p string) (int, string, error) {
	if p == "/" {
		return -1, "", fmt.Errorf("%s: not the root directory: %w", op, errdefs.ErrInvalidArgument)
	}
	dir, name := path.Split(p)
	fd, err := r.openat2(path.Clean(dir), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, "", mapErr(op, dir, err)
	}
	return fd, name, nil
}

// reopen opens the regular file behind the O_PATH descriptor fd with flags,
// after checking that it is a regular file. fd is closed.
func reopen(op, p string, fd int, flags int) (*os.File, error) {
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, mapErr(op, p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s %s: not a regular file (%s): %w", op, p, typeOf(st.Mode), errdefs.ErrInvalidArgument)
	}
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(fd), flags|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, mapErr(op, p, err)
	}
	// The descriptor is the same inode: check once more that the magic
	// link did not lead elsewhere.
	var st2 unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st2); err != nil || st2.Ino != st.Ino || st2.Dev != st.Dev {
		f.Close()
		return nil, fmt.Errorf("%s %s: the file changed while it was opened: %w", op, p, errdefs.ErrUnavailable)
	}
	return f, nil
}

// FileType is the type of a file.
type FileType int

// File types.
const (
	TypeOther FileType = iota
	TypeRegular
	TypeDir
	TypeSymlink
	TypeFIFO
	TypeSocket
	TypeDevice
)

// String names the type.
func (t FileType) String() string {
	return [...]string{"other", "regular file", "directory", "symbolic link", "FIFO", "socket", "device"}[t]
}

func typeOf(mode uint32) FileType {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return TypeRegular
	case unix.S_IFDIR:
		return TypeDir
	case unix.S_IFLNK:
		return TypeSymlink
	case unix.S_IFIFO:
		return TypeFIFO
	case unix.S_IFSOCK:
		return TypeSocket
	case unix.S_IFCHR, unix.S_IFBLK:
		return TypeDevice
	}
	return TypeOther
}

// Info describes a file.
type Info struct {
	Path          string
	Type          FileType
	Size          int64
	Mode          uint32 // permission, set-id and sticky bits (07777)
	UID, GID      uint32
	ModTime       time.Time
	SymlinkTarget string
}

func infoOf(p string, st *unix.Stat_t) Info {
	return Info{
		Path: p, Type: typeOf(st.Mode), Size: st.Size, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC(),
	}
}

// statAt describes name under dirfd without following a symbolic link.
func statAt(dirfd int, name, p string) (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Info{}, mapErr("stat", p, err)
	}
	info := infoOf(p, &st)
	if info.Type == TypeSymlink {
		buf := make([]byte, MaxPathLen)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err == nil {
			info.SymlinkTarget = string(buf[:n])
		}
	}
	return info, nil
}

// Stat describes p without following a last symbolic link.
func (r *Root) Stat(p string) (Info, error) {
	p, err := Clean(p)
	if err != nil {
		return Info{}, err
	}
	if p == "/" {
		var st unix.Stat_t
		if err := unix.Fstat(r.fd, &st); err != nil {
			return Info{}, mapErr("stat", p, err)
		}
		return infoOf(p, &st), nil
	}
	dirfd, name, err := r.parent("stat", p)
	if err != nil {
		return Info{}, err
	}
	defer unix.Close(dirfd)
	return statAt(dirfd, name, p)
}

// readNames returns the sorted entry names of the directory dirfd (an
// O_RDONLY descriptor, which it closes).
func readNames(dirfd int, p string) ([]string, error) {
	f := os.NewFile(uintptr(dirfd), p)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, mapErr("list", p, err)
	}
	slices.Sort(names)
	return names, nil
}

// List returns the entries of the directory p (following symbolic links
// inside the root to reach it), recursively if asked (without following
// symbolic links or crossing mount points), depth first in lexical order,
// at most limit of them; truncated reports that there were more.
func (r *Root) List(p string, recursive bool, limit int) (entries []Info, truncated bool, err error) {
	p, err = Clean(p)
	if err != nil {
		return nil, false, err
	}
	fd, err := r.openat2(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, false, mapErr("list", p, err)
	}
	err = walk(fd, p, recursive, 0, func(i Info) error {
		if len(entries) == limit {
			truncated = true
			return errStop
		}
		entries = append(entries, i)
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return entries, truncated, err
}

var errStop = errors.New("stop")

// walk calls fn for each entry of the directory fd (O_RDONLY, closed by
// walk), named p, and of its subdirectories if recursive.
func walk(fd int, p string, recursive bool, depth int, fn func(Info) error) error {
	if depth > maxDepth {
		unix.Close(fd)
		return fmt.Errorf("walk %s: deeper than %d directories: %w", p, maxDepth, errdefs.ErrResourceExhausted)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		unix.Close(fd)
		return mapErr("list", p, err)
	}
	defer unix.Close(dup)
	names, err := readNames(fd, p)
	if err != nil {
		return err
	}
	for _, name := range names {
		cp := path.Join(p, name)
		info, err := statAt(dup, name, cp)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
		if recursive && info.Type == TypeDir {
			cfd, err := openChild(dup, name, unix.O_RDONLY|unix.O_DIRECTORY)
			switch {
			case err == unix.EXDEV || err == unix.ENOENT || err == unix.ELOOP || err == unix.ENOTDIR:
				continue // a mount point, or changed meanwhile
			case err != nil:
				return mapErr("list", cp, err)
			}
			if err := walk(cfd, cp, true, depth+1, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// Open opens the regular file p for reading, following symbolic links
// inside the root. Anything but a regular file is refused without being
// opened.
func (r *Root) Open(p string) (*os.File, error) {
	p, err := Clean(p)
	if err != nil {
		return nil, err
	}
	fd, err := r.openat2(p, unix.O_PATH, 0)
	if err != nil {
		return nil, mapErr("open", p, err)
	}
	return reopen("open", p, fd, os.O_RDONLY)
}

// MkdirAll creates the directory p with its missing parents (perm, not
// masked by the umask); an existing directory is not an error.
func (r *Root) MkdirAll(p string, perm uint32) error {
	p, err := Clean(p)
	if err != nil {
		return err
	}
	cur := "/"
	for _, comp := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if comp == "" {
			continue
		}
		next := path.Join(cur, comp)
		if err := r.mkdir(next, perm, true); err != nil {
			return err
		}
		cur = next
	}
	return nil
}

// Mkdir creates the directory p (perm, not masked by the umask); its
// parent must exist.
func (r *Root) Mkdir(p string, perm uint32) error {
	p, err := Clean(p)
	if err != nil {
		return err
	}
	return r.mkdir(p, perm, false)
}

func (r *Root) mkdir(p string, perm uint32, existOK bool) error {
	if p == "/" {
		if existOK {
			return nil
		}
		return fmt.Errorf("mkdir /: %w", errdefs.ErrAlreadyExists)
	}
	dirfd, name, err := r.parent("mkdir", p)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	err = unix.Mkdirat(dirfd, name, perm&0o7777)
	if err == unix.EEXIST && existOK {
		// An existing directory (or a link to one inside the root).
		fd, err := r.openat2(p, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return mapErr("mkdir", p, err)
		}
		unix.Close(fd)
		return nil
	}
	if err != nil {
		return mapErr("mkdir", p, err)
	}
	fd, err := openChild(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return mapErr("mkdir", p, err)
	}
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, perm&0o7777); err != nil {
		return mapErr("chmod", p, err)
	}
	return nil
}

// Remove removes the file, symbolic link or empty directory p (never
// following a last symbolic link); with recursive, a directory with
// everything under it (no symbolic link followed, no mount point crossed).
func (r *Root) Remove(p string, recursive bool) error {
	p, err := Clean(p)
	if err != nil {
		return err
	}
	dirfd, name, err := r.parent("remove", p)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	info, err := statAt(dirfd, name, p)
	if err != nil {
		return err
	}
	if info.Type != TypeDir {
		return mapErrNil("remove", p, unix.Unlinkat(dirfd, name, 0))
	}
	if recursive {
		return removeAll(dirfd, name, p, 0)
	}
	return mapErrNil("remove", p, unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR))
}

func mapErrNil(op, p string, err error) error {
	if err == nil {
		return nil
	}
	return mapErr(op, p, err)
}

// removeAll removes the directory name under dirfd and what it holds.
func removeAll(dirfd int, name, p string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("remove %s: deeper than %d directories: %w", p, maxDepth, errdefs.ErrResourceExhausted)
	}
	fd, err := openChild(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return mapErr("remove", p, err)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		unix.Close(fd)
		return mapErr("remove", p, err)
	}
	defer unix.Close(dup)
	names, err := readNames(fd, p)
	if err != nil {
		return err
	}
	for _, n := range names {
		cp := path.Join(p, n)
		var st unix.Stat_t
		if err := unix.Fstatat(dup, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return mapErr("remove", cp, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := removeAll(dup, n, cp, depth+1); err != nil {
				return err
			}
			continue
		}
		if err := unix.Unlinkat(dup, n, 0); err != nil && err != unix.ENOENT {
			return mapErr("remove", cp, err)
		}
	}
	return mapErrNil("remove", p, unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR))
}

// Rename moves oldp to newp (rename(2): a file at newp is replaced; no
// last symbolic link is followed).
func (r *Root) Rename(oldp, newp string) error {
	oldp, err := Clean(oldp)
	if err != nil {
		return err
	}
	newp, err = Clean(newp)
	if err != nil {
		return err
	}
	ofd, oname, err := r.parent("rename", oldp)
	if err != nil {
		return err
	}
	defer unix.Close(ofd)
	nfd, nname, err := r.parent("rename", newp)
	if err != nil {
		return err
	}
	defer unix.Close(nfd)
	return mapErrNil("rename", oldp+" to "+newp, unix.Renameat(ofd, oname, nfd, nname))
}

// Symlink creates the symbolic link p pointing at target (stored as is; it
// is resolved inside the root whenever this package follows it).
func (r *Root) Symlink(target, p string) error {
	p, err := Clean(p)
	if err != nil {
		return err
	}
	if target == "" || len(target) > MaxPathLen || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("symlink %s: bad target %q: %w", p, target, errdefs.ErrInvalidArgument)
	}
	dirfd, name, err := r.parent("symlink", p)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	return mapErrNil("symlink", p, unix.Symlinkat(target, dirfd, name))
}
