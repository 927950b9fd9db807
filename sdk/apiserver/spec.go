package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	typesv1 "github.com/magnetar-io/magnetar/gen/magnetar/types/v1"
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
func buildSpec(ctx context.Context, sb engine.SandboxStatus, hostNetwork bool, cgroupParent, id string, req *containerv1.CreateContainerRequest, img *imageRootfs) (*specs.Spec, error) {
	if raw := req.GetOciSpecJson(); len(raw) > 0 {
		var spec specs.Spec
		if err := json.Unmarshal(raw, &spec); err != nil {
			return nil, fmt.Errorf("oci_spec_json: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		if img != nil {
			spec.Root = &specs.Root{Path: bundleRootfs, Readonly: req.GetReadonlyRootfs()}
		}
		return &spec, nil
	}
	proc := req.GetProcess()
	args := commandLine(proc.GetEntrypoint(), proc.GetArgs(), img)
	if len(args) == 0 {
		if img != nil {
			return nil, fmt.Errorf("image %q has neither entrypoint nor cmd; process.args must not be empty: %w", req.GetImage(), errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("process.args must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	rootfs := req.GetRootfsPath()
	switch {
	case img != nil:
		rootfs = bundleRootfs
	case req.GetImage() != "":
		return nil, fmt.Errorf("image %q was not resolved: %w", req.GetImage(), errdefs.ErrFailedPrecondition)
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
	opts = append(opts, oci.WithEnv(proc.GetEnv()))
	switch {
	case proc.GetCwd() != "":
		opts = append(opts, oci.WithProcessCwd(proc.GetCwd()))
	case img != nil && img.config.WorkingDir != "":
		opts = append(opts, oci.WithProcessCwd(filepath.Join("/", img.config.WorkingDir)))
	}
	if req.GetReadonlyRootfs() {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if proc.GetTerminal() {
		opts = append(opts, oci.WithTTY)
		if cs := proc.GetConsoleSize(); cs != nil {
			opts = append(opts, oci.WithTTYSize(int(cs.GetWidth()), int(cs.GetHeight())))
		}
	}
	spec, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: id}, opts...)
	if err != nil {
		return nil, fmt.Errorf("generate OCI spec: %w", err)
	}
	switch u := proc.GetUser(); {
	case u != nil:
		spec.Process.User = specs.User{UID: u.GetUid(), GID: u.GetGid(), AdditionalGids: u.GetAdditionalGids()}
	case img != nil && img.config.User != "":
		iu, err := image.ResolveUser(img.dir, img.config.User)
		if err != nil {
			return nil, err
		}
		spec.Process.User = specs.User{UID: iu.UID, GID: iu.GID, AdditionalGids: iu.AdditionalGids}
	}
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
	if cgroupParent == "" {
		cgroupParent = "/magnetar"
	}
	spec.Linux.CgroupsPath = filepath.Join(cgroupParent, id)
	spec.Linux.Resources = mergeResources(spec.Linux.Resources, req.GetResources())
	for _, m := range req.GetMounts() {
		if !filepath.IsAbs(m.GetDestination()) {
			return nil, fmt.Errorf("mount destination %q must be absolute: %w", m.GetDestination(), errdefs.ErrInvalidArgument)
		}
		typ, options := m.GetType(), m.GetOptions()
		if typ == "" {
			typ = "bind"
		}
		if typ == "bind" && len(options) == 0 {
			options = []string{"rbind"}
		}
		if m.GetReadonly() {
			options = append(options, "ro")
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: m.GetDestination(), Type: typ, Source: m.GetSource(), Options: options})
	}
	return spec, nil
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

// mergeResources applies the set fields of r to res.
func mergeResources(res *specs.LinuxResources, r *typesv1.Resources) *specs.LinuxResources {
	if r == nil {
		return res
	}
	if res == nil {
		res = &specs.LinuxResources{}
	}
	if r.CpuShares != nil || r.CpuQuotaUs != nil || r.CpuPeriodUs != nil || r.CpusetCpus != nil || r.CpusetMems != nil {
		if res.CPU == nil {
			res.CPU = &specs.LinuxCPU{}
		}
		if r.CpuShares != nil {
			res.CPU.Shares = r.CpuShares
		}
		if r.CpuQuotaUs != nil {
			res.CPU.Quota = r.CpuQuotaUs
		}
		if r.CpuPeriodUs != nil {
			res.CPU.Period = r.CpuPeriodUs
		}
		if r.CpusetCpus != nil {
			res.CPU.Cpus = r.GetCpusetCpus()
		}
		if r.CpusetMems != nil {
			res.CPU.Mems = r.GetCpusetMems()
		}
	}
	if r.MemoryLimitBytes != nil || r.MemorySwapLimitBytes != nil {
		if res.Memory == nil {
			res.Memory = &specs.LinuxMemory{}
		}
		if r.MemoryLimitBytes != nil {
			res.Memory.Limit = r.MemoryLimitBytes
		}
		if r.MemorySwapLimitBytes != nil {
			res.Memory.Swap = r.MemorySwapLimitBytes
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
