package direct

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

func ptr[T any](v T) *T { return &v }

var testSandbox = engine.SandboxStatus{ID: "sb", Namespace: Namespace, Pid: 42}

func TestBuildSpecFromRootfs(t *testing.T) {
	req := &ContainerRequest{
		RootfsPath: "/srv/rootfs",
		Process: Process{
			Args: []string{"sh", "-c", "true"}, Env: []string{"A=1"}, Cwd: "/work",
			User: &User{UID: 5, GID: 6, AdditionalGids: []uint32{7}}, Terminal: true, ConsoleSize: &ConsoleSize{Width: 80, Height: 24},
		},
		Mounts: []Mount{
			{Source: "/data", Destination: "/data"},
			{Source: "/ro", Destination: "/ro", Readonly: true},
			{Source: "tmpfs", Destination: "/tmp", Type: "tmpfs", Options: []string{"size=1m"}},
		},
		Resources:      &Resources{MemoryLimit: ptr[int64](1 << 20), PidsLimit: ptr[int64](10)},
		ReadonlyRootfs: true,
	}
	spec, err := buildSpec(context.Background(), testSandbox, false, "", "c1", req, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Root.Path != "/srv/rootfs" || !spec.Root.Readonly {
		t.Errorf("root = %+v", spec.Root)
	}
	p := spec.Process
	if !slices.Equal(p.Args, req.Process.Args) || p.Cwd != "/work" || !p.Terminal || p.ConsoleSize.Width != 80 || p.ConsoleSize.Height != 24 {
		t.Errorf("process = %+v", p)
	}
	if p.User.UID != 5 || p.User.GID != 6 || !slices.Equal(p.User.AdditionalGids, []uint32{7}) {
		t.Errorf("user = %+v", p.User)
	}
	if !slices.Contains(p.Env, "A=1") || !slices.ContainsFunc(p.Env, func(e string) bool { return len(e) > 5 && e[:5] == "PATH=" }) {
		t.Errorf("env = %v", p.Env)
	}
	if spec.Linux.CgroupsPath != "/magnetar/c1" {
		t.Errorf("cgroups path = %q", spec.Linux.CgroupsPath)
	}
	if r := spec.Linux.Resources; r == nil || *r.Memory.Limit != 1<<20 || *r.Pids.Limit != 10 {
		t.Errorf("resources = %+v", r)
	}
	nsPaths := map[specs.LinuxNamespaceType]string{}
	for _, ns := range spec.Linux.Namespaces {
		nsPaths[ns.Type] = ns.Path
	}
	for typ, want := range map[specs.LinuxNamespaceType]string{
		specs.NetworkNamespace: "/proc/42/ns/net", specs.IPCNamespace: "/proc/42/ns/ipc", specs.UTSNamespace: "/proc/42/ns/uts", specs.MountNamespace: "",
	} {
		if got, ok := nsPaths[typ]; !ok || got != want {
			t.Errorf("namespace %s: %q (present %v), want %q", typ, got, ok, want)
		}
	}
	mounts := map[string]specs.Mount{}
	for _, m := range spec.Mounts {
		mounts[m.Destination] = m
	}
	if m := mounts["/data"]; m.Type != "bind" || !slices.Equal(m.Options, []string{"rbind"}) {
		t.Errorf("/data = %+v", m)
	}
	if m := mounts["/ro"]; m.Type != "bind" || !slices.Equal(m.Options, []string{"rbind", "ro"}) {
		t.Errorf("/ro = %+v", m)
	}
	if m := mounts["/tmp"]; m.Type != "tmpfs" || !slices.Equal(m.Options, []string{"size=1m"}) {
		t.Errorf("/tmp = %+v", m)
	}
}

func TestBuildSpecHostNetwork(t *testing.T) {
	req := &ContainerRequest{RootfsPath: "/srv/rootfs", Process: Process{Args: []string{"true"}}}
	spec, err := buildSpec(context.Background(), testSandbox, true, "/pods/p1", "c1", req, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace || ns.Type == specs.UTSNamespace {
			t.Errorf("host network: %s namespace %+v", ns.Type, ns)
		}
	}
	if spec.Linux.CgroupsPath != "/pods/p1/c1" {
		t.Errorf("cgroups path = %q", spec.Linux.CgroupsPath)
	}
}

func TestBuildSpecFromImage(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("daemon:x:1:1::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := &imageRootfs{dir: root, config: image.Config{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"A=image", "B=image"},
		WorkingDir: "etc", User: "daemon",
	}}
	for _, tc := range []struct {
		name    string
		proc    Process
		args    []string
		cwd     string
		env     []string
		uid     uint32
		noEnv   string
		rootfs  string
		imgName string
	}{
		{name: "image defaults", args: []string{"/bin/sh", "-c", "echo hi"}, cwd: "/etc", env: []string{"A=image", "B=image"}, uid: 1},
		{
			name: "args replace cmd", proc: Process{Args: []string{"ls"}, Env: []string{"B=request"}, Cwd: "/tmp", User: &User{UID: 9}},
			args: []string{"/bin/sh", "-c", "ls"}, cwd: "/tmp", env: []string{"A=image", "B=request"}, noEnv: "B=image", uid: 9,
		},
		{name: "entrypoint drops cmd", proc: Process{Entrypoint: []string{"echo"}}, args: []string{"echo"}, cwd: "/etc", uid: 1},
	} {
		spec, err := buildSpec(context.Background(), testSandbox, false, "", "c1", &ContainerRequest{Image: "x:1", Process: tc.proc}, img, true)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		p := spec.Process
		if !slices.Equal(p.Args, tc.args) || p.Cwd != tc.cwd || p.User.UID != tc.uid || spec.Root.Path != "rootfs" {
			t.Errorf("%s: args %q cwd %q uid %d root %q", tc.name, p.Args, p.Cwd, p.User.UID, spec.Root.Path)
		}
		for _, e := range tc.env {
			if !slices.Contains(p.Env, e) {
				t.Errorf("%s: env %v lacks %s", tc.name, p.Env, e)
			}
		}
		if tc.noEnv != "" && slices.Contains(p.Env, tc.noEnv) {
			t.Errorf("%s: env %v has %s", tc.name, p.Env, tc.noEnv)
		}
	}

	// A whole spec keeps its process; the root is the image's overlay.
	spec, err := buildSpec(context.Background(), testSandbox, false, "", "c1", &ContainerRequest{
		Image: "x:1", ReadonlyRootfs: true, OCISpecJSON: []byte(`{"process":{"args":["own"]},"root":{"path":"/elsewhere"}}`),
	}, img, true)
	if err != nil || spec.Process.Args[0] != "own" || spec.Root.Path != "rootfs" || !spec.Root.Readonly {
		t.Errorf("oci spec from an image: %+v, %v", spec, err)
	}
}

func TestBuildSpecErrors(t *testing.T) {
	noCmd := &imageRootfs{dir: t.TempDir()}
	for _, tc := range []struct {
		name string
		req  ContainerRequest
		img  *imageRootfs
		want func(error) bool
	}{
		{"no args", ContainerRequest{RootfsPath: "/r"}, nil, errdefs.IsInvalidArgument},
		{"image without a command", ContainerRequest{Image: "x:1"}, noCmd, errdefs.IsInvalidArgument},
		{"unresolved image", ContainerRequest{Image: "x:1", Process: Process{Args: []string{"true"}}}, nil, errdefs.IsFailedPrecondition},
		{"no root", ContainerRequest{Process: Process{Args: []string{"true"}}}, nil, errdefs.IsInvalidArgument},
		{"relative root", ContainerRequest{RootfsPath: "r", Process: Process{Args: []string{"true"}}}, nil, errdefs.IsInvalidArgument},
		{"unclean root", ContainerRequest{RootfsPath: "/r/../s", Process: Process{Args: []string{"true"}}}, nil, errdefs.IsInvalidArgument},
		{"relative mount", ContainerRequest{RootfsPath: "/r", Process: Process{Args: []string{"true"}}, Mounts: []Mount{{Destination: "d"}}}, nil, errdefs.IsInvalidArgument},
		{"bad spec", ContainerRequest{OCISpecJSON: []byte("{")}, nil, errdefs.IsInvalidArgument},
	} {
		if _, err := buildSpec(context.Background(), testSandbox, false, "", "c1", &tc.req, tc.img, true); !tc.want(err) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func TestMergeResources(t *testing.T) {
	if got := mergeResources(nil, nil); got != nil {
		t.Errorf("nil resources = %+v, want nil", got)
	}
	if got := mergeResources(nil, &Resources{}); got == nil || got.CPU != nil || got.Memory != nil || got.Pids != nil {
		t.Errorf("empty resources = %+v, want an empty LinuxResources", got)
	}
	base := &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: ptr[uint64](2)}, Memory: &specs.LinuxMemory{Limit: ptr[int64](5)}}
	got := mergeResources(base, &Resources{CPUQuota: ptr[int64](50000), CpusetCPUs: ptr("0-1"), MemorySwapLimit: ptr[int64](-1)})
	if *got.CPU.Shares != 2 || *got.CPU.Quota != 50000 || got.CPU.Cpus != "0-1" || *got.Memory.Limit != 5 || *got.Memory.Swap != -1 || got.Pids != nil {
		t.Errorf("merged = %+v %+v %+v", got.CPU, got.Memory, got.Pids)
	}
}
