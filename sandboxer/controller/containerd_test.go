package controller

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	ttrpcevents "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

func TestResolveKind(t *testing.T) {
	r := kindResolver{handlers: map[string]string{"gold": "firecracker"}, defaultKind: "runc"}
	for _, tc := range []struct {
		handler, annotation, want string
	}{
		{"magnetar-wasm", "", "wasm"},
		{"magnetar-runc-streaming", "", "runc"},
		{"magnetar--streaming", "", "-streaming"},
		{"gold", "", "firecracker"},
		{"magnetar-wasm", "gvisor", "wasm"}, // the handler wins
		{"", "gvisor", "gvisor"},
		{"other", "gvisor", "gvisor"}, // not ours by name: annotation
		{"other", "", "runc"},
		{"magnetar", "", "runc"},
	} {
		ann := map[string]string{}
		if tc.annotation != "" {
			ann[KindAnnotation] = tc.annotation
		}
		got, _, err := r.resolve(tc.handler, ann)
		if err != nil || got != tc.want {
			t.Errorf("resolve(%q, %q) = %q, %v; want %q", tc.handler, tc.annotation, got, err, tc.want)
		}
	}
	if _, _, err := (kindResolver{}).resolve("other", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("no kind: %v, want InvalidArgument", err)
	}
}

func TestSandboxSpecHostNetwork(t *testing.T) {
	pod := &runtimeapi.PodSandboxConfig{
		Hostname: "node-pod",
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	opts, err := anypb.New(pod)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := json.Marshal(map[string]any{"Version": "v1", "Metadata": map[string]any{"RuntimeHandler": "magnetar-runc"}})
	req := &sandboxapi.ControllerCreateRequest{
		SandboxID: "hostnet",
		Options:   &anypb.Any{TypeUrl: podSandboxConfigType, Value: opts.GetValue()},
		Sandbox:   &types.Sandbox{Extensions: map[string]*anypb.Any{"metadata": {Value: md}}},
	}
	spec, _, err := kindResolver{}.sandboxSpec(req, "k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Hostname != "" || spec.Kind != "runc" || spec.Namespace != "k8s.io" || spec.NetNSPath != "" || spec.PrivateNetwork {
		t.Errorf("host network spec: %+v", spec)
	}

	// A pod network without a netns from CRI stays off the host's network.
	pod.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_POD
	if opts, err = anypb.New(pod); err != nil {
		t.Fatal(err)
	}
	req.Options.Value = opts.GetValue()
	spec, _, err = kindResolver{}.sandboxSpec(req, "k8s.io")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Hostname != "node-pod" || !spec.PrivateNetwork {
		t.Errorf("pod network without netns: %+v", spec)
	}

	// Options of another type are ignored.
	req.Options = &anypb.Any{TypeUrl: "example.com/Other", Value: []byte{1, 2, 3}}
	if _, _, err := (kindResolver{}).sandboxSpec(req, "k8s.io"); err != nil {
		t.Errorf("foreign options: %v", err)
	}
}

func TestLinuxResources(t *testing.T) {
	if linuxResources(nil) != nil || linuxResources(&runtimeapi.LinuxContainerResources{}) != nil {
		t.Error("empty resources should convert to nil")
	}
	r := linuxResources(&runtimeapi.LinuxContainerResources{
		CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 256, CpusetCpus: "0-1",
		MemoryLimitInBytes: 1 << 30, MemorySwapLimitInBytes: 2 << 30,
		HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 1 << 21}},
		Unified:        map[string]string{"memory.high": "max"},
	})
	if *r.CPU.Period != 100000 || *r.CPU.Quota != 50000 || *r.CPU.Shares != 256 || r.CPU.Cpus != "0-1" ||
		*r.Memory.Limit != 1<<30 || *r.Memory.Swap != 2<<30 || r.HugepageLimits[0].Pagesize != "2MB" || r.Unified["memory.high"] != "max" {
		t.Errorf("resources: %+v", r)
	}
}

func TestTaskSocketPath(t *testing.T) {
	id := strings.Repeat("a", 128)
	p := TaskSocketPath("/run/magnetar", id)
	if len(p) > 64 || filepath.Dir(p) != "/run/magnetar/t" || !strings.HasSuffix(p, ".sock") {
		t.Errorf("socket path %q", p)
	}
	if p != TaskSocketPath("/run/magnetar", id) || p == TaskSocketPath("/run/magnetar", id+"b") {
		t.Error("socket path is not a stable function of the ID")
	}
}

func TestEnvelope(t *testing.T) {
	exited := time.Unix(1700000000, 0).UTC()
	env, err := envelope(engine.Event{Topic: engine.TopicTaskExit, Namespace: "k8s.io", SandboxID: "sb", ContainerID: "c", Pid: 7, ExitCode: 1, ExitedAt: exited})
	if err != nil {
		t.Fatal(err)
	}
	var exit eventsapi.TaskExit
	if err := proto.Unmarshal(env.GetEvent().GetValue(), &exit); err != nil {
		t.Fatal(err)
	}
	if env.GetTopic() != "/tasks/exit" || env.GetNamespace() != "k8s.io" || exit.GetID() != "c" || exit.GetPid() != 7 || !exit.GetExitedAt().AsTime().Equal(exited) {
		t.Errorf("envelope %v, exit %v", env, &exit)
	}
	for _, ev := range []engine.Event{
		{Topic: engine.TopicSandboxStart, Namespace: "k8s.io"},
		{Topic: engine.TopicTaskDelete, Namespace: "k8s.io", ContainerID: "c", ExecID: "e"},
	} {
		if env, err := envelope(ev); env != nil || err != nil {
			t.Errorf("%s: want no envelope, got %v, %v", ev.Topic, env, err)
		}
	}
}

// chanSource is an EventSource fed by the test.
type chanSource struct{ ch chan engine.Event }

func (s chanSource) Subscribe(ctx context.Context) <-chan engine.Event {
	out := make(chan engine.Event)
	go func() {
		defer close(out)
		for {
			select {
			case ev := <-s.ch:
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

type recordEvents struct {
	mu  sync.Mutex
	got []*types.Envelope
}

func (r *recordEvents) Forward(_ context.Context, req *ttrpcevents.ForwardRequest) (*emptypb.Empty, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, req.GetEnvelope())
	return &emptypb.Empty{}, nil
}

func (r *recordEvents) topics() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.got {
		out = append(out, e.GetTopic())
	}
	return out
}

// serveEvents serves a recording events service at path (as containerd
// does) until the test ends.
func serveEvents(t *testing.T, path string) *recordEvents {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordEvents{}
	ttrpcevents.RegisterTTRPCEventsService(srv, rec)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(context.Background(), l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	return rec
}

// TestForwarderRetries: events published while containerd is away arrive,
// in order, once it comes up.
func TestForwarderRetries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "containerd.sock.ttrpc")
	src := chanSource{ch: make(chan engine.Event)}
	f := NewForwarder(path, nil)
	f.backoff = 20 * time.Millisecond
	f.attempts = 50

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, src) }()
	src.ch <- engine.Event{Topic: engine.TopicTaskStart, Namespace: "k8s.io", ContainerID: "c"}
	src.ch <- engine.Event{Topic: engine.TopicTaskOOM, Namespace: "k8s.io", ContainerID: "c"}
	time.Sleep(100 * time.Millisecond) // a few failed attempts

	rec := serveEvents(t, path)

	testutil.Poll(10*time.Second, func() bool { return len(rec.topics()) >= 2 })
	if got := strings.Join(rec.topics(), " "); got != "/tasks/start /tasks/oom" {
		t.Errorf("forwarded %q", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestForwarderHoldsExit: an exit event whose Hold channel is open waits
// for it (later events wait behind it), then goes out in order.
func TestForwarderHoldsExit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "containerd.sock.ttrpc")
	rec := serveEvents(t, path)

	release := make(chan struct{})
	src := chanSource{ch: make(chan engine.Event)}
	f := NewForwarder(path, nil)
	f.holdTimeout = time.Minute
	f.Hold = func(ev engine.Event) <-chan struct{} {
		if ev.ContainerID == "streamed" {
			return release
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx, src) }()
	src.ch <- engine.Event{Topic: engine.TopicTaskExit, Namespace: "k8s.io", ContainerID: "plain"}
	src.ch <- engine.Event{Topic: engine.TopicTaskExit, Namespace: "k8s.io", ContainerID: "streamed"}
	src.ch <- engine.Event{Topic: engine.TopicTaskDelete, Namespace: "k8s.io", ContainerID: "plain"}

	waitTopics := func(n int) string {
		testutil.Poll(10*time.Second, func() bool { return len(rec.topics()) >= n })
		return strings.Join(rec.topics(), " ")
	}
	if got := waitTopics(1); got != "/tasks/exit" {
		t.Fatalf("before the release: forwarded %q, want only the first exit", got)
	}
	time.Sleep(100 * time.Millisecond) // the observation: the held exit stays held
	if got := strings.Join(rec.topics(), " "); got != "/tasks/exit" {
		t.Fatalf("held exit went out early: %q", got)
	}
	close(release)
	if got := waitTopics(3); got != "/tasks/exit /tasks/exit /tasks/delete" {
		t.Errorf("after the release: forwarded %q", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
