// Package wasmtest helps tests of the wasm sandbox kind: it builds the Go
// WASI preview 1 test modules in internal/testdata/wasm and writes OCI
// bundles that run them.
//
// Modules are built with GOOS=wasip1 GOARCH=wasm at test time and cached in
// <module root>/.tmp/wasmtest, keyed by a hash of their sources and the Go
// version, so only the first test run (or a source change) pays for the
// build.
package wasmtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/testutil/prereq"
)

// ShellModule is the in-rootfs path where [Shell] puts minish.
const ShellModule = "/bin/minish.wasm"

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// Build builds the test module internal/testdata/wasm/<name> and returns
// the path of the .wasm file. It skips the test when no Go toolchain is
// available.
func Build(t testing.TB, name string) string {
	t.Helper()
	p, err := build(name)
	if errors.Is(err, exec.ErrNotFound) {
		prereq.SkipOrFail(t, "building wasm test module %s: no go toolchain: %v", name, err)
	}
	if err != nil {
		t.Fatalf("build wasm test module %s: %v", name, err)
	}
	return p
}

func build(name string) (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	src := filepath.Join(root, "internal", "testdata", "wasm", name)
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	sum, err := hashSources(src)
	if err != nil {
		return "", err
	}
	cacheDir := filepath.Join(root, ".tmp", "wasmtest")
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, fmt.Sprintf("%s-%s.wasm", name, sum[:16]))
	if _, err := os.Stat(out); err == nil {
		built[name] = out
		return out, nil
	}
	tmp, err := os.CreateTemp(cacheDir, name+".*.tmp")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", tmp.Name(), "./internal/testdata/wasm/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, b)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	built[name] = out
	return out, nil
}

// goTool finds the go command: the one of the running toolchain first.
func goTool() (string, error) {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return exec.LookPath("go")
}

// hashSources hashes the files of dir and the Go version.
func hashSources(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", runtime.Version())
	for _, n := range names {
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\n", n)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// moduleRoot finds the directory holding this repository's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(data), "module github.com/magnetar-io/magnetar\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root (go.mod of github.com/magnetar-io/magnetar) not found")
		}
		dir = parent
	}
}

// Bundle writes an OCI bundle into dir whose rootfs (dir/rootfs) holds the
// module file wasmFile at modulePath, and whose process runs it with args
// (args[0] is the module path as the runtime sees it). It returns the spec,
// also written to dir/config.json.
func Bundle(t testing.TB, dir, wasmFile, modulePath string, args ...string) *specs.Spec {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	dst := filepath.Join(rootfs, filepath.FromSlash(modulePath))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(wasmFile, dst); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs"},
		Process: &specs.Process{
			Args: append([]string{modulePath}, args...),
			Env:  []string{"PATH=/bin", "HOME=/"},
			Cwd:  "/",
		},
		Linux: &specs.Linux{},
	}
	WriteSpec(t, dir, spec)
	return spec
}

// WriteSpec writes spec to dir/config.json.
func WriteSpec(t testing.TB, dir string, spec *specs.Spec) {
	t.Helper()
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Shell is a backendtest.Workload for the wasm kind: bundles run minish
// (internal/testdata/wasm/minish), which understands the suite's
// `;`-separated echo, exit, sleep, cat, tick and `tr a-z A-Z` scripts.
type Shell struct {
	// Module is the built minish module (see [Build]).
	Module string
}

// Process returns a process spec running script with minish.
func (s Shell) Process(script string) *specs.Process {
	return &specs.Process{Args: []string{ShellModule, "-c", script}, Cwd: "/", Env: []string{"PATH=/bin"}}
}

// Tick runs minish's tick, a line every tenth of a second.
func (s Shell) Tick() string { return "tick" }

// Bundle writes a bundle into dir whose process runs script with minish.
func (s Shell) Bundle(t *testing.T, dir, script string) *specs.Spec {
	t.Helper()
	return Bundle(t, dir, s.Module, ShellModule, "-c", script)
}

// CacheRoot returns a directory under <module root>/.tmp/wasmtest to use
// as a wasm backend's root across test runs, so that the compilation
// cache in it stays warm. It is keyed by the Go and wazero versions (test
// binaries do not tell wazero its own version, so its cache cannot).
func CacheRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	wazero := "unknown"
	if data, err := os.ReadFile(filepath.Join(root, "go.mod")); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "github.com/tetratelabs/wazero" {
				wazero = f[1]
			}
		}
	}
	dir := filepath.Join(root, ".tmp", "wasmtest", "backend-"+runtime.Version()+"-"+wazero)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// HelloWAT assembles examples/hello-wat with wabt's wat2wasm into a
// temporary directory of t and returns the .wasm file's path. It skips the
// test when wat2wasm is missing (fails under MAGNETAR_E2E_REQUIRED=1).
func HelloWAT(t testing.TB) string {
	t.Helper()
	wat2wasm, err := exec.LookPath("wat2wasm")
	if err != nil {
		prereq.SkipOrFail(t, "wat2wasm (wabt, hack/install-deps.sh) assembles examples/hello-wat: %v", err)
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "hello-wat.wasm")
	if b, err := exec.Command(wat2wasm, filepath.Join(root, "examples", "hello-wat", "hello.wat"), "-o", out).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm: %v: %s", err, b)
	}
	return out
}
