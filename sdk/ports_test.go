package sdk_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
)

// echo sends data on a DialPort connection to an echo server, half-closes
// it and returns what came back until the server closed its side.
func echo(c net.Conn, data []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-errc; err != nil {
		return got, err
	}
	return got, rerr
}

// TestDialPort reaches servers in a runc sandbox through the sandboxer:
// busybox httpd with 50 connections at once (an HTTP client whose
// transport dials with DialPort; a CGI echoes each body) and a large file
// checked byte for byte, then a half-closed echo connection, and clear
// errors for a closed port and a bad one, over both protocols.
func TestDialPort(t *testing.T) {
	sock := apitest.Serve(t, runcBackend(t))
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	big := portRootfs(t, rootfs, 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	setup := dial(t, sock)
	sb, err := setup.CreateSandbox(ctx, "runc", sdk.WithID("ports"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(context.Background(), sdk.Force())
	checkDialPort(ctx, t, sock, sb, rootfs, big, 50)
}

// portRootfs adds to rootfs what checkDialPort serves: www/big (size
// random bytes, returned) and a CGI that echoes a request's body.
func portRootfs(t *testing.T, rootfs string, size int) []byte {
	t.Helper()
	big := make([]byte, size)
	rand.Read(big)
	files := map[string][]byte{
		"www/big":          big,
		"www/cgi-bin/echo": []byte("#!/bin/sh\necho 'Content-Type: application/octet-stream'\necho\nhead -c \"$CONTENT_LENGTH\"\n"),
	}
	for name, data := range files {
		path := filepath.Join(rootfs, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return big
}

// checkDialPort runs DialPort's assertions in sandbox sb (served at sock)
// with containers made from rootfs (see portRootfs, whose www/big is
// big): conns HTTP requests at once, the large file, errors, over both
// protocols; then a half-closed echo connection.
func checkDialPort(ctx context.Context, t *testing.T, sock string, sb *sdk.Sandbox, rootfs string, big []byte, conns int) {
	if _, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.WithContainerID("web"), sdk.Args("httpd", "-f", "-p", "8080", "-h", "/www")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		c, err := sb.DialPort(ctx, 8080)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "httpd listens")

	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			c := dial(t, sock, opts...)
			sb, err := c.Sandbox(ctx, sb.ID)
			if err != nil {
				t.Fatal(err)
			}
			hc := &http.Client{Transport: &http.Transport{
				DialContext:     func(ctx context.Context, _, _ string) (net.Conn, error) { return sb.DialPort(ctx, 8080) },
				MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns,
			}}
			defer hc.CloseIdleConnections()
			var wg sync.WaitGroup
			for i := range conns {
				wg.Go(func() {
					data := make([]byte, 16<<10+i)
					rand.Read(data)
					resp, err := hc.Post("http://sandbox/cgi-bin/echo", "application/octet-stream", bytes.NewReader(data))
					if err != nil {
						t.Errorf("request %d: %v", i, err)
						return
					}
					defer resp.Body.Close()
					got, err := io.ReadAll(resp.Body)
					if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, data) {
						t.Errorf("request %d: %s, %d of %d bytes back, equal=%v (%v)", i, resp.Status, len(got), len(data), bytes.Equal(got, data), err)
					}
				})
			}
			wg.Wait()

			// A large file, streamed.
			resp, err := hc.Get("http://sandbox/big")
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			want := sha256.Sum256(big)
			if err != nil || n != int64(len(big)) || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Errorf("large file: %d of %d bytes, same=%v, %v", n, len(big), bytes.Equal(h.Sum(nil), want[:]), err)
			}

			if _, err := sb.DialPort(ctx, 9); !errdefs.IsUnavailable(err) {
				t.Errorf("DialPort to a closed port: %v, want unavailable", err)
			}
			if _, err := sb.DialPort(ctx, 70000); !errdefs.IsInvalidArgument(err) {
				t.Errorf("DialPort(70000): %v, want invalid argument", err)
			}
		})
	}

	// Half-close: the process reads end of file, answers, and closes.
	if _, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.WithContainerID("echo"), sdk.Args("nc", "-l", "-p", "8081", "-e", "cat")); err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	var err error
	testutil.Eventually(t, 30*time.Second, func() bool {
		conn, err = sb.DialPort(ctx, 8081)
		return err == nil
	}, "nc listens")
	defer conn.Close()
	data := []byte("a line for cat\n")
	got, err := echo(conn, data)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("half-closed echo: %q, %v; want %q", got, err, data)
	}
}

// TestDialPortWasmIsNotTheHost: a wasm sandbox's running module is an
// instance in a runner process on the host's network namespace, so its
// "127.0.0.1" is the host's: DialPort refuses (NotImplemented) instead
// of reaching a server the host runs on its loopback, and its usage
// counts none of the host's traffic.
func TestDialPortWasmIsNotTheHost(t *testing.T) {
	k := fileKinds["wasm"]
	sock := apitest.Serve(t, k.backend(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := dial(t, sock)
	sb, err := c.CreateSandbox(ctx, "wasm")
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(context.Background(), sdk.Force())
	ctr, err := sb.Run(ctx, sdk.FromRootfs(k.rootfs(t)), sdk.Args(k.sleep...))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool {
		return ctr.Refresh(ctx) == nil && ctr.State == sdk.ContainerRunning
	}, "the module runs")
	conn, err := sb.DialPort(ctx, ln.Addr().(*net.TCPAddr).Port)
	if err == nil {
		conn.Close()
		t.Fatal("DialPort into a wasm sandbox reached a server on the host's loopback")
	}
	if !errdefs.IsNotImplemented(err) {
		t.Errorf("DialPort into a wasm sandbox: %v, want NotImplemented", err)
	}
	u, err := sb.Usage(ctx)
	if err != nil || u.NetRxBytes != 0 || u.NetTxBytes != 0 {
		t.Errorf("usage of a wasm sandbox: %+v, %v; want no network bytes", u, err)
	}
}
