package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// Main is the magnetar-sandboxer command: it parses args (without the
// program name), loads the config file and runs the daemon until SIGINT or
// SIGTERM. It returns the process exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("magnetar-sandboxer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath = fs.String("config", "", "config file (TOML, version = 1); defaults apply without one")
		listen     = fs.String("listen", "", "unix socket for containerd's sandbox controller (default "+DefaultListen+")")
		apiListen  = fs.String("api-listen", "", "unix socket for Magnetar's API, or - for none (default <run-dir>/api.sock)")
		guestDir   = fs.String("vm-guest-dir", "", "directory with the microVM guest's vmlinux and initramfs.cpio.gz (default "+DefaultGuestDir+")")
		stateDir   = fs.String("state-dir", "", "state directory (default "+DefaultStateDir+")")
		runDir     = fs.String("run-dir", "", "runtime directory for sockets (default "+DefaultRunDir+")")
		logLevel   = fs.String("log-level", "", "trace, debug, info, warn or error (default "+DefaultLogLevel+")")
		ttrpcAddr  = fs.String("containerd-ttrpc-address", "", "containerd's ttrpc socket, for task events")
		version    = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "magnetar-sandboxer: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *version {
		fmt.Fprintf(stderr, "magnetar-sandboxer %s\n", Version())
		return 0
	}

	cfg := DefaultConfig()
	if *configPath != "" {
		var err error
		if cfg, err = LoadConfig(*configPath); err != nil {
			fmt.Fprintf(stderr, "magnetar-sandboxer: %v\n", err)
			return 2
		}
	}
	for _, o := range []struct{ flag, field *string }{
		{listen, &cfg.Listen}, {apiListen, &cfg.APIListen}, {stateDir, &cfg.StateDir}, {runDir, &cfg.RunDir},
		{logLevel, &cfg.LogLevel}, {guestDir, &cfg.Backends.VM.GuestDir}, {ttrpcAddr, &cfg.Containerd.TTRPCAddress},
	} {
		if *o.flag != "" {
			*o.field = *o.flag
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "magnetar-sandboxer: %v\n", err)
		return 2
	}

	log := hclog.New(&hclog.LoggerOptions{
		Name:   "magnetar-sandboxer",
		Level:  hclog.LevelFromString(cfg.LogLevel),
		Output: stderr,
	})
	routeContainerdLogs(log.Named("containerd"))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg, log); err != nil {
		log.Error("sandboxer failed", "error", err)
		return 1
	}
	return 0
}
