package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// unpack is one root file system being unpacked; concurrent callers of
// Rootfs for the same image wait for it.
type unpack struct {
	done chan struct{}
	err  error // set before done is closed

	mu       sync.Mutex
	next     int
	watchers map[int]*watcher
}

// watcher is one caller's progress function. Its mutex makes sure fn is
// not called any more once the caller stopped watching.
type watcher struct {
	mu      sync.Mutex
	fn      func(Progress)
	stopped bool
}

// watch adds fn to the progress watchers. The returned function removes
// it; once it returns, fn is not called again.
func (u *unpack) watch(fn func(Progress)) func() {
	if fn == nil {
		return func() {}
	}
	w := &watcher{fn: fn}
	u.mu.Lock()
	id := u.next
	u.next++
	u.watchers[id] = w
	u.mu.Unlock()
	return func() {
		u.mu.Lock()
		delete(u.watchers, id)
		u.mu.Unlock()
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
	}
}

// broadcast sends p to every watcher, from the unpacking goroutine.
func (u *unpack) broadcast(p Progress) {
	u.mu.Lock()
	ws := make([]*watcher, 0, len(u.watchers))
	for _, w := range u.watchers {
		ws = append(ws, w)
	}
	u.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		if !w.stopped {
			w.fn(p)
		}
		w.mu.Unlock()
	}
}

// Rootfs returns the directory holding the unpacked root file system of
// image ref, unpacking it first if needed. The directory is shared by every
// image with the same config and must be treated as read-only: use it as an
// overlay lower directory or a read-only bind mount. Register a use with
// [Store.Use] before calling Rootfs so that the image cannot be removed
// meanwhile.
//
// Layers are applied in order with containerd's archive.Apply, which
// applies whiteouts and opaque directories and keeps every entry (also
// through symbolic links and hard links) inside the directory; each layer's
// uncompressed digest is checked against the config's diff ID. The layers
// are unpacked into a temporary directory that is renamed into place when
// complete, so a crash never leaves a partial root file system. Concurrent
// callers for the same image wait for a single unpack and all get its
// progress; progress may be nil. progress may be called from another
// caller's goroutine, never concurrently with itself, and never after
// Rootfs returned.
func (s *Store) Rootfs(ctx context.Context, ref string, progress func(Progress)) (string, error) {
	for {
		s.mu.Lock()
		recs, err := s.findLocked(ref)
		if err != nil {
			s.mu.Unlock()
			return "", err
		}
		r := recs[0]
		m, cf, err := s.readImage(r.Digest)
		if err != nil {
			s.mu.Unlock()
			return "", err
		}
		key := m.Config.Digest.Hex
		final := filepath.Join(s.dir, rootfsDir, key)
		if fi, err := os.Stat(final); err == nil && fi.IsDir() {
			s.mu.Unlock()
			return final, nil
		}
		if u, ok := s.unpacking[key]; ok {
			unwatch := u.watch(progress)
			s.mu.Unlock()
			select {
			case <-u.done:
				unwatch()
			case <-ctx.Done():
				unwatch()
				return "", ctx.Err()
			}
			if u.err == nil {
				return final, nil
			}
			if isContextErr(u.err) && ctx.Err() == nil {
				continue // its caller gave up; unpack for this one
			}
			return "", u.err
		}
		u := &unpack{done: make(chan struct{}), watchers: map[int]*watcher{}}
		unwatch := u.watch(progress)
		s.unpacking[key] = u
		hs := make([]v1.Hash, 0, len(m.Layers))
		for _, l := range m.Layers {
			hs = append(hs, l.Digest)
		}
		s.mu.Unlock()
		release := s.hold(hs)
		err = s.unpackLayers(ctx, r.Name, m, cf, final, u.broadcast)
		release()
		unwatch()
		s.mu.Lock()
		delete(s.unpacking, key)
		s.mu.Unlock()
		u.err = err
		close(u.done)
		if err != nil {
			return "", err
		}
		return final, nil
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// unpackLayers applies the layers of m to a new temporary directory and
// renames it to final.
func (s *Store) unpackLayers(ctx context.Context, imgName string, m *v1.Manifest, cf *v1.ConfigFile, final string, progress func(Progress)) (retErr error) {
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("image %s: %d layers but %d diff IDs: %w", imgName, len(m.Layers), len(cf.RootFS.DiffIDs), errdefs.ErrInvalidArgument)
	}
	var total int64
	for _, l := range m.Layers {
		total += l.Size
	}
	tmp, err := os.MkdirTemp(filepath.Dir(final), tmpPrefix+filepath.Base(final)+"-")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	opts := []archive.ApplyOpt{}
	if os.Geteuid() != 0 {
		// Unprivileged (tests): keep our own ownership and leave out
		// device nodes, which only root can create.
		opts = append(opts, archive.WithNoSameOwner(), archive.WithFilter(func(h *tar.Header) (bool, error) {
			return h.Typeflag != tar.TypeChar && h.Typeflag != tar.TypeBlock, nil
		}))
	}
	rep := newReporter(progress, Progress{Phase: PhaseUnpack, Image: imgName, LayersTotal: len(m.Layers), BytesTotal: total})
	rep.emit()
	for i, l := range m.Layers {
		rep.p.Layer = l.Digest.String()
		rep.emit()
		if err := s.applyLayer(ctx, tmp, l, cf.RootFS.DiffIDs[i], rep, opts); err != nil {
			return fmt.Errorf("image %s: unpack layer %s: %w", imgName, l.Digest, err)
		}
		rep.p.LayersDone, rep.p.Layer = i+1, ""
		rep.emit()
	}
	// Make the content durable before it gets its final name.
	if err := syncFS(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

// applyLayer applies one stored layer to dir and checks its diff ID.
func (s *Store) applyLayer(ctx context.Context, dir string, l v1.Descriptor, diffID v1.Hash, rep *reporter, opts []archive.ApplyOpt) error {
	f, err := os.Open(s.blobPath(l.Digest))
	if err != nil {
		return err
	}
	defer f.Close()
	counted := &countingReader{r: f, add: rep.add}
	dr, err := decompress(counted)
	if err != nil {
		return err
	}
	defer dr.Close()
	h := sha256.New()
	tee := io.TeeReader(dr, h)
	if _, err := archive.Apply(ctx, dir, tee, opts...); err != nil {
		return err
	}
	// Hash what follows the end-of-archive marker too.
	if _, err := copyContext(ctx, io.Discard, tee, nil); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID.String() {
		return fmt.Errorf("uncompressed layer has digest %s, the config says %s: %w", got, diffID, errdefs.ErrDataLoss)
	}
	return nil
}

// countingReader tells add of every chunk read.
type countingReader struct {
	r   io.Reader
	add func(int64)
}

// Read implements io.Reader.
func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.add(int64(n))
	}
	return n, err
}

// decompress returns the uncompressed stream of a layer: gzip, zstd or
// plain tar, told apart by their magic numbers.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// syncFS flushes the file system holding dir.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
