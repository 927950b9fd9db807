package direct

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// imageRootfs is the image a container is created from.
type imageRootfs struct {
	// config holds the image's defaults.
	config image.Config
	// dir is the image's unpacked, read-only root file system on the host.
	dir string
}

// bundleRootfs is the root path, relative to the bundle, of containers
// whose root file system is mounted by the backend (engine.ContainerSpec's
// Rootfs).
const bundleRootfs = "rootfs"

// buildSpec generates the OCI spec of a container made through the API.
// Namespaces the pod shares are written the way CRI writes them,
// /proc/<sandbox pid>/ns/<type>, and each kind points them at its pod.
//
// For a container from an image (img set), the root is the bundle's
// "rootfs", where the backend mounts the overlay, and the image's config
// gives the defaults of the process: args are the request's if it has any
// (they replace the image's entrypoint and cmd together, as the API
// documents; this is not Docker's `docker run IMAGE ARGS`, where the
// arguments replace only cmd), else entrypoint followed by cmd; env is the
// image's overridden key by key by the request's; cwd is the request's,
// else the image's working directory, else "/"; the user is the request's,
// else the image's, resolved against the image's /etc/passwd and
// /etc/group.
//
// A raw spec (req.OCISpecJSON) is used as given with hostAccess; without,
// see confineSpec.
func buildSpec(ctx context.Context, sb engine.SandboxStatus, hostNetwork bool, cgroupParent, id string, req *ContainerRequest, img *imageRootfs, hostAccess bool) (*specs.Spec, error) {
	if raw := req.OCISpecJSON; len(raw) > 0 {
		var spec specs.Spec
		if err := json.Unmarshal(raw, &spec); err != nil {
			return nil, fmt.Errorf("oci_spec_json: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		if img != nil {
			spec.Root = &specs.Root{Path: bundleRootfs, Readonly: req.ReadonlyRootfs}
		}
		if hostAccess {
			return &spec, nil
		}
		if err := confineSpec(ctx, sb, hostNetwork, cgroupParent, id, &spec, img != nil); err != nil {
			return nil, err
		}
		return &spec, nil
	}
	proc := req.Process
	args := commandLine(proc.Entrypoint, proc.Args, img)
	if len(args) == 0 {
		if img != nil {
			return nil, fmt.Errorf("image %q has neither entrypoint nor cmd; process.args must not be empty: %w", req.Image, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("process.args must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	rootfs := req.RootfsPath
	switch {
	case img != nil:
		rootfs = bundleRootfs
	case req.Image != "":
		return nil, fmt.Errorf("image %q was not resolved: %w", req.Image, errdefs.ErrFailedPrecondition)
	case rootfs == "":
		return nil, fmt.Errorf("rootfs_path or image is required: %w", errdefs.ErrInvalidArgument)
	case !filepath.IsAbs(rootfs) || filepath.Clean(rootfs) != rootfs:
		return nil, fmt.Errorf("rootfs_path %q must be an absolute, clean path: %w", rootfs, errdefs.ErrInvalidArgument)
	}
	ctx = namespaces.WithNamespace(ctx, sb.Namespace)
	opts := []oci.SpecOpts{
		oci.WithRootFSPath(rootfs),
		oci.WithProcessArgs(args...),
		oci.WithDefaultPathEnv,
	}
	if img != nil {
		opts = append(opts, oci.WithEnv(img.config.Env))
	}
	opts = append(opts, oci.WithEnv(proc.Env))
	switch {
	case proc.Cwd != "":
		opts = append(opts, oci.WithProcessCwd(proc.Cwd))
	case img != nil && img.config.WorkingDir != "":
		opts = append(opts, oci.WithProcessCwd(filepath.Join("/", img.config.WorkingDir)))
	}
	if req.ReadonlyRootfs {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if proc.Terminal {
		opts = append(opts, oci.WithTTY)
		if cs := proc.ConsoleSize; cs != nil {
			opts = append(opts, oci.WithTTYSize(int(cs.Width), int(cs.Height)))
		}
	}
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: id}, opts...)
	if err != nil {
		return nil, fmt.Errorf("generate OCI spec: %w", err)
	}
	switch u := proc.User; {
	case u != nil:
		spec.Process.User = specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids}
	case img != nil && img.config.User != "":
		iu, err := image.ResolveUser(img.dir, img.config.User)
		if err != nil {
			return nil, err
		}
		spec.Process.User = specs.User{UID: iu.UID, GID: iu.GID, AdditionalGids: iu.AdditionalGids}
	}
	wirePod(spec, sb, hostNetwork, cgroupParent, id)
	spec.Linux.Resources = mergeResources(spec.Linux.Resources, req.Resources)
	for _, m := range req.Mounts {
		if !filepath.IsAbs(m.Destination) {
			return nil, fmt.Errorf("mount destination %q must be absolute: %w", m.Destination, errdefs.ErrInvalidArgument)
		}
		typ, options := m.Type, m.Options
		if typ == "" {
			typ = "bind"
		}
		if typ == "bind" && len(options) == 0 {
			options = []string{"rbind"}
		}
		if m.Readonly {
			options = append(options, "ro")
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: m.Destination, Type: typ, Source: m.Source, Options: options})
	}
	return spec, nil
}

// wirePod sets the namespaces and cgroup of a generated spec: the pod's
// network, IPC and UTS namespaces (none of the first and last on the
// host network), and a cgroup below the pod's cgroup parent.
func wirePod(spec *specs.Spec, sb engine.SandboxStatus, hostNetwork bool, cgroupParent, id string) {
	podNS := func(t specs.LinuxNamespaceType) string { return fmt.Sprintf("/proc/%d/ns/%s", sb.Pid, nsFile(t)) }
	var nss []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		switch ns.Type {
		case specs.NetworkNamespace:
			if hostNetwork {
				continue
			}
			ns.Path = podNS(ns.Type)
		case specs.IPCNamespace, specs.UTSNamespace:
			if ns.Type == specs.UTSNamespace && hostNetwork {
				continue
			}
			ns.Path = podNS(ns.Type)
		}
		nss = append(nss, ns)
	}
	spec.Linux.Namespaces = nss
	if sb.Network != nil && spec.Process != nil {
		dropNetCaps(spec.Process.Capabilities)
	}
	if cgroupParent == "" {
		cgroupParent = "/magnetar"
	}
	spec.Linux.CgroupsPath = filepath.Join(cgroupParent, id)
}

// dropNetCaps removes CAP_NET_RAW and CAP_NET_ADMIN from every set of c:
// a process of a sandbox on a bridge network, whose egress policy is
// enforced by nftables in its namespace, may neither change the rules
// (NET_ADMIN) nor send around them through packet sockets (NET_RAW).
func dropNetCaps(c *specs.LinuxCapabilities) {
	if c == nil {
		return
	}
	for _, set := range []*[]string{&c.Bounding, &c.Effective, &c.Permitted, &c.Inheritable, &c.Ambient} {
		*set = slices.DeleteFunc(*set, func(s string) bool { return s == "CAP_NET_RAW" || s == "CAP_NET_ADMIN" })
	}
}

// confineSpec makes a raw OCI spec safe for a caller without host
// access: the server's namespaces, cgroup, capabilities, device rules and
// masked and read-only paths replace the spec's; hooks, devices, host
// network devices, ID mappings, rootfs propagation and Intel RDT are
// dropped or refused; mounts, process and resources are checked like
// those of a request. A container without an image would have a host
// directory as its root: refused.
func confineSpec(ctx context.Context, sb engine.SandboxStatus, hostNetwork bool, cgroupParent, id string, spec *specs.Spec, fromImage bool) error {
	const f = "oci_spec_json"
	switch {
	case !fromImage:
		return denied(f+".root", "without an image, the root file system is a directory of the host")
	case spec.Hooks != nil:
		return denied(f+".hooks", "hooks run on the host")
	case spec.Process == nil:
		return invalid(f+".process", "is required")
	case len(spec.Process.Args) == 0:
		return invalid(f+".process.args", "must not be empty")
	}
	p := spec.Process
	proc := Process{Args: p.Args, Env: p.Env, Cwd: p.Cwd, User: &User{UID: p.User.UID, GID: p.User.GID, AdditionalGids: p.User.AdditionalGids}}
	if err := validateProcess(f+".process", &proc, true); err != nil {
		return err
	}
	if err := engine.ValidateHostname(f+".hostname", spec.Hostname); err != nil {
		return err
	}
	if err := engine.ValidateHostname(f+".domainname", spec.Domainname); err != nil {
		return err
	}
	if len(spec.Mounts) > MaxMounts {
		return invalid(f+".mounts", "%d mounts, more than %d", len(spec.Mounts), MaxMounts)
	}
	for i, m := range spec.Mounts {
		if err := validateMount(fmt.Sprintf("%s.mounts[%d]", f, i), m.Source, m.Destination, m.Type, m.Options, false); err != nil {
			return err
		}
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	l := spec.Linux
	switch {
	case len(l.Devices) > 0:
		return denied(f+".linux.devices", "device nodes are the host's")
	case len(l.NetDevices) > 0:
		return denied(f+".linux.netDevices", "network devices are the host's")
	}
	if err := engine.ValidateResources(f+".linux.resources", l.Resources); err != nil {
		return err
	}
	server, err := oci.GenerateSpec(namespaces.WithNamespace(ctx, sb.Namespace), nil, &containers.Container{ID: id}, oci.WithRootFSPath(bundleRootfs))
	if err != nil {
		return fmt.Errorf("generate OCI spec: %w", err)
	}
	wirePod(server, sb, hostNetwork, cgroupParent, id)
	l.Namespaces, l.CgroupsPath = server.Linux.Namespaces, server.Linux.CgroupsPath
	l.MaskedPaths, l.ReadonlyPaths = server.Linux.MaskedPaths, server.Linux.ReadonlyPaths
	l.UIDMappings, l.GIDMappings, l.RootfsPropagation, l.IntelRdt = nil, nil, "", nil
	if l.Resources == nil {
		l.Resources = &specs.LinuxResources{}
	}
	l.Resources.Devices = server.Linux.Resources.Devices
	p.Capabilities = server.Process.Capabilities
	spec.VM, spec.Windows, spec.Solaris, spec.ZOS = nil, nil, nil, nil
	return nil
}

func nsFile(t specs.LinuxNamespaceType) string {
	switch t {
	case specs.NetworkNamespace:
		return "net"
	case specs.MountNamespace:
		return "mnt"
	}
	return string(t)
}

// Resources are the resources of a sandbox or a container; nil fields are
// not set. The units are those of the OCI runtime spec's LinuxResources.
type Resources struct {
	// CPUShares is the relative CPU weight (cgroup v1 cpu.shares).
	CPUShares *uint64
	// CPUQuota is the CPU time in microseconds the group may use in each
	// CPUPeriod; -1 means unlimited.
	CPUQuota *int64
	// CPUPeriod is the CPU accounting period in microseconds.
	CPUPeriod *uint64
	// CpusetCPUs and CpusetMems are the CPUs and memory nodes, in cpuset
	// list format.
	CpusetCPUs *string
	CpusetMems *string
	// MemoryLimit is the memory limit in bytes; -1 means unlimited.
	MemoryLimit *int64
	// MemorySwapLimit is the limit of memory plus swap in bytes; -1 means
	// unlimited swap.
	MemorySwapLimit *int64
	// PidsLimit is the maximum number of processes; -1 or 0 means
	// unlimited.
	PidsLimit *int64
}

// mergeResources applies the set fields of r to res.
func mergeResources(res *specs.LinuxResources, r *Resources) *specs.LinuxResources {
	if r == nil {
		return res
	}
	if res == nil {
		res = &specs.LinuxResources{}
	}
	if r.CPUShares != nil || r.CPUQuota != nil || r.CPUPeriod != nil || r.CpusetCPUs != nil || r.CpusetMems != nil {
		if res.CPU == nil {
			res.CPU = &specs.LinuxCPU{}
		}
		if r.CPUShares != nil {
			res.CPU.Shares = r.CPUShares
		}
		if r.CPUQuota != nil {
			res.CPU.Quota = r.CPUQuota
		}
		if r.CPUPeriod != nil {
			res.CPU.Period = r.CPUPeriod
		}
		if r.CpusetCPUs != nil {
			res.CPU.Cpus = *r.CpusetCPUs
		}
		if r.CpusetMems != nil {
			res.CPU.Mems = *r.CpusetMems
		}
	}
	if r.MemoryLimit != nil || r.MemorySwapLimit != nil {
		if res.Memory == nil {
			res.Memory = &specs.LinuxMemory{}
		}
		if r.MemoryLimit != nil {
			res.Memory.Limit = r.MemoryLimit
		}
		if r.MemorySwapLimit != nil {
			res.Memory.Swap = r.MemorySwapLimit
		}
	}
	if r.PidsLimit != nil {
		res.Pids = &specs.LinuxPids{Limit: r.PidsLimit}
	}
	return res
}

// commandLine combines the requested entrypoint and args with the image's,
// as Kubernetes and Docker do: args replace the image's command, an
// entrypoint replaces the image's entrypoint and drops its command.
func commandLine(entrypoint, args []string, img *imageRootfs) []string {
	if img != nil {
		if len(entrypoint) == 0 {
			entrypoint = img.config.Entrypoint
			if len(args) == 0 {
				args = img.config.Cmd
			}
		}
	}
	return append(append([]string(nil), entrypoint...), args...)
}
