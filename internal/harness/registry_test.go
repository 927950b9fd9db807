package harness

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/magnetar-io/magnetar/internal/ociimage"
)

// TestRegistry checks what containerd's resolver and fetcher ask of the
// registry: the digest and media type of a manifest by tag (HEAD), the
// manifest and blobs by digest, per registry host (the "ns" parameter).
func TestRegistry(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	layer, err := ociimage.BuildLayer(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	img := ociimage.Image{Name: "registry.k8s.io/e2e-test-images/x:1", Layers: []ociimage.Layer{layer}}
	r, err := StartRegistry(img, ociimage.Image{Name: "gcr.io/y", Layers: []ociimage.Layer{layer}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	desc, _, err := ociimage.Blobs(img)
	if err != nil {
		t.Fatal(err)
	}
	get := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+r.Addr()+path, nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	if resp, _ := get(http.MethodGet, "/v2/"); resp.StatusCode != 200 {
		t.Errorf("/v2/: %s", resp.Status)
	}
	resp, _ := get(http.MethodHead, "/v2/e2e-test-images/x/manifests/1?ns=registry.k8s.io")
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != desc.Digest.String() ||
		resp.Header.Get("Content-Type") != desc.MediaType || resp.ContentLength != desc.Size {
		t.Errorf("HEAD manifest by tag: %s %v", resp.Status, resp.Header)
	}
	if resp, body := get(http.MethodGet, "/v2/e2e-test-images/x/manifests/"+desc.Digest.String()+"?ns=registry.k8s.io"); resp.StatusCode != 200 || int64(len(body)) != desc.Size {
		t.Errorf("GET manifest by digest: %s", resp.Status)
	}
	if resp, body := get(http.MethodGet, "/v2/e2e-test-images/x/blobs/"+layer.Digest.String()+"?ns=registry.k8s.io"); resp.StatusCode != 200 || body != string(layer.Blob) {
		t.Errorf("GET layer: %s", resp.Status)
	}
	if resp, _ := get(http.MethodHead, "/v2/y/manifests/latest?ns=gcr.io"); resp.StatusCode != 200 {
		t.Errorf("name without tag is not served as latest: %s", resp.Status)
	}
	for _, p := range []string{
		"/v2/e2e-test-images/x/manifests/1?ns=gcr.io", // another host
		"/v2/e2e-test-images/x/manifests/2?ns=registry.k8s.io",
		"/v2/e2e-test-images/x/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
		"/v3/",
	} {
		if resp, _ := get(http.MethodGet, p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, resp.Status)
		}
	}
	if resp, _ := get(http.MethodPut, "/v2/e2e-test-images/x/manifests/1"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT: %s", resp.Status)
	}
	if _, err := StartRegistry(ociimage.Image{Name: "a.io/x@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf", Layers: []ociimage.Layer{layer}}); err == nil {
		t.Error("by-digest name accepted")
	}
	if _, err := StartRegistry(img, img); err == nil {
		t.Error("duplicate name accepted")
	}
}
