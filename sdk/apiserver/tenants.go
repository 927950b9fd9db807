package apiserver

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
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
	// Name names the tenant in sandbox labels ([TenantLabel]) and in the
	// audit log: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 63 bytes.
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
		if !tenantNameRE.MatchString(t.Name) {
			return nil, fmt.Errorf("tenant %d: name %q must match %s: %w", i, t.Name, tenantNameRE, errdefs.ErrInvalidArgument)
		}
		if _, dup := out.byName[t.Name]; dup {
			return nil, fmt.Errorf("tenant %q is listed twice: %w", t.Name, errdefs.ErrInvalidArgument)
		}
		q := t.Quota
		if q.MaxSandboxes < 0 || q.MaxMilliCPUs < 0 || q.MaxMemoryBytes < 0 || q.MaxLifetime < 0 || t.RateLimit < 0 || t.RateBurst < 0 || t.MaxConcurrentCalls < 0 {
			return nil, fmt.Errorf("tenant %q: quotas and limits must not be negative: %w", t.Name, errdefs.ErrInvalidArgument)
		}
		if len(t.TokenSHA256) == 0 {
			return nil, fmt.Errorf("tenant %q has no token_sha256: %w", t.Name, errdefs.ErrInvalidArgument)
		}
		tn := t.Tenant
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
