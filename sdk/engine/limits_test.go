package engine

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

func TestValidators(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		ok   bool
	}{
		{"hostname ok", ValidateHostname("hostname", "pod-a.example"), true},
		{"hostname slash", ValidateHostname("hostname", "a/b"), false},
		{"hostname NUL", ValidateHostname("hostname", "a\x00"), false},
		{"hostname 300", ValidateHostname("hostname", strings.Repeat("h", 300)), false},
		{"cgroup abs", ValidateCgroupParent("cgroup_parent", "/kubepods/pod1"), true},
		{"cgroup slice", ValidateCgroupParent("cgroup_parent", "kubepods-burstable.slice"), true},
		{"cgroup triple", ValidateCgroupParent("cgroup_parent", "system.slice:cri:abc"), true},
		{"cgroup traversal", ValidateCgroupParent("cgroup_parent", "../../../../tmp"), false},
		{"cgroup unclean", ValidateCgroupParent("cgroup_parent", "/a/../../b"), false},
		{"dns ok", ValidateDNS("dns", backend.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"svc.cluster.local"}, Options: []string{"ndots:5"}}), true},
		{"dns option newline", ValidateDNS("dns", backend.DNSConfig{Options: []string{"a\nb"}}), false},
		{"dns server not IP", ValidateDNS("dns", backend.DNSConfig{Servers: []string{"x"}}), false},
		{"labels big", ValidateMap("labels", map[string]string{"k": strings.Repeat("x", MaxLabelsBytes)}, MaxLabelsBytes), false},
		{"cpuset bad", ValidateCpuset("cpus", "3-1", OnlineCPUs), false},
		{"cpuset absent", ValidateCpuset("cpus", "8000", OnlineCPUs), false},
	} {
		if (tc.err == nil) != tc.ok || (tc.err != nil && !errdefs.IsInvalidArgument(tc.err)) {
			t.Errorf("%s: %v, want ok=%v", tc.name, tc.err, tc.ok)
		}
	}
}

// FuzzValidators: no input panics, and whatever is accepted has no
// control characters that would reach resolv.conf or cgroup paths.
func FuzzValidators(f *testing.F) {
	for _, s := range []string{"pod-a", "../../tmp", "/kubepods", "a\nb", "ndots:5", "x.slice", "0-3,5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateHostname("h", s) == nil && strings.ContainsAny(s, "/\x00\n ") {
			t.Errorf("hostname %q accepted", s)
		}
		if ValidateCgroupParent("c", s) == nil && (strings.Contains(s, "..") && strings.HasPrefix(s, "/") || hasControl(s)) {
			t.Errorf("cgroup parent %q accepted", s)
		}
		if ValidateDNS("d", backend.DNSConfig{Options: []string{s}, Searches: []string{s}}) == nil && hasSpaceOrControl(s) {
			t.Errorf("dns %q accepted", s)
		}
		_, _ = ParseCpuset(s)
	})
}
