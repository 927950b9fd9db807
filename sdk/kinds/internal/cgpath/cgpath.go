// Package cgpath turns the cgroup names of OCI specs and CRI into cgroupfs
// paths, for backends that place processes in cgroups themselves.
package cgpath

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// ExpandSlice turns a systemd slice name into its cgroupfs path:
// "a-b-c.slice" is "/a.slice/a-b.slice/a-b-c.slice"; "" and "-.slice" are
// "/". A name that is not a valid slice is an invalid argument.
func ExpandSlice(slice string) (string, error) {
	if slice == "" || slice == "-.slice" {
		return "/", nil
	}
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" || strings.Contains(name, "/") || strings.HasPrefix(name, "-") || strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", fmt.Errorf("invalid systemd slice %q: %w", slice, errdefs.ErrInvalidArgument)
	}
	out, prefix := "", ""
	for _, comp := range strings.Split(name, "-") {
		out += "/" + prefix + comp + ".slice"
		prefix += comp + "-"
	}
	return out, nil
}
