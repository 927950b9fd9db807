// Command magnetar-agent is the task agent of Magnetar's microVM sandboxes.
// It runs as the guest's init (/init in the initramfs built by
// hack/build-guest.sh): it prepares the guest and serves the host over the
// virtio-serial port named "agent". See docs/guest.md.
package main

import (
	"context"
	"os"

	"github.com/magnetar-io/magnetar/sdk/kinds/runc"
	"github.com/magnetar-io/magnetar/taskagent/agent"
)

func main() {
	// A pod whose containers share a PID namespace gets an init of its
	// own: this binary, re-executed.
	if runc.PodInitMain() {
		return
	}
	// The guest kernel asking for a module it does not have loaded.
	if code, ok := agent.ModprobeMain(); ok {
		os.Exit(code)
	}
	os.Exit(agent.Main(context.Background()))
}
