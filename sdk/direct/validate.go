package direct

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sdk/engine"
)

// Limits of requests beyond the engine's (engine.Max...), checked before
// anything is created; docs/api.md lists them all.
const (
	// MaxArgs bounds the entrypoint and args of a process together;
	// MaxEnv its environment entries.
	MaxArgs = 4096
	MaxEnv  = 4096
	// MaxArgBytes bounds one argument or environment entry (the
	// kernel's MAX_ARG_STRLEN); MaxProcessBytes the args and environment
	// of a process together.
	MaxArgBytes     = 128 << 10
	MaxProcessBytes = 1 << 20
	// MaxPathLength bounds paths (cwd, mount sources and destinations,
	// rootfs_path).
	MaxPathLength = 4096
	// MaxMounts bounds the mounts of a container; MaxMountOptions the
	// options of one mount.
	MaxMounts       = 256
	MaxMountOptions = 64
	// MaxAdditionalGids is the kernel's NGROUPS_MAX.
	MaxAdditionalGids = 65536
	// MaxID is the largest uid or gid: (uid_t)-1 means "no id" to the
	// kernel.
	MaxID = 1<<32 - 2
	// MaxOCISpecBytes bounds oci_spec_json.
	MaxOCISpecBytes = 1 << 20
	// MinMemoryLimit is the smallest memory limit a container or
	// sandbox may have (Docker's minimum): less cannot start a runtime.
	MinMemoryLimit = 6 << 20
)

// denied is a request that needs host access ([WithHostAccess]).
func denied(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s; the server does not allow host access (api_allow_host_access): %w",
		field, fmt.Sprintf(format, args...), errdefs.ErrPermissionDenied)
}

var invalid = engine.Invalid

// validateSandboxRequest checks a sandbox request; the engine checks the
// rest (netns path) when it creates the sandbox.
func validateSandboxRequest(req *SandboxRequest) error {
	if req.ID != "" {
		if err := engine.ValidateID("sandbox", req.ID); err != nil {
			return err
		}
	}
	if req.Kind == "" {
		return invalid("kind", "is required")
	}
	if len(req.Kind) > 64 || hasControl(req.Kind) {
		return invalid("kind", "%.64q is not a kind name", req.Kind)
	}
	switch req.Network.Mode {
	case NetworkDefault, NetworkNone, NetworkHost, NetworkBridge:
		if req.Network.NetNSPath != "" {
			return invalid("network.netns_path", "is only for network mode NETNS")
		}
	case NetworkNetNS:
		if req.Network.NetNSPath == "" {
			return invalid("network.netns_path", "network mode NETNS needs a netns_path")
		}
	default:
		return invalid("network.mode", "%d is not a network mode", req.Network.Mode)
	}
	if err := req.Network.Egress.Validate(); err != nil {
		return invalid("network.egress", "%v", err)
	}
	return firstErr(
		func() error { return engine.ValidateHostname("hostname", req.Hostname) },
		func() error { return engine.ValidateCgroupParent("cgroup_parent", req.CgroupParent) },
		func() error { return engine.ValidateDNS("dns", req.DNS) },
		func() error { return engine.ValidateMap("labels", req.Labels, engine.MaxLabelsBytes) },
		func() error { return engine.ValidateMap("annotations", req.Annotations, engine.MaxAnnotationsBytes) },
		func() error { return validateResources("resources", req.Resources) },
	)
}

// firstErr runs checks in order and returns the first error.
func firstErr(checks ...func() error) error {
	for _, c := range checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

// validateContainerRequest checks a container request. hostAccess allows
// host paths (rootfs_path, bind mounts) and raw OCI specs.
func validateContainerRequest(req *ContainerRequest, hostAccess bool) error {
	if req.SandboxID == "" {
		return invalid("sandbox_id", "is required")
	}
	if req.ID != "" {
		if err := engine.ValidateID("container", req.ID); err != nil {
			return err
		}
	}
	switch {
	case req.Image != "" && req.RootfsPath != "":
		return invalid("rootfs_path", "give image or rootfs_path, not both")
	case req.Image == "" && req.RootfsPath == "" && len(req.OCISpecJSON) == 0:
		return invalid("image", "image or rootfs_path is required")
	case req.RootfsPath != "":
		if err := validateRootfsPath(req.RootfsPath); err != nil {
			return err
		}
		if !hostAccess {
			return denied("rootfs_path", "%q is a directory of the host", req.RootfsPath)
		}
	}
	if len(req.OCISpecJSON) > MaxOCISpecBytes {
		return invalid("oci_spec_json", "%d bytes, more than %d", len(req.OCISpecJSON), MaxOCISpecBytes)
	}
	if len(req.OCISpecJSON) == 0 {
		if err := validateProcess("process", &req.Process, true); err != nil {
			return err
		}
		if len(req.Mounts) > MaxMounts {
			return invalid("mounts", "%d mounts, more than %d", len(req.Mounts), MaxMounts)
		}
		for i, m := range req.Mounts {
			if err := validateMount(fmt.Sprintf("mounts[%d]", i), m.Source, m.Destination, m.Type, m.Options, hostAccess); err != nil {
				return err
			}
		}
		if err := validateResources("resources", req.Resources); err != nil {
			return err
		}
	}
	return firstErr(
		func() error { return engine.ValidateMap("labels", req.Labels, engine.MaxLabelsBytes) },
		func() error { return engine.ValidateMap("annotations", req.Annotations, engine.MaxAnnotationsBytes) },
	)
}

// validateRootfsPath checks that p is an absolute, clean path of an
// existing directory.
func validateRootfsPath(p string) error {
	if err := validatePath("rootfs_path", p); err != nil {
		return err
	}
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return invalid("rootfs_path", "%q does not exist", p)
	case err != nil:
		return invalid("rootfs_path", "%v", err)
	case !fi.IsDir():
		return invalid("rootfs_path", "%q is not a directory", p)
	}
	return nil
}

// validatePath checks an absolute, clean path without control characters.
func validatePath(field, p string) error {
	switch {
	case len(p) > MaxPathLength:
		return invalid(field, "%d bytes long, more than %d", len(p), MaxPathLength)
	case hasControl(p):
		return invalid(field, "%.80q contains control characters", p)
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		return invalid(field, "%q must be an absolute, clean path", p)
	}
	return nil
}

// validateProcess checks a process of a container (container set) or an
// exec.
func validateProcess(field string, p *Process, container bool) error {
	if !container && len(p.Entrypoint) > 0 {
		return invalid(field+".entrypoint", "an exec has no entrypoint; put the command in args")
	}
	if n := len(p.Entrypoint) + len(p.Args); n > MaxArgs {
		return invalid(field+".args", "%d arguments, more than %d", n, MaxArgs)
	}
	if len(p.Env) > MaxEnv {
		return invalid(field+".env", "%d entries, more than %d", len(p.Env), MaxEnv)
	}
	total := 0
	for name, list := range map[string][]string{"entrypoint": p.Entrypoint, "args": p.Args} {
		for i, a := range list {
			total += len(a)
			if len(a) > MaxArgBytes {
				return invalid(fmt.Sprintf("%s.%s[%d]", field, name, i), "%d bytes long, more than %d", len(a), MaxArgBytes)
			}
			if strings.ContainsRune(a, 0) {
				return invalid(fmt.Sprintf("%s.%s[%d]", field, name, i), "contains NUL")
			}
		}
	}
	for i, e := range p.Env {
		total += len(e)
		key, _, _ := strings.Cut(e, "=")
		switch {
		case len(e) > MaxArgBytes:
			return invalid(fmt.Sprintf("%s.env[%d]", field, i), "%d bytes long, more than %d", len(e), MaxArgBytes)
		case strings.ContainsRune(e, 0):
			return invalid(fmt.Sprintf("%s.env[%d]", field, i), "contains NUL")
		case key == "":
			return invalid(fmt.Sprintf("%s.env[%d]", field, i), "%.40q has no variable name (want NAME=value)", e)
		}
	}
	if total > MaxProcessBytes {
		return invalid(field, "args and env are %d bytes in all, more than %d", total, MaxProcessBytes)
	}
	if p.Cwd != "" {
		if err := validatePath(field+".cwd", p.Cwd); err != nil {
			return err
		}
	}
	if u := p.User; u != nil {
		if u.UID > MaxID {
			return invalid(field+".user.uid", "%d is not a user id (at most %d)", u.UID, uint32(MaxID))
		}
		if u.GID > MaxID {
			return invalid(field+".user.gid", "%d is not a group id (at most %d)", u.GID, uint32(MaxID))
		}
		if len(u.AdditionalGids) > MaxAdditionalGids {
			return invalid(field+".user.additional_gids", "%d groups, more than %d", len(u.AdditionalGids), MaxAdditionalGids)
		}
		for i, g := range u.AdditionalGids {
			if g > MaxID {
				return invalid(fmt.Sprintf("%s.user.additional_gids[%d]", field, i), "%d is not a group id (at most %d)", g, uint32(MaxID))
			}
		}
	}
	if cs := p.ConsoleSize; cs != nil && (cs.Width > 0xffff || cs.Height > 0xffff) {
		return invalid(field+".console_size", "%dx%d is larger than 65535x65535", cs.Width, cs.Height)
	}
	return nil
}

// Mount types that name no host path and need no host access: kernel
// file systems of the container's own namespaces.
var safeMountTypes = map[string]bool{"tmpfs": true, "proc": true, "sysfs": true, "devpts": true, "mqueue": true, "cgroup": true, "cgroup2": true}

// validateMount checks one mount. Bind mounts and mounts of any other
// type than safeMountTypes reach the host: they need hostAccess.
func validateMount(field, source, dest, typ string, options []string, hostAccess bool) error {
	if err := validatePath(field+".destination", dest); err != nil {
		return err
	}
	if dest == "/" {
		return invalid(field+".destination", "must not be /")
	}
	if len(source) > MaxPathLength || hasControl(source) {
		return invalid(field+".source", "%.80q is longer than %d bytes or contains control characters", source, MaxPathLength)
	}
	if len(typ) > 64 || hasControl(typ) || strings.ContainsAny(typ, " ,") {
		return invalid(field+".type", "%.64q is not a file system type", typ)
	}
	if len(options) > MaxMountOptions {
		return invalid(field+".options", "%d options, more than %d", len(options), MaxMountOptions)
	}
	bind := typ == "" || typ == "bind" || typ == "rbind"
	for i, o := range options {
		if o == "" || len(o) > 1024 || hasControl(o) || strings.Contains(o, ",") {
			return invalid(fmt.Sprintf("%s.options[%d]", field, i), "%.80q must be one option of 1 to 1024 bytes without ',' or control characters", o)
		}
		if o == "bind" || o == "rbind" {
			bind = true
		}
	}
	if bind {
		if source == "" || !filepath.IsAbs(source) {
			return invalid(field+".source", "a bind mount needs an absolute source path")
		}
		if !hostAccess {
			return denied(field, "bind mount of the host's %q", source)
		}
		return nil
	}
	if !safeMountTypes[typ] && !hostAccess {
		return denied(field+".type", "mounts of type %q may reach the host's devices or files (allowed: tmpfs, proc, sysfs, devpts, mqueue, cgroup, cgroup2)", typ)
	}
	return nil
}

// validateResources checks the API's resources: not negative but for -1
// (unlimited), CFS values within the kernel's bounds, a memory limit of
// at least [MinMemoryLimit] and at most the host's memory, a CPU quota
// of at most the host's CPUs, cpusets of this host's CPUs and nodes.
func validateResources(field string, r *Resources) error {
	if r == nil {
		return nil
	}
	if err := engine.ValidateCPU(field+".cpu", r.CPUShares, r.CPUQuota, r.CPUPeriod); err != nil {
		return renameField(err, field+".cpu.shares", field+".cpu_shares", field+".cpu.quota", field+".cpu_quota_us", field+".cpu.period", field+".cpu_period_us")
	}
	if r.CPUQuota != nil && *r.CPUQuota > 0 {
		period := uint64(100000)
		if r.CPUPeriod != nil && *r.CPUPeriod > 0 {
			period = *r.CPUPeriod
		}
		if cpus := runtime.NumCPU(); uint64(*r.CPUQuota) > uint64(cpus)*period {
			return invalid(field+".cpu_quota_us", "%d per period of %d is more than this host's %d CPUs", *r.CPUQuota, period, cpus)
		}
	}
	if r.CpusetCPUs != nil {
		if err := engine.ValidateCpuset(field+".cpuset_cpus", *r.CpusetCPUs, engine.OnlineCPUs); err != nil {
			return err
		}
	}
	if r.CpusetMems != nil {
		if err := engine.ValidateCpuset(field+".cpuset_mems", *r.CpusetMems, engine.OnlineMems); err != nil {
			return err
		}
	}
	if m := r.MemoryLimit; m != nil {
		switch total := hostMemory(); {
		case *m < -1:
			return invalid(field+".memory_limit_bytes", "%d is negative (-1 means unlimited)", *m)
		case *m > 0 && *m < MinMemoryLimit:
			return invalid(field+".memory_limit_bytes", "%d is less than the minimum of %d (6 MiB)", *m, MinMemoryLimit)
		case total > 0 && uint64(*m) > total && *m > 0:
			return invalid(field+".memory_limit_bytes", "%d is more than this host's %d bytes of memory", *m, total)
		}
	}
	if s := r.MemorySwapLimit; s != nil {
		switch {
		case *s < -1:
			return invalid(field+".memory_swap_limit_bytes", "%d is negative (-1 means unlimited swap)", *s)
		case *s > 0 && r.MemoryLimit != nil && *r.MemoryLimit > 0 && *s < *r.MemoryLimit:
			return invalid(field+".memory_swap_limit_bytes", "%d is less than memory_limit_bytes %d (it counts memory plus swap)", *s, *r.MemoryLimit)
		}
	}
	if p := r.PidsLimit; p != nil && *p < -1 {
		return invalid(field+".pids_limit", "%d is negative (-1 or 0 means unlimited)", *p)
	}
	return nil
}

// renameField gives a FieldError from the engine the API's field name:
// pairs of old and new names.
func renameField(err error, pairs ...string) error {
	var fe *engine.FieldError
	if errors.As(err, &fe) {
		for i := 0; i+1 < len(pairs); i += 2 {
			if fe.Field == pairs[i] {
				return &engine.FieldError{Field: pairs[i+1], Reason: fe.Reason}
			}
		}
	}
	return err
}

// hostMemory returns the host's physical memory in bytes (0 if unknown).
func hostMemory() uint64 {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0
	}
	return uint64(si.Totalram) * uint64(si.Unit)
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}
