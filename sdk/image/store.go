// Package image is Magnetar's local image store: OCI images imported from
// archives and layouts or pulled from registries, kept under one directory,
// and unpacked once into read-only root file systems that containers use as
// the lower layer of an overlay.
//
// It is built on github.com/google/go-containerregistry (reading layouts,
// docker-save archives and registries) and containerd's pkg/archive
// (applying layers, with whiteouts, without letting an entry escape the
// target directory).
//
// # Layout on disk
//
//	<dir>/oci-layout, <dir>/index.json   an OCI image layout: index.json
//	                                     names every image (annotations
//	                                     org.opencontainers.image.ref.name and
//	                                     io.containerd.image.name)
//	<dir>/blobs/sha256/<hex>             manifests, configs, compressed layers
//	<dir>/rootfs/<config hex>/           unpacked root file systems, keyed by
//	                                     the image config digest
//	<dir>/uses.json                      registered uses of root file systems
//	<dir>/.lock                          held (flock) while a Store is open
//
// Every file is written to a temporary name and renamed into place, and
// root file systems are unpacked into a temporary directory that is renamed
// when complete, so a crash leaves no half-written content under a final
// name; leftovers are removed by [Open].
//
// # Platforms
//
// The store keeps one platform per image: from an index it picks the host's
// (runtime.GOOS/runtime.GOARCH), else a WebAssembly image (architecture
// "wasm", OS "wasip1", "wasi" or any other, the runwasi convention), unless
// [WithPlatform] asks for another one.
//
// # Uses
//
// A container whose root file system is an image's unpacked directory
// registers a use with [Store.Use] (before [Store.Rootfs]) and releases it
// with [Store.Release] when it is deleted. Uses are persisted. While a use
// exists, [Store.Remove] refuses, with errdefs.ErrFailedPrecondition, to
// remove the last name that keeps that root file system, and the garbage
// collector keeps it.
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/magnetar-io/magnetar/internal/atomicfile"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// AnnotationImageName is the index annotation containerd keeps the full
// image reference in.
const AnnotationImageName = "io.containerd.image.name"

// Image describes an image of the store.
type Image struct {
	// Name is the full reference ("docker.io/library/alpine:3.22"), or the
	// manifest digest for an image imported without a name.
	Name string
	// Digest is the manifest digest, "sha256:<hex>".
	Digest string
	// Size is the size in bytes of the manifest, the config and the
	// compressed layers.
	Size int64
	// Platform is the platform the image is built for.
	Platform Platform
	// Config holds the image's runtime defaults.
	Config Config
}

// Platform is an operating system and CPU architecture.
type Platform struct {
	// OS is, for example, "linux" or "wasip1".
	OS string
	// Architecture is, for example, "amd64", "arm64" or "wasm".
	Architecture string
	// Variant is, for example, "v8"; usually empty.
	Variant string
}

// String returns "os/arch[/variant]".
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// Config holds the runtime defaults of an image.
type Config struct {
	// Entrypoint is the command that Cmd or the container's arguments are
	// appended to.
	Entrypoint []string
	// Cmd holds the default arguments.
	Cmd []string
	// Env holds "KEY=value" pairs.
	Env []string
	// WorkingDir is the initial working directory; "" means "/".
	WorkingDir string
	// User is "uid[:gid]" or a user (and group) name; "" means root.
	User string
	// Labels are the image labels.
	Labels map[string]string
}

// Store is a local image store under one directory. Its methods are safe
// for concurrent use. Only one Store may have a directory open at a time
// (also across processes); close it with [Store.Close].
type Store struct {
	dir  string
	lock *os.File

	mu sync.Mutex
	// records are the image names, the content of index.json.
	records []record
	// uses maps a holder to the root file system it uses.
	uses map[string]use
	// pending counts, per blob digest, the imports and unpacks that need
	// the blob and have not committed; the garbage collector keeps them.
	pending map[v1.Hash]int
	// unpacking holds the root file systems being unpacked, by key.
	unpacking map[string]*unpack
}

// record is one name of an image: an entry of index.json.
type record struct {
	Name      string
	Digest    v1.Hash
	MediaType types.MediaType
	Size      int64
	Platform  *v1.Platform
}

// use is a registered use of a root file system.
type use struct {
	// Image is the manifest digest of the image the use was registered for.
	Image string `json:"image"`
	// Key names the root file system (the config digest's hex).
	Key string `json:"key"`
}

const (
	blobsDir   = "blobs"
	rootfsDir  = "rootfs"
	indexFile  = "index.json"
	usesFile   = "uses.json"
	lockFile   = ".lock"
	tmpPrefix  = ".tmp-"
	layoutFile = "oci-layout"
)

var hexDigest = regexp.MustCompile(`^[a-f0-9]{64}$`)

// Open opens the store in dir, creating it if needed, and removes what an
// earlier crash left behind. It fails with errdefs.ErrUnavailable if
// another Store has dir open.
func Open(dir string) (_ *Store, retErr error) {
	if !filepath.IsAbs(dir) {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, err
		}
		dir = abs
	}
	dir = filepath.Clean(dir)
	if strings.ContainsAny(dir, ",:") {
		// The directory ends up in overlay mount options.
		return nil, fmt.Errorf("image store directory %q must not contain ',' or ':': %w", dir, errdefs.ErrInvalidArgument)
	}
	for _, d := range []string{dir, filepath.Join(dir, blobsDir, "sha256"), filepath.Join(dir, rootfsDir)} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("create image store: %w", err)
		}
	}
	lf, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open image store lock: %w", err)
	}
	defer func() {
		if retErr != nil {
			lf.Close()
		}
	}()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return nil, fmt.Errorf("image store %s is in use by another process or Store: %v: %w", dir, err, errdefs.ErrUnavailable)
	}
	s := &Store{dir: dir, lock: lf, uses: map[string]use{}, pending: map[v1.Hash]int{}, unpacking: map[string]*unpack{}}
	if _, err := os.Stat(filepath.Join(dir, layoutFile)); errors.Is(err, fs.ErrNotExist) {
		data, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
		if err := atomicfile.WriteFile(filepath.Join(dir, layoutFile), data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.removeTemporaries(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.gcLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// Close releases the store's directory. Calls after Close fail.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// load reads index.json and uses.json.
func (s *Store) load() error {
	data, err := os.ReadFile(filepath.Join(s.dir, indexFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		var idx v1.IndexManifest
		if err := json.Unmarshal(data, &idx); err != nil {
			return fmt.Errorf("image store %s: index.json: %w", s.dir, err)
		}
		for _, d := range idx.Manifests {
			name := d.Annotations[ocispec.AnnotationRefName]
			if name == "" || d.Digest.Algorithm != "sha256" || !hexDigest.MatchString(d.Digest.Hex) {
				continue
			}
			s.records = append(s.records, record{Name: name, Digest: d.Digest, MediaType: d.MediaType, Size: d.Size, Platform: d.Platform})
		}
	}
	data, err = os.ReadFile(filepath.Join(s.dir, usesFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(data, &s.uses); err != nil {
			return fmt.Errorf("image store %s: uses.json: %w", s.dir, err)
		}
	}
	return nil
}

// removeTemporaries removes temporary files and directories left by a
// crash. Nothing is in flight when Open calls it.
func (s *Store) removeTemporaries() error {
	for _, d := range []string{filepath.Join(s.dir, blobsDir, "sha256"), filepath.Join(s.dir, rootfsDir), s.dir} {
		entries, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), tmpPrefix) {
				if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
					return fmt.Errorf("remove leftover %s: %w", e.Name(), err)
				}
			}
		}
	}
	return nil
}

// saveIndexLocked writes index.json from s.records.
func (s *Store) saveIndexLocked() error {
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{}}
	for _, r := range s.records {
		idx.Manifests = append(idx.Manifests, v1.Descriptor{
			MediaType: r.MediaType, Digest: r.Digest, Size: r.Size, Platform: r.Platform,
			Annotations: map[string]string{ocispec.AnnotationRefName: r.Name, AnnotationImageName: r.Name},
		})
	}
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.dir, indexFile), data, 0o644)
}

func (s *Store) saveUsesLocked() error {
	data, err := json.Marshal(s.uses)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.dir, usesFile), data, 0o600)
}

func (s *Store) checkOpenLocked() error {
	if s.lock == nil {
		return fmt.Errorf("image store %s is closed: %w", s.dir, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// blobPath returns where blob h is stored.
func (s *Store) blobPath(h v1.Hash) string {
	return filepath.Join(s.dir, blobsDir, h.Algorithm, h.Hex)
}

// findLocked returns the records ref selects: the one with that name, or
// every one with that manifest digest.
func (s *Store) findLocked(ref string) ([]record, error) {
	if err := s.checkOpenLocked(); err != nil {
		return nil, err
	}
	if h, ok := parseDigest(ref); ok {
		var out []record
		for _, r := range s.records {
			if r.Digest == h {
				out = append(out, r)
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
		}
		return out, nil
	}
	name, err := NormalizeRef(ref)
	if err != nil {
		return nil, err
	}
	for _, r := range s.records {
		if r.Name == name {
			return []record{r}, nil
		}
	}
	// "repo@sha256:..." also finds the image stored under a tag of repo.
	if repo, dgst, ok := strings.Cut(name, "@"); ok {
		if h, ok := parseDigest(dgst); ok {
			for _, r := range s.records {
				if r.Digest == h && strings.HasPrefix(r.Name, repo+":") {
					return []record{r}, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("image %q: %w", ref, errdefs.ErrNotFound)
}

// Get returns the image ref names: a reference (normalized like Docker
// does) or a manifest digest. A missing image fails with
// errdefs.ErrNotFound, a malformed reference with
// errdefs.ErrInvalidArgument.
func (s *Store) Get(ctx context.Context, ref string) (Image, error) {
	s.mu.Lock()
	recs, err := s.findLocked(ref)
	s.mu.Unlock()
	if err != nil {
		return Image{}, err
	}
	return s.describe(recs[0])
}

// List returns every image, ordered by name.
func (s *Store) List(ctx context.Context) ([]Image, error) {
	s.mu.Lock()
	if err := s.checkOpenLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	recs := slices.Clone(s.records)
	s.mu.Unlock()
	slices.SortFunc(recs, func(a, b record) int { return strings.Compare(a.Name, b.Name) })
	out := make([]Image, 0, len(recs))
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		img, err := s.describe(r)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// describe reads an image's manifest and config.
func (s *Store) describe(r record) (Image, error) {
	m, cf, err := s.readImage(r.Digest)
	if err != nil {
		return Image{}, err
	}
	size := r.Size + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return Image{
		Name: r.Name, Digest: r.Digest.String(), Size: size,
		Platform: Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant},
		Config: Config{
			Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd, Env: cf.Config.Env,
			WorkingDir: cf.Config.WorkingDir, User: cf.Config.User, Labels: cf.Config.Labels,
		},
	}, nil
}

// readImage reads and parses a stored manifest and its config. Both were
// verified against their digests when they were stored.
func (s *Store) readImage(h v1.Hash) (*v1.Manifest, *v1.ConfigFile, error) {
	data, err := os.ReadFile(s.blobPath(h))
	if errors.Is(err, fs.ErrNotExist) {
		// Removed since it was looked up.
		return nil, nil, fmt.Errorf("image %s: %w", h, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read manifest %s: %w", h, err)
	}
	m, err := v1.ParseManifest(strings.NewReader(string(data)))
	if err != nil {
		return nil, nil, fmt.Errorf("parse manifest %s: %w", h, err)
	}
	data, err = os.ReadFile(s.blobPath(m.Config.Digest))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("image %s: config: %w", h, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read config of %s: %w", h, err)
	}
	cf, err := v1.ParseConfigFile(strings.NewReader(string(data)))
	if err != nil {
		return nil, nil, fmt.Errorf("parse config of %s: %w", h, err)
	}
	return m, cf, nil
}

// rootfsKey returns the key of the root file system of the image with
// manifest h: the hex of its config digest.
func (s *Store) rootfsKey(h v1.Hash) (string, error) {
	m, _, err := s.readImage(h)
	if err != nil {
		return "", err
	}
	return m.Config.Digest.Hex, nil
}

// Remove removes the name ref, or with a manifest digest every name of
// that image, then the content no name refers to any more. It fails with
// errdefs.ErrNotFound if nothing matches, and with
// errdefs.ErrFailedPrecondition if it would remove a root file system that
// has registered uses (see [Store.Use]).
func (s *Store) Remove(ctx context.Context, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := s.findLocked(ref)
	if err != nil {
		return err
	}
	removed := map[string]bool{}
	for _, r := range recs {
		removed[r.Name] = true
	}
	var keep []record
	for _, r := range s.records {
		if !removed[r.Name] {
			keep = append(keep, r)
		}
	}
	kept := map[string]bool{}
	for _, r := range keep {
		if k, err := s.rootfsKey(r.Digest); err == nil {
			kept[k] = true
		}
	}
	for _, r := range recs {
		k, err := s.rootfsKey(r.Digest)
		if err != nil || kept[k] {
			continue
		}
		var holders []string
		for h, u := range s.uses {
			if u.Key == k {
				holders = append(holders, h)
			}
		}
		if len(holders) > 0 {
			slices.Sort(holders)
			return fmt.Errorf("image %q is in use by %s: %w", r.Name, strings.Join(holders, ", "), errdefs.ErrFailedPrecondition)
		}
	}
	old := s.records
	s.records = keep
	if err := s.saveIndexLocked(); err != nil {
		s.records = old
		return err
	}
	return s.gcLocked()
}

// addLocked adds or replaces the records of one imported image and saves
// the index.
func (s *Store) addLocked(recs []record) error {
	old := s.records
	names := map[string]bool{}
	for _, r := range recs {
		names[r.Name] = true
	}
	next := slices.DeleteFunc(slices.Clone(old), func(r record) bool { return names[r.Name] })
	next = append(next, recs...)
	s.records = next
	if err := s.saveIndexLocked(); err != nil {
		s.records = old
		return err
	}
	return nil
}

// gcLocked removes the blobs and root file systems no image, use, import
// or unpack needs.
func (s *Store) gcLocked() error {
	blobs := map[string]bool{}
	keys := map[string]bool{}
	for h := range s.pending {
		blobs[h.Hex] = true
	}
	for k := range s.unpacking {
		keys[k] = true
	}
	for _, u := range s.uses {
		keys[u.Key] = true
	}
	for _, r := range s.records {
		blobs[r.Digest.Hex] = true
		m, _, err := s.readImage(r.Digest)
		if err != nil {
			// Keep everything rather than guess.
			return nil
		}
		blobs[m.Config.Digest.Hex] = true
		keys[m.Config.Digest.Hex] = true
		for _, l := range m.Layers {
			blobs[l.Digest.Hex] = true
		}
	}
	var errs []error
	bdir := filepath.Join(s.dir, blobsDir, "sha256")
	entries, err := os.ReadDir(bdir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if hexDigest.MatchString(e.Name()) && !blobs[e.Name()] {
			errs = append(errs, os.Remove(filepath.Join(bdir, e.Name())))
		}
	}
	rdir := filepath.Join(s.dir, rootfsDir)
	entries, err = os.ReadDir(rdir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if hexDigest.MatchString(e.Name()) && !keys[e.Name()] {
			errs = append(errs, removeTree(filepath.Join(rdir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// removeTree removes a root file system atomically from the store's point
// of view: renamed to a temporary name first, so a crash halfway leaves a
// leftover that Open removes instead of a damaged root file system.
func removeTree(dir string) error {
	tmp := filepath.Join(filepath.Dir(dir), tmpPrefix+"rm-"+filepath.Base(dir))
	if err := os.Rename(dir, tmp); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}

var holderRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$`)

// Use registers that holder (for example a container ID: letters, digits,
// '.', '_' and '-') uses the root file system of image ref, so that
// [Store.Remove] keeps it. Call it before [Store.Rootfs], and
// [Store.Release] when done. Registering a holder again replaces its use.
// Uses are persisted.
func (s *Store) Use(ctx context.Context, ref, holder string) error {
	if !holderRE.MatchString(holder) {
		return fmt.Errorf("image use holder %q must be letters, digits, '.', '_' or '-': %w", holder, errdefs.ErrInvalidArgument)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	recs, err := s.findLocked(ref)
	if err != nil {
		return err
	}
	key, err := s.rootfsKey(recs[0].Digest)
	if err != nil {
		return err
	}
	old, had := s.uses[holder]
	s.uses[holder] = use{Image: recs[0].Digest.String(), Key: key}
	if err := s.saveUsesLocked(); err != nil {
		if had {
			s.uses[holder] = old
		} else {
			delete(s.uses, holder)
		}
		return err
	}
	return nil
}

// Release drops the use registered by holder, if any.
func (s *Store) Release(ctx context.Context, holder string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.uses[holder]
	if !ok {
		return nil
	}
	delete(s.uses, holder)
	if err := s.saveUsesLocked(); err != nil {
		s.uses[holder] = old
		return err
	}
	return nil
}

// Holders returns the holders with a registered use, sorted, so that a
// caller can release the uses of holders that no longer exist.
func (s *Store) Holders(ctx context.Context) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.uses))
	for h := range s.uses {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}
