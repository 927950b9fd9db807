package controller

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/backend"
)

// fakeHost keeps bridges in memory, as the supervisor does across worker
// restarts.
type fakeHost struct {
	mu      sync.Mutex
	bridges map[string]StreamBridge
	removed []string
}

func (f *fakeHost) Bridges() ([]StreamBridge, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []StreamBridge
	for _, b := range f.bridges {
		out = append(out, b)
	}
	return out, nil
}

func (f *fakeHost) Bridge(bs []StreamBridge) ([]StreamBridge, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []StreamBridge
	for _, b := range bs {
		b.Path = filepath.Join("/run/s", b.ID)
		f.bridges[b.ID] = b
		out = append(out, b)
	}
	return out, nil
}

func (f *fakeHost) Wait([]string, time.Duration) (bool, error) { return true, nil }

func (f *fakeHost) Unbridge(ids []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		delete(f.bridges, id)
		f.removed = append(f.removed, id)
	}
	return nil
}

// TestHostedStreams: streams become the host's FIFOs, and a worker started
// later (a new hostedStreams on the same host) reports the stdio
// containerd named and removes the bridges with the process.
func TestHostedStreams(t *testing.T) {
	const sock = "/run/magnetar/t/abc.sock"
	host := &fakeHost{bridges: map[string]StreamBridge{}}
	h := newHostedStreams(host, sock)
	orig := backend.Stdio{Stdin: streamURI(sock, "c1-stdin"), Stdout: streamURI(sock, "c1-stdout"), Stderr: "/var/log/err.fifo"}
	got, err := h.Open(context.Background(), "c1", "", orig)
	if err != nil {
		t.Fatal(err)
	}
	if got.Stdin != "/run/s/c1-stdin" || got.Stdout != "/run/s/c1-stdout" || got.Stderr != orig.Stderr {
		t.Fatalf("Open = %+v", got)
	}
	if _, err := h.Open(context.Background(), "c1", "", orig); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Open = %v, want AlreadyExists", err)
	}
	if _, err := h.Open(context.Background(), "c2", "", backend.Stdio{Stdout: streamURI("/other.sock", "x")}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Open of another socket's stream = %v, want InvalidArgument", err)
	}
	if _, err := h.Open(context.Background(), "c1", "e1", backend.Stdio{Stdout: streamURI(sock, "e1-stdout")}); err != nil {
		t.Fatal(err)
	}

	// The next worker.
	h2 := newHostedStreams(host, sock)
	if err := h2.recover(); err != nil {
		t.Fatal(err)
	}
	if st, ok := h2.Original("c1", ""); !ok || st.Stdin != orig.Stdin || st.Stdout != orig.Stdout || st.Stderr != orig.Stderr {
		t.Fatalf("Original after a restart = %+v, %v; want %+v", st, ok, orig)
	}
	if h2.StdinDone("c1", "") == nil || h2.OutputDone("c1", "") == nil || h2.StdinDone("c1", "e1") != nil {
		t.Error("StdinDone/OutputDone after a restart do not follow the recovered streams")
	}
	<-h2.OutputDone("c1", "")
	if err := h2.Remove("c1", "", true); err != nil {
		t.Fatal(err)
	}
	if err := h2.RemoveExecs("c1"); err != nil {
		t.Fatal(err)
	}
	slices.Sort(host.removed)
	if want := []string{"c1-stdin", "c1-stdout", "e1-stdout"}; !slices.Equal(host.removed, want) {
		t.Errorf("unbridged %v, want %v", host.removed, want)
	}
	if _, ok := h2.Original("c1", ""); ok {
		t.Error("Original after Remove")
	}
}
