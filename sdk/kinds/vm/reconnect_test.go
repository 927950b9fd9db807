package vm

import (
	"context"
	"testing"
	"time"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// TestReconnectAtOnce closes the host's session to the agent and opens a
// new one right away, several times: each new session must work on its
// first attempt (the agentmux handshake keeps it apart from the old one,
// which the guest may not have seen end).
func TestReconnectAtOnce(t *testing.T) {
	t.Parallel()
	kernel, initrd := requireBoot(t)
	b := newBackend(t, kernel, initrd)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.SandboxConfig{ID: "reconnect", Namespace: "test", Dir: t.TempDir(), Hostname: "reconnect", PrivateNetwork: true})
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
		// One attempt, no retry: it must work at once.
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := s.connectOnce(cctx)
		cancel()
		if err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
		s.mu.Lock()
		agent := s.agent
		s.mu.Unlock()
		hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		_, err = agent.Health(hctx, &agentv1.HealthRequest{})
		cancel()
		if err != nil {
			t.Fatalf("health after reconnect %d: %v", i, err)
		}
	}
}
