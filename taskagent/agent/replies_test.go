package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
)

// TestReplyConnCountsResponses: frames split and joined across writes are
// followed; only responses count.
func TestReplyConnCountsResponses(t *testing.T) {
	frame := func(typ byte, payload string) []byte {
		b := []byte{0, 0, 0, byte(len(payload)), 0, 0, 0, 1, typ, 0}
		return append(b, payload...)
	}
	r := &replies{}
	c := &replyConn{r: r}
	stream := append(append(frame(3, "data"), frame(ttrpcTypeResponse, "answer")...), frame(ttrpcTypeResponse, "")...)
	for _, chunk := range [][]byte{stream[:3], stream[3:15], stream[15:16], stream[16:]} {
		c.follow(chunk)
	}
	if n := r.count(); n != 2 {
		t.Fatalf("counted %d responses, want 2", n)
	}
	if !r.waitBeyond(1, time.Second) || r.waitBeyond(2, 10*time.Millisecond) {
		t.Fatal("waitBeyond does not follow the count")
	}
}

// TestShutdownAnswersBeforePowerOff: the VM powers off only after the
// answer to Shutdown was written to the host.
func TestShutdownAnswersBeforePowerOff(t *testing.T) {
	var atPowerOff atomic.Int64
	off := make(chan struct{})
	var a *Agent
	a = New(Options{PowerOff: func() { atPowerOff.Store(int64(a.replies.count())); close(off) }},
		slog.New(slog.NewTextHandler(io.Discard, nil)), new(slog.LevelVar), nil)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	a.Register(srv)
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), a.replies.listener(l)) }()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	if _, err := agentv1.NewTTRPCAgentServiceClient(client).Shutdown(context.Background(), &agentv1.ShutdownRequest{}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-off:
	case <-time.After(5 * time.Second):
		t.Fatal("no power off after Shutdown")
	}
	if n := atPowerOff.Load(); n < 1 {
		t.Errorf("powered off with %d answers written, want the Shutdown answer out first", n)
	}
}
