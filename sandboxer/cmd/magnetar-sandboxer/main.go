// Command magnetar-sandboxer is Magnetar's host daemon: one per host, it
// serves containerd's Sandbox Controller API and the Task API of every
// sandbox. See package daemon for the flags and the config file.
package main

import (
	"context"
	"os"

	"github.com/magnetar-io/magnetar/sandboxer/daemon"
)

func main() {
	os.Exit(daemon.Main(context.Background(), os.Args[1:], os.Stderr))
}
