package agentmux_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/containerd/ttrpc"

	agentv1 "github.com/magnetar-io/magnetar/gen/magnetar/agent/v1"
	"github.com/magnetar-io/magnetar/internal/agentmux"
)

type agent struct {
	agentv1.TTRPCAgentServiceService
}

func (agent) Health(context.Context, *agentv1.HealthRequest) (*agentv1.HealthResponse, error) {
	return &agentv1.HealthResponse{Version: "test"}, nil
}

// TestTTRPCOverOneStream runs two ttrpc clients over one byte stream (a
// unix socket standing in for the virtio-serial port).
func TestTTRPCOverOneStream(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "port.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		ml, err := agentmux.Listen(conn)
		if err != nil {
			return
		}
		srv, _ := ttrpc.NewServer()
		agentv1.RegisterTTRPCAgentServiceService(srv, agent{})
		_ = srv.Serve(context.Background(), ml)
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := agentmux.NewClient(conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		s, err := c.Dial()
		if err != nil {
			t.Fatal(err)
		}
		cl := agentv1.NewTTRPCAgentServiceClient(ttrpc.NewClient(s))
		res, err := cl.Health(context.Background(), &agentv1.HealthRequest{})
		if err != nil || res.GetVersion() != "test" {
			t.Fatalf("client %d: Health = %v, %v", i, res, err)
		}
	}
}
