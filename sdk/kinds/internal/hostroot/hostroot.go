// Package hostroot finds the host directory of a container's root file
// system, for the kinds whose containers use it as it is
// ([backend.HostRooter]).
package hostroot

import (
	"encoding/json"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// Root is a container's root as [backend.HostRooter] reports it.
type Root struct {
	Dir      string
	ReadOnly bool
}

// Of returns the root of the container cfg describes: its host path
// (mounted, where the kind mounted its rootfs; else the spec's root path,
// relative to the bundle) and whether the spec makes it read-only. A
// recovered container's spec is read from the bundle's config.json.
func Of(cfg backend.ContainerConfig, mounted string) Root {
	spec := cfg.Spec
	if spec == nil {
		if data, err := os.ReadFile(filepath.Join(cfg.Bundle, "config.json")); err == nil {
			spec = &specs.Spec{}
			if json.Unmarshal(data, spec) != nil {
				spec = nil
			}
		}
	}
	var r Root
	if spec != nil && spec.Root != nil {
		r.ReadOnly = spec.Root.Readonly
	}
	switch {
	case mounted != "":
		r.Dir = mounted
	case spec != nil && spec.Root != nil && spec.Root.Path != "":
		r.Dir = spec.Root.Path
		if !filepath.IsAbs(r.Dir) {
			r.Dir = filepath.Join(cfg.Bundle, r.Dir)
		}
	default:
		r.Dir = filepath.Join(cfg.Bundle, "rootfs")
	}
	return r
}
