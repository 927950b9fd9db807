package sdk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/gen/magnetar/container/v1/containerv1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/file/v1/filev1connect"
	"github.com/magnetar-io/magnetar/gen/magnetar/image/v1/imagev1connect"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1/sandboxv1connect"
)

// DefaultAddress is the address of the API socket of a sandboxer started
// with its default run directory.
const DefaultAddress = "unix:///run/magnetar/api.sock"

// maxMessageSize bounds the messages the client reads (as the daemon does).
const maxMessageSize = 16 << 20

// Client talks to Magnetar's API, either a daemon's ([Dial]) or one
// embedded in this process (package embedded). It is safe for concurrent use.
type Client struct {
	sandboxes  sandboxv1connect.SandboxServiceClient
	containers containerv1connect.ContainerServiceClient
	images     imagev1connect.ImageServiceClient
	files      filev1connect.FileServiceClient
	// bidi serves the calls that stream both ways ([Sandbox.DialPort]):
	// sandboxes, unless that one speaks HTTP/1.1.
	bidi sandboxv1connect.SandboxServiceClient

	// retry is how long streams are resumed while the sandboxer is
	// unavailable (0: not at all).
	retry time.Duration

	// closeFn releases what the client opened; run once by Close.
	closeFn   func() error
	closeOnce sync.Once
	closeErr  error
}

// Option configures [Dial].
type Option func(*options) error

type options struct {
	tlsConfig  *tls.Config
	insecure   bool
	grpc       bool
	httpClient *http.Client
	retry      time.Duration
	retrySet   bool
}

// WithTLSConfig sets the TLS configuration for https:// addresses.
// Default: the system's root CAs and no client certificate. It is an error
// with unix socket and http:// addresses.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *options) error {
		if cfg == nil {
			return fmt.Errorf("WithTLSConfig: nil config: %w", errdefs.ErrInvalidArgument)
		}
		o.tlsConfig = cfg
		return nil
	}
}

// WithInsecure allows http:// addresses: plain text over TCP, without
// authentication or encryption. Default: refused, only unix sockets and
// https:// are dialed.
func WithInsecure() Option {
	return func(o *options) error {
		o.insecure = true
		return nil
	}
}

// WithGRPC uses the gRPC protocol (over HTTP/2) instead of the default,
// Connect (over HTTP/1.1, or HTTP/2 with TLS).
func WithGRPC() Option {
	return func(o *options) error {
		o.grpc = true
		return nil
	}
}

// WithHTTPClient makes the client send its requests with hc, for example
// to add a proxy or tracing. The address's scheme and socket are then up
// to hc's transport: Dial only takes the base URL from the address.
// Default: a client made for the address (unix socket dialer, TLS
// settings, HTTP/2 for gRPC).
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) error {
		if hc == nil {
			return fmt.Errorf("WithHTTPClient: nil client: %w", errdefs.ErrInvalidArgument)
		}
		o.httpClient = hc
		return nil
	}
}

// Dial returns a client of the sandboxer API at addr:
//
//   - "unix:///run/magnetar/api.sock" or a bare absolute path: the daemon's
//     unix socket (mode 0600: usually only root can connect);
//   - "https://host:port": TLS, see [WithTLSConfig];
//   - "http://host:port": plain text, only with [WithInsecure].
//
// The protocol is Connect unless [WithGRPC] is given. Dial checks that a
// unix socket exists but does not connect: the first call does. ctx bounds
// the checks only.
//
// The client rides out restarts of the sandboxer (see [WithRetryTimeout]):
// calls that change nothing are retried while it is unavailable, and the
// streams of [Process.Output], [Process.Attach] and [Client.Events] resume
// where they broke off, from the last output offset or event sequence
// number received, so no byte or event is lost or repeated.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if addr == "" {
		return nil, fmt.Errorf("empty sandboxer address: %w", errdefs.ErrInvalidArgument)
	}
	var (
		baseURL string
		dialer  func(ctx context.Context, network, address string) (net.Conn, error)
		tlsCfg  *tls.Config
	)
	switch {
	case strings.HasPrefix(addr, "unix://") || filepath.IsAbs(addr):
		path := strings.TrimPrefix(addr, "unix://")
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("address %q: the socket path must be absolute: %w", addr, errdefs.ErrInvalidArgument)
		}
		if o.tlsConfig != nil {
			return nil, fmt.Errorf("address %q: TLS is not used over unix sockets: %w", addr, errdefs.ErrInvalidArgument)
		}
		if o.httpClient == nil {
			st, err := os.Stat(path)
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("no sandboxer API socket at %s (is magnetar-sandboxer running?): %w", path, errdefs.ErrUnavailable)
			}
			if err != nil {
				return nil, fmt.Errorf("sandboxer API socket %s: %w", path, err)
			}
			if st.Mode().Type() != os.ModeSocket {
				return nil, fmt.Errorf("%s is not a unix socket: %w", path, errdefs.ErrInvalidArgument)
			}
		}
		baseURL = "http://magnetar"
		dialer = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
	default:
		u, err := url.Parse(addr)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("address %q: want unix:///path, an absolute socket path or https://host:port: %w", addr, errdefs.ErrInvalidArgument)
		}
		switch u.Scheme {
		case "https":
			tlsCfg = o.tlsConfig
			if tlsCfg == nil {
				tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
			}
		case "http":
			if !o.insecure {
				return nil, fmt.Errorf("address %q: plain-text http:// needs WithInsecure: %w", addr, errdefs.ErrInvalidArgument)
			}
			if o.tlsConfig != nil {
				return nil, fmt.Errorf("address %q: TLS needs an https:// address: %w", addr, errdefs.ErrInvalidArgument)
			}
		default:
			return nil, fmt.Errorf("address %q: unsupported scheme %q (unix, https, http): %w", addr, u.Scheme, errdefs.ErrInvalidArgument)
		}
		baseURL = strings.TrimSuffix(u.String(), "/")
	}

	hc := o.httpClient
	var tr *http.Transport
	if hc == nil {
		tr = &http.Transport{DialContext: dialer, TLSClientConfig: tlsCfg, ForceAttemptHTTP2: tlsCfg != nil}
		if o.grpc {
			p := new(http.Protocols)
			if tlsCfg != nil {
				p.SetHTTP2(true)
			} else {
				p.SetUnencryptedHTTP2(true)
			}
			tr.Protocols = p
		}
		hc = &http.Client{Transport: tr}
	}
	topts := []connecthttp.Option{connecthttp.WithReadMaxBytes(maxMessageSize)}
	if o.grpc {
		topts = append(topts, connecthttp.WithGRPC())
	}
	retry := DefaultRetryTimeout
	if o.retrySet {
		retry = o.retry
	}
	// Bidirectional streams need HTTP/2: over plain text the Connect
	// protocol uses HTTP/1.1, so those go through an HTTP/2 transport of
	// their own.
	var tr2 *http.Transport
	var bidi *connect.Client
	if tr != nil && !o.grpc && tlsCfg == nil {
		tr2 = &http.Transport{DialContext: dialer, Protocols: new(http.Protocols)}
		tr2.Protocols.SetUnencryptedHTTP2(true)
		bidi = connect.NewClient(connecthttp.NewTransport(&http.Client{Transport: tr2}, baseURL, topts...))
	}
	c := NewClient(connect.NewClient(connecthttp.NewTransport(hc, baseURL, topts...), retryInterceptor(retry)), func() error {
		if tr != nil {
			tr.CloseIdleConnections()
		}
		if tr2 != nil {
			tr2.CloseIdleConnections()
		}
		return nil
	})
	if bidi != nil {
		c.bidi = sandboxv1connect.NewSandboxServiceClient(bidi)
	}
	c.retry = retry
	return c, nil
}

// NewClient returns a client that calls Magnetar's API through cc, a
// Connect client of any transport; closeFn, when not nil, runs once on
// [Client.Close]. [Dial] and the embedded package's New build theirs with
// it.
func NewClient(cc *connect.Client, closeFn func() error) *Client {
	sandboxes := sandboxv1connect.NewSandboxServiceClient(cc)
	return &Client{
		sandboxes:  sandboxes,
		bidi:       sandboxes,
		containers: containerv1connect.NewContainerServiceClient(cc),
		images:     imagev1connect.NewImageServiceClient(cc),
		files:      filev1connect.NewFileServiceClient(cc),
		closeFn:    closeFn,
	}
}

// Close releases the client's connections and, for an embedded client,
// deletes its sandboxes and closes its engine and backends. Sandboxes of a
// daemon keep running. Close is not safe to call concurrently with other
// methods; calls after Close fail. Close is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if c.closeFn != nil {
			c.closeErr = c.closeFn()
		}
	})
	return c.closeErr
}

// Kind is a sandbox kind (backend) of the sandboxer and whether it can be
// used on its host.
type Kind struct {
	// Name is what [Client.CreateSandbox] takes, for example "runc".
	Name string `json:"name"`
	// Description is a one-line description for humans.
	Description string `json:"description"`
	// Available tells whether sandboxes of this kind can be created now;
	// UnavailableReason says why not.
	Available         bool   `json:"available"`
	UnavailableReason string `json:"unavailableReason,omitempty"`
	// Capabilities are the optional features of the kind.
	Capabilities Capabilities `json:"capabilities"`
}

// Capabilities lists the optional features of a kind. Calls that need a
// missing one fail with errdefs.ErrNotImplemented.
type Capabilities struct {
	Exec            bool `json:"exec"`
	TTY             bool `json:"tty"`
	Stdin           bool `json:"stdin"`
	OOMEvents       bool `json:"oomEvents"`
	UpdateResources bool `json:"updateResources"`
	Stats           bool `json:"stats"`
	Pause           bool `json:"pause"`
	// EgressPolicy: egress policies of bridge networks bind the kind's
	// sandboxes ([Sandbox.UpdateNetworkPolicy]).
	EgressPolicy bool `json:"egressPolicy"`
	// Isolation is how strongly the kind isolates workloads from the host
	// kernel: "container", "wasm", "user-space-kernel",
	// "virtual-machine", or "" when not reported.
	Isolation string `json:"isolation,omitempty"`
}

// Kinds lists the sandbox kinds of the sandboxer, available or not,
// ordered by name.
func (c *Client) Kinds(ctx context.Context) ([]Kind, error) {
	res, err := c.sandboxes.ListKinds(ctx, &sandboxv1.ListKindsRequest{})
	if err != nil {
		return nil, fromAPI(err)
	}
	out := make([]Kind, 0, len(res.GetKinds()))
	for _, k := range res.GetKinds() {
		caps := k.GetCapabilities()
		out = append(out, Kind{
			Name: k.GetName(), Description: k.GetDescription(),
			Available: k.GetAvailable(), UnavailableReason: k.GetUnavailableReason(),
			Capabilities: Capabilities{
				Exec: caps.GetExec(), TTY: caps.GetTty(), Stdin: caps.GetStdin(), OOMEvents: caps.GetOomEvents(),
				UpdateResources: caps.GetUpdateResources(), Stats: caps.GetStats(), Pause: caps.GetPause(), EgressPolicy: caps.GetEgressPolicy(),
				Isolation: enumName(caps.GetIsolationLevel().String(), "ISOLATION_LEVEL_"),
			},
		})
	}
	return out, nil
}

// enumName turns a protobuf enum value name into the SDK's spelling:
// "ISOLATION_LEVEL_USER_SPACE_KERNEL" becomes "user-space-kernel". The
// unspecified value becomes "".
func enumName(name, prefix string) string {
	s := strings.TrimPrefix(name, prefix)
	if s == "UNSPECIFIED" {
		return ""
	}
	return strings.ReplaceAll(strings.ToLower(s), "_", "-")
}

// upperEnum is the inverse of enumName without the prefix.
func upperEnum(s string) string {
	return strings.ToUpper(strings.ReplaceAll(s, "-", "_"))
}
