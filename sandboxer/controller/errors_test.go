package controller

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	sandboxapi "github.com/containerd/containerd/api/services/sandbox/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/magnetar-io/magnetar/sdk/engine"
)

func TestUnaryServerInterceptor(t *testing.T) {
	icpt := UnaryServerInterceptor()
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("sandbox: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("running: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("shutting down: %w", errdefs.ErrUnavailable), codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{status.Error(codes.Aborted, "as is"), codes.Aborted},
		{errors.New("plain"), codes.Unknown},
	} {
		resp, err := icpt(context.Background(), "req", &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) {
			return "resp", tc.err
		})
		if resp != "resp" || status.Code(err) != tc.want {
			t.Errorf("%v: got %v, %v; want %v", tc.err, resp, err, tc.want)
		}
		if tc.err != nil && status.Convert(err).Message() != status.Convert(tc.err).Message() {
			t.Errorf("%v: message %q, want the error's", tc.err, status.Convert(err).Message())
		}
	}
}

// A controller served with the interceptor answers with the codes of its
// errdefs errors, as containerd's clients expect them.
func TestControllerErrorsOverGRPC(t *testing.T) {
	eng, err := engine.New(context.Background(), engine.Config{StateDir: t.TempDir(), StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	ctrl, err := New(eng, Config{RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrl.Close() })
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(UnaryServerInterceptor()))
	sandboxapi.RegisterControllerServer(srv, ctrl)
	sock := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	t.Cleanup(func() {
		srv.Stop()
		wg.Wait()
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := sandboxapi.NewControllerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, err = c.Status(ctx, &sandboxapi.ControllerStatusRequest{SandboxID: "missing"})
	if status.Code(err) != codes.NotFound || !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("Status(missing) = %v, want NotFound", err)
	}
	_, err = c.Create(ctx, &sandboxapi.ControllerCreateRequest{SandboxID: "../x"})
	if status.Code(err) != codes.InvalidArgument || !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("Create(../x) = %v, want InvalidArgument", err)
	}
	_, err = c.Shutdown(ctx, &sandboxapi.ControllerShutdownRequest{SandboxID: "missing"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Shutdown(missing) = %v, want NotFound", err)
	}
}
