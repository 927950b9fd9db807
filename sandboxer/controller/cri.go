package controller

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"strings"

	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

const (
	// KindAnnotation is the pod annotation that picks a sandbox kind when
	// the CRI runtime handler does not name one.
	KindAnnotation = "magnetar.io/kind"
	// HandlerPrefix is stripped from a CRI runtime handler name to get a
	// sandbox kind when the handler is not in [Config.Handlers]:
	// "magnetar-runc" runs kind "runc".
	HandlerPrefix = "magnetar-"
	// StreamingSuffix is stripped too, after HandlerPrefix: handlers for
	// containerd's `streaming` io type ("magnetar-runc-streaming") run the
	// same kinds as the FIFO ones.
	StreamingSuffix = "-streaming"

	// podSandboxConfigType is the proto name of CRI's PodSandboxConfig,
	// which CRI passes as the Create options.
	podSandboxConfigType = "runtime.v1.PodSandboxConfig"
	// metadataExtension is the sandbox store extension where CRI keeps its
	// sandbox metadata as JSON.
	metadataExtension = "metadata"
)

// criMetadata is the part of CRI's sandbox metadata extension we read
// (containerd internal/cri/store/sandbox/metadata.go).
type criMetadata struct {
	Version  string `json:"Version"`
	Metadata struct {
		RuntimeHandler string `json:"RuntimeHandler"`
	} `json:"Metadata"`
}

// podConfig decodes the CRI PodSandboxConfig from Create's options. It
// returns nil when the options are absent or of another type.
func podConfig(opts *anypb.Any) (*runtimeapi.PodSandboxConfig, error) {
	if opts == nil {
		return nil, nil
	}
	url := opts.GetTypeUrl()
	if url != podSandboxConfigType && !strings.HasSuffix(url, "/"+podSandboxConfigType) {
		return nil, nil
	}
	var cfg runtimeapi.PodSandboxConfig
	if err := proto.Unmarshal(opts.GetValue(), &cfg); err != nil {
		return nil, fmt.Errorf("decode %s options: %v: %w", podSandboxConfigType, err, errdefs.ErrInvalidArgument)
	}
	return &cfg, nil
}

// runtimeHandler reads the CRI runtime handler from the sandbox's metadata
// extension; empty when there is none.
func runtimeHandler(req *sandboxapi.ControllerCreateRequest) (string, error) {
	ext, ok := req.GetSandbox().GetExtensions()[metadataExtension]
	if !ok || len(ext.GetValue()) == 0 {
		return "", nil
	}
	var md criMetadata
	if err := json.Unmarshal(ext.GetValue(), &md); err != nil {
		return "", fmt.Errorf("decode sandbox extension %q (%s): %v: %w", metadataExtension, ext.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
	}
	return md.Metadata.RuntimeHandler, nil
}

// kindResolver picks the sandbox kind of a new sandbox.
type kindResolver struct {
	handlers    map[string]string
	defaultKind string
}

// resolve returns the kind for a sandbox: from the runtime handler (the
// handler map, else the handler name without [HandlerPrefix]), else from
// the [KindAnnotation] annotation, else the default kind. from says where
// the kind came from, for error messages.
func (r kindResolver) resolve(handler string, annotations map[string]string) (kind, from string, err error) {
	if handler != "" {
		if k, ok := r.handlers[handler]; ok && k != "" {
			return k, fmt.Sprintf("runtime handler %q (configured)", handler), nil
		}
		if k, ok := strings.CutPrefix(handler, HandlerPrefix); ok && k != "" {
			if base, ok := strings.CutSuffix(k, StreamingSuffix); ok && base != "" {
				k = base
			}
			return k, fmt.Sprintf("runtime handler %q", handler), nil
		}
	}
	if k := annotations[KindAnnotation]; k != "" {
		return k, fmt.Sprintf("annotation %s", KindAnnotation), nil
	}
	if r.defaultKind != "" {
		return r.defaultKind, "default_kind", nil
	}
	return "", "", fmt.Errorf("no sandbox kind for sandbox: runtime handler %q names none (map it in containerd.handlers or name it %s<kind>), "+
		"no %s annotation and no default_kind configured: %w", handler, HandlerPrefix, KindAnnotation, errdefs.ErrInvalidArgument)
}

// sandboxSpec turns a Create request into an engine sandbox spec.
func (r kindResolver) sandboxSpec(req *sandboxapi.ControllerCreateRequest, namespace string) (engine.SandboxSpec, string, error) {
	cfg, err := podConfig(req.GetOptions())
	if err != nil {
		return engine.SandboxSpec{}, "", err
	}
	handler, err := runtimeHandler(req)
	if err != nil {
		return engine.SandboxSpec{}, "", err
	}
	if p := req.GetNetnsPath(); p != "" && (!filepath.IsAbs(p) || filepath.Clean(p) != p) {
		return engine.SandboxSpec{}, "", fmt.Errorf("netns path %q must be an absolute, clean path: %w", p, errdefs.ErrInvalidArgument)
	}

	// Labels: the pod's, then the sandbox record's (CRI stores "name"
	// there and replaces the record's labels with what Start returns).
	labels := map[string]string{}
	maps.Copy(labels, cfg.GetLabels())
	maps.Copy(labels, req.GetSandbox().GetLabels())
	annotations := map[string]string{}
	maps.Copy(annotations, cfg.GetAnnotations())
	maps.Copy(annotations, req.GetAnnotations())

	kind, from, err := r.resolve(handler, annotations)
	if err != nil {
		return engine.SandboxSpec{}, "", err
	}
	spec := engine.SandboxSpec{
		ID:          req.GetSandboxID(),
		Kind:        kind,
		Namespace:   namespace,
		NetNSPath:   req.GetNetnsPath(),
		Labels:      labels,
		Annotations: annotations,
	}
	if cfg != nil {
		linux := cfg.GetLinux()
		if linux.GetSecurityContext().GetNamespaceOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
			// A host-network pod shares the host's UTS namespace: runc
			// refuses to set a hostname there, and kubelet sends none.
			spec.Hostname = cfg.GetHostname()
			// CRI made no netns for a pod that is not host-network (no
			// CNI): never let it fall onto the host's network.
			spec.PrivateNetwork = spec.NetNSPath == ""
		}
		if dns := cfg.GetDnsConfig(); dns != nil {
			spec.DNS = backend.DNSConfig{Servers: dns.GetServers(), Searches: dns.GetSearches(), Options: dns.GetOptions()}
		}
		spec.HostPID = linux.GetSecurityContext().GetNamespaceOptions().GetPid() == runtimeapi.NamespaceMode_NODE
		spec.HostIPC = linux.GetSecurityContext().GetNamespaceOptions().GetIpc() == runtimeapi.NamespaceMode_NODE
		spec.Sysctls = maps.Clone(linux.GetSysctls())
		spec.CgroupParent = linux.GetCgroupParent()
		spec.Resources = linuxResources(linux.GetResources())
	}
	return spec, from, nil
}

// linuxResources converts CRI container resources to OCI resources; nil in,
// nil out.
func linuxResources(r *runtimeapi.LinuxContainerResources) *specs.LinuxResources {
	if r == nil {
		return nil
	}
	out := &specs.LinuxResources{}
	cpu := &specs.LinuxCPU{Cpus: r.GetCpusetCpus(), Mems: r.GetCpusetMems()}
	if v := r.GetCpuShares(); v > 0 {
		s := uint64(v)
		cpu.Shares = &s
	}
	if v := r.GetCpuQuota(); v != 0 {
		cpu.Quota = &v
	}
	if v := r.GetCpuPeriod(); v > 0 {
		p := uint64(v)
		cpu.Period = &p
	}
	if *cpu != (specs.LinuxCPU{}) {
		out.CPU = cpu
	}
	if v := r.GetMemoryLimitInBytes(); v > 0 {
		out.Memory = &specs.LinuxMemory{Limit: &v}
		if s := r.GetMemorySwapLimitInBytes(); s > 0 {
			out.Memory.Swap = &s
		}
	}
	for _, h := range r.GetHugepageLimits() {
		out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.GetPageSize(), Limit: h.GetLimit()})
	}
	if u := r.GetUnified(); len(u) > 0 {
		out.Unified = maps.Clone(u)
	}
	if out.CPU == nil && out.Memory == nil && out.HugepageLimits == nil && out.Unified == nil {
		return nil
	}
	return out
}
