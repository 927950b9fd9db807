package vm

import (
	"context"
	"testing"
	"time"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// TestReconnectAtOnce closes the host's session to the agent and opens a
// new one right away, several times: each new session must answer at
// once (the agentmux handshake keeps it apart from the old one, which the
// guest may not have seen end).
func TestReconnectAtOnce(t *testing.T) {
	kernel, initrd := requireBoot(t)
	b := newBackend(t, kernel, initrd)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.SandboxConfig{ID: "reconnect", Namespace: "test", Dir: t.TempDir(), Hostname: "reconnect"})
	if err != nil {
		t.Fatal(err)
	}
	s := sb.(*sandbox)
	if _, err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Delete(context.Background()); err != nil {
			t.Errorf("delete: %v", err)
		}
	})
	for i := range 3 {
		s.closeAgent()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second) // a hung first session takes 30 s
		err := s.connect(cctx)
		cancel()
		if err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
		s.mu.Lock()
		agent := s.agent
		s.mu.Unlock()
		hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err = agent.Health(hctx, &agentv1.HealthRequest{})
		cancel()
		if err != nil {
			t.Fatalf("health after reconnect %d: %v", i, err)
		}
	}
}
