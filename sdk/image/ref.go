package image

import (
	"fmt"
	"regexp"
	"runtime"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// NormalizeRef parses an image reference with go-containerregistry's name
// package and returns its full form, the way containerd names images:
// "alpine" becomes "docker.io/library/alpine:latest", "ghcr.io/a/b@sha256:…"
// stays as is. A malformed reference fails with errdefs.ErrInvalidArgument.
func NormalizeRef(ref string) (string, error) {
	r, err := parseRef(ref)
	if err != nil {
		return "", err
	}
	return canonical(r), nil
}

func parseRef(ref string, opts ...name.Option) (name.Reference, error) {
	if ref == "" {
		return nil, fmt.Errorf("image reference is empty: %w", errdefs.ErrInvalidArgument)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	// ggcr accepts any mix of [a-z0-9._-/]; hold repositories to the
	// distribution grammar so that names like "../x" are refused.
	if reg := r.Context().RegistryStr(); !registryHost.MatchString(reg) {
		return nil, fmt.Errorf("image reference %q: bad registry %q: %w", ref, reg, errdefs.ErrInvalidArgument)
	}
	for _, c := range strings.Split(r.Context().RepositoryStr(), "/") {
		if !pathComponent.MatchString(c) {
			return nil, fmt.Errorf("image reference %q: bad repository path component %q: %w", ref, c, errdefs.ErrInvalidArgument)
		}
	}
	return r, nil
}

// pathComponent is a repository path component of the distribution
// reference grammar.
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)

// registryHost is a registry host name or IP address with an optional
// port.
var registryHost = regexp.MustCompile(`^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$`)

// canonical spells r as containerd does: "docker.io", not ggcr's
// "index.docker.io".
func canonical(r name.Reference) string {
	reg := r.Context().RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	repo := reg + "/" + r.Context().RepositoryStr()
	switch r := r.(type) {
	case name.Digest:
		return repo + "@" + r.DigestStr()
	case name.Tag:
		return repo + ":" + r.TagStr()
	}
	return r.Name()
}

// parseDigest reports whether s is a bare manifest digest, "sha256:<hex>".
func parseDigest(s string) (v1.Hash, bool) {
	alg, hex, ok := strings.Cut(s, ":")
	if !ok || alg != "sha256" || !hexDigest.MatchString(hex) {
		return v1.Hash{}, false
	}
	return v1.Hash{Algorithm: alg, Hex: hex}, true
}

// IsWasm reports whether p is a WebAssembly platform (the runwasi
// convention: architecture "wasm", OS "wasip1", "wasi" or other).
func IsWasm(p Platform) bool { return p.Architecture == "wasm" }

// HostPlatform returns the platform of this host.
func HostPlatform() Platform {
	p := Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if p.Architecture == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// matcher decides which platforms an import or pull accepts.
type matcher struct {
	// want is the platform asked for with WithPlatform; zero means the
	// host's, with a WebAssembly fallback.
	want Platform
}

// exact reports whether p is the wanted platform.
func (m matcher) exact(p Platform) bool {
	want := m.want
	if want.OS == "" {
		want = HostPlatform()
	}
	if p.OS != want.OS || p.Architecture != want.Architecture {
		return false
	}
	// arm64 images usually leave the variant out; "v8" is implied.
	norm := func(p Platform) string {
		if p.Architecture == "arm64" && p.Variant == "" {
			return "v8"
		}
		return p.Variant
	}
	return want.Variant == "" || norm(p) == norm(want)
}

// fallback reports whether p is accepted when no exact match exists.
func (m matcher) fallback(p Platform) bool { return m.want.OS == "" && IsWasm(p) }

// accepts reports whether an image of platform p may be stored.
func (m matcher) accepts(p Platform) bool { return m.exact(p) || m.fallback(p) }

// String describes what m accepts, for errors.
func (m matcher) String() string {
	if m.want.OS != "" {
		return m.want.String()
	}
	return HostPlatform().String() + " or wasm"
}

func fromV1(p *v1.Platform) Platform {
	if p == nil {
		return Platform{}
	}
	return Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}
}

// pick returns the index of the best manifest of an index: an exact
// platform match first, else a fallback; -1 if none. Descriptors without a
// platform are not candidates.
func (m matcher) pick(ds []v1.Descriptor) int {
	fb := -1
	for i, d := range ds {
		if d.Platform == nil {
			continue
		}
		p := fromV1(d.Platform)
		if m.exact(p) {
			return i
		}
		if fb < 0 && m.fallback(p) {
			fb = i
		}
	}
	return fb
}
