package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/magnetar-io/magnetar/internal/ociimage"
)

// Registry is a read-only OCI distribution registry on 127.0.0.1 serving
// images built on this machine (internal/ociimage) under their full names,
// for tests whose client insists on pulling (critest). Point a private
// containerd at it with Options.Registry: every host name (registry.k8s.io,
// gcr.io, ...) is then served from here, and a name it does not hold is not
// found; nothing leaves the machine.
type Registry struct {
	ln  net.Listener
	srv *http.Server
	// tags maps "host/repository:tag" to a manifest; blobs holds every
	// manifest, config and layer by digest.
	tags  map[string]ocispec.Descriptor
	blobs map[digest.Digest][]byte
	done  chan struct{}
	once  sync.Once
}

// StartRegistry serves images, each under its Name ("host/repo:tag"; a name
// without a tag is served as ":latest"), on a new port of 127.0.0.1. Two
// names may share one manifest.
func StartRegistry(images ...ociimage.Image) (*Registry, error) {
	r := &Registry{tags: map[string]ocispec.Descriptor{}, blobs: map[digest.Digest][]byte{}, done: make(chan struct{})}
	for _, img := range images {
		spec, err := reference.Parse(img.Name)
		if err != nil {
			return nil, fmt.Errorf("harness: registry image name %q: %w", img.Name, err)
		}
		if spec.Digest() != "" {
			return nil, fmt.Errorf("harness: registry image name %q: by-digest names cannot be served (their digest is not ours)", img.Name)
		}
		tag := spec.Object
		if tag == "" {
			tag = "latest"
		}
		key := spec.Locator + ":" + tag
		if _, dup := r.tags[key]; dup {
			return nil, fmt.Errorf("harness: registry image %q given twice", key)
		}
		desc, blobs, err := ociimage.Blobs(img)
		if err != nil {
			return nil, err
		}
		desc.Platform = nil
		r.tags[key] = desc
		for d, b := range blobs {
			r.blobs[d] = b
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("harness: registry: %w", err)
	}
	r.ln = ln
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(r.done)
		_ = r.srv.Serve(ln)
	}()
	return r, nil
}

// Addr is the registry's "127.0.0.1:port".
func (r *Registry) Addr() string { return r.ln.Addr().String() }

// Close stops the registry and waits for its server to return.
func (r *Registry) Close() error {
	var err error
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err = r.srv.Shutdown(ctx); err != nil {
			err = errors.Join(err, r.srv.Close())
		}
		<-r.done
	})
	return err
}

// serve answers the read side of the distribution API: GET/HEAD /v2/,
// /v2/<name>/manifests/<tag or digest> and /v2/<name>/blobs/<digest>.
// containerd sends the registry host a name was pulled from in the "ns"
// query parameter when it talks to a mirror.
func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read-only registry", http.StatusMethodNotAllowed)
		return
	}
	path := strings.TrimPrefix(req.URL.Path, "/v2/")
	if path == "" || path == req.URL.Path {
		if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			w.WriteHeader(http.StatusOK)
			return
		}
		http.NotFound(w, req)
		return
	}
	var (
		name, ref string
		manifest  bool
	)
	if i := strings.LastIndex(path, "/manifests/"); i > 0 {
		name, ref, manifest = path[:i], path[i+len("/manifests/"):], true
	} else if i := strings.LastIndex(path, "/blobs/"); i > 0 {
		name, ref = path[:i], path[i+len("/blobs/"):]
	} else {
		http.NotFound(w, req)
		return
	}
	host := req.URL.Query().Get("ns")
	if host == "" {
		host = req.Host
	}
	var (
		data      []byte
		mediaType = "application/octet-stream"
		dgst      digest.Digest
	)
	if d, err := digest.Parse(ref); err == nil {
		b, ok := r.blobs[d]
		if !ok {
			http.NotFound(w, req)
			return
		}
		data, dgst = b, d
		if manifest {
			mediaType = ocispec.MediaTypeImageManifest
		}
	} else {
		desc, ok := r.tags[host+"/"+name+":"+ref]
		if !manifest || !ok {
			http.NotFound(w, req)
			return
		}
		data, dgst, mediaType = r.blobs[desc.Digest], desc.Digest, desc.MediaType
	}
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Docker-Content-Digest", dgst.String())
	http.ServeContent(w, req, "", time.Time{}, bytes.NewReader(data))
}
