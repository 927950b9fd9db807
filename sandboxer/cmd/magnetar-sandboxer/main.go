// Command magnetar-sandboxer is Magnetar's host daemon: one per host, it
// serves containerd's Sandbox Controller API and the Task API of every
// sandbox. See package daemon for the flags and the config file.
package main

import (
	"context"
	"os"

	"github.com/magnetar-io/magnetar/sandboxer/daemon"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
)

func main() {
	// The wasm kind runs each module in a child that re-executes this
	// binary; in that child, RunnerMain runs the module and never returns.
	if wasm.RunnerMain() {
		return
	}
	os.Exit(daemon.Main(context.Background(), os.Args[1:], os.Stderr))
}
