// Command containerd-shim-magnetar-v2 is the helper binary containerd
// requires for runtime_type "io.containerd.magnetar.v2". It answers -info
// and the cleanup "delete" call; it never runs containers (see package
// shim).
package main

import (
	"os"

	"github.com/magnetar-io/magnetar/sandboxer/shim"
)

func main() {
	os.Exit(shim.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
