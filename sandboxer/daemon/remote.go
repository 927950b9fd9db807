package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/containerd/errdefs"
	"github.com/hashicorp/go-hclog"
	"github.com/pelletier/go-toml/v2"

	"github.com/magnetar-io/magnetar/sdk/apiserver"
)

// DefaultReloadInterval is how often the remote API's tenants file and
// certificate are checked for changes.
const DefaultReloadInterval = 2 * time.Second

// RemoteConfig configures the remote listeners of Magnetar's API
// (`[api_remote]` in the config file). They serve the same services as
// the unix socket, over TLS only, to tenants authenticated by a bearer
// token (see docs/design.md, "Remote API and tenants").
type RemoteConfig struct {
	// Listen are the addresses, "tcp://HOST:PORT" (flag --api-listen,
	// repeatable). None: no remote access.
	Listen []string `toml:"listen"`
	// TLSCert and TLSKey are the server's certificate (chain) and key, PEM
	// files; required with Listen. They are read again when they change.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// ClientCA, if set, is a PEM file of the CAs that sign client
	// certificates: a client must then present a valid certificate (mTLS)
	// as well as a token. It is read again when it changes (new
	// connections verify against the new CAs).
	ClientCA string `toml:"client_ca"`
	// TenantsFile lists the tenants, their token hashes, quotas and
	// limits (TOML, see [ParseTenants]); required with Listen. It is read
	// again when it changes (no restart, no signal: SIGHUP is the live
	// upgrade).
	TenantsFile string `toml:"tenants_file"`
	// ReloadInterval is how often TenantsFile, TLSCert, TLSKey and
	// ClientCA are checked for changes. Default 2s.
	ReloadInterval Duration `toml:"reload_interval"`
	// MaxRequestBytes bounds a request message on the remote listeners
	// (default and at most MaxAPIRequestSize).
	MaxRequestBytes int `toml:"max_request_bytes"`
}

// validate checks the remote configuration.
func (r RemoteConfig) validate() []error {
	var errs []error
	for _, a := range r.Listen {
		if _, err := remoteAddr(a); err != nil {
			errs = append(errs, err)
		}
	}
	if r.MaxRequestBytes < 0 || r.MaxRequestBytes > MaxAPIRequestSize {
		errs = append(errs, fmt.Errorf("api_remote.max_request_bytes %d must be between 0 (default) and %d", r.MaxRequestBytes, MaxAPIRequestSize))
	}
	if len(r.Listen) == 0 {
		return errs
	}
	if r.TLSCert == "" || r.TLSKey == "" {
		errs = append(errs, errors.New("api_remote: the remote API is served over TLS only: tls_cert and tls_key (--api-tls-cert, --api-tls-key) are required"))
	}
	if r.TenantsFile == "" {
		errs = append(errs, errors.New("api_remote: tenants_file (--api-tenants) is required: remote callers are tenants with tokens"))
	}
	return errs
}

// remoteAddr returns the host:port of a "tcp://HOST:PORT" address.
func remoteAddr(a string) (string, error) {
	hp, ok := strings.CutPrefix(a, "tcp://")
	if !ok {
		return "", fmt.Errorf("api_remote.listen %q: want tcp://HOST:PORT", a)
	}
	if _, _, err := net.SplitHostPort(hp); err != nil {
		return "", fmt.Errorf("api_remote.listen %q: %v", a, err)
	}
	return hp, nil
}

// tenantsFile is the tenants file's format:
//
//	version = 1
//	[[tenant]]
//	  name = "acme"
//	  token_sha256 = ["<sha256sum of the token>"]
//	  admin = false
//	  max_sandboxes = 10
//	  max_millicpus = 4000
//	  max_memory_bytes = 8589934592
//	  max_lifetime = "24h"
//	  rate_limit = 50
//	  rate_burst = 100
//	  max_concurrent_calls = 64
//	  max_image_bytes = 10737418240
//	  registries = ["docker.io", "ghcr.io", "*.example.com"]
//	  allow_insecure_registries = false
//	  allow_private_registries = false
type tenantsFile struct {
	Version int           `toml:"version"`
	Tenants []tenantEntry `toml:"tenant"`
}

type tenantEntry struct {
	Name               string   `toml:"name"`
	TokenSHA256        []string `toml:"token_sha256"`
	Admin              bool     `toml:"admin"`
	MaxSandboxes       int      `toml:"max_sandboxes"`
	MaxMilliCPUs       int64    `toml:"max_millicpus"`
	MaxMemoryBytes     int64    `toml:"max_memory_bytes"`
	MaxLifetime        Duration `toml:"max_lifetime"`
	RateLimit          float64  `toml:"rate_limit"`
	RateBurst          int      `toml:"rate_burst"`
	MaxConcurrentCalls int      `toml:"max_concurrent_calls"`
	MaxImageBytes      int64    `toml:"max_image_bytes"`
	Registries         []string `toml:"registries"`
	AllowInsecure      bool     `toml:"allow_insecure_registries"`
	AllowPrivate       bool     `toml:"allow_private_registries"`
}

// ParseTenants decodes a tenants file (TOML, version = 1; unknown fields
// are an error).
func ParseTenants(data []byte) (*apiserver.Tenants, error) {
	var f tenantsFile
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("tenants file: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if f.Version != 0 && f.Version != 1 {
		return nil, fmt.Errorf("tenants file version %d is not supported (want 1): %w", f.Version, errdefs.ErrInvalidArgument)
	}
	ts := make([]apiserver.TenantToken, 0, len(f.Tenants))
	for _, e := range f.Tenants {
		ts = append(ts, apiserver.TenantToken{
			Tenant: apiserver.Tenant{
				Name: e.Name, Admin: e.Admin,
				Quota: apiserver.Quota{
					MaxSandboxes: e.MaxSandboxes, MaxMilliCPUs: e.MaxMilliCPUs, MaxMemoryBytes: e.MaxMemoryBytes,
					MaxLifetime: time.Duration(e.MaxLifetime), MaxImageBytes: e.MaxImageBytes,
				},
				RateLimit: e.RateLimit, RateBurst: e.RateBurst, MaxConcurrentCalls: e.MaxConcurrentCalls,
				Registries: e.Registries, AllowInsecureRegistries: e.AllowInsecure, AllowPrivateRegistries: e.AllowPrivate,
			},
			TokenSHA256: e.TokenSHA256,
		})
	}
	t, err := apiserver.NewTenants(ts)
	if err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	return t, nil
}

// fileStamp identifies a version of a file without reading it.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s, nil
}

// remoteAPI is the state of the remote listeners: the current
// certificate and the tenants' reload.
type remoteAPI struct {
	cfg    RemoteConfig
	access *apiserver.Access
	log    hclog.Logger
	cert   atomic.Pointer[tls.Certificate]
	// clientCAs verify client certificates (with ClientCA set).
	clientCAs atomic.Pointer[x509.CertPool]

	tenantsStamp fileStamp
	certStamp    [2]fileStamp
	caStamp      fileStamp
}

// loadTenants reads the tenants file if it changed since the last read;
// a bad file is reported and the tenants in use are kept.
func (r *remoteAPI) loadTenants(first bool) error {
	st, err := stampOf(r.cfg.TenantsFile)
	switch {
	case first:
	case err == nil && st == r.tenantsStamp:
		return nil
	case err != nil && r.tenantsStamp == (fileStamp{}):
		return err // reported when it went
	}
	var ts *apiserver.Tenants
	if err == nil {
		var data []byte
		if data, err = os.ReadFile(r.cfg.TenantsFile); err == nil {
			ts, err = ParseTenants(data)
		}
	}
	if err != nil {
		if !first {
			r.log.Error("tenants file not reloaded: the tenants in use are kept", "path", r.cfg.TenantsFile, "error", err)
			r.tenantsStamp = st // zero when it could not be read
		}
		return err
	}
	r.tenantsStamp = st
	r.access.SetTenants(ts)
	r.log.Info("tenants loaded", "path", r.cfg.TenantsFile, "tenants", ts.Len())
	return nil
}

// loadCert reads the certificate and key if they changed.
func (r *remoteAPI) loadCert(first bool) error {
	a, errA := stampOf(r.cfg.TLSCert)
	b, errB := stampOf(r.cfg.TLSKey)
	if err := errors.Join(errA, errB); err != nil {
		err = fmt.Errorf("TLS certificate: %w", err)
		if !first && [2]fileStamp{a, b} != r.certStamp {
			r.log.Error("TLS certificate not reloaded", "error", err)
			r.certStamp = [2]fileStamp{a, b}
		}
		return err
	}
	if !first && [2]fileStamp{a, b} == r.certStamp {
		return nil
	}
	r.certStamp = [2]fileStamp{a, b}
	cert, err := tls.LoadX509KeyPair(r.cfg.TLSCert, r.cfg.TLSKey)
	if err != nil {
		if !first {
			r.log.Error("TLS certificate not reloaded: the one in use is kept", "cert", r.cfg.TLSCert, "error", err)
		}
		return fmt.Errorf("load TLS certificate: %w", err)
	}
	r.cert.Store(&cert)
	if !first {
		r.log.Info("TLS certificate reloaded", "cert", r.cfg.TLSCert)
	}
	return nil
}

// loadClientCA reads the client CA file, if there is one, when it changed.
func (r *remoteAPI) loadClientCA(first bool) error {
	if r.cfg.ClientCA == "" {
		return nil
	}
	st, err := stampOf(r.cfg.ClientCA)
	if !first && st == r.caStamp {
		return nil
	}
	r.caStamp = st
	var pool *x509.CertPool
	if err == nil {
		var data []byte
		if data, err = os.ReadFile(r.cfg.ClientCA); err == nil {
			pool = x509.NewCertPool()
			if !pool.AppendCertsFromPEM(data) {
				err = fmt.Errorf("client CA %s holds no PEM certificate: %w", r.cfg.ClientCA, errdefs.ErrInvalidArgument)
			}
		}
	}
	if err != nil {
		if !first {
			r.log.Error("client CA not reloaded: the one in use is kept", "path", r.cfg.ClientCA, "error", err)
		}
		return fmt.Errorf("read client CA: %w", err)
	}
	r.clientCAs.Store(pool)
	if !first {
		r.log.Info("client CA reloaded", "path", r.cfg.ClientCA)
	}
	return nil
}

// watch reloads the tenants file, the certificate and the client CA when
// they change, until ctx ends.
func (r *remoteAPI) watch(ctx context.Context) {
	every := time.Duration(r.cfg.ReloadInterval)
	if every <= 0 {
		every = DefaultReloadInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = r.loadTenants(false)
			_ = r.loadCert(false)
			_ = r.loadClientCA(false)
		}
	}
}

// tlsConfig is the remote listeners' TLS configuration.
func (r *remoteAPI) tlsConfig() (*tls.Config, error) {
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.cert.Load(), nil
		},
	}
	if r.cfg.ClientCA != "" {
		if err := r.loadClientCA(true); err != nil {
			return nil, err
		}
		c.ClientCAs = r.clientCAs.Load()
		c.ClientAuth = tls.RequireAndVerifyClientCert
		base := c.Clone()
		// Each handshake verifies against the CAs loaded last.
		c.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cc := base.Clone()
			cc.ClientCAs = r.clientCAs.Load()
			return cc, nil
		}
	}
	return c, nil
}

// listenTCP opens a remote listener: through the supervisor when there is
// one, which holds it across workers (the same port, connections waiting
// in its backlog meanwhile); directly when there is none, or when the
// supervisor is one from before remote listeners.
func (c Config) listenTCP(log hclog.Logger) func(addr, hostport string) (net.Listener, error) {
	return func(addr, hostport string) (net.Listener, error) {
		if c.sup != nil {
			l, err := c.sup.Listen(addr)
			if err == nil {
				return l, nil
			}
			log.Warn("the supervisor does not hold the remote listener: listening here (closed while no worker runs)", "listen", addr, "error", err)
		}
		return net.Listen("tcp", hostport)
	}
}

// serveRemote serves Magnetar's API on the remote listeners, over TLS
// only, to the tenants of the tenants file. It refuses to start without a
// valid certificate and tenants file. The returned function stops it.
func serveRemote(ctx context.Context, cfg RemoteConfig, listenTCP func(addr, hostport string) (net.Listener, error), onListen func(string), api *apiserver.Server, access *apiserver.Access, log hclog.Logger, wg *sync.WaitGroup) (func(), error) {
	r := &remoteAPI{cfg: cfg, access: access, log: log}
	if err := r.loadCert(true); err != nil {
		return nil, err
	}
	if err := r.loadTenants(true); err != nil {
		return nil, err
	}
	tcfg, err := r.tlsConfig()
	if err != nil {
		return nil, err
	}
	max := cfg.MaxRequestBytes
	if max == 0 {
		max = MaxAPIRequestSize
	}
	cs := connect.NewServer(logAPICalls(log), access.Remote())
	api.Register(cs)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, cs, connecthttp.WithCompressMinBytes(1024), connecthttp.WithReadMaxBytes(max))
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	var servers []*http.Server
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), gracefulStopTimeout)
		defer cancel()
		for _, hs := range servers {
			if err := hs.Shutdown(sctx); err != nil {
				_ = hs.Close()
			}
		}
	}
	for _, a := range cfg.Listen {
		hp, err := remoteAddr(a)
		if err != nil {
			stop()
			return nil, err
		}
		l, err := listenTCP(a, hp)
		if err != nil {
			stop()
			return nil, fmt.Errorf("listen %s: %w", a, err)
		}
		hs := &http.Server{
			Handler: mux, Protocols: protocols, TLSConfig: tcfg,
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute, MaxHeaderBytes: 64 << 10,
			ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
		}
		servers = append(servers, hs)
		wg.Go(func() {
			if err := hs.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("serve remote API", "listen", a, "error", err)
			}
		})
		if onListen != nil {
			onListen(l.Addr().String())
		}
		log.Info("serving Magnetar API to tenants (Connect, gRPC, gRPC-Web over TLS)", "listen", l.Addr().String(), "mtls", cfg.ClientCA != "")
	}
	wctx, cancel := context.WithCancel(ctx)
	wg.Go(func() { r.watch(wctx) })
	return func() { cancel(); stop() }, nil
}
