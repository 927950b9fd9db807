package network

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Action is what an egress policy does with traffic.
type Action string

// Actions. The empty Action is ActionAllow.
const (
	ActionAllow Action = "allow"
	ActionDeny  Action = "deny"
)

// MaxRules bounds the allow and the deny list of a policy (each).
const MaxRules = 256

// Rule matches outbound traffic to a destination: an address prefix and,
// if Port is not 0, a TCP or UDP destination port.
type Rule struct {
	Prefix netip.Prefix
	Port   uint16
}

// ParseRule parses "CIDR", "ADDR", "CIDR:PORT" or "ADDR:PORT"; an IPv6
// prefix with a port is written in brackets, "[fd00::/8]:443".
func ParseRule(s string) (Rule, error) {
	bad := func(why string) (Rule, error) {
		return Rule{}, fmt.Errorf("egress rule %q: %s (want CIDR, CIDR:PORT or [CIDR]:PORT): %w", s, why, errdefs.ErrInvalidArgument)
	}
	host, port := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return bad("no closing bracket")
		}
		host, port = s[1:end], s[end+1:]
		if port != "" {
			if !strings.HasPrefix(port, ":") {
				return bad("text after the bracket")
			}
			port = port[1:]
			if port == "" {
				return bad("empty port")
			}
		}
	case strings.Count(s, ":") == 1:
		i := strings.LastIndex(s, ":")
		host, port = s[:i], s[i+1:]
		if port == "" {
			return bad("empty port")
		}
	}
	var r Rule
	if strings.Contains(host, "/") {
		p, err := netip.ParsePrefix(host)
		if err != nil {
			return bad(err.Error())
		}
		if p.Addr().Zone() != "" {
			return bad("zones are not allowed")
		}
		r.Prefix = p.Masked()
	} else {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return bad(err.Error())
		}
		if a.Zone() != "" {
			return bad("zones are not allowed")
		}
		r.Prefix = netip.PrefixFrom(a, a.BitLen())
	}
	if r.Prefix.Addr().Is4In6() {
		return bad("IPv4-mapped IPv6 addresses are not allowed; write the IPv4 address")
	}
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return bad("port must be 1-65535")
		}
		r.Port = uint16(n)
	}
	return r, nil
}

// String is the rule in the syntax ParseRule reads.
func (r Rule) String() string {
	if r.Port == 0 {
		return r.Prefix.String()
	}
	if r.Prefix.Addr().Is6() {
		return "[" + r.Prefix.String() + "]:" + strconv.Itoa(int(r.Port))
	}
	return r.Prefix.String() + ":" + strconv.Itoa(int(r.Port))
}

// MarshalText is String.
func (r Rule) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText is ParseRule.
func (r *Rule) UnmarshalText(b []byte) error {
	p, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// ParseRules parses each of ss with ParseRule.
func ParseRules(ss []string) ([]Rule, error) {
	out := make([]Rule, 0, len(ss))
	for _, s := range ss {
		r, err := ParseRule(s)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Policy is a sandbox's egress policy: what its processes may send out of
// its network namespace. Traffic is judged in this order: loopback and
// replies to connections made to the sandbox are always allowed; then
// DNS (TCP and UDP port 53, to any address) if DNS is set; then the Deny
// list (dropped); then the Allow list (let through); then Default. The
// zero Policy allows everything.
type Policy struct {
	// Default is what traffic that no rule matches gets ("" is allow).
	Default Action `json:"default,omitempty"`
	// Allow lets traffic to these destinations through.
	Allow []Rule `json:"allow,omitempty"`
	// Deny drops traffic to these destinations (before Allow is read).
	Deny []Rule `json:"deny,omitempty"`
	// DNS, if set, allows or denies DNS before any other rule; empty:
	// DNS is judged by the lists and Default like any traffic.
	DNS Action `json:"dns,omitempty"`
}

// Validate checks p.
func (p Policy) Validate() error {
	for name, a := range map[string]Action{"default": p.Default, "dns": p.DNS} {
		if a != "" && a != ActionAllow && a != ActionDeny {
			return fmt.Errorf("egress %s action %q: want allow or deny: %w", name, a, errdefs.ErrInvalidArgument)
		}
	}
	if len(p.Allow) > MaxRules || len(p.Deny) > MaxRules {
		return fmt.Errorf("egress policy has %d allow and %d deny rules, at most %d each: %w", len(p.Allow), len(p.Deny), MaxRules, errdefs.ErrInvalidArgument)
	}
	for _, r := range append(append([]Rule(nil), p.Allow...), p.Deny...) {
		if !r.Prefix.IsValid() {
			return fmt.Errorf("egress rule with no address prefix: %w", errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// AllowsAll reports whether p lets every packet through.
func (p Policy) AllowsAll() bool {
	return p.Default != ActionDeny && len(p.Deny) == 0 && p.DNS != ActionDeny
}
