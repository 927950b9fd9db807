package sdk_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/magnetar-io/magnetar/internal/ociimage"
	"github.com/magnetar-io/magnetar/internal/testutil/prereq"
	"github.com/magnetar-io/magnetar/sdk/embedded"
)

// exampleRootfs is a busybox root file system for the examples, prepared
// by TestMain.
var exampleRootfs string

// TestMain makes the test binary a wasm runner when the wasm kind
// re-executes it, and prepares the examples' fixture: the examples need
// root, runc and busybox-static; without them they are skipped (with
// -test.skip) and reported on stderr, or fail under MAGNETAR_E2E_REQUIRED=1.
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
	_, runcErr := exec.LookPath("runc")
	_, bbErr := os.Stat(ociimage.DefaultBusybox)
	if os.Geteuid() != 0 || runcErr != nil || bbErr != nil {
		if prereq.Required() {
			fmt.Fprintln(os.Stderr, "cannot run ExampleFiles: needs root, runc and busybox-static (MAGNETAR_E2E_REQUIRED=1)")
			os.RemoveAll(tmp)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipping ExampleFiles: needs root, runc and busybox-static")
		pattern := "^ExampleFiles$"
		if cur := flag.Lookup("test.skip").Value.String(); cur != "" {
			pattern = cur + "|" + pattern
		}
		if err := flag.Set("test.skip", pattern); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	} else {
		exampleRootfs = filepath.Join(tmp, "busybox")
		if err := ociimage.BuildBusyboxRootfs(context.Background(), "", exampleRootfs); err != nil {
			fmt.Fprintln(os.Stderr, "busybox rootfs:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}
