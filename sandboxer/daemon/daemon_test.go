package daemon

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cg1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cg2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	eventsapi "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"github.com/hashicorp/go-hclog"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
)

// testConfig is a config with every path in a fresh temp dir.
func testConfig(t *testing.T) Config {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.RunDir = filepath.Join(dir, "run")
	cfg.Listen = filepath.Join(dir, "run", "sandboxer.sock")
	cfg.LogLevel = "debug"
	cfg.NetNSDirs = []string{filepath.Join(dir, "netns")}
	return cfg
}

// startDaemon runs the daemon with backends until the test ends (or the
// returned stop is called) and returns a Controller client.
func startDaemon(t *testing.T, cfg Config, backends ...backend.Backend) (sandboxapi.ControllerClient, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: testWriter{t}})
	go func() { done <- run(ctx, cfg, log, backends) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("daemon did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return dialDaemon(t, cfg, done), stop
}

// dialDaemon waits until the daemon's socket accepts connections (failing
// the test if the daemon exits first) and returns a client.
func dialDaemon(t *testing.T, cfg Config, done <-chan error) sandboxapi.ControllerClient {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool {
		if c, err := net.Dial("unix", cfg.Listen); err == nil {
			c.Close()
			return true
		}
		select {
		case err := <-done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		return false
	}, "daemon socket never came up")
	return clientFor(t, cfg)
}

// clientFor checks the daemon's socket and connects to it as containerd's
// proxy plugin does.
func clientFor(t *testing.T, cfg Config) sandboxapi.ControllerClient {
	t.Helper()
	fi, err := os.Stat(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("controller socket mode %o, want 600", perm)
	}
	conn, err := grpc.NewClient("unix://"+cfg.Listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sandboxapi.NewControllerClient(conn)
}

// testWriter routes daemon logs into the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// k8sCtx is a call context in containerd's "k8s.io" namespace, as CRI's
// calls arrive.
func k8sCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", "k8s.io")
}

// createRequest is a Create request like CRI's: PodSandboxConfig options
// and the metadata extension naming the runtime handler.
func createRequest(t *testing.T, id, handler string, pod *runtimeapi.PodSandboxConfig) *sandboxapi.ControllerCreateRequest {
	t.Helper()
	opts, err := anypb.New(pod)
	if err != nil {
		t.Fatal(err)
	}
	md, err := json.Marshal(map[string]any{"Version": "v1", "Metadata": map[string]any{"ID": id, "Name": "pod", "RuntimeHandler": handler}})
	if err != nil {
		t.Fatal(err)
	}
	return &sandboxapi.ControllerCreateRequest{
		SandboxID: id,
		Options:   &anypb.Any{TypeUrl: "runtime.v1.PodSandboxConfig", Value: opts.GetValue()},
		Sandbox: &types.Sandbox{
			SandboxID:  id,
			Labels:     map[string]string{"name": "pod_ns_uid_0"},
			Extensions: map[string]*anypb.Any{"metadata": {TypeUrl: "github.com/containerd/cri/pkg/store/sandbox/Metadata", Value: md}},
		},
		Sandboxer: "magnetar",
	}
}

func testPod() *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: "pod", Namespace: "ns", Uid: "uid"},
		Hostname:    "pod-a",
		DnsConfig:   &runtimeapi.DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc.cluster.local"}, Options: []string{"ndots:5"}},
		Labels:      map[string]string{"app": "web"},
		Annotations: map[string]string{"note": "x"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/pod-uid",
			Resources:    &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 64 << 20, CpuShares: 512},
		},
	}
}

// dialTask connects to a Task API address as containerd does.
func dialTask(t *testing.T, address string) taskapi.TTRPCTaskService {
	t.Helper()
	path, ok := strings.CutPrefix(address, "ttrpc+unix://")
	if !ok {
		t.Fatalf("task address %q is not ttrpc+unix://", address)
	}
	if len(path) > 107 {
		t.Fatalf("task socket path is %d bytes long", len(path))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("task socket mode %o, want 600", perm)
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return taskapi.NewTTRPCTaskClient(c)
}

// writeBundle writes an OCI bundle with a minimal config.json.
func writeBundle(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	spec := specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"sleep", "1000"}, Cwd: "/"}, Root: &specs.Root{Path: "rootfs"}}
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, code)
	}
}

func TestControllerRoundTrip(t *testing.T) {
	fb := backendfake.New(backendfake.Config{})
	cfg := testConfig(t)
	netns := testutil.NetNS(t, cfg.NetNSDirs[0], "cni-test")
	client, _ := startDaemon(t, cfg, fb)
	ctx := k8sCtx(t)
	const id = "0123456789abcdef"

	req := createRequest(t, id, "magnetar-fake", testPod())
	req.NetnsPath = netns
	if _, err := client.Create(ctx, req); err != nil {
		t.Fatalf("Create: %v", err)
	}
	created := fb.Created()
	if len(created) == 0 {
		t.Fatal("no sandbox was created")
	}
	got := created[len(created)-1]
	if got.Namespace != "k8s.io" || got.Hostname != "pod-a" || got.NetNSPath != netns || got.CgroupParent != "/kubepods/pod-uid" {
		t.Errorf("sandbox config: %+v", got)
	}
	if len(got.DNS.Servers) != 1 || got.DNS.Servers[0] != "10.0.0.10" || got.DNS.Options[0] != "ndots:5" {
		t.Errorf("DNS: %+v", got.DNS)
	}
	if got.Labels["app"] != "web" || got.Labels["name"] != "pod_ns_uid_0" || got.Annotations["note"] != "x" {
		t.Errorf("labels %v annotations %v", got.Labels, got.Annotations)
	}
	if got.Resources == nil || got.Resources.Memory == nil || *got.Resources.Memory.Limit != 64<<20 || *got.Resources.CPU.Shares != 512 {
		t.Errorf("resources: %+v", got.Resources)
	}

	st, err := client.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetState() != "SANDBOX_NOTREADY" || st.GetAddress() != "" {
		t.Errorf("status before start: state %s address %q", st.GetState(), st.GetAddress())
	}

	start, err := client.Start(ctx, &sandboxapi.ControllerStartRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if start.GetVersion() != 3 || start.GetPid() != backendfake.SandboxPid || start.GetLabels()["name"] != "pod_ns_uid_0" || start.GetCreatedAt() == nil {
		t.Errorf("start response: %v", start)
	}

	// The address serves the Task API.
	tc := dialTask(t, start.GetAddress())
	conn, err := tc.Connect(ctx, &taskapi.ConnectRequest{ID: id})
	if err != nil {
		t.Fatalf("Task.Connect: %v", err)
	}
	if conn.GetShimPid() != uint32(os.Getpid()) {
		t.Errorf("shim pid %d, want %d", conn.GetShimPid(), os.Getpid())
	}

	st, err = client.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetState() != "SANDBOX_READY" || st.GetAddress() != start.GetAddress() || st.GetVersion() != 3 || st.GetPid() != backendfake.SandboxPid {
		t.Errorf("status: %v", st)
	}
	if st.GetInfo()["magnetar.kind"] != "fake" || st.GetInfo()["fake.started"] != "yes" {
		t.Errorf("status info: %v", st.GetInfo())
	}
	var info struct {
		Pid uint32 `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid != backendfake.SandboxPid {
		t.Errorf("verbose info %q: %v", st.GetInfo()["info"], err)
	}

	plat, err := client.Platform(ctx, &sandboxapi.ControllerPlatformRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	if plat.GetPlatform().GetOS() != goruntime.GOOS || plat.GetPlatform().GetArchitecture() != goruntime.GOARCH {
		t.Errorf("platform: %v", plat.GetPlatform())
	}

	m, err := client.Metrics(ctx, &sandboxapi.ControllerMetricsRequest{SandboxID: id})
	if err != nil {
		t.Fatalf("Metrics: %v", err)
	}
	data, err := typeurl.UnmarshalAny(m.GetMetrics().GetData())
	if err != nil {
		t.Fatalf("decode metrics: %v", err)
	}
	switch data.(type) {
	case *cg1.Metrics, *cg2.Metrics:
	default:
		t.Errorf("metrics data is %T, want cgroups Metrics", data)
	}

	if _, err := client.Update(ctx, &sandboxapi.ControllerUpdateRequest{SandboxID: id, Fields: []string{"labels"}, Sandbox: &types.Sandbox{SandboxID: id}}); err != nil {
		t.Errorf("Update: %v", err)
	}

	// Wait blocks until Stop.
	waited := make(chan *sandboxapi.ControllerWaitResponse, 1)
	go func() {
		resp, err := client.Wait(ctx, &sandboxapi.ControllerWaitRequest{SandboxID: id})
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		waited <- resp
	}()
	select {
	case <-waited:
		t.Fatal("Wait returned before Stop")
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := client.Stop(ctx, &sandboxapi.ControllerStopRequest{SandboxID: id, TimeoutSecs: 1}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case resp := <-waited:
		if resp.GetExitedAt() == nil {
			t.Errorf("wait response without exited_at: %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after Stop")
	}
	st, err = client.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetState() != "SANDBOX_NOTREADY" || st.GetExitedAt() == nil {
		t.Errorf("status after stop: %v", st)
	}

	socket := strings.TrimPrefix(start.GetAddress(), "ttrpc+unix://")
	if _, err := client.Shutdown(ctx, &sandboxapi.ControllerShutdownRequest{SandboxID: id}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("task socket still there after Shutdown: %v", err)
	}
	_, err = client.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: id})
	wantCode(t, "Status after Shutdown", err, codes.NotFound)
	_, err = client.Shutdown(ctx, &sandboxapi.ControllerShutdownRequest{SandboxID: id})
	wantCode(t, "second Shutdown", err, codes.NotFound)
}

func TestTaskLifecycle(t *testing.T) {
	fb := backendfake.New(backendfake.Config{})
	client, _ := startDaemon(t, testConfig(t), fb)
	ctx := k8sCtx(t)
	const id = "sb-task"
	if _, err := client.Create(ctx, createRequest(t, id, "magnetar-fake", testPod())); err != nil {
		t.Fatal(err)
	}
	start, err := client.Start(ctx, &sandboxapi.ControllerStartRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	tc := dialTask(t, start.GetAddress())
	bundle := writeBundle(t)
	stdout := filepath.Join(t.TempDir(), "stdout")

	_, err = tc.Create(ctx, &taskapi.CreateTaskRequest{ID: "ctr1", Bundle: bundle, Stdout: stdout,
		Rootfs: []*types.Mount{{Type: "bind", Source: "/", Options: []string{"rbind", "ro"}}}})
	if err != nil {
		t.Fatalf("Task.Create: %v", err)
	}
	_, err = tc.Create(ctx, &taskapi.CreateTaskRequest{ID: "ctr1", Bundle: bundle})
	wantCode(t, "duplicate Task.Create", err, codes.AlreadyExists)
	_, err = tc.Create(ctx, &taskapi.CreateTaskRequest{ID: "ctr2", Bundle: t.TempDir()})
	wantCode(t, "Task.Create without config.json", err, codes.InvalidArgument)

	state, err := tc.State(ctx, &taskapi.StateRequest{ID: "ctr1"})
	if err != nil {
		t.Fatal(err)
	}
	if state.GetStatus() != task.Status_CREATED || state.GetBundle() != bundle || state.GetStdout() != stdout {
		t.Errorf("state after create: %v", state)
	}

	started, err := tc.Start(ctx, &taskapi.StartRequest{ID: "ctr1"})
	if err != nil {
		t.Fatalf("Task.Start: %v", err)
	}
	if started.GetPid() == 0 {
		t.Error("Task.Start returned pid 0")
	}
	state, err = tc.State(ctx, &taskapi.StateRequest{ID: "ctr1"})
	if err != nil {
		t.Fatal(err)
	}
	if state.GetStatus() != task.Status_RUNNING || state.GetPid() != started.GetPid() {
		t.Errorf("state after start: %v", state)
	}
	pids, err := tc.Pids(ctx, &taskapi.PidsRequest{ID: "ctr1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pids.GetProcesses()) != 1 || pids.GetProcesses()[0].GetPid() != started.GetPid() {
		t.Errorf("pids: %v", pids.GetProcesses())
	}

	waited := make(chan *taskapi.WaitResponse, 1)
	go func() {
		resp, err := tc.Wait(ctx, &taskapi.WaitRequest{ID: "ctr1"})
		if err != nil {
			t.Errorf("Task.Wait: %v", err)
		}
		waited <- resp
	}()
	if _, err := tc.Kill(ctx, &taskapi.KillRequest{ID: "ctr1", Signal: uint32(syscall.SIGTERM)}); err != nil {
		t.Fatalf("Task.Kill: %v", err)
	}
	select {
	case resp := <-waited:
		if resp.GetExitStatus() != 128+uint32(syscall.SIGTERM) {
			t.Errorf("exit status %d", resp.GetExitStatus())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Task.Wait did not return")
	}
	state, err = tc.State(ctx, &taskapi.StateRequest{ID: "ctr1"})
	if err != nil {
		t.Fatal(err)
	}
	if state.GetStatus() != task.Status_STOPPED || state.GetExitStatus() != 143 {
		t.Errorf("state after exit: %v", state)
	}
	// containerd sends Shutdown after every Delete: it must not end anything.
	del, err := tc.Delete(ctx, &taskapi.DeleteRequest{ID: "ctr1"})
	if err != nil {
		t.Fatalf("Task.Delete: %v", err)
	}
	if del.GetExitStatus() != 143 || del.GetPid() != started.GetPid() {
		t.Errorf("delete response: %v", del)
	}
	if _, err := tc.Shutdown(ctx, &taskapi.ShutdownRequest{ID: "ctr1"}); err != nil {
		t.Errorf("Task.Shutdown: %v", err)
	}
	_, err = tc.State(ctx, &taskapi.StateRequest{ID: "ctr1"})
	wantCode(t, "State after Delete", err, codes.NotFound)
	_, err = tc.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: "ctr1"})
	wantCode(t, "Checkpoint", err, codes.Unimplemented)
	if _, err := tc.Connect(ctx, &taskapi.ConnectRequest{ID: "ctr1"}); err != nil {
		t.Errorf("Task.Connect after Shutdown: %v", err)
	}
}

func TestControllerBadInput(t *testing.T) {
	client, _ := startDaemon(t, testConfig(t), backendfake.New(backendfake.Config{}))
	ctx := k8sCtx(t)

	_, err := client.Create(ctx, createRequest(t, "../x", "magnetar-fake", testPod()))
	wantCode(t, "path-like ID", err, codes.InvalidArgument)
	_, err = client.Create(ctx, createRequest(t, "", "magnetar-fake", testPod()))
	wantCode(t, "empty ID", err, codes.InvalidArgument)

	if _, err := client.Create(ctx, createRequest(t, "dup", "magnetar-fake", testPod())); err != nil {
		t.Fatal(err)
	}
	_, err = client.Create(ctx, createRequest(t, "dup", "magnetar-fake", testPod()))
	wantCode(t, "duplicate", err, codes.AlreadyExists)

	_, err = client.Create(ctx, createRequest(t, "unknown-kind", "magnetar-nope", testPod()))
	wantCode(t, "unknown kind", err, codes.InvalidArgument)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, `"nope"`) || !strings.Contains(msg, "magnetar-nope") {
		t.Errorf("unknown kind message does not say which: %q", msg)
	}
	_, err = client.Create(ctx, createRequest(t, "no-kind", "", testPod()))
	wantCode(t, "no kind", err, codes.InvalidArgument)

	req := createRequest(t, "bad-options", "magnetar-fake", testPod())
	req.Options.Value = []byte{0xff, 0xff, 0xff}
	_, err = client.Create(ctx, req)
	wantCode(t, "undecodable options", err, codes.InvalidArgument)

	req = createRequest(t, "bad-metadata", "magnetar-fake", testPod())
	req.Sandbox.Extensions["metadata"].Value = []byte("{not json")
	_, err = client.Create(ctx, req)
	wantCode(t, "undecodable metadata", err, codes.InvalidArgument)

	req = createRequest(t, "bad-netns", "magnetar-fake", testPod())
	req.NetnsPath = "relative/netns"
	_, err = client.Create(ctx, req)
	wantCode(t, "relative netns path", err, codes.InvalidArgument)

	req = createRequest(t, "huge", "magnetar-fake", testPod())
	req.Annotations = map[string]string{"big": strings.Repeat("x", MaxMessageSize+1)}
	_, err = client.Create(ctx, req)
	wantCode(t, "oversized request", err, codes.ResourceExhausted)

	_, err = client.Start(ctx, &sandboxapi.ControllerStartRequest{SandboxID: "missing"})
	wantCode(t, "Start unknown", err, codes.NotFound)
	_, err = client.Wait(ctx, &sandboxapi.ControllerWaitRequest{SandboxID: "missing"})
	wantCode(t, "Wait unknown", err, codes.NotFound)
	_, err = client.Metrics(ctx, &sandboxapi.ControllerMetricsRequest{SandboxID: "../etc"})
	wantCode(t, "Metrics path-like ID", err, codes.InvalidArgument)

	// Falling back to the annotation, then to the default kind.
	pod := testPod()
	pod.Annotations["magnetar.io/kind"] = "fake"
	if _, err := client.Create(ctx, createRequest(t, "by-annotation", "", pod)); err != nil {
		t.Errorf("kind from annotation: %v", err)
	}
}

func TestDefaultKindAndHandlerMap(t *testing.T) {
	cfg := testConfig(t)
	cfg.DefaultKind = "fake"
	cfg.Containerd.Handlers = map[string]string{"gold": "fake"}
	client, _ := startDaemon(t, cfg, backendfake.New(backendfake.Config{}))
	ctx := k8sCtx(t)
	for _, h := range []string{"", "gold", "unmapped"} {
		if _, err := client.Create(ctx, createRequest(t, "sb-"+h+"x", h, testPod())); err != nil {
			t.Errorf("handler %q: %v", h, err)
		}
	}
}

// fakeEvents is containerd's ttrpc events service, recording envelopes.
type fakeEvents struct{ got chan *types.Envelope }

func (f *fakeEvents) Forward(_ context.Context, req *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	f.got <- req.GetEnvelope()
	return &emptypb.Empty{}, nil
}

func serveFakeEvents(t *testing.T) (string, *fakeEvents) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctrd.ttrpc")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	fe := &fakeEvents{got: make(chan *types.Envelope, 100)}
	ttrpcevents.RegisterTTRPCEventsService(srv, fe)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(context.Background(), l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return path, fe
}

func TestEventForwarding(t *testing.T) {
	addr, events := serveFakeEvents(t)
	cfg := testConfig(t)
	cfg.Containerd.TTRPCAddress = "unix://" + addr
	client, _ := startDaemon(t, cfg, backendfake.New(backendfake.Config{}))
	ctx := k8sCtx(t)
	const id = "sb-events"
	if _, err := client.Create(ctx, createRequest(t, id, "magnetar-fake", testPod())); err != nil {
		t.Fatal(err)
	}
	start, err := client.Start(ctx, &sandboxapi.ControllerStartRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	tc := dialTask(t, start.GetAddress())
	if _, err := tc.Create(ctx, &taskapi.CreateTaskRequest{ID: "ctr-ev", Bundle: writeBundle(t)}); err != nil {
		t.Fatal(err)
	}
	started, err := tc.Start(ctx, &taskapi.StartRequest{ID: "ctr-ev"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Kill(ctx, &taskapi.KillRequest{ID: "ctr-ev", Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatal(err)
	}

	var topics []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case env := <-events.got:
			topics = append(topics, env.GetTopic())
			if env.GetNamespace() != "k8s.io" {
				t.Errorf("event %s in namespace %q, want k8s.io", env.GetTopic(), env.GetNamespace())
			}
			if env.GetTopic() != "/tasks/exit" {
				continue
			}
			var exit eventsapi.TaskExit
			if err := proto.Unmarshal(env.GetEvent().GetValue(), &exit); err != nil || env.GetEvent().GetTypeUrl() != "containerd.events.TaskExit" {
				t.Fatalf("exit event %s: %v", env.GetEvent().GetTypeUrl(), err)
			}
			if exit.GetContainerID() != "ctr-ev" || exit.GetID() != "ctr-ev" || exit.GetExitStatus() != 137 || exit.GetPid() != started.GetPid() {
				t.Errorf("TaskExit: %v", &exit)
			}
			if want := []string{"/tasks/create", "/tasks/start", "/tasks/exit"}; strings.Join(topics, " ") != strings.Join(want, " ") {
				t.Errorf("topics %v, want %v", topics, want)
			}
			return
		case <-timeout:
			t.Fatalf("no /tasks/exit event; got %v", topics)
		}
	}
}

func TestRestartKeepsTaskAddress(t *testing.T) {
	cfg := testConfig(t)
	client, stop := startDaemon(t, cfg, backendfake.New(backendfake.Config{}))
	ctx := k8sCtx(t)
	const id = "sb-restart"
	if _, err := client.Create(ctx, createRequest(t, id, "magnetar-fake", testPod())); err != nil {
		t.Fatal(err)
	}
	start, err := client.Start(ctx, &sandboxapi.ControllerStartRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	// A Wait blocked across the stop returns Unavailable, which containerd
	// retries against the next daemon.
	waitErr := make(chan error, 1)
	go func() {
		_, err := client.Wait(ctx, &sandboxapi.ControllerWaitRequest{SandboxID: id})
		waitErr <- err
	}()
	// No signal says the Wait reached the daemon: give it the time to.
	time.Sleep(100 * time.Millisecond)
	stop()
	select {
	case err := <-waitErr:
		wantCode(t, "Wait across a daemon stop", err, codes.Unavailable)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return when the daemon stopped")
	}

	fb := backendfake.New(backendfake.Config{})
	client, _ = startDaemon(t, cfg, fb)
	st, err := client.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: id})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetState() != "SANDBOX_READY" || st.GetAddress() != start.GetAddress() {
		t.Errorf("after restart: state %s address %q, want READY at %q", st.GetState(), st.GetAddress(), start.GetAddress())
	}
	if rec := fb.Recovered(); len(rec) != 1 || rec[0] != id {
		t.Errorf("recovered %v", rec)
	}
	if _, err := dialTask(t, st.GetAddress()).Connect(ctx, &taskapi.ConnectRequest{}); err != nil {
		t.Errorf("Task.Connect after restart: %v", err)
	}
}
