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

// Of returns the host path of the root of the container cfg describes:
// mounted, where the kind mounted its rootfs; else the spec's root path
// (relative to the bundle). A recovered container's spec is read from the
// bundle's config.json.
func Of(cfg backend.ContainerConfig, mounted string) string {
	if mounted != "" {
		return mounted
	}
	spec := cfg.Spec
	if spec == nil {
		if data, err := os.ReadFile(filepath.Join(cfg.Bundle, "config.json")); err == nil {
			spec = &specs.Spec{}
			if json.Unmarshal(data, spec) != nil {
				spec = nil
			}
		}
	}
	if spec != nil && spec.Root != nil && spec.Root.Path != "" {
		if filepath.IsAbs(spec.Root.Path) {
			return spec.Root.Path
		}
		return filepath.Join(cfg.Bundle, spec.Root.Path)
	}
	return filepath.Join(cfg.Bundle, "rootfs")
}
