package apiserver

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// Defaults of a [Tenant]'s limits.
const (
	// DefaultRateLimit is how many calls per second a tenant may start
	// when its RateLimit is 0.
	DefaultRateLimit = 50
	// DefaultRateBurst is how many calls a tenant may start at once when
	// its RateBurst is 0.
	DefaultRateBurst = 100
	// DefaultMaxConcurrentCalls bounds a tenant's calls in flight (streams
	// included) when its MaxConcurrentCalls is 0.
	DefaultMaxConcurrentCalls = 64
)

// Tenant is a remote caller of the API: the owner of the sandboxes and
// images it makes, with its quotas and limits. Tenants and their tokens
// come from the daemon's tenants file (see [NewTenants]).
type Tenant struct {
	// Name names the tenant in sandbox labels ([TenantLabel]), in the
	// engine's IDs of its sandboxes and containers ([TenantID]) and in the
	// audit log: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 63 bytes, without
	// "--" ([TenantIDSeparator]).
	Name string
	// Admin sees and drives every sandbox and image, as the local socket
	// does; its quotas are not applied.
	Admin bool
	// Quota bounds what the tenant's sandboxes may use together.
	Quota Quota
	// RateLimit is the tenant's sustained calls per second (0:
	// [DefaultRateLimit]); RateBurst how many it may start at once (0:
	// [DefaultRateBurst]). A call over the limit fails at once with
	// RESOURCE_EXHAUSTED.
	RateLimit float64
	RateBurst int
	// MaxConcurrentCalls bounds the tenant's calls in flight, streams
	// included (0: [DefaultMaxConcurrentCalls]); one more fails with
	// RESOURCE_EXHAUSTED.
	MaxConcurrentCalls int
	// Registries limits the tenant's pulls to these registry hosts
	// ("host" or "host:port" as in image references, "docker.io" for
	// Docker Hub; "*.example.com" for every host under example.com, on
	// any port). Empty: any registry.
	Registries []string
	// AllowInsecureRegistries lets the tenant pull over plain HTTP
	// (PullImageRequest.insecure). Off: refused with PERMISSION_DENIED.
	AllowInsecureRegistries bool
	// AllowPrivateRegistries lets the tenant's pulls connect to loopback,
	// private (RFC 1918, fc00::/7), link-local, shared (100.64.0.0/10) and
	// unspecified addresses. Off: such a connection is refused when it is
	// made (whatever name led there, redirects included) and the pull
	// fails with PERMISSION_DENIED.
	AllowPrivateRegistries bool
}

// Quota bounds what one tenant's sandboxes use together; a zero field is
// no bound. A CreateSandbox or SetSandboxTimeout over it fails with
// RESOURCE_EXHAUSTED and changes nothing.
type Quota struct {
	// MaxSandboxes bounds the tenant's sandboxes (any state).
	MaxSandboxes int
	// MaxMilliCPUs bounds the sum of the sandboxes' CPU limits
	// (resources.cpu_quota_us / cpu_period_us, in thousandths of a CPU).
	// With it set, a sandbox must have a CPU limit.
	MaxMilliCPUs int64
	// MaxMemoryBytes bounds the sum of the sandboxes' memory limits
	// (resources.memory_limit_bytes). With it set, a sandbox must have a
	// memory limit.
	MaxMemoryBytes int64
	// MaxLifetime bounds a sandbox's life from its creation: a sandbox
	// created without a timeout gets this one, a longer timeout is
	// refused, and SetSandboxTimeout cannot move its end past it.
	MaxLifetime time.Duration
	// MaxImageBytes bounds the bytes of the images the tenant holds (the
	// ones it pulled and did not remove): each image counts whole, with
	// the size ImageService reports (manifest, config and compressed
	// layers; layers shared by two images count twice, and an image
	// another tenant holds too counts for both). A pull that would go
	// over fails with RESOURCE_EXHAUSTED before any layer is fetched.
	MaxImageBytes int64
}

// TenantToken is a tenant with the SHA-256 hashes of its bearer tokens,
// as in the tenants file.
type TenantToken struct {
	Tenant
	// TokenSHA256 are the lowercase hex SHA-256 digests of the tenant's
	// tokens ([HashToken]); the tokens themselves are never stored.
	TokenSHA256 []string
}

// Tenants is an immutable set of tenants and their tokens.
type Tenants struct {
	byHash map[string]*Tenant
	byName map[string]*Tenant
}

var (
	tenantNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	hashRE       = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// HashToken returns the lowercase hex SHA-256 digest of a bearer token, as
// the tenants file stores it.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// NewTenants checks ts and returns them as a set: names valid and unique,
// hashes 64 lowercase hex digits and each used once, limits not
// negative. Errors are errdefs.ErrInvalidArgument naming the tenant.
func NewTenants(ts []TenantToken) (*Tenants, error) {
	out := &Tenants{byHash: map[string]*Tenant{}, byName: map[string]*Tenant{}}
	for i, t := range ts {
		if !tenantNameRE.MatchString(t.Name) || strings.Contains(t.Name, TenantIDSeparator) {
			return nil, fmt.Errorf("tenant %d: name %q must match %s and not contain %q: %w", i, t.Name, tenantNameRE, TenantIDSeparator, errdefs.ErrInvalidArgument)
		}
		if _, dup := out.byName[t.Name]; dup {
			return nil, fmt.Errorf("tenant %q is listed twice: %w", t.Name, errdefs.ErrInvalidArgument)
		}
		q := t.Quota
		if q.MaxSandboxes < 0 || q.MaxMilliCPUs < 0 || q.MaxMemoryBytes < 0 || q.MaxLifetime < 0 || q.MaxImageBytes < 0 || t.RateLimit < 0 || t.RateBurst < 0 || t.MaxConcurrentCalls < 0 {
			return nil, fmt.Errorf("tenant %q: quotas and limits must not be negative: %w", t.Name, errdefs.ErrInvalidArgument)
		}
		if len(t.TokenSHA256) == 0 {
			return nil, fmt.Errorf("tenant %q has no token_sha256: %w", t.Name, errdefs.ErrInvalidArgument)
		}
		for _, r := range t.Registries {
			if err := checkRegistryPattern(r); err != nil {
				return nil, fmt.Errorf("tenant %q: registries: %w", t.Name, err)
			}
		}
		tn := t.Tenant
		tn.Registries = slices.Clone(t.Registries)
		for _, h := range t.TokenSHA256 {
			h = strings.TrimSpace(h)
			if !hashRE.MatchString(h) {
				return nil, fmt.Errorf("tenant %q: token_sha256 %q is not 64 lowercase hex digits (sha256sum of the token): %w", t.Name, h, errdefs.ErrInvalidArgument)
			}
			if other, dup := out.byHash[h]; dup {
				return nil, fmt.Errorf("tenant %q: a token hash is also %q's: %w", t.Name, other.Name, errdefs.ErrInvalidArgument)
			}
			out.byHash[h] = &tn
		}
		out.byName[t.Name] = &tn
	}
	return out, nil
}

// Len is the number of tenants.
func (t *Tenants) Len() int {
	if t == nil {
		return 0
	}
	return len(t.byName)
}

// authenticate returns the tenant of a bearer token.
func (t *Tenants) authenticate(token string) (*Tenant, bool) {
	if t == nil || token == "" {
		return nil, false
	}
	tn, ok := t.byHash[HashToken(token)]
	return tn, ok
}

// TenantIDSeparator joins a tenant's name and an ID of its own in the
// engine's ID of the tenant's sandbox or container ([TenantID]).
const TenantIDSeparator = "--"

// TenantID is the engine's ID of tenant's sandbox or container id: every
// tenant has a namespace of its own, the IDs of the local socket and of
// admins are the engine's. Tenants see and give their own IDs; the admin
// sees these.
func TenantID(tenant, id string) string { return tenant + TenantIDSeparator + id }

// SplitTenantID returns the tenant and its own ID of an engine ID made by
// [TenantID]; ok is false for any other ID. Tenant names have no "--" and
// IDs start with a letter or digit, so the split is unique.
func SplitTenantID(engineID string) (tenant, id string, ok bool) {
	i := strings.Index(engineID, TenantIDSeparator)
	if i <= 0 {
		return "", "", false
	}
	j := i + len(TenantIDSeparator)
	for j < len(engineID) && engineID[j] == '-' {
		j++ // a name may end with '-'
	}
	tenant, id = engineID[:j-len(TenantIDSeparator)], engineID[j:]
	if !tenantNameRE.MatchString(tenant) || strings.Contains(tenant, TenantIDSeparator) || id == "" || !isAlnum(id[0]) {
		return "", "", false
	}
	return tenant, id, true
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// registryPatternRE is a registry host as in image references, with an
// optional port, or "*." and a domain.
var registryPatternRE = regexp.MustCompile(`^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)

func checkRegistryPattern(p string) error {
	if !registryPatternRE.MatchString(p) {
		return fmt.Errorf("%q is not a registry host (host, host:port or *.domain): %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// registryHost is the host of a registry as the allow-lists name it:
// lowercase, "docker.io" for Docker Hub.
func registryHost(h string) string {
	h = strings.ToLower(h)
	if h == "index.docker.io" || h == "registry-1.docker.io" {
		return "docker.io"
	}
	return h
}

// allowsRegistry tells whether t may pull from registry host (as in a
// normalized reference, with its port if any).
func (t *Tenant) allowsRegistry(host string) bool {
	if len(t.Registries) == 0 {
		return true
	}
	host = registryHost(host)
	for _, p := range t.Registries {
		p = registryHost(p)
		if d, ok := strings.CutPrefix(p, "*"); ok {
			h := host
			if !strings.Contains(d, ":") {
				h, _, _ = strings.Cut(host, ":") // any port
			}
			if strings.HasSuffix(h, d) && len(h) > len(d) {
				return true
			}
			continue
		}
		if host == p {
			return true
		}
	}
	return false
}
