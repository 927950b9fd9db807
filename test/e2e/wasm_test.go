package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/magnetar-io/magnetar/internal/harness"
	"github.com/magnetar-io/magnetar/internal/ociimage"
)

// helloWasmImage is examples/hello-wasm as an image in containerd.
const helloWasmImage = "docker.io/magnetar/hello-wasm:e2e"

var (
	wasmImageOnce sync.Once
	wasmImageErr  error
)

// importHelloWasm builds examples/hello-wasm for WASI, packages it as an OCI
// image whose entrypoint is /hello.wasm, and imports it into containerd.
func (e *env) importHelloWasm(t testing.TB) {
	t.Helper()
	wasmImageOnce.Do(func() {
		root, err := harness.ModuleRoot()
		if err != nil {
			wasmImageErr = err
			return
		}
		dir, err := os.MkdirTemp("", "hello-wasm-")
		if err != nil {
			wasmImageErr = err
			return
		}
		defer os.RemoveAll(dir)
		rootfs := filepath.Join(dir, "rootfs")
		build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(rootfs, "hello.wasm"), "./examples/hello-wasm")
		build.Dir = root
		build.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if out, err := build.CombinedOutput(); err != nil {
			wasmImageErr = err
			t.Logf("%s", out)
			return
		}
		ctx := context.Background()
		layer, err := ociimage.BuildLayer(ctx, rootfs)
		if err != nil {
			wasmImageErr = err
			return
		}
		archive := filepath.Join(dir, "hello-wasm.tar")
		if wasmImageErr = ociimage.WriteArchiveFile(ctx, archive, ociimage.Image{
			Name: helloWasmImage, Config: ociimage.Config{Entrypoint: []string{"/hello.wasm"}}, Layers: []ociimage.Layer{layer},
		}); wasmImageErr != nil {
			return
		}
		wasmImageErr = e.ctrd.ImportImage(ctx, archive)
	})
	if wasmImageErr != nil {
		t.Fatalf("hello-wasm image: %v", wasmImageErr)
	}
}

func (e *env) startWasm(t testing.TB, p *pod, name string, args ...string) string {
	t.Helper()
	return e.start(t, p, &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: name},
		Image:    &runtime.ImageSpec{Image: helloWasmImage},
		Args:     args,
		Envs:     []*runtime.KeyValue{{Key: "GREETING", Value: []byte("hi from CRI")}},
		LogPath:  name + ".log",
	})
}

func TestWasmPod(t *testing.T) {
	e := setup(t)
	e.importHelloWasm(t)
	p := e.runPodWith(t, "magnetar-wasm", false)
	cid := e.startWasm(t, p, "hello", "-exit", "3", "one", "two")
	st := e.waitExited(t, cid)
	if st.ExitCode != 3 {
		t.Errorf("wasm container exit code = %d, want 3", st.ExitCode)
	}
	got := e.logOf(t, p, "hello", "exiting with 3")
	for _, want := range []string{"Hello from WebAssembly! (wasip1/wasm)", "args: one two", "GREETING=hi from CRI", "exiting with 3"} {
		if !strings.Contains(got, want) {
			t.Errorf("wasm container log lacks %q:\n%s", want, got)
		}
	}
	assertNoPodProcesses(t)

	// A long-running module stops with the pod.
	long := e.startWasm(t, p, "sleeper", "-sleep", "10m")
	if _, err := e.rt.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: long, Timeout: 5}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := e.waitExited(t, long); st.ExitCode == 0 {
		t.Errorf("stopped wasm container exit code = 0, want a signal status")
	}
}
