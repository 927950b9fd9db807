//go:build linux

package inroot

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// WriteTar writes the directory p (or the single file p) to w as a PAX tar
// archive: regular files, directories and symbolic links with their modes,
// owners and modification times; other files are skipped. Symbolic links
// are archived, not followed (except to reach p itself), and no mount point
// is crossed.
func (r *Root) WriteTar(p string, w io.Writer) error {
	p, err := Clean(p)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	fd, err := r.openat2(p, unix.O_PATH, 0)
	if err != nil {
		return mapErr("tar", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return mapErr("tar", p, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		info := infoOf(p, &st)
		f, err := reopen("tar", p, fd, unix.O_RDONLY)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := tw.WriteHeader(header(path.Base(p), info)); err != nil {
			return err
		}
		if _, err := io.CopyN(tw, f, info.Size); err != nil {
			return fmt.Errorf("tar %s: %w", p, err)
		}
		return tw.Close()
	case unix.S_IFDIR:
		unix.Close(fd)
	default:
		unix.Close(fd)
		return fmt.Errorf("tar %s: not a directory or regular file (%s): %w", p, typeOf(st.Mode), errdefs.ErrInvalidArgument)
	}
	dfd, err := r.openat2(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return mapErr("tar", p, err)
	}
	if err := tarDir(tw, dfd, p, "", 0); err != nil {
		return err
	}
	return tw.Close()
}

func header(name string, info Info) *tar.Header {
	h := &tar.Header{Name: name, Mode: int64(info.Mode), Uid: int(info.UID), Gid: int(info.GID), ModTime: info.ModTime, Format: tar.FormatPAX}
	switch info.Type {
	case TypeDir:
		h.Typeflag, h.Name = tar.TypeDir, name+"/"
	case TypeSymlink:
		h.Typeflag, h.Linkname = tar.TypeSymlink, info.SymlinkTarget
	default:
		h.Typeflag, h.Size = tar.TypeReg, info.Size
	}
	return h
}

// tarDir archives the entries of the directory fd (closed by it), named p
// in the root and rel in the archive.
func tarDir(tw *tar.Writer, fd int, p, rel string, depth int) error {
	if depth > maxDepth {
		unix.Close(fd)
		return fmt.Errorf("tar %s: deeper than %d directories: %w", p, maxDepth, errdefs.ErrResourceExhausted)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		unix.Close(fd)
		return mapErr("tar", p, err)
	}
	defer unix.Close(dup)
	names, err := readNames(fd, p)
	if err != nil {
		return err
	}
	for _, n := range names {
		cp, crel := path.Join(p, n), path.Join(rel, n)
		info, err := statAt(dup, n, cp)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		switch info.Type {
		case TypeDir:
			cfd, err := openChild(dup, n, unix.O_RDONLY|unix.O_DIRECTORY)
			if err == unix.EXDEV || err == unix.ENOENT || err == unix.ELOOP || err == unix.ENOTDIR {
				continue
			}
			if err != nil {
				return mapErr("tar", cp, err)
			}
			if err := tw.WriteHeader(header(crel, info)); err != nil {
				unix.Close(cfd)
				return err
			}
			if err := tarDir(tw, cfd, cp, crel, depth+1); err != nil {
				return err
			}
		case TypeSymlink:
			if err := tw.WriteHeader(header(crel, info)); err != nil {
				return err
			}
		case TypeRegular:
			pfd, err := openChild(dup, n, unix.O_PATH)
			if err == unix.ENOENT || err == unix.ELOOP || err == unix.EXDEV {
				continue
			}
			if err != nil {
				return mapErr("tar", cp, err)
			}
			f, err := reopen("tar", cp, pfd, unix.O_RDONLY)
			if errors.Is(err, errdefs.ErrInvalidArgument) {
				continue // replaced by a special file meanwhile
			}
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				f.Close()
				return mapErr("tar", cp, err)
			}
			info = infoOf(cp, &st)
			if err := tw.WriteHeader(header(crel, info)); err != nil {
				f.Close()
				return err
			}
			// The header's size is what is sent, even if the file grows or
			// shrinks meanwhile (zeros pad a shrunk file).
			_, err = io.CopyN(tw, f, info.Size)
			f.Close()
			if errors.Is(err, io.EOF) {
				_, err = io.CopyN(tw, zeros{}, info.Size)
			}
			if err != nil && !errors.Is(err, tar.ErrWriteTooLong) {
				return fmt.Errorf("tar %s: %w", cp, err)
			}
		}
	}
	return nil
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// TarLimits bound what [Root.ExtractTar] extracts.
type TarLimits struct {
	// MaxEntries bounds the number of entries (0: 100000).
	MaxEntries int
	// MaxBytes bounds the bytes of regular files (0: unbounded).
	MaxBytes int64
}

// ExtractTar extracts the tar archive read from rd into the directory p
// (created with its parents if missing). Every entry's name is taken
// relative to p and resolved inside the root (a ".." or an absolute name
// stays inside it, as does a symbolic link an earlier entry made); regular
// files, directories and symbolic links are extracted, other types fail
// with errdefs.ErrInvalidArgument. It returns the entries and file bytes
// extracted.
func (r *Root) ExtractTar(p string, rd io.Reader, lim TarLimits) (entries int, bytes int64, err error) {
	p, err = Clean(p)
	if err != nil {
		return 0, 0, err
	}
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = 100000
	}
	if err := r.MkdirAll(p, 0o755); err != nil {
		return 0, 0, err
	}
	tr := tar.NewReader(rd)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return entries, bytes, nil
		}
		if err != nil {
			return entries, bytes, fmt.Errorf("untar into %s: %v: %w", p, err, errdefs.ErrInvalidArgument)
		}
		if entries == lim.MaxEntries {
			return entries, bytes, fmt.Errorf("untar into %s: more than %d entries: %w", p, lim.MaxEntries, errdefs.ErrResourceExhausted)
		}
		name, err := Clean(h.Name)
		if err != nil {
			return entries, bytes, err
		}
		target := path.Join(p, name)
		perm := uint32(h.Mode) & 0o7777
		switch h.Typeflag {
		case tar.TypeDir:
			if perm == 0 {
				perm = 0o755
			}
			if err := r.MkdirAll(target, perm); err != nil {
				return entries, bytes, err
			}
		case tar.TypeReg:
			if lim.MaxBytes > 0 && bytes+h.Size > lim.MaxBytes {
				return entries, bytes, fmt.Errorf("untar into %s: more than %d bytes: %w", p, lim.MaxBytes, errdefs.ErrResourceExhausted)
			}
			if target == "/" {
				return entries, bytes, fmt.Errorf("untar: entry %q names the root: %w", h.Name, errdefs.ErrInvalidArgument)
			}
			if err := r.MkdirAll(path.Dir(target), 0o755); err != nil {
				return entries, bytes, err
			}
			fw, err := r.Create(target, WriteOptions{Mode: Truncate, Perm: perm})
			if errors.Is(err, errdefs.ErrInvalidArgument) {
				// A symbolic link or special file in the way: replace it.
				if rerr := r.Remove(target, false); rerr == nil {
					fw, err = r.Create(target, WriteOptions{Mode: CreateNew, Perm: perm})
				}
			}
			if err != nil {
				return entries, bytes, err
			}
			n, err := io.Copy(fw, tr)
			bytes += n
			if err != nil {
				fw.Abort()
				return entries, bytes, fmt.Errorf("untar %s: %w", h.Name, err)
			}
			if _, err := fw.Commit(); err != nil {
				return entries, bytes, err
			}
		case tar.TypeSymlink:
			if target == "/" {
				return entries, bytes, fmt.Errorf("untar: entry %q names the root: %w", h.Name, errdefs.ErrInvalidArgument)
			}
			if err := r.MkdirAll(path.Dir(target), 0o755); err != nil {
				return entries, bytes, err
			}
			err := r.Symlink(h.Linkname, target)
			if errors.Is(err, errdefs.ErrAlreadyExists) {
				if info, serr := r.Stat(target); serr == nil && info.Type != TypeDir {
					if err = r.Remove(target, false); err == nil {
						err = r.Symlink(h.Linkname, target)
					}
				}
			}
			if err != nil {
				return entries, bytes, err
			}
		case tar.TypeXGlobalHeader:
			continue
		default:
			return entries, bytes, fmt.Errorf("untar: entry %q has type %s, only files, directories and symbolic links are extracted: %w",
				h.Name, strconv.QuoteRune(rune(h.Typeflag)), errdefs.ErrInvalidArgument)
		}
		entries++
	}
}
