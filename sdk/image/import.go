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
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Phase names what an import, a pull or an unpack is doing.
type Phase string

const (
	// PhaseCopy is copying content (manifest, config, compressed layers)
	// into the store.
	PhaseCopy Phase = "copy"
	// PhaseUnpack is unpacking layers into a root file system.
	PhaseUnpack Phase = "unpack"
)

// Progress reports how far the work on one image is.
type Progress struct {
	// Phase is what is being done.
	Phase Phase
	// Image is the image's name, or its digest if it has none.
	Image string
	// Layer is the digest of the layer being processed; "" between layers.
	Layer string
	// LayersDone and LayersTotal count the image's layers.
	LayersDone, LayersTotal int
	// BytesDone and BytesTotal count compressed bytes.
	BytesDone, BytesTotal int64
}

// Option configures [Store.Import] and [Store.Pull].
type Option func(*options)

type options struct {
	progress  func(Progress)
	platform  Platform
	insecure  bool
	keychain  authn.Keychain
	transport http.RoundTripper
	dialCheck func(netip.Addr) error
	maxBytes  int64
}

// WithProgress has fn called, from the calling goroutine, as the work
// advances: at the start and end of each layer and at most every 100ms in
// between.
func WithProgress(fn func(Progress)) Option { return func(o *options) { o.progress = fn } }

// WithPlatform selects the platform to take from multi-platform images
// instead of the host's (with its WebAssembly fallback).
func WithPlatform(p Platform) Option { return func(o *options) { o.platform = p } }

// WithInsecure allows [Store.Pull] to talk plain HTTP to the registry.
// Without it, only HTTPS is used, also for registries on localhost.
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithKeychain sets where [Store.Pull] finds registry credentials; the
// default is authn.DefaultKeychain (the Docker config of the user running
// the process).
func WithKeychain(k authn.Keychain) Option { return func(o *options) { o.keychain = k } }

// WithTransport sets the HTTP transport of [Store.Pull]; the default is
// go-containerregistry's remote.DefaultTransport.
func WithTransport(t http.RoundTripper) Option { return func(o *options) { o.transport = t } }

// WithDialCheck has [Store.Pull] call check with the address of every
// connection it is about to open (to the registry, to a host it redirects
// to), after name resolution: an error refuses the connection and fails
// the pull with it. The pull then connects directly, never through the
// proxy of the environment (HTTPS_PROXY), and the transport
// ([WithTransport]) must be an *http.Transport.
func WithDialCheck(check func(netip.Addr) error) Option {
	return func(o *options) { o.dialCheck = check }
}

// WithMaxBytes bounds the size of the image [Store.Pull] stores (the size
// [Image] reports: manifest, config and compressed layers, as the manifest
// declares them): a bigger image fails with errdefs.ErrResourceExhausted
// before any layer is fetched. 0: no bound.
func WithMaxBytes(n int64) Option { return func(o *options) { o.maxBytes = n } }

func makeOptions(opts []Option) options {
	var o options
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// candidate is an image found in a source, with the names it is to get.
type candidate struct {
	names []string
	img   v1.Image
	// digest is the manifest digest the source announced; the manifest
	// read must match it.
	digest v1.Hash
	// src describes where the image came from, for errors.
	src string
	// maxBytes, if > 0, bounds the image's size.
	maxBytes int64
}

// Import adds the images of path to the store and returns them in the
// order of the source. path is an OCI image layout directory, an OCI
// archive (a tar, possibly gzip-compressed, of an OCI image layout, as
// written by `ctr export` or `docker buildx build --output type=oci`), or
// a `docker save` archive.
//
// Image names come from the io.containerd.image.name annotation of the
// index, else from org.opencontainers.image.ref.name when it is a full
// reference (a bare tag is not a name), or from a docker-save archive's
// RepoTags; an image without a name is named by its manifest digest. An
// existing image of the same name is replaced. Every blob is verified
// against its digest.
func (s *Store) Import(ctx context.Context, path string, opts ...Option) ([]Image, error) {
	o := makeOptions(opts)
	m := matcher{want: o.platform}
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("import %s: %w", path, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	// Anything but a regular file or a directory (a FIFO, a device)
	// could block an open or a read for ever.
	var cands []candidate
	switch {
	case fi.IsDir():
		if err = checkLayoutFiles(path); err == nil {
			cands, err = layoutCandidates(path, m)
		}
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("import %s: not a regular file or a directory (%s): %w", path, fi.Mode().Type(), errdefs.ErrInvalidArgument)
	default:
		var cleanup func()
		cands, cleanup, err = s.archiveCandidates(ctx, path, m)
		if cleanup != nil {
			defer cleanup()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("import %s: no image for platform %s: %w", path, m, errdefs.ErrNotFound)
	}
	var out []Image
	for _, c := range cands {
		recs, err := s.storeImage(ctx, c, m, o.progress)
		if err != nil {
			return out, fmt.Errorf("import %s: %w", path, err)
		}
		for _, r := range recs {
			img, err := s.describe(r)
			if err != nil {
				return out, err
			}
			out = append(out, img)
		}
	}
	return out, nil
}

// layoutCandidates lists the images of an OCI image layout directory.
// checkLayoutFiles checks that the files of an OCI layout that an import
// opens (oci-layout, index.json, blobs/<algorithm>/<digest>) are regular
// files (or missing): a FIFO among them would block the import.
func checkLayoutFiles(dir string) error {
	check := func(p string) error {
		fi, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			return fmt.Errorf("%s is not a regular file (%s): %w", rel, fi.Mode().Type(), errdefs.ErrInvalidArgument)
		}
		return nil
	}
	for _, f := range []string{ocispec.ImageLayoutFile, ocispec.ImageIndexFile} {
		if err := check(filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	algs, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		return nil // layoutCandidates says what is wrong
	}
	for _, a := range algs {
		ad := filepath.Join(dir, "blobs", a.Name())
		blobs, err := os.ReadDir(ad)
		if err != nil {
			continue
		}
		for _, b := range blobs {
			if err := check(filepath.Join(ad, b.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func layoutCandidates(dir string, m matcher) ([]candidate, error) {
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("not an OCI image layout: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("index.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []candidate
	for _, d := range im.Manifests {
		if !d.MediaType.IsIndex() && !d.MediaType.IsImage() {
			continue // signatures, attestations, artifacts
		}
		names, err := annotatedNames(d.Annotations)
		if err != nil {
			return nil, err
		}
		img, dg, err := resolve(ii, d, m, 0)
		if err != nil {
			return nil, err
		}
		if img == nil {
			continue // no manifest for this platform
		}
		out = append(out, candidate{names: names, img: img, digest: dg, src: d.Digest.String()})
	}
	return out, nil
}

// resolve returns the image descriptor d of parent selects: d itself, or
// the best platform of the index d names (nil if it has none).
func resolve(parent v1.ImageIndex, d v1.Descriptor, m matcher, depth int) (v1.Image, v1.Hash, error) {
	if depth > 4 {
		return nil, v1.Hash{}, fmt.Errorf("indexes nested too deeply: %w", errdefs.ErrInvalidArgument)
	}
	if d.Digest.Algorithm != "sha256" || !hexDigest.MatchString(d.Digest.Hex) {
		return nil, v1.Hash{}, fmt.Errorf("unsupported digest %q: %w", d.Digest, errdefs.ErrInvalidArgument)
	}
	switch {
	case d.MediaType.IsImage():
		if d.MediaType.IsSchema1() {
			return nil, v1.Hash{}, fmt.Errorf("manifest %s: schema 1 images are not supported: %w", d.Digest, errdefs.ErrNotImplemented)
		}
		img, err := parent.Image(d.Digest)
		if err != nil {
			return nil, v1.Hash{}, fmt.Errorf("manifest %s: %w", d.Digest, err)
		}
		return img, d.Digest, nil
	case d.MediaType.IsIndex():
		child, err := parent.ImageIndex(d.Digest)
		if err != nil {
			return nil, v1.Hash{}, fmt.Errorf("index %s: %w", d.Digest, err)
		}
		return pickFrom(child, d.Digest, m, depth+1)
	}
	return nil, v1.Hash{}, fmt.Errorf("descriptor %s has media type %q, not an image: %w", d.Digest, d.MediaType, errdefs.ErrInvalidArgument)
}

// pickFrom returns the image of the best platform of index ii, whose
// digest must be dg (nil if it has no acceptable platform).
func pickFrom(ii v1.ImageIndex, dg v1.Hash, m matcher, depth int) (v1.Image, v1.Hash, error) {
	raw, err := ii.RawManifest()
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("index %s: %w", dg, err)
	}
	if got := sha256Hash(raw); got != dg {
		return nil, v1.Hash{}, fmt.Errorf("index %s has digest %s: %w", dg, got, errdefs.ErrDataLoss)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("index %s: %v: %w", dg, err, errdefs.ErrInvalidArgument)
	}
	i := m.pick(im.Manifests)
	if i < 0 {
		return nil, v1.Hash{}, nil
	}
	return resolve(ii, im.Manifests[i], m, depth)
}

// annotatedNames returns the image name an index descriptor carries.
func annotatedNames(ann map[string]string) ([]string, error) {
	n := ann[AnnotationImageName]
	if n == "" {
		// The OCI annotation is often only a tag ("1.36"), which names
		// nothing on its own.
		if rn := ann[ocispec.AnnotationRefName]; strings.ContainsAny(rn, "/:@") {
			n = rn
		}
	}
	if n == "" {
		return nil, nil
	}
	full, err := NormalizeRef(n)
	if err != nil {
		return nil, err
	}
	return []string{full}, nil
}

// archiveCandidates lists the images of an OCI or docker-save archive. OCI
// archives are extracted to a temporary layout in the store's directory;
// cleanup removes it.
func (s *Store) archiveCandidates(ctx context.Context, file string, m matcher) ([]candidate, func(), error) {
	opener := func() (io.ReadCloser, error) { return openMaybeGzip(file) }
	entries, err := tarEntries(opener)
	if err != nil {
		return nil, nil, fmt.Errorf("not a tar archive: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	switch {
	case entries[ocispec.ImageIndexFile] && entries[ocispec.ImageLayoutFile]:
		tmp, err := os.MkdirTemp(s.dir, tmpPrefix+"import-")
		if err != nil {
			return nil, nil, err
		}
		cleanup := func() { _ = os.RemoveAll(tmp) }
		if err := extractLayout(ctx, opener, tmp); err != nil {
			return nil, cleanup, err
		}
		cands, err := layoutCandidates(tmp, m)
		return cands, cleanup, err
	case entries["manifest.json"]:
		cands, err := dockerCandidates(opener)
		return cands, nil, err
	}
	return nil, nil, fmt.Errorf("archive has neither index.json and oci-layout nor manifest.json: %w", errdefs.ErrInvalidArgument)
}

// openMaybeGzip opens file, decompressing it if it is gzip-compressed.
// It opens without blocking and refuses anything but a regular file (a
// FIFO put in its place after Import looked).
func openMaybeGzip(file string) (io.ReadCloser, error) {
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file: %w", file, errdefs.ErrInvalidArgument)
	}
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{zr, f}, nil
	}
	return struct {
		io.Reader
		io.Closer
	}{br, f}, nil
}

// tarEntries returns the clean names of the regular files of a tar.
func tarEntries(opener tarball.Opener) (map[string]bool, error) {
	rc, err := opener()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	out := map[string]bool{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if hdr.Typeflag == tar.TypeReg {
			out[path.Clean(strings.TrimPrefix(hdr.Name, "./"))] = true
		}
	}
}

// extractLayout writes the OCI layout files of a tar into dir: oci-layout,
// index.json and blobs/<algorithm>/<hex>, regular files only. Every other
// entry is ignored, so no name can point outside dir.
func extractLayout(ctx context.Context, opener tarball.Opener, dir string) error {
	rc, err := opener()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		n := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		parts := strings.Split(n, "/")
		switch {
		case n == ocispec.ImageLayoutFile || n == ocispec.ImageIndexFile:
		case len(parts) == 3 && parts[0] == "blobs" && parts[1] == "sha256" && hexDigest.MatchString(parts[2]):
		default:
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = copyContext(ctx, f, tr, nil)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("extract %s: %w", n, err)
		}
	}
}

// dockerCandidates lists the images of a `docker save` archive.
func dockerCandidates(opener tarball.Opener) ([]candidate, error) {
	man, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("manifest.json: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var out []candidate
	for i, d := range man {
		var (
			names []string
			img   v1.Image
		)
		if len(d.RepoTags) > 0 {
			for _, t := range d.RepoTags {
				n, err := NormalizeRef(t)
				if err != nil {
					return nil, err
				}
				names = append(names, n)
			}
			tag, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return nil, fmt.Errorf("RepoTags %q: %v: %w", d.RepoTags[0], err, errdefs.ErrInvalidArgument)
			}
			img, err = tarball.Image(opener, &tag)
			if err != nil {
				return nil, fmt.Errorf("image %s: %v: %w", d.RepoTags[0], err, errdefs.ErrInvalidArgument)
			}
		} else {
			if len(man) != 1 {
				return nil, fmt.Errorf("image %d of manifest.json has no RepoTags; only single-image archives may be untagged: %w", i, errdefs.ErrNotImplemented)
			}
			img, err = tarball.Image(opener, nil)
			if err != nil {
				return nil, fmt.Errorf("image: %v: %w", err, errdefs.ErrInvalidArgument)
			}
		}
		out = append(out, candidate{names: names, img: img, src: d.Config})
	}
	return out, nil
}

// Pull fetches the image ref from its registry into the store and returns
// it. A multi-platform image gives the host's platform, or its WebAssembly
// image when it has no other. Plain HTTP needs [WithInsecure].
func (s *Store) Pull(ctx context.Context, ref string, opts ...Option) (Image, error) {
	o := makeOptions(opts)
	m := matcher{want: o.platform}
	var nopts []name.Option
	if o.insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := parseRef(ref, nopts...)
	if err != nil {
		return Image{}, err
	}
	tr := o.transport
	if tr == nil {
		tr = remote.DefaultTransport
	}
	if o.dialCheck != nil {
		ht, ok := tr.(*http.Transport)
		if !ok {
			return Image{}, fmt.Errorf("pull %s: an address check needs an *http.Transport, not %T: %w", ref, tr, errdefs.ErrFailedPrecondition)
		}
		ht = ht.Clone()
		ht.Proxy = nil // the check is on the addresses connected to
		check := o.dialCheck
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("connect to %s: %v: %w", address, err, errdefs.ErrPermissionDenied)
			}
			return check(ap.Addr().Unmap())
		}}
		ht.DialContext = d.DialContext
		defer ht.CloseIdleConnections()
		tr = ht
	}
	if !o.insecure {
		tr = httpsOnly{tr}
	}
	kc := o.keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuthFromKeychain(kc), remote.WithUserAgent("magnetar")}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, registryErr(err))
	}
	var (
		img v1.Image
		dg  = desc.Digest
	)
	switch {
	case desc.MediaType.IsIndex():
		ii, err := desc.ImageIndex()
		if err != nil {
			return Image{}, fmt.Errorf("pull %s: %w", ref, registryErr(err))
		}
		img, dg, err = pickFrom(ii, desc.Digest, m, 0)
		if err != nil {
			return Image{}, fmt.Errorf("pull %s: %w", ref, registryErr(err))
		}
		if img == nil {
			return Image{}, fmt.Errorf("pull %s: no image for platform %s: %w", ref, m, errdefs.ErrNotFound)
		}
	case desc.MediaType.IsImage() && !desc.MediaType.IsSchema1():
		img, err = desc.Image()
		if err != nil {
			return Image{}, fmt.Errorf("pull %s: %w", ref, registryErr(err))
		}
	default:
		return Image{}, fmt.Errorf("pull %s: media type %q is not a supported image: %w", ref, desc.MediaType, errdefs.ErrNotImplemented)
	}
	recs, err := s.storeImage(ctx, candidate{names: []string{canonical(r)}, img: img, digest: dg, src: ref, maxBytes: o.maxBytes}, m, o.progress)
	if err != nil {
		return Image{}, fmt.Errorf("pull %s: %w", ref, registryErr(err))
	}
	return s.describe(recs[0])
}

// registryErr classifies errors of go-containerregistry's remote package.
func registryErr(err error) error {
	var te interface{ Temporary() bool }
	switch {
	case errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) || errdefs.IsDataLoss(err) || errdefs.IsNotImplemented(err) || errdefs.IsFailedPrecondition(err) ||
		errdefs.IsPermissionDenied(err) || errdefs.IsResourceExhausted(err):
		return err
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	case strings.Contains(err.Error(), "MANIFEST_UNKNOWN") || strings.Contains(err.Error(), "NAME_UNKNOWN"):
		return fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
	case strings.Contains(err.Error(), "UNAUTHORIZED") || strings.Contains(err.Error(), "DENIED"):
		return fmt.Errorf("%v: %w", err, errdefs.ErrPermissionDenied)
	case errors.As(err, &te):
		return fmt.Errorf("%v: %w", err, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("%v: %w", err, errdefs.ErrUnavailable)
}

// httpsOnly refuses plain HTTP requests: go-containerregistry falls back to
// HTTP for registries on localhost and private addresses by itself.
type httpsOnly struct{ next http.RoundTripper }

// RoundTrip implements http.RoundTripper.
func (t httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("plain HTTP to %s is not allowed without the insecure option", req.URL.Host)
	}
	return t.next.RoundTrip(req)
}

// acceptedLayer reports whether layers of media type mt can be stored and
// unpacked.
func acceptedLayer(mt types.MediaType) bool {
	switch mt {
	case types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer, types.DockerLayer, types.DockerUncompressedLayer:
		return true
	}
	return false
}

// storeImage copies one image into the store, verifying every blob, and
// names it. It returns the records added.
func (s *Store) storeImage(ctx context.Context, c candidate, m matcher, progress func(Progress)) ([]record, error) {
	raw, err := c.img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest: %w", c.src, err)
	}
	dg := sha256Hash(raw)
	if c.digest.Hex != "" && dg != c.digest {
		return nil, fmt.Errorf("image %s: manifest has digest %s: %w", c.src, dg, errdefs.ErrDataLoss)
	}
	mt, err := c.img.MediaType()
	if err != nil {
		return nil, err
	}
	man, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest: %v: %w", c.src, err, errdefs.ErrInvalidArgument)
	}
	if man.MediaType != "" {
		mt = man.MediaType
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return nil, fmt.Errorf("image %s: manifest media type %q is not supported: %w", c.src, mt, errdefs.ErrNotImplemented)
	}
	rawCfg, err := c.img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", c.src, err)
	}
	if got := sha256Hash(rawCfg); got != man.Config.Digest {
		return nil, fmt.Errorf("image %s: config has digest %s, the manifest says %s: %w", c.src, got, man.Config.Digest, errdefs.ErrDataLoss)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %v: %w", c.src, err, errdefs.ErrInvalidArgument)
	}
	plat := Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}
	if !m.accepts(plat) {
		return nil, fmt.Errorf("image %s is for %s, not %s: %w", c.src, plat, m, errdefs.ErrInvalidArgument)
	}
	if len(cf.RootFS.DiffIDs) != len(man.Layers) {
		return nil, fmt.Errorf("image %s: %d layers but %d diff IDs: %w", c.src, len(man.Layers), len(cf.RootFS.DiffIDs), errdefs.ErrInvalidArgument)
	}
	all := []v1.Hash{dg, man.Config.Digest}
	var total int64
	for _, l := range man.Layers {
		if !acceptedLayer(l.MediaType) {
			return nil, fmt.Errorf("image %s: layer %s has media type %q, which is not supported: %w", c.src, l.Digest, l.MediaType, errdefs.ErrNotImplemented)
		}
		if l.Digest.Algorithm != "sha256" || !hexDigest.MatchString(l.Digest.Hex) || l.Size < 0 {
			return nil, fmt.Errorf("image %s: bad layer descriptor %s: %w", c.src, l.Digest, errdefs.ErrInvalidArgument)
		}
		all = append(all, l.Digest)
		total += l.Size
	}
	if size := int64(len(raw)) + man.Config.Size + total; c.maxBytes > 0 && size > c.maxBytes {
		return nil, fmt.Errorf("image %s has %d bytes, more than the %d allowed: %w", c.src, size, c.maxBytes, errdefs.ErrResourceExhausted)
	}
	names := c.names
	if len(names) == 0 {
		names = []string{dg.String()}
	}
	release := s.hold(all)
	defer release()

	rep := newReporter(progress, Progress{Phase: PhaseCopy, Image: names[0], LayersTotal: len(man.Layers), BytesTotal: total})
	rep.emit()
	for i, l := range man.Layers {
		rep.p.Layer = l.Digest.String()
		rep.emit()
		if !s.haveBlob(l.Digest, l.Size) {
			layer, err := c.img.LayerByDigest(l.Digest)
			if err != nil {
				return nil, fmt.Errorf("image %s: layer %s: %w", c.src, l.Digest, err)
			}
			rc, err := layer.Compressed()
			if err != nil {
				return nil, fmt.Errorf("image %s: layer %s: %w", c.src, l.Digest, err)
			}
			err = s.writeBlob(ctx, l.Digest, l.Size, rc, rep.add)
			rc.Close()
			if err != nil {
				return nil, fmt.Errorf("image %s: layer %s: %w", c.src, l.Digest, err)
			}
		} else {
			rep.add(l.Size)
		}
		rep.p.LayersDone, rep.p.Layer = i+1, ""
		rep.emit()
	}
	for _, b := range []struct {
		h    v1.Hash
		data []byte
	}{{man.Config.Digest, rawCfg}, {dg, raw}} {
		if !s.haveBlob(b.h, int64(len(b.data))) {
			if err := s.writeBlob(ctx, b.h, int64(len(b.data)), bytes.NewReader(b.data), nil); err != nil {
				return nil, err
			}
		}
	}
	platform := &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}
	var recs []record
	for _, n := range names {
		recs = append(recs, record{Name: n, Digest: dg, MediaType: mt, Size: int64(len(raw)), Platform: platform})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpenLocked(); err != nil {
		return nil, err
	}
	if err := s.addLocked(recs); err != nil {
		return nil, err
	}
	// Replaced names may have left content behind.
	return recs, s.gcLocked()
}

// hold marks blobs as needed by work in progress, so that the garbage
// collector keeps them; the returned function lets go.
func (s *Store) hold(hs []v1.Hash) func() {
	s.mu.Lock()
	for _, h := range hs {
		s.pending[h]++
	}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		for _, h := range hs {
			if s.pending[h]--; s.pending[h] <= 0 {
				delete(s.pending, h)
			}
		}
		s.mu.Unlock()
	}
}

// haveBlob reports whether blob h is stored with the given size. Stored
// blobs were verified when they were written.
func (s *Store) haveBlob(h v1.Hash, size int64) bool {
	fi, err := os.Stat(s.blobPath(h))
	return err == nil && fi.Mode().IsRegular() && fi.Size() == size
}

// writeBlob stores the content of r as blob h: written to a temporary file,
// checked against the size (unless negative) and the digest, synced and
// renamed into place. onBytes, if set, is told of each chunk copied.
func (s *Store) writeBlob(ctx context.Context, h v1.Hash, size int64, r io.Reader, onBytes func(int64)) (retErr error) {
	if h.Algorithm != "sha256" || !hexDigest.MatchString(h.Hex) {
		return fmt.Errorf("unsupported digest %q: %w", h, errdefs.ErrInvalidArgument)
	}
	dir := filepath.Join(s.dir, blobsDir, "sha256")
	f, err := os.CreateTemp(dir, tmpPrefix+h.Hex+"-")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	hash := sha256.New()
	if size >= 0 {
		// Read one byte more than announced to detect oversized blobs.
		r = io.LimitReader(r, size+1)
	}
	n, err := copyContext(ctx, io.MultiWriter(f, hash), r, onBytes)
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("blob %s has %d bytes, want %d: %w", h, n, size, errdefs.ErrDataLoss)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != h.Hex {
		return fmt.Errorf("blob %s has digest sha256:%s: %w", h, got, errdefs.ErrDataLoss)
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), s.blobPath(h)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// copyContext copies src to dst until EOF or until ctx ends, telling
// onBytes, if set, of each chunk copied.
func copyContext(ctx context.Context, dst io.Writer, src io.Reader, onBytes func(int64)) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			if onBytes != nil {
				onBytes(int64(n))
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// reporter sends throttled progress reports.
type reporter struct {
	fn   func(Progress)
	p    Progress
	last time.Time
}

func newReporter(fn func(Progress), p Progress) *reporter { return &reporter{fn: fn, p: p} }

// add counts n bytes done, reporting at most every 100ms.
func (r *reporter) add(n int64) {
	r.p.BytesDone += n
	if r.fn != nil && time.Since(r.last) >= 100*time.Millisecond {
		r.emit()
	}
}

// emit reports the current progress.
func (r *reporter) emit() {
	if r.fn == nil {
		return
	}
	r.last = time.Now()
	r.fn(r.p)
}
