package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/reflect/protoreflect"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	filev1 "github.com/magnetar-io/magnetar/gen/magnetar/file/v1"
	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/apiserver"
	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/backend/backendfake"
	"github.com/magnetar-io/magnetar/sdk/cli"
)

// pki is a test CA with what the tests need signed by it.
type pki struct {
	dir                       string
	caFile, otherCAFile       string
	serverCert, serverKey     string
	clientCert, clientKey     string
	expiredCert, expiredKey   string
	strangerCert, strangerKey string // signed by the other CA
	caPool                    *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir}
	ca, caKey := makeCert(t, nil, nil, "test CA", true, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	other, otherKey := makeCert(t, nil, nil, "other CA", true, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	p.caFile = writePEM(t, dir, "ca.crt", ca.Raw, nil)
	p.otherCAFile = writePEM(t, dir, "other-ca.crt", other.Raw, nil)
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(ca)
	issue := func(name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, notBefore, notAfter time.Time) (string, string) {
		c, k := makeCert(t, parent, parentKey, name, false, notBefore, notAfter)
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".crt", c.Raw, nil), writePEM(t, dir, name+".key", nil, der)
	}
	now := time.Now()
	p.serverCert, p.serverKey = issue("server", ca, caKey, now.Add(-time.Hour), now.Add(time.Hour))
	p.clientCert, p.clientKey = issue("client", ca, caKey, now.Add(-time.Hour), now.Add(time.Hour))
	p.expiredCert, p.expiredKey = issue("expired", ca, caKey, now.Add(-2*time.Hour), now.Add(-time.Hour))
	p.strangerCert, p.strangerKey = issue("stranger", other, otherKey, now.Add(-time.Hour), now.Add(time.Hour))
	return p
}

// makeCert makes a certificate for 127.0.0.1, self-signed when parent is
// nil.
func makeCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool, notBefore, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:        isCA, BasicConstraintsValid: true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func writePEM(t *testing.T, dir, name string, cert, key []byte) string {
	t.Helper()
	var b []byte
	if cert != nil {
		b = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert})
	} else {
		b = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key})
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tenantsDoc is a tenants file of entries (TOML), each token hashed.
func tenantsDoc(entries ...string) string {
	var b strings.Builder
	b.WriteString("version = 1\n")
	for _, e := range entries {
		b.WriteString("[[tenant]]\n" + e + "\n")
	}
	return b.String()
}

func tokenLine(tokens ...string) string {
	var hs []string
	for _, tk := range tokens {
		hs = append(hs, fmt.Sprintf("%q", apiserver.HashToken(tk)))
	}
	return "token_sha256 = [" + strings.Join(hs, ", ") + "]"
}

// syncBuffer is a log output safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	t  *testing.T
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.t.Log(strings.TrimRight(string(p), "\n"))
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// remoteDaemon is a daemon with a remote listener.
type remoteDaemon struct {
	addr    string
	pki     *pki
	cfg     Config
	logs    *syncBuffer
	tenants string // the tenants file
	stop    func()
}

// startRemote runs a daemon (fake backend) with a remote TLS listener on
// 127.0.0.1 and the tenants of doc.
func startRemote(t *testing.T, doc string, mtls bool) *remoteDaemon {
	t.Helper()
	p := newPKI(t)
	cfg := testConfig(t)
	cfg.LogLevel = "info"
	// The host's administrator may reach the host; tenants never.
	cfg.APIAllowHostAccess = true
	tenants := filepath.Join(t.TempDir(), "tenants.toml")
	if err := os.WriteFile(tenants, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Remote = RemoteConfig{
		Listen: []string{"tcp://127.0.0.1:0"}, TLSCert: p.serverCert, TLSKey: p.serverKey,
		TenantsFile: tenants, ReloadInterval: Duration(20 * time.Millisecond),
	}
	if mtls {
		cfg.Remote.ClientCA = p.caFile
	}
	logs := &syncBuffer{t: t}
	d := &remoteDaemon{pki: p, cfg: cfg, logs: logs, tenants: tenants}
	d.addr, d.stop = runRemote(t, cfg, logs)
	return d
}

// runRemote runs the daemon of cfg until the test ends or stop is called
// and returns its remote listener's address.
func runRemote(t *testing.T, cfg Config, logs io.Writer) (string, func()) {
	t.Helper()
	addrs := make(chan string, 1)
	cfg.onRemoteListen = func(a string) { addrs <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	lg := hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: logs})
	go func() { done <- run(ctx, cfg, lg, []backend.Backend{backendfake.New(backendfake.Config{})}) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("daemon: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Error("daemon did not stop")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case a := <-addrs:
		return a, stop
	case err := <-done:
		t.Fatalf("daemon exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("remote listener never came up")
	}
	return "", nil
}

// httpClient is an HTTP/2 client over TLS trusting pool, presenting the
// certificate of certFile/keyFile if given.
func httpClient(t *testing.T, pool *x509.CertPool, certFile, keyFile string) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// rpcResult is the outcome of one call: its code ("" for success) and the
// response messages (JSON).
type rpcResult struct {
	code    string
	message string // of an error
	msgs    []string
}

// callJSON makes one call of the Connect protocol with a JSON request:
// unary calls as plain JSON, streaming ones with one enveloped message.
func callJSON(t *testing.T, hc *http.Client, base, token string, md protoreflect.MethodDescriptor, body string) rpcResult {
	t.Helper()
	proc := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	stream := md.IsStreamingClient() || md.IsStreamingServer()
	var req *http.Request
	var err error
	if !stream {
		req, err = http.NewRequest("POST", base+proc, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	} else {
		var env bytes.Buffer
		env.WriteByte(0)
		binary.Write(&env, binary.BigEndian, uint32(len(body)))
		env.WriteString(body)
		req, err = http.NewRequest("POST", base+proc, &env)
		req.Header.Set("Content-Type", "application/connect+json")
	}
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", proc, err)
	}
	defer res.Body.Close()
	var errBody struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Error   *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if !stream {
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 200 {
			json.Unmarshal(b, &errBody)
			return rpcResult{code: errBody.Code, message: errBody.Message}
		}
		return rpcResult{msgs: []string{string(b)}}
	}
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		json.Unmarshal(b, &errBody)
		return rpcResult{code: errBody.Code, message: errBody.Message}
	}
	var out rpcResult
	rd := bufio.NewReader(res.Body)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(rd, hdr[:]); err != nil {
			t.Fatalf("%s: read envelope: %v", proc, err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(rd, b); err != nil {
			t.Fatalf("%s: read envelope: %v", proc, err)
		}
		if hdr[0]&2 != 0 { // end of stream
			json.Unmarshal(b, &errBody)
			if errBody.Error != nil {
				out.code, out.message = errBody.Error.Code, errBody.Error.Message
			}
			return out
		}
		out.msgs = append(out.msgs, string(b))
	}
}

// methods returns the API's methods by name ("Service/Method").
func methods() map[string]protoreflect.MethodDescriptor {
	out := map[string]protoreflect.MethodDescriptor{}
	for _, fd := range []protoreflect.FileDescriptor{sandboxv1.File_magnetar_sandbox_v1_sandbox_proto, containerv1.File_magnetar_container_v1_container_proto,
		filev1.File_magnetar_file_v1_file_proto, imagev1.File_magnetar_image_v1_image_proto} {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				out[string(sd.Name())+"/"+string(md.Name())] = md
			}
		}
	}
	return out
}

// pushImage serves a registry with one small linux image and returns its
// reference.
func pushImage(t *testing.T) string {
	t.Helper()
	ref, _ := pushImageTo(t, serveRegistry(t), "test/app:v1", 64)
	return ref
}

// serveRegistry serves an empty registry (plain HTTP on 127.0.0.1) and
// returns its host:port.
func serveRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// pushImageTo pushes a linux image with a layer of about layerBytes to
// repo (name:tag) of the registry at host and returns its reference and
// its size as the image store counts it (manifest, config, layers).
func pushImageTo(t *testing.T, host, repo string, layerBytes int64) (string, int64) {
	t.Helper()
	layer, err := random.Layer(layerBytes, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	ref := host + "/" + repo
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})); err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return ref, size
}

func TestRemoteConfigNeedsTLSAndTenants(t *testing.T) {
	for name, r := range map[string]RemoteConfig{
		"no cert":    {Listen: []string{"tcp://127.0.0.1:0"}, TenantsFile: "/t"},
		"no key":     {Listen: []string{"tcp://127.0.0.1:0"}, TLSCert: "/c", TenantsFile: "/t"},
		"no tenants": {Listen: []string{"tcp://127.0.0.1:0"}, TLSCert: "/c", TLSKey: "/k"},
		"not tcp":    {Listen: []string{"http://127.0.0.1:1"}, TLSCert: "/c", TLSKey: "/k", TenantsFile: "/t"},
		"no port":    {Listen: []string{"tcp://127.0.0.1"}, TLSCert: "/c", TLSKey: "/k", TenantsFile: "/t"},
	} {
		cfg := DefaultConfig()
		cfg.Remote = r
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: config accepted", name)
		}
	}
	// A certificate that cannot be read stops the start: nothing listens.
	cfg := testConfig(t)
	tenants := filepath.Join(t.TempDir(), "tenants.toml")
	os.WriteFile(tenants, []byte(tenantsDoc(`name = "a"`+"\n"+tokenLine("x"))), 0o600)
	cfg.Remote = RemoteConfig{Listen: []string{"tcp://127.0.0.1:0"}, TLSCert: "/nonexistent.crt", TLSKey: "/nonexistent.key", TenantsFile: tenants}
	err := run(context.Background(), cfg, hclog.NewNullLogger(), []backend.Backend{backendfake.New(backendfake.Config{})})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("run without a certificate = %v", err)
	}
	// A bad tenants file too.
	p := newPKI(t)
	os.WriteFile(tenants, []byte("version = 1\n[[tenant]]\nname = \"a\"\ntoken_sha256 = [\"plain-token\"]\n"), 0o600)
	cfg.Remote.TLSCert, cfg.Remote.TLSKey = p.serverCert, p.serverKey
	err = run(context.Background(), cfg, hclog.NewNullLogger(), []backend.Backend{backendfake.New(backendfake.Config{})})
	if err == nil || !strings.Contains(err.Error(), "token_sha256") {
		t.Errorf("run with a plain token in the tenants file = %v", err)
	}
}

func TestRemoteTLSAndTokens(t *testing.T) {
	d := startRemote(t, tenantsDoc(`name = "a"`+"\n"+tokenLine("token-a")), true)
	base := "https://" + d.addr
	kinds := methods()["SandboxService/ListKinds"]

	// Plain HTTP is not served.
	res, err := (&http.Client{Timeout: 10 * time.Second}).Post("http://"+d.addr+"/magnetar.sandbox.v1.SandboxService/ListKinds", "application/json", strings.NewReader("{}"))
	if err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == 200 || strings.Contains(string(b), "kinds") {
			t.Errorf("plain HTTP answered %d %s", res.StatusCode, b)
		}
	}
	// A server certificate of another CA is refused by the client; client
	// certificates that are expired, of another CA, or missing are
	// refused by the server.
	other := x509.NewCertPool()
	otherPEM, _ := os.ReadFile(d.pki.otherCAFile)
	other.AppendCertsFromPEM(otherPEM)
	for name, hc := range map[string]*http.Client{
		"wrong CA":           httpClient(t, other, d.pki.clientCert, d.pki.clientKey),
		"no client cert":     httpClient(t, d.pki.caPool, "", ""),
		"expired client":     httpClient(t, d.pki.caPool, d.pki.expiredCert, d.pki.expiredKey),
		"client of other CA": httpClient(t, d.pki.caPool, d.pki.strangerCert, d.pki.strangerKey),
	} {
		req, _ := http.NewRequest("POST", base+"/magnetar.sandbox.v1.SandboxService/ListKinds", strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer token-a")
		if res, err := hc.Do(req); err == nil {
			res.Body.Close()
			t.Errorf("%s: answered %d", name, res.StatusCode)
		}
	}
	hc := httpClient(t, d.pki.caPool, d.pki.clientCert, d.pki.clientKey)
	for name, token := range map[string]string{"no token": "", "bad token": "token-b"} {
		if r := callJSON(t, hc, base, token, kinds, "{}"); r.code != "unauthenticated" {
			t.Errorf("%s: code %q, want unauthenticated", name, r.code)
		}
	}
	if r := callJSON(t, hc, base, "token-a", kinds, "{}"); r.code != "" || !strings.Contains(r.msgs[0], "fake") {
		t.Errorf("ListKinds with a token: %+v", r)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(d.logs.String(), "refused call") && strings.Contains(d.logs.String(), "invalid token")
	}, "refused calls are not logged")
}

// TestRemoteTenantIsolation has tenant B make a sandbox, a container and
// an image, then tenant A try every method of every service on them.
func TestRemoteTenantIsolation(t *testing.T) {
	// The test registry is plain HTTP on 127.0.0.1.
	const reg = "\nallow_insecure_registries = true\nallow_private_registries = true"
	d := startRemote(t, tenantsDoc(
		`name = "a"`+"\n"+tokenLine("token-a")+reg,
		`name = "b"`+"\n"+tokenLine("token-b")+reg,
		`name = "root"`+"\nadmin = true\n"+tokenLine("token-admin"),
	), false)
	base := "https://" + d.addr
	hc := httpClient(t, d.pki.caPool, "", "")
	ms := methods()
	call := func(token, method, body string) rpcResult {
		t.Helper()
		md, ok := ms[method]
		if !ok {
			t.Fatalf("no method %s", method)
		}
		return callJSON(t, hc, base, token, md, body)
	}
	must := func(r rpcResult, what string) rpcResult {
		t.Helper()
		if r.code != "" {
			t.Fatalf("%s: %s", what, r.code)
		}
		return r
	}
	ref := pushImage(t)
	must(call("token-b", "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":true}`, ref)), "B pulls")
	must(call("token-b", "SandboxService/CreateSandbox", `{"sandboxId":"sb-b","kind":"fake"}`), "B creates a sandbox")
	must(call("token-b", "SandboxService/StartSandbox", `{"sandboxId":"sb-b"}`), "B starts it")
	must(call("token-b", "ContainerService/CreateContainer", fmt.Sprintf(`{"sandboxId":"sb-b","containerId":"ctr-b","image":%q,"process":{"args":["sleep","1000"]}}`, ref)), "B creates a container")
	must(call("token-b", "ContainerService/StartContainer", `{"containerId":"ctr-b"}`), "B starts it")
	must(call("token-a", "SandboxService/CreateSandbox", `{"sandboxId":"sb-a","kind":"fake"}`), "A creates a sandbox")
	const hidden = "" // a success whose answer must not mention B's things
	cases := map[string]struct {
		body string
		want string
	}{
		"SandboxService/CreateSandbox": {`{"kind":"fake","labels":{"magnetar.io/tenant":"b"}}`, "invalid_argument"},
		"SandboxService/StartSandbox":  {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/StopSandbox":   {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/DeleteSandbox": {`{"sandboxId":"sb-b","force":true}`, "not_found"},
		"SandboxService/GetSandbox":    {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/ListSandboxes": {`{"labels":{"magnetar.io/tenant":"b"}}`, hidden},
		// IDs are per tenant: A's "sb-b" is its own (below).
		"SandboxService/WatchEvents":         {"", "skip"},
		"SandboxService/PauseSandbox":        {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/ResumeSandbox":       {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/GetSandboxUsage":     {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/WatchSandboxUsage":   {`{"sandboxId":"sb-b"}`, "not_found"},
		"SandboxService/DialPort":            {`{"target":{"sandboxId":"sb-b","port":80}}`, "not_found"},
		"SandboxService/SetSandboxTimeout":   {`{"sandboxId":"sb-b","timeout":"1s"}`, "not_found"},
		"SandboxService/UpdateNetworkPolicy": {`{"sandboxId":"sb-b","egress":{"defaultAction":"EGRESS_ACTION_DENY"}}`, "not_found"},
		"SandboxService/ListKinds":           {`{}`, hidden},

		"ContainerService/CreateContainer":          {fmt.Sprintf(`{"sandboxId":"sb-b","containerId":"x","image":%q}`, ref), "not_found"},
		"ContainerService/StartContainer":           {`{"containerId":"ctr-b"}`, "not_found"},
		"ContainerService/GetContainer":             {`{"containerId":"ctr-b"}`, "not_found"},
		"ContainerService/ListContainers":           {`{"sandboxId":"sb-b"}`, "not_found"},
		"ContainerService/DeleteContainer":          {`{"containerId":"ctr-b","force":true}`, "not_found"},
		"ContainerService/ExecProcess":              {`{"containerId":"ctr-b","execId":"e","process":{"args":["true"]}}`, "not_found"},
		"ContainerService/SignalProcess":            {`{"containerId":"ctr-b","signal":9}`, "not_found"},
		"ContainerService/WaitProcess":              {`{"containerId":"ctr-b"}`, "not_found"},
		"ContainerService/ResizePty":                {`{"containerId":"ctr-b","size":{"width":10,"height":10}}`, "not_found"},
		"ContainerService/WriteStdin":               {`{"containerId":"ctr-b","data":"eA=="}`, "not_found"},
		"ContainerService/CloseStdin":               {`{"containerId":"ctr-b"}`, "not_found"},
		"ContainerService/AttachOutput":             {`{"containerId":"ctr-b"}`, "not_found"},
		"ContainerService/ContainerStats":           {`{"containerId":"ctr-b"}`, "not_found"},
		"ContainerService/UpdateContainerResources": {`{"containerId":"ctr-b","resources":{"memoryLimitBytes":"1"}}`, "not_found"},
		"ContainerService/ListProcesses":            {`{"containerId":"ctr-b"}`, "not_found"},

		"FileService/Stat":        {`{"containerId":"ctr-b","path":"/"}`, "not_found"},
		"FileService/List":        {`{"containerId":"ctr-b","path":"/"}`, "not_found"},
		"FileService/Read":        {`{"containerId":"ctr-b","path":"/etc/passwd"}`, "not_found"},
		"FileService/Write":       {`{"header":{"containerId":"ctr-b","path":"/x"}}`, "not_found"},
		"FileService/MakeDir":     {`{"containerId":"ctr-b","path":"/d"}`, "not_found"},
		"FileService/Remove":      {`{"containerId":"ctr-b","path":"/"}`, "not_found"},
		"FileService/Rename":      {`{"containerId":"ctr-b","oldPath":"/a","newPath":"/b"}`, "not_found"},
		"FileService/Watch":       {`{"containerId":"ctr-b","path":"/"}`, "not_found"},
		"FileService/DownloadTar": {`{"containerId":"ctr-b","path":"/"}`, "not_found"},
		"FileService/UploadTar":   {`{"header":{"containerId":"ctr-b","path":"/"}}`, "not_found"},

		"ImageService/ImportImage": {`{"path":"/etc/passwd"}`, "permission_denied"},
		"ImageService/ListImages":  {`{}`, hidden},
		"ImageService/GetImage":    {fmt.Sprintf(`{"ref":%q}`, ref), "not_found"},
		"ImageService/RemoveImage": {fmt.Sprintf(`{"ref":%q}`, ref), "not_found"},
		// Pulling a public image is every tenant's right; it then is
		// A's as well (below).
		"ImageService/PullImage": {"", "skip"},
	}
	for m := range ms {
		if _, ok := cases[m]; !ok {
			t.Errorf("method %s is not tried by tenant A", m)
		}
	}
	for m, c := range cases {
		if c.want == "skip" {
			continue
		}
		r := call("token-a", m, c.body)
		if r.code != c.want {
			t.Errorf("A: %s = %q, want %q", m, r.code, c.want)
		}
		for _, msg := range r.msgs {
			if strings.Contains(msg, "sb-b") || strings.Contains(msg, "ctr-b") || strings.Contains(msg, ref) {
				t.Errorf("A: %s answered with B's things: %s", m, msg)
			}
		}
	}
	// A's namespace has an "sb-b" of its own: A makes it next to B's, and
	// watching it shows A's events, never B's (B's was started and has a
	// container).
	ownEvents := make(chan rpcResult, 1)
	go func() {
		ownEvents <- callJSONUntil(t, hc, base, "token-a", ms["SandboxService/WatchEvents"], `{"sandboxIds":["sb-b"],"afterSequence":"0"}`, `"sb-b"`, "SANDBOX_DELETED")
	}()
	if r := must(call("token-a", "SandboxService/CreateSandbox", `{"sandboxId":"sb-b","kind":"fake"}`), "A creates its own sb-b"); !strings.Contains(r.msgs[0], `"id":"sb-b"`) {
		t.Errorf("A's sb-b: %s", r.msgs[0])
	}
	must(call("token-a", "SandboxService/DeleteSandbox", `{"sandboxId":"sb-b","force":true}`), "A deletes its own sb-b")
	if r := <-ownEvents; len(r.msgs) == 0 {
		t.Errorf("A saw no event of its sb-b: %+v", r)
	} else {
		for _, m := range r.msgs {
			if strings.Contains(m, "STARTED") || strings.Contains(m, "CONTAINER") || strings.Contains(m, "ctr-b") {
				t.Errorf("A saw B's event %s", m)
			}
		}
	}
	// Listing without a filter shows A's own only.
	if r := call("token-a", "SandboxService/ListSandboxes", `{}`); r.code != "" || !strings.Contains(r.msgs[0], "sb-a") || strings.Contains(r.msgs[0], "sb-b") {
		t.Errorf("A lists %+v", r)
	}
	if r := call("token-a", "ContainerService/ListContainers", `{}`); r.code != "" || strings.Contains(r.msgs[0], "ctr-b") {
		t.Errorf("A lists containers %+v", r)
	}
	// A's event stream replays only A's events: it ends with A's own
	// sandbox being deleted, and none of B's came before.
	events := make(chan rpcResult, 1)
	go func() {
		md := ms["SandboxService/WatchEvents"]
		events <- callJSONUntil(t, hc, base, "token-a", md, `{"afterSequence":"0"}`, `"sb-a"`, "SANDBOX_DELETED")
	}()
	must(call("token-a", "SandboxService/DeleteSandbox", `{"sandboxId":"sb-a","force":true}`), "A deletes its sandbox")
	r := <-events
	if len(r.msgs) == 0 {
		t.Error("A saw no event")
	}
	for _, m := range r.msgs {
		// A's own sb-b was never started and had no container.
		if strings.Contains(m, "STARTED") || strings.Contains(m, "CONTAINER") || strings.Contains(m, "ctr-b") {
			t.Errorf("A saw B's event %s", m)
		}
	}
	// B's things are untouched, and B's and the admin's views have them.
	if r := call("token-b", "ContainerService/GetContainer", `{"containerId":"ctr-b"}`); r.code != "" || !strings.Contains(r.msgs[0], "RUNNING") {
		t.Errorf("B's container after A's tries: %+v", r)
	}
	if r := call("token-admin", "SandboxService/ListSandboxes", `{}`); r.code != "" || !strings.Contains(r.msgs[0], "sb-b") {
		t.Errorf("the admin lists %+v", r)
	}
	// A pulls the image too: it is A's as well; A's removal leaves it to B.
	must(call("token-a", "ImageService/PullImage", fmt.Sprintf(`{"ref":%q,"insecure":true}`, ref)), "A pulls")
	if r := call("token-a", "ImageService/ListImages", `{}`); r.code != "" || !strings.Contains(r.msgs[0], ref) {
		t.Errorf("A's images after its pull: %+v", r)
	}
	must(call("token-a", "SandboxService/CreateSandbox", `{"sandboxId":"sb-a2","kind":"fake"}`), "A creates another sandbox")
	// A tenant cannot reach the host, even with the daemon's
	// api_allow_host_access on (the local socket's).
	hostDir := t.TempDir()
	for name, body := range map[string]string{
		"rootfs_path":   fmt.Sprintf(`{"sandboxId":"sb-a2","rootfsPath":%q,"process":{"args":["true"]}}`, hostDir),
		"oci_spec_json": fmt.Sprintf(`{"sandboxId":"sb-a2","image":%q,"ociSpecJson":"e30=","process":{"args":["true"]}}`, ref),
		"bind mount":    fmt.Sprintf(`{"sandboxId":"sb-a2","image":%q,"process":{"args":["true"]},"mounts":[{"source":"/","destination":"/host","type":"bind","options":["rbind"]}]}`, ref),
	} {
		if r := call("token-a", "ContainerService/CreateContainer", body); r.code != "permission_denied" {
			t.Errorf("A: CreateContainer with %s = %q, want permission_denied", name, r.code)
		}
	}

	must(call("token-a", "ImageService/RemoveImage", fmt.Sprintf(`{"ref":%q}`, ref)), "A removes the image")
	if r := call("token-a", "ImageService/GetImage", fmt.Sprintf(`{"ref":%q}`, ref)); r.code != "not_found" {
		t.Errorf("A's image after its removal: %+v", r)
	}
	if r := call("token-b", "ImageService/GetImage", fmt.Sprintf(`{"ref":%q}`, ref)); r.code != "" {
		t.Errorf("B's image after A's removal: %+v", r)
	}
	// Every mutating call is audited with its tenant, method, target and
	// result.
	logs := d.logs.String()
	for _, want := range []string{
		`audit: call: tenant=b method=/magnetar.sandbox.v1.SandboxService/CreateSandbox target=sandbox/b--sb-b result=ok`,
		`audit: call: tenant=a method=/magnetar.sandbox.v1.SandboxService/DeleteSandbox target=sandbox/a--sb-b result=not_found`,
		`audit: call: tenant=a method=/magnetar.file.v1.FileService/Write target=container/a--ctr-b/file//x result=not_found`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("audit log lacks %q", want)
		}
	}
	if strings.Contains(logs, "method=/magnetar.sandbox.v1.SandboxService/GetSandbox") {
		t.Error("a read-only call was audited")
	}
}

// callJSONUntil reads a server stream until a message contains all of
// want, then returns the messages read.
func callJSONUntil(t *testing.T, hc *http.Client, base, token string, md protoreflect.MethodDescriptor, body string, want ...string) rpcResult {
	proc := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	var env bytes.Buffer
	env.WriteByte(0)
	binary.Write(&env, binary.BigEndian, uint32(len(body)))
	env.WriteString(body)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+proc, &env)
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := hc.Do(req)
	if err != nil {
		return rpcResult{code: err.Error()}
	}
	defer res.Body.Close()
	var out rpcResult
	rd := bufio.NewReader(res.Body)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(rd, hdr[:]); err != nil {
			out.code = err.Error()
			return out
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(rd, b); err != nil {
			out.code = err.Error()
			return out
		}
		out.msgs = append(out.msgs, string(b))
		if hdr[0]&2 != 0 {
			return out
		}
		all := true
		for _, w := range want {
			all = all && strings.Contains(string(b), w)
		}
		if all {
			return out
		}
	}
}

func TestRemoteQuotas(t *testing.T) {
	d := startRemote(t, tenantsDoc(`name = "q"`+"\n"+tokenLine("token-q")+`
max_sandboxes = 2
max_millicpus = 1500
max_memory_bytes = 268435456
max_lifetime = "1h"`), false)
	base := "https://" + d.addr
	hc := httpClient(t, d.pki.caPool, "", "")
	ms := methods()
	create := func(body string) rpcResult {
		return callJSON(t, hc, base, "token-q", ms["SandboxService/CreateSandbox"], body)
	}
	count := func() int {
		r := callJSON(t, hc, base, "token-q", ms["SandboxService/ListSandboxes"], `{}`)
		return strings.Count(r.msgs[0], `"kind":"fake"`)
	}
	res := func(cpuMilli, mem int) string {
		return fmt.Sprintf(`"resources":{"cpuQuotaUs":"%d","cpuPeriodUs":"100000","memoryLimitBytes":"%d"}`, cpuMilli*100, mem)
	}
	r := create(`{"sandboxId":"q1","kind":"fake",` + res(1000, 128<<20) + `}`)
	if r.code != "" {
		t.Fatalf("first sandbox: %s", r.code)
	}
	// Without a timeout it got the maximum lifetime.
	var got struct {
		Sandbox struct {
			CreatedAt time.Time `json:"createdAt"`
			ExpiresAt time.Time `json:"expiresAt"`
			Labels    map[string]string
		} `json:"sandbox"`
	}
	if err := json.Unmarshal([]byte(r.msgs[0]), &got); err != nil {
		t.Fatal(err)
	}
	if life := got.Sandbox.ExpiresAt.Sub(got.Sandbox.CreatedAt); life < 59*time.Minute || life > time.Hour+time.Minute {
		t.Errorf("lifetime %v, want 1h: %s", life, r.msgs[0])
	}
	for name, body := range map[string]string{
		"no CPU limit":    `{"kind":"fake","resources":{"memoryLimitBytes":"1048576"}}`,
		"no memory limit": `{"kind":"fake","resources":{"cpuQuotaUs":"10000"}}`,
		"over CPU":        `{"kind":"fake",` + res(600, 1<<20) + `}`,
		"over memory":     `{"kind":"fake",` + res(100, 129<<20) + `}`,
		"too long":        `{"kind":"fake","timeout":"7200s",` + res(100, 1<<20) + `}`,
	} {
		if r := create(body); r.code != "resource_exhausted" {
			t.Errorf("%s: %q, want resource_exhausted", name, r.code)
		}
	}
	if n := count(); n != 1 {
		t.Errorf("%d sandboxes after refused creates, want 1", n)
	}
	if r := create(`{"sandboxId":"q2","kind":"fake",` + res(500, 128<<20) + `}`); r.code != "" {
		t.Fatalf("second sandbox: %s", r.code)
	}
	if r := create(`{"kind":"fake",` + res(1, 1) + `}`); r.code != "resource_exhausted" {
		t.Errorf("third sandbox: %q, want resource_exhausted", r.code)
	}
	setTimeout := ms["SandboxService/SetSandboxTimeout"]
	if r := callJSON(t, hc, base, "token-q", setTimeout, `{"sandboxId":"q1","timeout":"7200s"}`); r.code != "resource_exhausted" {
		t.Errorf("SetSandboxTimeout past the maximum lifetime: %q", r.code)
	}
	if r := callJSON(t, hc, base, "token-q", setTimeout, `{"sandboxId":"q1","timeout":"60s"}`); r.code != "" {
		t.Errorf("SetSandboxTimeout within it: %q", r.code)
	}
	// Deleting one frees its share.
	if r := callJSON(t, hc, base, "token-q", ms["SandboxService/DeleteSandbox"], `{"sandboxId":"q2","force":true}`); r.code != "" {
		t.Fatal(r.code)
	}
	if r := create(`{"kind":"fake",` + res(500, 128<<20) + `}`); r.code != "" {
		t.Errorf("create after a delete: %q", r.code)
	}
	// The audit names the ID the server chose.
	if !regexp.MustCompile(`tenant=q method=/magnetar.sandbox.v1.SandboxService/CreateSandbox target=sandbox/[A-Za-z0-9][A-Za-z0-9_.-]+ result=ok`).MatchString(d.logs.String()) {
		t.Error("no audit line names a sandbox the server named")
	}
	// A request over the size limit is refused before it is read whole.
	if r := create(`{"kind":"fake","labels":{"big":"` + strings.Repeat("x", MaxAPIRequestSize+1) + `"}}`); r.code != "resource_exhausted" {
		t.Errorf("oversized request: %q, want resource_exhausted", r.code)
	}
	// Tenants cannot reach the host.
	for name, body := range map[string]string{
		"host network":  `{"kind":"fake","network":{"mode":"NETWORK_MODE_HOST"}}`,
		"cgroup parent": `{"kind":"fake","cgroupParent":"/x"}`,
	} {
		if r := create(body); r.code != "permission_denied" {
			t.Errorf("%s: %q, want permission_denied", name, r.code)
		}
	}
}

// TestRemoteFloodDoesNotStarveOthers floods the daemon from one tenant
// while another makes calls: the flood is cut by its rate limit, and the
// other's calls stay quick.
func TestRemoteFloodDoesNotStarveOthers(t *testing.T) {
	d := startRemote(t, tenantsDoc(
		`name = "flood"`+"\n"+tokenLine("token-flood")+"\nrate_limit = 20\nrate_burst = 20\nmax_concurrent_calls = 8",
		`name = "calm"`+"\n"+tokenLine("token-calm"),
	), false)
	base := "https://" + d.addr
	ms := methods()
	list := ms["SandboxService/ListSandboxes"]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[string]int{}
	for range 8 {
		hc := httpClient(t, d.pki.caPool, "", "")
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				r := callJSON(t, hc, base, "token-flood", list, `{}`)
				mu.Lock()
				codes[r.code]++
				mu.Unlock()
			}
		})
	}
	hc := httpClient(t, d.pki.caPool, "", "")
	var worst time.Duration
	for i := range 30 {
		start := time.Now()
		if r := callJSON(t, hc, base, "token-calm", list, `{}`); r.code != "" {
			t.Errorf("calm call %d: %s", i, r.code)
		}
		worst = max(worst, time.Since(start))
	}
	close(stop)
	wg.Wait()
	t.Logf("flood: %v; calm's slowest call %v", codes, worst)
	if codes["resource_exhausted"] == 0 {
		t.Error("the flood was never limited")
	}
	if worst > 2*time.Second {
		t.Errorf("calm's slowest call took %v during the flood", worst)
	}
}

func TestRemoteTokenReload(t *testing.T) {
	d := startRemote(t, tenantsDoc(`name = "a"`+"\n"+tokenLine("token-a")), false)
	base := "https://" + d.addr
	hc := httpClient(t, d.pki.caPool, "", "")
	kinds := methods()["SandboxService/ListKinds"]
	code := func(token string) string { return callJSON(t, hc, base, token, kinds, "{}").code }
	if c := code("token-c"); c != "unauthenticated" {
		t.Fatalf("token-c before it is added: %q", c)
	}
	write := func(doc string) {
		tmp := d.tenants + ".tmp"
		if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, d.tenants); err != nil {
			t.Fatal(err)
		}
	}
	write(tenantsDoc(`name = "c"` + "\n" + tokenLine("token-c")))
	testutil.Eventually(t, 10*time.Second, func() bool { return code("token-c") == "" }, "the added token never worked")
	if c := code("token-a"); c != "unauthenticated" {
		t.Errorf("removed token-a: %q", c)
	}
	// A broken file keeps the tenants in use.
	write("version = 1\n[[tenant]]\nname = \"c\"\n")
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(d.logs.String(), "tenants file not reloaded")
	}, "the broken file was not reported")
	if c := code("token-c"); c != "" {
		t.Errorf("token-c after a broken reload: %q", c)
	}
}

// TestRemoteGoSDKAndCLI drives the remote listener with the Go SDK and the
// magnetar CLI (token from the environment, CA from a flag), and checks
// that ownership survives a restart of the daemon.
func TestRemoteGoSDKAndCLI(t *testing.T) {
	d := startRemote(t, tenantsDoc(
		`name = "a"`+"\n"+tokenLine("token-a"),
		`name = "b"`+"\n"+tokenLine("token-b"),
	), true)
	ctx := context.Background()
	url := "https://" + d.addr
	dial := func(token string, opts ...sdk.Option) *sdk.Client {
		t.Helper()
		opts = append([]sdk.Option{sdk.WithCAFile(d.pki.caFile), sdk.WithClientCertificate(d.pki.clientCert, d.pki.clientKey), sdk.WithRetryTimeout(0)}, opts...)
		if token != "" {
			opts = append(opts, sdk.WithToken(token))
		}
		c, err := sdk.Dial(ctx, url, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, grpc := range []bool{false, true} {
		var opts []sdk.Option
		if grpc {
			opts = append(opts, sdk.WithGRPC())
		}
		if _, err := dial("", opts...).Kinds(ctx); !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Errorf("grpc=%v: Kinds without a token = %v", grpc, err)
		}
		if _, err := dial("token-a", opts...).Kinds(ctx); err != nil {
			t.Errorf("grpc=%v: Kinds with a token = %v", grpc, err)
		}
	}
	if _, err := sdk.Dial(ctx, "unix:///nonexistent.sock", sdk.WithToken("x")); !errdefs.IsInvalidArgument(err) {
		t.Errorf("a token over the unix socket: %v", err)
	}
	b := dial("token-b")
	sb, err := b.CreateSandbox(ctx, "fake", sdk.WithID("sb-b"))
	if err != nil {
		t.Fatal(err)
	}
	a := dial("token-a")
	if _, err := a.Sandbox(ctx, sb.ID); !errdefs.IsNotFound(err) {
		t.Errorf("A gets B's sandbox: %v", err)
	}

	// The CLI: token from MAGNETAR_TOKEN, address from MAGNETAR_ADDRESS.
	cliRun := func(env map[string]string, args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		c := &cli.CLI{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return env[k] }}
		code := c.Run(ctx, args)
		return code, stdout.String(), stderr.String()
	}
	env := map[string]string{"MAGNETAR_ADDRESS": url, "MAGNETAR_TOKEN": "token-b", "MAGNETAR_CLIENT_CERT": d.pki.clientCert, "MAGNETAR_CLIENT_KEY": d.pki.clientKey}
	if code, out, errOut := cliRun(env, "--ca-cert", d.pki.caFile, "ps", "--sandboxes", "-q"); code != 0 || strings.TrimSpace(out) != "sb-b" {
		t.Errorf("magnetar ps as B: %d %q %q", code, out, errOut)
	}
	env["MAGNETAR_TOKEN"] = "token-a"
	if code, out, errOut := cliRun(env, "--ca-cert", d.pki.caFile, "ps", "--sandboxes", "-q"); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("magnetar ps as A: %d %q %q", code, out, errOut)
	}
	delete(env, "MAGNETAR_TOKEN")
	if code, _, errOut := cliRun(env, "--ca-cert", d.pki.caFile, "kinds"); code == 0 || !strings.Contains(errOut, "no bearer token") {
		t.Errorf("magnetar kinds without a token: %d %q", code, errOut)
	}

	// Ownership is in the engine's record: it survives a restart.
	d.stop()
	addr, _ := runRemote(t, d.cfg, d.logs)
	url = "https://" + addr
	if _, err := dial("token-b").Sandbox(ctx, "sb-b"); err != nil {
		t.Errorf("B's sandbox after a restart: %v", err)
	}
	if _, err := dial("token-a").Sandbox(ctx, "sb-b"); !errdefs.IsNotFound(err) {
		t.Errorf("A gets B's sandbox after a restart: %v", err)
	}
}
