package embedded_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil/prereq"
	"github.com/magnetar-io/magnetar/sdk/embedded"
)

// Fixtures of the examples, prepared by TestMain.
var (
	// rootfs is a directory holding a busybox root file system.
	rootfs string
	// wasmRootfs is a directory holding /hello.wasm, a WASI program
	// (internal/testdata/wasm/minish) that runs echo-like scripts.
	wasmRootfs string
)

// TestMain makes the test binary a wasm runner when the wasm kind
// re-executes it, and prepares the examples' fixtures. Examples need root:
// Example needs runc and busybox-static (make deps), ExampleNew_wasm
// a Go toolchain. Examples whose needs are not met are skipped (with
// -test.skip) and reported on stderr.
func TestMain(m *testing.M) {
	if embedded.RunnerMain() {
		return
	}
	flag.Parse()
	tmp, err := os.MkdirTemp("", "magnetar-sdk-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var skips []string
	skip := func(name, why string) {
		if prereq.Required() {
			fmt.Fprintf(os.Stderr, "cannot run %s: %s (MAGNETAR_E2E_REQUIRED=1)\n", name, why)
			os.RemoveAll(tmp)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "skipping %s: %s\n", name, why)
		skips = append(skips, name)
	}
	root := os.Geteuid() == 0
	_, runcErr := exec.LookPath("runc")
	_, bbErr := os.Stat(ociimage.DefaultBusybox)
	switch {
	case !root || runcErr != nil || bbErr != nil:
		skip("Example", "needs root, runc and busybox-static")
	default:
		rootfs = filepath.Join(tmp, "busybox")
		if err := ociimage.BuildBusyboxRootfs(context.Background(), "", rootfs); err != nil {
			fmt.Fprintln(os.Stderr, "busybox rootfs:", err)
			os.Exit(1)
		}
	}
	if !root {
		skip("ExampleNew_wasm", "needs root")
	} else if err := buildWasm(filepath.Join(tmp, "wasm")); err != nil {
		skip("ExampleNew_wasm", err.Error())
	} else {
		wasmRootfs = filepath.Join(tmp, "wasm")
	}
	if len(skips) > 0 {
		pattern := "^(" + strings.Join(skips, "|") + ")$"
		if cur := flag.Lookup("test.skip").Value.String(); cur != "" {
			pattern = cur + "|" + pattern
		}
		if err := flag.Set("test.skip", pattern); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// buildWasm compiles the minish test module to dir/hello.wasm.
func buildWasm(dir string) error {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		if goBin, err = exec.LookPath("go"); err != nil {
			return fmt.Errorf("no go toolchain to build the wasm module: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", filepath.Join(dir, "hello.wasm"), "./internal/testdata/wasm/minish")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build wasm module: %v\n%s", err, out)
	}
	return nil
}
