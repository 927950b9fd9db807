package embedded_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/embedded"
)

// An embedded client runs a container in a runc sandbox, without a
// daemon. (rootfs is a directory holding a busybox root file system.)
func Example() {
	ctx := context.Background()
	c, err := embedded.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // deletes the sandbox

	sb, err := c.CreateSandbox(ctx, "runc", sdk.WithHostname("demo"))
	if err != nil {
		log.Fatal(err)
	}
	ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs),
		sdk.Args("sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 3"))
	if err != nil {
		log.Fatal(err)
	}
	// stdout and stderr are separate streams: read them apart.
	var stdout, stderr strings.Builder
	status, err := ctr.Attach(ctx, &stdout, &stderr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("stdout: %sstderr: %sexit code %d\n", stdout.String(), stderr.String(), status.Code)
	// Output:
	// stdout: hello from demo
	// stderr: oops
	// exit code 3
}

// The wasm kind runs WebAssembly (WASI) modules; the program's main must
// call [embedded.RunnerMain] first (here TestMain does). wasmRootfs holds
// /hello.wasm, a small WASI program.
func ExampleNew_wasm() {
	ctx := context.Background()
	c, err := embedded.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	sb, err := c.CreateSandbox(ctx, "wasm")
	if err != nil {
		log.Fatal(err)
	}
	ctr, err := sb.Run(ctx, sdk.FromRootfs(wasmRootfs), sdk.Args("/hello.wasm", "-c", "tr a-z A-Z"), sdk.WithStdin())
	if err != nil {
		log.Fatal(err)
	}
	stdin := ctr.Stdin()
	fmt.Fprintln(stdin, "hello from wasm")
	stdin.Close()
	out, status, err := ctr.CombinedOutput(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%sexit code %d\n", out, status.Code)
	// Output:
	// HELLO FROM WASM
	// exit code 0
}
