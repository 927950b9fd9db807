package engine

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Request limits, checked before anything is created (documented in
// docs/api.md, "Limits"). They apply to sandboxes made through
// Magnetar's API and through CRI alike.
const (
	// MaxHostnameLength is the kernel's HOST_NAME_MAX.
	MaxHostnameLength = 64
	// MaxCgroupParentLength bounds a cgroup parent.
	MaxCgroupParentLength = 1024
	// MaxDNSServers, MaxDNSSearches and MaxDNSSearchChars are
	// Kubernetes' limits of a pod's resolver configuration;
	// MaxDNSOptions and MaxDNSEntryLength bound the rest.
	MaxDNSServers     = 3
	MaxDNSSearches    = 32
	MaxDNSSearchChars = 2048
	MaxDNSOptions     = 32
	MaxDNSEntryLength = 253
	// MaxMapEntries bounds the entries of one labels or annotations map;
	// MaxMapKeyLength the length of a key.
	MaxMapEntries   = 1024
	MaxMapKeyLength = 512
	// MaxLabelsBytes bounds the labels of one object (keys and values
	// together); MaxAnnotationsBytes its annotations (Kubernetes'
	// total annotation size).
	MaxLabelsBytes      = 64 << 10
	MaxAnnotationsBytes = 256 << 10
	// MaxCPUShares is cgroup v1's cpu.shares maximum.
	MaxCPUShares = 262144
	// MinCPUQuota and MinCPUPeriod, MaxCPUPeriod are the kernel's CFS
	// bounds, in microseconds.
	MinCPUQuota  = 1000
	MinCPUPeriod = 1000
	MaxCPUPeriod = 1000000
)

// FieldError is a request field with a value that is refused. It is
// errdefs.ErrInvalidArgument.
type FieldError struct {
	// Field names the field as the API spells it
	// ("dns.options[0]", "resources.memory_limit_bytes").
	Field string
	// Reason says what is wrong.
	Reason string
}

func (e *FieldError) Error() string {
	return e.Field + ": " + e.Reason + ": " + errdefs.ErrInvalidArgument.Error()
}

// Unwrap makes it errdefs.ErrInvalidArgument.
func (e *FieldError) Unwrap() error { return errdefs.ErrInvalidArgument }

// Invalid returns a [FieldError].
func Invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// hostLabel is one label of an RFC 1123 host name.
var hostLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// ValidateHostname checks a host name: RFC 1123 labels separated by dots,
// at most [MaxHostnameLength] bytes in all. Empty is allowed (no name
// set).
func ValidateHostname(field, h string) error {
	if h == "" {
		return nil
	}
	if len(h) > MaxHostnameLength {
		return Invalid(field, "%d bytes long, more than %d", len(h), MaxHostnameLength)
	}
	for _, l := range strings.Split(h, ".") {
		if !hostLabel.MatchString(l) {
			return Invalid(field, "%q is not an RFC 1123 host name (letters, digits and '-' in dot-separated labels of 1 to 63 characters, no '-' at either end of a label)", h)
		}
	}
	return nil
}

// unitPart is one part of a systemd cgroup parent.
var unitPart = regexp.MustCompile(`^[A-Za-z0-9_@.-]*$`)

// ValidateCgroupParent checks a cgroup parent. It is either a cgroupfs
// path from the root of the cgroup hierarchy ("/kubepods/burstable"),
// absolute and clean, so that it cannot leave the hierarchy; or a
// systemd slice ("kubepods-burstable.slice") or "slice:prefix:name", with
// no '/'. Empty is allowed (the kind's default).
func ValidateCgroupParent(field, p string) error {
	switch {
	case p == "":
		return nil
	case len(p) > MaxCgroupParentLength:
		return Invalid(field, "%d bytes long, more than %d", len(p), MaxCgroupParentLength)
	case hasControl(p):
		return Invalid(field, "%q contains control characters", p)
	case strings.HasPrefix(p, "/"):
		if filepath.Clean(p) != p {
			return Invalid(field, "cgroup path %q must be clean (no '.', '..', '//' or trailing '/'): it is a path from the root of the cgroup hierarchy", p)
		}
		return nil
	}
	parts := strings.Split(p, ":")
	switch len(parts) {
	case 1:
		if !strings.HasSuffix(p, ".slice") || !unitPart.MatchString(p) || strings.HasPrefix(p, ".") {
			return Invalid(field, "%q is neither an absolute cgroup path (\"/kubepods\") nor a systemd slice (\"kubepods.slice\", \"slice:prefix:name\")", p)
		}
		return nil
	case 3:
		for _, part := range parts {
			if !unitPart.MatchString(part) || strings.HasPrefix(part, ".") {
				return Invalid(field, "%q: systemd \"slice:prefix:name\" parts may hold letters, digits, '_', '@', '.' and '-' only, and not start with '.'", p)
			}
		}
		if s := parts[0]; s != "" && !strings.HasSuffix(s, ".slice") {
			return Invalid(field, "%q: %q is not a systemd slice", p, s)
		}
		if parts[2] == "" {
			return Invalid(field, "%q: no unit name", p)
		}
		return nil
	}
	return Invalid(field, "%q is neither an absolute cgroup path (\"/kubepods\") nor a systemd slice (\"kubepods.slice\", \"slice:prefix:name\")", p)
}

// searchDomain is a DNS search domain.
var searchDomain = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$`)

// ValidateDNS checks a resolver configuration, which ends up in a
// resolv.conf: servers are IP addresses, search domains domain names and
// options printable ASCII words, none with spaces or control characters;
// at most [MaxDNSServers] servers, [MaxDNSSearches] search domains of
// [MaxDNSSearchChars] characters in all and [MaxDNSOptions] options of
// [MaxDNSEntryLength] bytes each.
func ValidateDNS(field string, d backend.DNSConfig) error {
	if len(d.Servers) > MaxDNSServers {
		return Invalid(field+".servers", "%d servers, more than %d", len(d.Servers), MaxDNSServers)
	}
	for i, s := range d.Servers {
		if _, err := netip.ParseAddr(s); err != nil || hasSpaceOrControl(s) {
			return Invalid(fmt.Sprintf("%s.servers[%d]", field, i), "%q is not an IP address", s)
		}
	}
	if len(d.Searches) > MaxDNSSearches {
		return Invalid(field+".searches", "%d search domains, more than %d", len(d.Searches), MaxDNSSearches)
	}
	total := 0
	for i, s := range d.Searches {
		total += len(s) + 1
		if len(s) > MaxDNSEntryLength || !searchDomain.MatchString(s) {
			return Invalid(fmt.Sprintf("%s.searches[%d]", field, i), "%q is not a domain name of at most %d characters", s, MaxDNSEntryLength)
		}
	}
	if total > MaxDNSSearchChars {
		return Invalid(field+".searches", "%d characters in all, more than %d", total, MaxDNSSearchChars)
	}
	if len(d.Options) > MaxDNSOptions {
		return Invalid(field+".options", "%d options, more than %d", len(d.Options), MaxDNSOptions)
	}
	for i, o := range d.Options {
		if o == "" || len(o) > MaxDNSEntryLength || hasSpaceOrControl(o) || !isASCII(o) {
			return Invalid(fmt.Sprintf("%s.options[%d]", field, i), "%q must be 1 to %d printable ASCII characters without spaces", o, MaxDNSEntryLength)
		}
	}
	return nil
}

// ValidateMap checks labels or annotations: at most [MaxMapEntries]
// entries, keys of 1 to [MaxMapKeyLength] bytes without control
// characters, valid UTF-8 throughout, and at most maxBytes of keys and
// values together.
func ValidateMap(field string, m map[string]string, maxBytes int) error {
	if len(m) > MaxMapEntries {
		return Invalid(field, "%d entries, more than %d", len(m), MaxMapEntries)
	}
	total := 0
	for k, v := range m {
		total += len(k) + len(v)
		switch {
		case k == "" || len(k) > MaxMapKeyLength:
			return Invalid(field, "key %.40q must be 1 to %d bytes long", k, MaxMapKeyLength)
		case hasControl(k) || !utf8.ValidString(k):
			return Invalid(field, "key %.40q contains control characters or is not UTF-8", k)
		case !utf8.ValidString(v) || strings.ContainsRune(v, 0):
			return Invalid(fmt.Sprintf("%s[%.40q]", field, k), "value contains NUL or is not UTF-8")
		}
	}
	if total > maxBytes {
		return Invalid(field, "%d bytes of keys and values, more than %d", total, maxBytes)
	}
	return nil
}

// ValidateResources checks OCI resources before they reach a runtime:
// limits that are not negative (but -1 for "unlimited" where the runtime
// spec has it), CFS quota and period within the kernel's bounds, and
// cpusets that name CPUs and memory nodes this host has. field prefixes
// the OCI field names in errors.
func ValidateResources(field string, r *specs.LinuxResources) error {
	if r == nil {
		return nil
	}
	if m := r.Memory; m != nil {
		for name, v := range map[string]*int64{"memory.limit": m.Limit, "memory.swap": m.Swap, "memory.reservation": m.Reservation} {
			if v != nil && *v < -1 {
				return Invalid(field+"."+name, "%d is negative (-1 means unlimited)", *v)
			}
		}
	}
	if c := r.CPU; c != nil {
		if err := ValidateCPU(field+".cpu", c.Shares, c.Quota, c.Period); err != nil {
			return err
		}
		if err := ValidateCpuset(field+".cpu.cpus", c.Cpus, OnlineCPUs); err != nil {
			return err
		}
		if err := ValidateCpuset(field+".cpu.mems", c.Mems, OnlineMems); err != nil {
			return err
		}
	}
	if p := r.Pids; p != nil && p.Limit != nil && *p.Limit < -1 {
		return Invalid(field+".pids.limit", "%d is negative (-1 or 0 means unlimited)", *p.Limit)
	}
	return nil
}

// ValidateCPU checks CPU shares, CFS quota and period (any may be nil).
// field prefixes "shares", "quota" and "period" in errors.
func ValidateCPU(field string, shares *uint64, quota *int64, period *uint64) error {
	if shares != nil && *shares > MaxCPUShares {
		return Invalid(field+".shares", "%d is more than %d", *shares, MaxCPUShares)
	}
	if quota != nil && *quota != -1 && *quota != 0 && (*quota < MinCPUQuota) {
		return Invalid(field+".quota", "%d must be -1 (unlimited), 0 (unset) or at least %d microseconds", *quota, MinCPUQuota)
	}
	if period != nil && *period != 0 && (*period < MinCPUPeriod || *period > MaxCPUPeriod) {
		return Invalid(field+".period", "%d must be between %d and %d microseconds", *period, MinCPUPeriod, MaxCPUPeriod)
	}
	return nil
}

// Files listing the host's online CPUs and memory nodes.
const (
	OnlineCPUs = "/sys/devices/system/cpu/online"
	OnlineMems = "/sys/devices/system/node/online"
)

// ValidateCpuset checks a cpuset list ("0-3,6") and that every CPU or
// memory node it names is in the list read from online (a file in the
// same format; when it cannot be read, only the syntax is checked).
func ValidateCpuset(field, set, online string) error {
	if set == "" {
		return nil
	}
	want, err := ParseCpuset(set)
	if err != nil {
		return Invalid(field, "%q: %v", set, err)
	}
	data, err := os.ReadFile(online)
	if err != nil {
		return nil
	}
	have, err := ParseCpuset(strings.TrimSpace(string(data)))
	if err != nil {
		return nil
	}
	for n := range want {
		if !have[n] {
			return Invalid(field, "%q names %d, which this host does not have (online: %s)", set, n, strings.TrimSpace(string(data)))
		}
	}
	return nil
}

// maxCpusetIndex bounds the numbers of a cpuset list.
const maxCpusetIndex = 8192

// ParseCpuset parses a cpuset list ("0-3,6") into the set of numbers it
// names.
func ParseCpuset(s string) (map[int]bool, error) {
	out := map[int]bool{}
	if len(s) > 4096 {
		return nil, fmt.Errorf("list is %d bytes long", len(s))
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 || a > maxCpusetIndex || lo != strconv.Itoa(a) {
			return nil, fmt.Errorf("%q is not a number or range of 0 to %d", part, maxCpusetIndex)
		}
		b := a
		if isRange {
			b, err = strconv.Atoi(hi)
			if err != nil || b < a || b > maxCpusetIndex || hi != strconv.Itoa(b) {
				return nil, fmt.Errorf("%q is not a range of 0 to %d", part, maxCpusetIndex)
			}
		}
		for n := a; n <= b; n++ {
			out[n] = true
		}
	}
	return out, nil
}

// validateSandboxSpec checks what a sandbox spec carries into files,
// cgroups and namespaces, before anything is created.
func (e *Engine) validateSandboxSpec(spec SandboxSpec) error {
	if err := ValidateHostname("hostname", spec.Hostname); err != nil {
		return err
	}
	if err := ValidateCgroupParent("cgroup_parent", spec.CgroupParent); err != nil {
		return err
	}
	if err := ValidateDNS("dns", spec.DNS); err != nil {
		return err
	}
	if err := ValidateMap("labels", spec.Labels, MaxLabelsBytes); err != nil {
		return err
	}
	if err := ValidateMap("annotations", spec.Annotations, MaxAnnotationsBytes); err != nil {
		return err
	}
	if err := ValidateResources("resources", spec.Resources); err != nil {
		return err
	}
	if spec.NetNSPath != "" {
		// Any directory: see CheckNetNSPath for the API's stricter check.
		if err := CheckNetNS("netns_path", spec.NetNSPath, nil); err != nil {
			return err
		}
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

func hasSpaceOrControl(s string) bool {
	return hasControl(s) || strings.ContainsAny(s, " \t")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
