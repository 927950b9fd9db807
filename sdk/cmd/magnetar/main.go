// Command magnetar is the command-line client of the Magnetar sandboxer;
// see package [github.com/magnetar-io/magnetar/sdk/cli] and docs/cli.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/magnetar-io/magnetar/sdk/cli"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(cli.Main(context.Background(), os.Args[1:], signals))
}
