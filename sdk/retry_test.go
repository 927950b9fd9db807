package sdk_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/containerd/errdefs"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/sdk"
)

// flaky is an API server that fails as a restarting sandboxer does: calls
// answer Unavailable a number of times, streams break after some messages.
type flaky struct {
	sandboxv1connect.UnimplementedSandboxServiceHandler
	containerv1connect.UnimplementedContainerServiceHandler

	mu sync.Mutex
	// failGets is how many GetSandbox calls fail before one succeeds.
	failGets, gets, creates int
	// attaches and watches record the requests of each stream.
	attaches []*containerv1.AttachOutputRequest
	watches  []*sandboxv1.WatchEventsRequest
}

var errRestarting = connect.NewError(connect.CodeUnavailable, "worker restarting")

func (f *flaky) GetSandbox(context.Context, *sandboxv1.GetSandboxRequest) (*sandboxv1.GetSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.gets <= f.failGets {
		return nil, errRestarting
	}
	return &sandboxv1.GetSandboxResponse{Sandbox: &sandboxv1.Sandbox{Id: "sb", State: sandboxv1.SandboxState_SANDBOX_STATE_READY}}, nil
}

func (f *flaky) CreateSandbox(context.Context, *sandboxv1.CreateSandboxRequest) (*sandboxv1.CreateSandboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	return nil, errRestarting
}

func (f *flaky) GetContainer(context.Context, *containerv1.GetContainerRequest) (*containerv1.GetContainerResponse, error) {
	return &containerv1.GetContainerResponse{Container: &containerv1.Container{Id: "c", SandboxId: "sb"}}, nil
}

// AttachOutput serves "abcdef" in chunks of two bytes from the offset
// asked, and breaks after two chunks on the first call. Without follow,
// the process is still running and has written "abcd" so far, and the
// first call breaks after one chunk.
func (f *flaky) AttachOutput(_ context.Context, req *containerv1.AttachOutputRequest, stream containerv1connect.ContainerServiceAttachOutputServerStream) error {
	f.mu.Lock()
	f.attaches = append(f.attaches, req)
	first := len(f.attaches) == 1
	f.mu.Unlock()
	out, breakAt := "abcdef", 2
	if req.Follow != nil && !req.GetFollow() {
		out, breakAt = "abcd", 1
	}
	for off, sent := int(req.GetStartOffset()), 0; off < len(out); off, sent = off+2, sent+1 {
		if first && sent == breakAt {
			return errRestarting
		}
		if err := stream.Send(&containerv1.AttachOutputResponse{Payload: &containerv1.AttachOutputResponse_Output{Output: &containerv1.OutputChunk{
			Stream: containerv1.OutputStream_OUTPUT_STREAM_STDOUT, Data: []byte(out[off : off+2]), Offset: uint64(off),
		}}}); err != nil {
			return err
		}
	}
	if out != "abcdef" {
		return nil
	}
	return stream.Send(&containerv1.AttachOutputResponse{Payload: &containerv1.AttachOutputResponse_Exit{Exit: &containerv1.ProcessExit{ExitStatus: 7}}})
}

// WatchEvents numbers events from 11 on (10 is the newest when a live
// stream starts); the first stream breaks before any event, the second
// after one.
func (f *flaky) WatchEvents(ctx context.Context, req *sandboxv1.WatchEventsRequest, stream sandboxv1connect.SandboxServiceWatchEventsServerStream) error {
	f.mu.Lock()
	f.watches = append(f.watches, req)
	n := len(f.watches)
	f.mu.Unlock()
	after := uint64(10)
	if req.AfterSequence != nil {
		after = req.GetAfterSequence()
	}
	if info, ok := connect.CallInfoForServerContext(ctx); ok {
		info.ResponseHeader().Set("Magnetar-Event-Sequence", strconv.FormatUint(after, 10))
	}
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	for seq, sent := after+1, 0; seq <= 14; seq, sent = seq+1, sent+1 {
		if (n == 1 && sent == 0) || (n == 2 && sent == 1) {
			return errRestarting
		}
		if err := stream.Send(&sandboxv1.WatchEventsResponse{Event: &sandboxv1.Event{
			Type: sandboxv1.EventType_EVENT_TYPE_PROCESS_STARTED, SandboxId: "sb", ContainerId: strconv.FormatUint(seq, 10), Sequence: seq,
		}}); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

func serveFlaky(t *testing.T, f *flaky) string {
	t.Helper()
	srv := connect.NewServer()
	sandboxv1connect.RegisterSandboxServiceHandler(srv, f)
	containerv1connect.RegisterContainerServiceHandler(srv, f)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv)
	dir, err := os.MkdirTemp("", "magnetar-flaky")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.Serve(ln) })
	t.Cleanup(func() { hs.Close(); wg.Wait() })
	return sock
}

func TestRetriesCallsThatChangeNothing(t *testing.T) {
	f := &flaky{failGets: 3}
	c := dial(t, serveFlaky(t, f))
	ctx := context.Background()
	sb, err := c.Sandbox(ctx, "sb")
	if err != nil || sb.ID != "sb" || f.gets != 4 {
		t.Fatalf("Sandbox = %+v, %v after %d calls; want success on the 4th", sb, err, f.gets)
	}
	// Not retried: a call that may have happened.
	if _, err := c.CreateSandbox(ctx, "stub"); !errdefs.IsUnavailable(err) || f.creates != 1 {
		t.Fatalf("CreateSandbox: %v after %d calls; want Unavailable after 1", err, f.creates)
	}
	// Bounded: a sandboxer that stays away.
	f2 := &flaky{failGets: 1 << 30}
	c2 := dial(t, serveFlaky(t, f2), sdk.WithRetryTimeout(300*time.Millisecond))
	start := time.Now()
	if _, err := c2.Sandbox(ctx, "sb"); !errdefs.IsUnavailable(err) || time.Since(start) > 5*time.Second || f2.gets < 3 {
		t.Fatalf("Sandbox against a sandboxer that stays away: %v after %v and %d calls", err, time.Since(start), f2.gets)
	}
	// Off.
	f3 := &flaky{failGets: 1}
	c3 := dial(t, serveFlaky(t, f3), sdk.WithRetryTimeout(0))
	if _, err := c3.Sandbox(ctx, "sb"); !errdefs.IsUnavailable(err) || f3.gets != 1 {
		t.Fatalf("Sandbox without retries: %v after %d calls", err, f3.gets)
	}
}

func TestOutputResumesFromOffset(t *testing.T) {
	f := &flaky{}
	c := dial(t, serveFlaky(t, f))
	ctx := context.Background()
	ctr, err := c.Container(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	var offsets []int64
	for ch, err := range ctr.Output(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ch.Data...)
		offsets = append(offsets, ch.Offset)
	}
	if string(got) != "abcdef" || len(offsets) != 3 || offsets[2] != 4 {
		t.Fatalf("output %q at %v, want abcdef at [0 2 4]", got, offsets)
	}
	if len(f.attaches) != 2 || f.attaches[0].StartOffset != nil || f.attaches[1].GetStartOffset() != 4 {
		t.Fatalf("requests %v, want a first without offset and a second from 4", f.attaches)
	}
	// Attach resumes too, and returns the exit status.
	f.attaches = nil
	out, st, err := ctr.CombinedOutput(ctx)
	if err != nil || string(out) != "abcdef" || st.Code != 7 {
		t.Fatalf("CombinedOutput = %q, %+v, %v", out, st, err)
	}
	// From an offset of the caller's.
	got = nil
	for ch, err := range ctr.OutputFrom(ctx, 2) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ch.Data...)
	}
	if string(got) != "cdef" {
		t.Fatalf("OutputFrom(2) = %q", got)
	}
	for _, req := range f.attaches {
		if req.Follow != nil {
			t.Fatalf("a following request has follow set: %v", req)
		}
	}
}

func TestOutputSoFarEndsAndResumes(t *testing.T) {
	f := &flaky{}
	c := dial(t, serveFlaky(t, f))
	ctx := context.Background()
	ctr, err := c.Container(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for ch, err := range ctr.OutputSoFar(ctx, -1) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ch.Data...)
	}
	// The stream broke after "ab" and was resumed from 2; the output ends
	// after "cd" without an exit status: not an error.
	if string(got) != "abcd" {
		t.Fatalf("OutputSoFar = %q, want abcd", got)
	}
	if len(f.attaches) != 2 || f.attaches[0].StartOffset != nil || f.attaches[1].GetStartOffset() != 2 {
		t.Fatalf("requests %v, want a first without offset and a second from 2", f.attaches)
	}
	for _, req := range f.attaches {
		if req.Follow == nil || req.GetFollow() {
			t.Fatalf("request %v does not ask for no follow", req)
		}
	}
	got = nil
	for ch, err := range ctr.OutputSoFar(ctx, 2) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ch.Data...)
	}
	if string(got) != "cd" {
		t.Fatalf("OutputSoFar(2) = %q, want cd", got)
	}
}

func TestEventsResumeAfterSequence(t *testing.T) {
	f := &flaky{}
	c := dial(t, serveFlaky(t, f))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var seqs []uint64
	for ev, err := range c.Events(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ev.Sequence)
		if ev.ContainerID != strconv.FormatUint(ev.Sequence, 10) {
			t.Fatalf("event %+v", ev)
		}
		if ev.Sequence == 14 {
			break
		}
	}
	if len(seqs) != 4 || seqs[0] != 11 || seqs[3] != 14 {
		t.Fatalf("sequences %v, want 11..14", seqs)
	}
	// The first stream broke before any event: the second resumed after
	// the header's 10, the third after 11.
	if len(f.watches) != 3 || f.watches[0].AfterSequence != nil || f.watches[1].GetAfterSequence() != 10 || f.watches[2].GetAfterSequence() != 11 {
		t.Fatalf("requests %v", f.watches)
	}
	// EventsAfter asks for a replay.
	f.watches = nil
	for ev, err := range c.EventsAfter(ctx, 12) {
		if err != nil || ev.Sequence != 13 {
			t.Fatalf("EventsAfter(12): %+v, %v", ev, err)
		}
		break
	}
	if f.watches[0].GetAfterSequence() != 12 {
		t.Fatalf("EventsAfter request %v", f.watches[0])
	}
}
