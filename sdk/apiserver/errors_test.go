package apiserver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/connect/v2/connectinprocess"
	"github.com/containerd/errdefs"

	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// failing answers GetSandbox (unary) and WatchEvents (server streaming,
// after the headers) with err.
type failing struct {
	sandboxv1connect.UnimplementedSandboxServiceHandler
	err error
}

func (f failing) GetSandbox(context.Context, *sandboxv1.GetSandboxRequest) (*sandboxv1.GetSandboxResponse, error) {
	return nil, f.err
}

func (f failing) WatchEvents(_ context.Context, _ *sandboxv1.WatchEventsRequest, stream sandboxv1connect.SandboxServiceWatchEventsServerStream) error {
	if err := stream.SendHeaders(); err != nil {
		return err
	}
	return f.err
}

// serveConnect serves srv over Connect, gRPC and gRPC-Web on a unix socket
// and returns a client of each protocol.
func serveConnect(t *testing.T, srv *connect.Server) map[string]*connect.Client {
	t.Helper()
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv)
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.Serve(ln) })
	t.Cleanup(func() {
		hs.Close()
		wg.Wait()
	})
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}
	h1 := &http.Client{Transport: &http.Transport{DialContext: dial}}
	t.Cleanup(h1.CloseIdleConnections)
	h2 := h2c(dial)
	t.Cleanup(h2.CloseIdleConnections)
	return map[string]*connect.Client{
		"connect":    connect.NewClient(connecthttp.NewTransport(h1, "http://magnetar")),
		"grpc":       connect.NewClient(connecthttp.NewTransport(h2, "http://magnetar", connecthttp.WithGRPC())),
		"grpcweb":    connect.NewClient(connecthttp.NewTransport(h1, "http://magnetar", connecthttp.WithGRPCWeb())),
		"in-process": connect.NewClient(connectinprocess.New(srv)),
	}
}

func TestMapErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want connect.Code
	}{
		{fmt.Errorf("sandbox %q: %w", "x", errdefs.ErrNotFound), connect.CodeNotFound},
		{fmt.Errorf("bad: %w", errdefs.ErrInvalidArgument), connect.CodeInvalidArgument},
		{fmt.Errorf("running: %w", errdefs.ErrFailedPrecondition), connect.CodeFailedPrecondition},
		{fmt.Errorf("taken: %w", errdefs.ErrAlreadyExists), connect.CodeAlreadyExists},
		{fmt.Errorf("dropped: %w", errdefs.ErrUnavailable), connect.CodeUnavailable},
		{fmt.Errorf("gone: %w", context.Canceled), connect.CodeCanceled},
		{fmt.Errorf("slow: %w", context.DeadlineExceeded), connect.CodeDeadlineExceeded},
		{connect.NewError(connect.CodeAborted, "as is"), connect.CodeAborted},
		{errors.New("plain"), connect.CodeUnknown},
	} {
		srv := connect.NewServer(apiserver.MapErrors)
		sandboxv1connect.RegisterSandboxServiceHandler(srv, failing{err: tc.err})
		wantMsg := tc.err.Error()
		if ce := new(connect.Error); errors.As(tc.err, &ce) {
			wantMsg = ce.Message()
		}
		for proto, c := range serveConnect(t, srv) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			sc := sandboxv1connect.NewSandboxServiceClient(c)
			_, err := sc.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: "x"})
			if ce := new(connect.Error); !errors.As(err, &ce) || ce.Code() != tc.want || ce.Message() != wantMsg {
				t.Errorf("%s: unary %v: got %v, want %v %q", proto, tc.err, err, tc.want, wantMsg)
			}
			stream, err := sc.WatchEvents(ctx, &sandboxv1.WatchEventsRequest{})
			if err == nil {
				_, err = stream.Receive()
				stream.Close()
			}
			if ce := new(connect.Error); !errors.As(err, &ce) || ce.Code() != tc.want || ce.Message() != wantMsg {
				t.Errorf("%s: stream %v: got %v, want %v %q", proto, tc.err, err, tc.want, wantMsg)
			}
			cancel()
		}
	}
}

// The interceptors of the Connect server that Register adds to see the
// mapped codes.
func TestRegisterMapsErrorsFirst(t *testing.T) {
	e, err := engine.New(context.Background(), engine.Config{StateDir: t.TempDir(), StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	api := apiserver.New(e, apiserver.WithHostAccess(true))
	t.Cleanup(func() { api.Close() })
	var seen []connect.Code
	srv := connect.NewServer(func(next connect.ServerFunc) connect.ServerFunc {
		return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			err := next(ctx, spec, stream)
			seen = append(seen, connect.CodeOf(err))
			return err
		}
	})
	api.Register(srv)
	sc := sandboxv1connect.NewSandboxServiceClient(connect.NewClient(connectinprocess.New(srv)))
	ctx := context.Background()
	if _, err := sc.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: "missing"}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetSandbox(missing) = %v, want NotFound", err)
	}
	if _, err := sc.CreateSandbox(ctx, &sandboxv1.CreateSandboxRequest{}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("CreateSandbox without a kind = %v, want InvalidArgument", err)
	}
	if len(seen) != 2 || seen[0] != connect.CodeNotFound || seen[1] != connect.CodeInvalidArgument {
		t.Errorf("the server's interceptor saw %v, want [not_found invalid_argument]", seen)
	}
}
