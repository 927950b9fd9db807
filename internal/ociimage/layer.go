// Package ociimage builds OCI image archives from directories on the local
// disk, without a registry or a container engine.
//
// A root filesystem directory becomes a deterministic, gzip-compressed layer
// (entries sorted by name, owned by 0:0, a fixed modification time, hard links
// preserved), and one or more images become an OCI image layout tar that
// `ctr -n k8s.io images import` accepts: oci-layout, index.json carrying the
// image name in the io.containerd.image.name annotation, and blobs/sha256/.
//
// The same input always produces byte-identical output, so digests are stable
// across runs and machines that use the same Go release. Blobs are kept in
// memory: the package is meant for small test images (busybox, pause, stubs).
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// Epoch is the modification time given to every entry of a layer and of an
// image archive, so that builds are reproducible.
var Epoch = time.Unix(0, 0).UTC()

// Layer is a compressed layer blob together with its two digests.
type Layer struct {
	// Blob is the gzip-compressed tar stream.
	Blob []byte
	// Digest is the digest of Blob, used in the manifest and as the blob name.
	Digest digest.Digest
	// DiffID is the digest of the uncompressed tar, listed in the image
	// config's rootfs.diff_ids.
	DiffID digest.Digest
}

// BuildLayer archives the directory tree rooted at rootfs into a deterministic
// gzip-compressed layer. The root directory itself is not an entry; paths are
// relative ("bin/sh", directories end in "/"). Only directories, regular
// files and symbolic links are supported; files sharing an inode become hard
// links to the first of them in name order.
func BuildLayer(ctx context.Context, rootfs string) (Layer, error) {
	var (
		blob   bytes.Buffer
		diffID = sha256.New()
	)
	gz, err := gzip.NewWriterLevel(&blob, gzip.DefaultCompression)
	if err != nil {
		return Layer{}, err
	}
	if err := WriteTar(ctx, io.MultiWriter(gz, diffID), rootfs); err != nil {
		return Layer{}, err
	}
	if err := gz.Close(); err != nil {
		return Layer{}, fmt.Errorf("compress layer of %s: %w", rootfs, err)
	}
	return Layer{
		Blob:   blob.Bytes(),
		Digest: digest.FromBytes(blob.Bytes()),
		DiffID: digest.NewDigest(digest.SHA256, diffID),
	}, nil
}

// WriteTar writes the uncompressed, deterministic tar stream of the tree
// rooted at rootfs to w. See BuildLayer for the format.
func WriteTar(ctx context.Context, w io.Writer, rootfs string) error {
	info, err := os.Stat(rootfs)
	if err != nil {
		return fmt.Errorf("layer root: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("layer root %s is not a directory", rootfs)
	}

	type inode struct{ dev, ino uint64 }
	var (
		tw    = tar.NewWriter(w)
		links = map[inode]string{} // first path seen for a multiply-linked file
	)
	// WalkDir visits entries in lexical order, which makes the output stable.
	err = filepath.WalkDir(rootfs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(rootfs, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr := &tar.Header{
			Name:    name,
			Mode:    tarMode(info.Mode()),
			ModTime: Epoch,
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = target
		case mode.IsRegular():
			hdr.Typeflag = tar.TypeReg
			hdr.Size = info.Size()
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				key := inode{uint64(st.Dev), st.Ino}
				if first, seen := links[key]; seen {
					hdr.Typeflag = tar.TypeLink
					hdr.Linkname = first
					hdr.Size = 0
				} else {
					links[key] = name
				}
			}
		default:
			return fmt.Errorf("%s: unsupported file type %s", path, mode.Type())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			return copyFile(tw, path, hdr.Size)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", rootfs, err)
	}
	return tw.Close()
}

// tarMode keeps the permission bits plus setuid, setgid and sticky.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

func copyFile(w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if n != size {
		return fmt.Errorf("%s: file shrank while archiving (%d of %d bytes)", path, n, size)
	}
	return nil
}
