package backend

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
)

// IsZero reports whether d configures nothing (the pod then gets the
// host's resolver configuration).
func (d DNSConfig) IsZero() bool {
	return len(d.Servers) == 0 && len(d.Searches) == 0 && len(d.Options) == 0
}

// ResolvConf renders d as /etc/resolv.conf.
func (d DNSConfig) ResolvConf() []byte {
	var b strings.Builder
	for _, s := range d.Servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(d.Searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(d.Searches, " "))
	}
	if len(d.Options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(d.Options, " "))
	}
	return []byte(b.String())
}

// Namespaces a sysctl can be scoped to.
const (
	SysctlIPC = "ipc"
	SysctlNet = "net"
	SysctlUTS = "uts"
)

// Sysctl is one validated pod sysctl.
type Sysctl struct {
	// Key is the name as given ("net.ipv4.ip_forward" or with slashes).
	Key string
	// Path is its file below /proc/sys ("net/ipv4/ip_forward").
	Path  string
	Value string
	// Namespace is the namespace that scopes it: SysctlIPC, SysctlNet or
	// SysctlUTS.
	Namespace string
}

// ParseSysctls validates pod sysctls and sorts them by key. Only sysctls a
// pod's own namespaces scope are accepted (those of the IPC namespace:
// kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*; the network
// namespace: net.*; the UTS namespace: kernel.hostname, kernel.domainname),
// as runc does for containers: any other would change the whole host.
// Keys use dots or slashes as separators (Kubernetes accepts both; with
// slashes, dots are part of a name, as in net/ipv4/conf/eth0.100/...).
func ParseSysctls(in map[string]string) ([]Sysctl, error) {
	out := make([]Sysctl, 0, len(in))
	for k, v := range in {
		path := k
		if !strings.Contains(k, "/") {
			path = strings.ReplaceAll(k, ".", "/")
		}
		name := strings.ReplaceAll(path, "/", ".")
		bad := k == "" || strings.HasPrefix(path, "/") || strings.HasSuffix(path, "/") || strings.Contains(v, "\n")
		for _, part := range strings.Split(path, "/") {
			bad = bad || part == "" || part == "." || part == ".."
		}
		if bad {
			return nil, fmt.Errorf("sysctl %q=%q: malformed: %w", k, v, errdefs.ErrInvalidArgument)
		}
		ns := ""
		switch {
		case name == "kernel.sem" || strings.HasPrefix(name, "kernel.shm") || strings.HasPrefix(name, "kernel.msg") || strings.HasPrefix(name, "fs.mqueue."):
			ns = SysctlIPC
		case strings.HasPrefix(name, "net."):
			ns = SysctlNet
		case name == "kernel.hostname" || name == "kernel.domainname":
			ns = SysctlUTS
		default:
			return nil, fmt.Errorf("sysctl %q is not scoped by a pod's namespaces (it would change the host): %w", k, errdefs.ErrInvalidArgument)
		}
		out = append(out, Sysctl{Key: k, Path: path, Value: v, Namespace: ns})
	}
	slices.SortFunc(out, func(a, b Sysctl) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}
