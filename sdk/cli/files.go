package cli

import (
	"archive/tar"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
)

// containerPath splits "CONTAINER:PATH"; ok is false for a host path (one
// with no colon, or starting with "/" or ".").
func containerPath(arg string) (id, p string, ok bool) {
	if strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		return "", "", false
	}
	id, p, ok = strings.Cut(arg, ":")
	if !ok || id == "" {
		return "", "", false
	}
	if p == "" {
		p = "/"
	}
	return id, p, true
}

func cpCmd() *command {
	return &command{
		name: "cp", usage: "cp SRC DST",
		summary: "Copy files and directories between the host and a container",
		help: `Copies a file or a directory between this host and a container's root file
system, in either direction: one of SRC and DST is CONTAINER:PATH, the other a
local path ("-" for standard output, from a container file only). As with
'docker cp', when DST is an existing directory SRC is copied into it under
its own name, otherwise DST names the copy. Directories travel as a tar
stream; symbolic links are copied as links. Paths in the container are
resolved inside its root file system: no link or ".." leads outside it, and
the same holds for the local directory a container's archive is extracted
into. Works while the container runs and after it exited.`,
		examples: []string{
			"magnetar cp ./script.py c1:/work/script.py",
			"magnetar cp ./project c1:/work",
			"magnetar cp c1:/work/out.csv .",
			"magnetar cp c1:/var/log ./logs",
			"magnetar cp c1:/etc/os-release -",
		},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 2 {
				return usageError("cp needs SRC and DST")
			}
			sid, sp, sIn := containerPath(args[0])
			did, dp, dIn := containerPath(args[1])
			if sIn == dIn {
				return usageError("cp copies between the host and a container: exactly one of SRC and DST must be CONTAINER:PATH")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			if dIn {
				return copyIn(ctx, c.Files(did), args[0], dp)
			}
			return copyOut(ctx, e, c.Files(sid), sp, args[1])
		},
	}
}

// copyIn copies the local file or directory src to p in the container.
func copyIn(ctx context.Context, files *sdk.Files, src, p string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	if info, err := files.Stat(ctx, p); err == nil && info.Type == sdk.FileDir {
		p = path.Join(p, filepath.Base(filepath.Clean(src)))
	} else if err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = files.WriteFile(ctx, p, f, sdk.WriteOptions{Perm: uint32(fi.Mode().Perm()), Atomic: true})
		return err
	case fi.IsDir():
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeTar(pw, src)) }()
		_, _, err := files.UploadTar(ctx, p, pr)
		pr.CloseWithError(errors.New("upload ended"))
		return err
	}
	return fmt.Errorf("cp %s: not a regular file or directory: %w", src, errdefs.ErrInvalidArgument)
}

// writeTar writes the local directory dir as a tar archive (links as
// links, other special files skipped).
func writeTar(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !fi.Mode().IsRegular() && !fi.IsDir() {
			return nil
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			h.Name += "/"
		}
		h.Uname, h.Gname = "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, h.Size)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// copyOut copies p of the container to the local path dst.
func copyOut(ctx context.Context, e *env, files *sdk.Files, p, dst string) error {
	info, err := files.Stat(ctx, p)
	if err != nil {
		return err
	}
	if info.Type == sdk.FileSymlink {
		// Copy what the link names (resolved inside the container).
		r, err := files.Open(ctx, p)
		if err == nil {
			r.Close()
			info.Type = sdk.FileRegular
		} else if _, _, lerr := files.List(ctx, p, sdk.ListOptions{Limit: 1}); lerr == nil {
			info.Type = sdk.FileDir
		} else {
			return err
		}
	}
	if dst == "-" {
		if info.Type != sdk.FileRegular {
			return fmt.Errorf("cp %s -: only a regular file can go to standard output: %w", p, errdefs.ErrInvalidArgument)
		}
		r, err := files.Open(ctx, p)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.Copy(e.Stdout, r)
		return err
	}
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		dst = filepath.Join(dst, path.Base(info.Path))
	}
	switch info.Type {
	case sdk.FileRegular:
		r, err := files.Open(ctx, p)
		if err != nil {
			return err
		}
		defer r.Close()
		tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".magnetar-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		if _, err := io.Copy(tmp, r); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Chmod(fs.FileMode(info.Perm & 0o777)); err != nil {
			tmp.Close()
			return err
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		return os.Rename(tmp.Name(), dst)
	case sdk.FileDir:
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		r, err := files.DownloadTar(ctx, p)
		if err != nil {
			return err
		}
		defer r.Close()
		return extractTar(r, dst)
	}
	return fmt.Errorf("cp %s: a %s is not copied: %w", p, info.Type, errdefs.ErrInvalidArgument)
}

// extractTar extracts a container's archive (untrusted) into the local
// directory dir with os.Root: no entry or link leads outside dir.
func extractTar(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(path.Clean("/"+h.Name), "/"))
		if name == "." || name == "" {
			continue
		}
		local := filepath.FromSlash(name)
		if d := filepath.Dir(local); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(local, fs.FileMode(h.Mode&0o777)|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			_ = root.Remove(local) // a link in the way is replaced, not followed
			f, err := root.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(h.Mode&0o777))
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			_ = root.Remove(local)
			if err := root.Symlink(h.Linkname, local); err != nil {
				return err
			}
		}
	}
}

func filesCmd() *command {
	var (
		recursive bool
		limit     int
	)
	ls := &command{
		name: "ls", aliases: []string{"list"}, usage: "files ls [-r] [--limit N] CONTAINER:PATH",
		summary: "List a directory of a container (default)",
		help:    "Lists the entries of a directory of a container's root file system, recursively with -r, at most --limit of them.",
		examples: []string{
			"magnetar files ls c1:/work",
			"magnetar files ls -r --limit 100 c1:/",
			"magnetar files ls -o json c1:/etc",
		},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&recursive, "r", false, "list subdirectories too")
			fs.IntVar(&limit, "limit", 0, "at most `N` entries (default 1000, at most 100000)")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			id, p, err := onePath("files ls", args)
			if err != nil {
				return err
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			entries, truncated, err := c.Files(id).List(ctx, p, sdk.ListOptions{Recursive: recursive, Limit: limit})
			if err != nil {
				return err
			}
			if e.json() {
				return e.printJSON(struct {
					Entries   []sdk.FileInfo `json:"entries"`
					Truncated bool           `json:"truncated"`
				}{entries, truncated})
			}
			t := newTable(e.Stdout, "MODE", "UID", "GID", "SIZE", "MODIFIED", "PATH")
			for _, en := range entries {
				name := en.Path
				if en.SymlinkTarget != "" {
					name += " -> " + en.SymlinkTarget
				}
				t.row(en.FileMode().String(), fmt.Sprint(en.UID), fmt.Sprint(en.GID), fmt.Sprint(en.Bytes),
					en.ModifiedAt.Local().Format("2006-01-02 15:04:05"), name)
			}
			if err := t.flush(); err != nil {
				return err
			}
			if truncated {
				fmt.Fprintf(e.Stderr, "(more entries than the limit; use --limit)\n")
			}
			return nil
		},
	}
	cat := &command{
		name: "cat", usage: "files cat CONTAINER:PATH", summary: "Print a file of a container",
		help:         "Writes a regular file of a container's root file system to standard output, streamed.",
		examples:     []string{"magnetar files cat c1:/etc/os-release"},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			id, p, err := onePath("files cat", args)
			if err != nil {
				return err
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			r, err := c.Files(id).Open(ctx, p)
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(e.Stdout, r)
			return err
		},
	}
	watch := &command{
		name: "watch", usage: "files watch [-r] CONTAINER:PATH", summary: "Print the changes under a directory of a container",
		help: `Prints a line per change (created, modified, removed) under a directory of a
container's root file system as it happens, until interrupted or the
directory is removed; with -r, subdirectories too. With -o json, one JSON
object per line.`,
		examples:     []string{"magnetar files watch -r c1:/work"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&recursive, "r", false, "watch subdirectories too")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			id, p, err := onePath("files watch", args)
			if err != nil {
				return err
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			w, err := c.Files(id).Watch(ctx, p, recursive)
			if err != nil {
				return err
			}
			defer w.Close()
			for {
				ev, err := w.Next()
				if errors.Is(err, io.EOF) || (err != nil && ctx.Err() != nil) {
					return nil
				}
				if err != nil {
					return err
				}
				switch {
				case e.json():
					if err := jsonLine(e.Stdout, ev); err != nil {
						return err
					}
				case ev.Overflow:
					fmt.Fprintln(e.Stdout, "overflow (events were lost)")
				default:
					suffix := ""
					if ev.IsDir {
						suffix = "/"
					}
					fmt.Fprintf(e.Stdout, "%-8s %s%s\n", ev.Type, ev.Path, suffix)
				}
			}
		},
	}
	return &command{
		name: "files", usage: "files ls|cat|watch", summary: "List, print and watch the files of a container",
		help: `Reads a container's root file system through the sandboxer, while the
container runs and after it exited. See also 'magnetar cp'.`,
		examples: []string{"magnetar files ls c1:/work", "magnetar files cat c1:/work/out.txt", "magnetar files watch -r c1:/work"},
		sub:      []*command{ls, cat, watch},
	}
}

// onePath parses the single CONTAINER:PATH argument of a files command.
func onePath(name string, args []string) (string, string, error) {
	if len(args) != 1 {
		return "", "", usageError(name + " needs one CONTAINER:PATH")
	}
	id, p, ok := containerPath(args[0])
	if !ok {
		return "", "", usageError(name + ": " + args[0] + " is not CONTAINER:PATH")
	}
	return id, p, nil
}
