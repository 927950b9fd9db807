// Command magnetar-sandboxer is Magnetar's host daemon: one per host, it
// serves containerd's Sandbox Controller API and the Task API of every
// sandbox. See package daemon for the flags and the config file.
package main

import (
	"context"
	"os"

	"github.com/magnetar-io/magnetar/sandboxer/daemon"
	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
	"github.com/magnetar-io/magnetar/sdk/kinds/wasm"
)

func main() {
	// The wasm kind runs each module in a child that re-executes this
	// binary, and the runc kind a pod's PID namespace init; in those
	// children these run and never return.
	if wasm.RunnerMain() || runc.PodInitMain() {
		return
	}
	os.Exit(daemon.Main(context.Background(), os.Args[1:], os.Stderr))
}
