package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/magnetar-io/magnetar/sdk/network"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/hashicorp/go-hclog"
	"github.com/pelletier/go-toml/v2"

	"github.com/magnetar-io/magnetar/sandboxer/supervisor"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// ConfigVersion is the config file version this daemon reads.
const ConfigVersion = 1

// Defaults of [Config].
const (
	DefaultStateDir = "/var/lib/magnetar"
	DefaultRunDir   = "/run/magnetar"
	DefaultListen   = "/run/magnetar/sandboxer.sock"
	DefaultLogLevel = "info"
)

// Config is the daemon configuration, read from a TOML file:
//
//	version = 1
//	state_dir = "/var/lib/magnetar"
//	run_dir = "/run/magnetar"
//	listen = "/run/magnetar/sandboxer.sock"
//	api_listen = "/run/magnetar/api.sock"
//	api_output_ring_bytes = 1048576
//	api_max_file_bytes = 8589934592
//	api_allow_host_access = false
//	netns_dirs = ["/run/netns", "/var/run/netns"]
//	default_network_mode = "none"
//	default_kind = "runc"
//	log_level = "info"
//	[api_remote]
//	  listen = ["tcp://0.0.0.0:7443"]
//	  tls_cert = "/etc/magnetar/tls/server.crt"
//	  tls_key = "/etc/magnetar/tls/server.key"
//	  client_ca = "/etc/magnetar/tls/clients-ca.crt"
//	  tenants_file = "/etc/magnetar/tenants.toml"
//	  reload_interval = "2s"
//	  max_request_bytes = 4194304
//	[[networks]]
//	  name = "default"
//	  bridge = "magnetar0"
//	  subnet = "10.211.0.0/16"
//	  nat = true
//	  dns = ["192.0.2.53"]
//	[containerd]
//	  ttrpc_address = "/run/containerd/containerd.sock.ttrpc"
//	  [containerd.handlers]
//	    magnetar = "runc"
//	[backends.runc]
//	  binary = "/usr/sbin/runc"
//	  root = "/run/magnetar/runc"
//	[backends.vm]
//	  guest_dir = "/usr/lib/magnetar/guest"
//	  vcpus = 1
//	  memory_mib = 256
//	  max_vcpus = 4
//	  memory_overhead_mib = 128
//	  boot_timeout = "2m"
//	  health_interval = "10s"
//	  health_timeout = "30s"
//	  health_failures = 3
//	  tcg_cache_mib = 32
//	  free_page_reporting = false
//	  [backends.vm.template]
//	    enabled = true
//	  [backends.vm.pool]
//	    memory_budget_mib = 1024
//	    [[backends.vm.pool.classes]]
//	      count = 2
//	      vcpus = 1
//	      memory_mib = 256
//	[backends.gvisor]
//	  binary = "/usr/bin/runsc"
//	  root = "/run/magnetar/runsc"
//	  platform = "systrap"
//	[backends.wasm]
//	  root = "/var/lib/magnetar/wasm"
//	  default_memory_limit = 268435456
type Config struct {
	// Version of the file format; must be 1 (0, when absent, reads as 1).
	Version int `toml:"version"`
	// StateDir holds the sandboxes' persistent state. Default
	// /var/lib/magnetar.
	StateDir string `toml:"state_dir"`
	// RunDir holds sockets and runtime files, among them one Task API
	// socket per sandbox under RunDir/t. Keep it short: unix socket paths
	// are limited to 107 bytes. Default /run/magnetar.
	RunDir string `toml:"run_dir"`
	// Listen is the unix socket where containerd reaches the Sandbox
	// Controller API (the proxy plugin's address). Default
	// /run/magnetar/sandboxer.sock.
	Listen string `toml:"listen"`
	// APIListen is the unix socket (0600) serving Magnetar's own API
	// (magnetar.sandbox.v1, magnetar.container.v1) over Connect, gRPC and
	// gRPC-Web. Default <run_dir>/api.sock; "-" disables it.
	APIListen string `toml:"api_listen"`
	// APIOutputRingBytes is how many bytes of output the API keeps on
	// disk per process of the containers it makes (a ring, in the
	// sandbox's state dir). Default 1 MiB; at least 128 KiB.
	APIOutputRingBytes int64 `toml:"api_output_ring_bytes"`
	// APIMaxFileBytes bounds a file written through the API's file
	// service, and the file bytes of one tar upload. Default 8 GiB.
	APIMaxFileBytes int64 `toml:"api_max_file_bytes"`
	// APIAllowHostAccess lets callers of Magnetar's API reach the host:
	// containers with a host directory as root file system
	// (rootfs_path), bind mounts and other mounts of host paths, and raw
	// OCI specs (oci_spec_json) applied with their own namespaces,
	// cgroups, capabilities, devices and hooks. Off by default: such
	// requests fail with PERMISSION_DENIED, and the server sets the
	// namespaces, cgroup and capabilities of every container. Anyone who
	// can reach the API socket is root on the host with it on.
	APIAllowHostAccess bool `toml:"api_allow_host_access"`
	// Remote configures the API's remote listeners (TLS, tenants, quotas);
	// none by default.
	Remote RemoteConfig `toml:"api_remote"`
	// NetNSDirs are the directories where the network namespace of a
	// sandbox made through Magnetar's API with NETWORK_MODE_NETNS may be.
	// Default /run/netns and /var/run/netns (ip-netns' and containerd's).
	// containerd's pods may have theirs anywhere containerd's own
	// configuration puts them; any sandbox's namespace must be a network
	// namespace, and not the host's.
	NetNSDirs []string `toml:"netns_dirs"`
	// DefaultNetworkMode is the network mode of sandboxes made through
	// Magnetar's API that ask for none: "none" (the default: loopback
	// only) or "bridge" (the first of Networks).
	DefaultNetworkMode string `toml:"default_network_mode"`
	// Networks are the bridge networks of sandboxes made through
	// Magnetar's API with NETWORK_MODE_BRIDGE, attached by CNI (bridge,
	// host-local, NAT); the first is the default. None declared: one
	// network "default" on bridge magnetar0, 10.211.0.0/16, with NAT.
	// Their namespaces are under <run_dir>/netns, their leases under
	// <state_dir>/network.
	Networks []network.NetworkConfig `toml:"networks"`
	// DefaultKind is the sandbox kind used when neither the runtime handler
	// nor the pod's magnetar.io/kind annotation names one. Empty refuses
	// such pods.
	DefaultKind string `toml:"default_kind"`
	// LogLevel is trace, debug, info, warn or error. Default info.
	LogLevel string `toml:"log_level"`
	// Containerd configures the link to containerd.
	Containerd ContainerdConfig `toml:"containerd"`
	// Backends configures the sandbox kinds.
	Backends BackendsConfig `toml:"backends"`
	// NoSupervisor runs the daemon as a single process. By default a small
	// supervisor process holds the sockets and containerd's task
	// connections and restarts the daemon proper (the worker) when it
	// dies, so that a crash or an upgrade does not end containers (see
	// docs/design.md, "Restart").
	NoSupervisor bool `toml:"no_supervisor"`

	// onRemoteListen, if set, is told each remote API listener's address
	// (tests listen on port 0).
	onRemoteListen func(addr string)
	// sup is the supervisor of a worker (nil without one).
	sup *supervisor.Client
	// fdstore is the supervisor's descriptor store (nil without one).
	fdstore *supervisor.FDStore
}

// ContainerdConfig configures the link to containerd.
type ContainerdConfig struct {
	// TTRPCAddress is containerd's ttrpc socket (by default
	// /run/containerd/containerd.sock.ttrpc), where task events are
	// forwarded. Empty disables event forwarding.
	TTRPCAddress string `toml:"ttrpc_address"`
	// Handlers maps CRI runtime handler names to sandbox kinds. Handlers
	// named "magnetar-<kind>" need no entry.
	Handlers map[string]string `toml:"handlers"`
}

// BackendsConfig configures each sandbox kind.
type BackendsConfig struct {
	// Runc configures the "runc" kind.
	Runc RuncConfig `toml:"runc"`
	// Wasm configures the "wasm" kind.
	Wasm WasmConfig `toml:"wasm"`
	// VM configures the "vm" kind.
	VM VMConfig `toml:"vm"`
	// GVisor configures the "gvisor" kind.
	GVisor GVisorConfig `toml:"gvisor"`
}

// GVisorConfig configures the "gvisor" kind (gVisor's runsc).
type GVisorConfig struct {
	// Binary is the runsc binary. Default "runsc" from PATH.
	Binary string `toml:"binary"`
	// Root is runsc's state directory (runsc --root). Default RunDir/runsc.
	Root string `toml:"root"`
	// Platform is runsc's platform: kvm, systrap or ptrace. Empty (the
	// default) chooses: kvm where a bounded probe runs a sandbox on it,
	// else systrap where runsc has it, else ptrace.
	Platform string `toml:"platform"`
	// HostFiles runs sandboxes with --overlay2=none --file-access=shared,
	// so that Magnetar's file service reaches their containers' files
	// (see gvisor.Config.HostFiles). Default false.
	HostFiles bool `toml:"host_files"`
	// MemoryOverheadMiB is added to a pod's memory bound for gVisor's
	// sentry and gofers (see gvisor.Config.MemoryOverhead). Default 64; a
	// negative value adds nothing.
	MemoryOverheadMiB int64 `toml:"memory_overhead_mib"`
}

// DefaultGuestDir is where the vm kind looks for its guest image.
const DefaultGuestDir = "/usr/lib/magnetar/guest"

// VMConfig configures the "vm" kind (microVMs under QEMU).
type VMConfig struct {
	// GuestDir holds vmlinux and initramfs.cpio.gz ("make guest" builds
	// them into .tmp/guest). Default /usr/lib/magnetar/guest. The kind is
	// offered but unavailable when they are missing.
	GuestDir string `toml:"guest_dir"`
	// Kernel and Initrd override the files of GuestDir.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// QEMU is the qemu-system-x86_64 binary; default from PATH.
	QEMU string `toml:"qemu"`
	// VM sizing. A VM gets ceil(CPU quota / period) vCPUs and its memory
	// limit plus MemoryOverheadMiB from the pod's resources (CRI's
	// LinuxPodSandboxConfig.resources); VCPUs and MemoryMiB are used when
	// the pod sets no CPU quota or memory limit (0: 1 vCPU, 256 MiB).
	// MaxVCPUs bounds the vCPUs (0: the host's CPUs); MemoryOverheadMiB
	// defaults to 128.
	VCPUs             int `toml:"vcpus"`
	MemoryMiB         int `toml:"memory_mib"`
	MaxVCPUs          int `toml:"max_vcpus"`
	MemoryOverheadMiB int `toml:"memory_overhead_mib"`
	// BootTimeout bounds a VM's start up to a configured agent (default
	// 2m). A running VM's agent is pinged every HealthInterval (default
	// 10s), each ping bounded by HealthTimeout (default 30s); after
	// HealthFailures failed pings in a row (default 3) the VM is killed and
	// its pod reported exited.
	BootTimeout    Duration `toml:"boot_timeout"`
	HealthInterval Duration `toml:"health_interval"`
	HealthTimeout  Duration `toml:"health_timeout"`
	HealthFailures int      `toml:"health_failures"`
	// Pool keeps VMs booted ahead of their pods (off without classes): a
	// pod whose VM size is a class's adopts a ready one instead of
	// booting (see docs/design.md, "Warm VMs").
	Pool VMPoolConfig `toml:"pool"`
	// Template restores VMs from a saved VM instead of booting them (see
	// docs/design.md, "VM templates").
	Template VMTemplateConfig `toml:"template"`
	// TCGCacheMiB bounds QEMU's translation cache per VM under TCG
	// (tb-size; default 32, QEMU's own default is 1 GiB). Ignored under
	// KVM.
	TCGCacheMiB int `toml:"tcg_cache_mib"`
	// FreePageReporting gives each VM a balloon returning the memory the
	// guest frees to the host.
	FreePageReporting bool `toml:"free_page_reporting"`
}

// VMTemplateConfig configures the vm kind's templates.
type VMTemplateConfig struct {
	// Enabled builds a template per size (in the background at start) and
	// restores the VMs of those sizes from it.
	Enabled bool `toml:"enabled"`
	// Sizes given a template (empty: the default size and the pool's
	// classes); 0 fields take vcpus and memory_mib.
	Sizes []VMTemplateSize `toml:"sizes"`
}

// VMTemplateSize is a VM size given a template.
type VMTemplateSize struct {
	VCPUs     int `toml:"vcpus"`
	MemoryMiB int `toml:"memory_mib"`
}

// VMPoolConfig configures the vm kind's warm pool.
type VMPoolConfig struct {
	// Classes are the VM sizes kept warm.
	Classes []VMPoolClass `toml:"classes"`
	// MemoryBudgetMiB bounds the guest memory of the pooled VMs (0: the
	// sum of the classes' count × memory).
	MemoryBudgetMiB int `toml:"memory_budget_mib"`
	// RetryInterval is the wait after a failed boot (default 5s, doubled
	// on each further failure up to 5m).
	RetryInterval Duration `toml:"retry_interval"`
}

// VMPoolClass is one VM size kept warm: Count VMs of VCPUs and MemoryMiB
// (0: the vm kind's vcpus and memory_mib, the size of a pod that sets no
// resources).
type VMPoolClass struct {
	Count     int `toml:"count"`
	VCPUs     int `toml:"vcpus"`
	MemoryMiB int `toml:"memory_mib"`
}

// Duration is a time.Duration written as a Go duration string ("10s").
type Duration time.Duration

// UnmarshalText parses a duration string; it must not be negative.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %s must not be negative", b)
	}
	*d = Duration(v)
	return nil
}

// WasmConfig configures the "wasm" kind.
type WasmConfig struct {
	// Root holds the shared compilation cache and per-container files.
	// Default StateDir/wasm.
	Root string `toml:"root"`
	// DefaultMemoryLimit bounds a module's memory, in bytes, when its
	// container sets no limit. 0 means the backend's default.
	DefaultMemoryLimit uint64 `toml:"default_memory_limit"`
}

// RuncConfig configures the "runc" kind.
type RuncConfig struct {
	// Binary is the runc binary. Default "runc" from PATH.
	Binary string `toml:"binary"`
	// Root is runc's state directory (runc --root). Default RunDir/runc.
	Root string `toml:"root"`
}

// DefaultConfig returns the configuration used when there is no file.
func DefaultConfig() Config {
	c := Config{}
	c.applyDefaults()
	return c
}

// applyDefaults fills the fields left empty.
func (c *Config) applyDefaults() {
	if c.Version == 0 {
		c.Version = ConfigVersion
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}

	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if c.NetNSDirs == nil {
		c.NetNSDirs = engine.DefaultNetNSDirs
	}
}

// LoadConfig reads a config file. Fields it does not set keep their
// defaults; unknown fields are an error.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return ParseConfig(data)
}

// ParseConfig decodes a TOML config document and applies defaults. Unknown
// fields are an error.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			return Config{}, fmt.Errorf("config: %s: %w", strict.String(), errdefs.ErrInvalidArgument)
		}
		return Config{}, fmt.Errorf("config: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if c.Version != 0 && c.Version != ConfigVersion {
		return Config{}, fmt.Errorf("config version %d is not supported (want %d): %w", c.Version, ConfigVersion, errdefs.ErrInvalidArgument)
	}
	c.applyDefaults()
	return c, c.Validate()
}

// Validate checks a config with its defaults applied.
func (c Config) Validate() error {
	var errs []error
	if c.Version != ConfigVersion {
		errs = append(errs, fmt.Errorf("version must be %d, not %d", ConfigVersion, c.Version))
	}
	for name, p := range map[string]string{"state_dir": c.StateDir, "run_dir": c.RunDir, "listen": c.Listen} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q must be an absolute path", name, p))
		}
	}
	if len(c.Listen) > 107 {
		errs = append(errs, fmt.Errorf("listen %q is longer than a unix socket path may be (107 bytes)", c.Listen))
	}
	if api := c.apiSocket(); api != "" && (!filepath.IsAbs(api) || len(api) > 107) {
		errs = append(errs, fmt.Errorf("api_listen %q must be an absolute unix socket path of at most 107 bytes, or \"-\"", c.APIListen))
	}
	if c.APIOutputRingBytes != 0 && c.APIOutputRingBytes < 128<<10 {
		errs = append(errs, fmt.Errorf("api_output_ring_bytes %d must be at least %d (128 KiB), or 0 for the default", c.APIOutputRingBytes, 128<<10))
	}
	if c.APIMaxFileBytes < 0 {
		errs = append(errs, fmt.Errorf("api_max_file_bytes %d must not be negative (0: the default)", c.APIMaxFileBytes))
	}
	errs = append(errs, c.Remote.validate()...)
	switch c.DefaultNetworkMode {
	case "", "none", "bridge":
	default:
		errs = append(errs, fmt.Errorf("default_network_mode %q: want none or bridge", c.DefaultNetworkMode))
	}
	if err := network.CheckNetworks(c.Networks); err != nil {
		errs = append(errs, fmt.Errorf("networks: %w", err))
	}
	for _, d := range c.NetNSDirs {
		if !filepath.IsAbs(d) {
			errs = append(errs, fmt.Errorf("netns_dirs: %q must be an absolute path", d))
		}
	}
	if hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		errs = append(errs, fmt.Errorf("log_level %q is not one of trace, debug, info, warn, error", c.LogLevel))
	}
	vm := c.Backends.VM
	for name, v := range map[string]int{"vcpus": vm.VCPUs, "memory_mib": vm.MemoryMiB, "max_vcpus": vm.MaxVCPUs, "memory_overhead_mib": vm.MemoryOverheadMiB, "health_failures": vm.HealthFailures} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("backends.vm.%s %d must not be negative", name, v))
		}
	}
	if vm.Pool.MemoryBudgetMiB < 0 {
		errs = append(errs, fmt.Errorf("backends.vm.pool.memory_budget_mib %d must not be negative", vm.Pool.MemoryBudgetMiB))
	}
	for i, cl := range vm.Pool.Classes {
		if cl.Count < 0 || cl.VCPUs < 0 || cl.MemoryMiB < 0 {
			errs = append(errs, fmt.Errorf("backends.vm.pool.classes[%d]: count, vcpus and memory_mib must not be negative", i))
		}
	}
	for i, sz := range vm.Template.Sizes {
		if sz.VCPUs < 0 || sz.MemoryMiB < 0 {
			errs = append(errs, fmt.Errorf("backends.vm.template.sizes[%d]: vcpus and memory_mib must not be negative", i))
		}
	}
	if vm.TCGCacheMiB < 0 {
		errs = append(errs, fmt.Errorf("backends.vm.tcg_cache_mib %d must not be negative", vm.TCGCacheMiB))
	}
	switch c.Backends.GVisor.Platform {
	case "", "kvm", "systrap", "ptrace":
	default:
		errs = append(errs, fmt.Errorf("backends.gvisor.platform %q is not one of kvm, systrap, ptrace (or empty to choose)", c.Backends.GVisor.Platform))
	}
	for h, k := range c.Containerd.Handlers {
		if h == "" || k == "" {
			errs = append(errs, fmt.Errorf("containerd.handlers: %q = %q: handler and kind must not be empty", h, k))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("config: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// apiSocket is the socket of Magnetar's API, or "" when it is disabled.
func (c Config) apiSocket() string {
	switch c.APIListen {
	case "-":
		return ""
	case "":
		return filepath.Join(c.RunDir, "api.sock")
	}
	return c.APIListen
}
