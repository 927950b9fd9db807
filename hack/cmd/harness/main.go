// Command harness runs a private containerd (internal/harness) until SIGINT
// or SIGTERM, for demos and manual testing.
//
//	harness up [-base DIR] [-bin DIR] [-sandboxer-socket PATH] [-shim PATH] [-cgroup-parent P]...
//	           [-images] [-env-file FILE] [-log FILE] [-v]
//
// Once containerd answers, it prints shell-sourceable lines
// (CONTAINERD_ADDRESS=..., CONTAINER_RUNTIME_ENDPOINT=..., CRI_CONFIG_FILE=...)
// to stdout and, with -env-file, writes them to FILE (the demo script waits
// for that file). On exit it stops containerd and removes everything it
// created, including the base directory.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/magnetar-io/magnetar/internal/harness"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "harness:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || args[0] != "up" {
		fmt.Fprintln(os.Stderr, "usage: harness up [flags]   (harness up -h for the flags)")
		return flag.ErrHelp
	}
	fs := flag.NewFlagSet("harness up", flag.ContinueOnError)
	var (
		opts    harness.Options
		images  = fs.Bool("images", false, "import the busybox and pause images once containerd is up")
		envFile = fs.String("env-file", "", "also write the environment lines to this file (written last, atomically)")
		logPath = fs.String("log", "", "append containerd's log to this file (default: discard; it is always in BASE/logs)")
		verbose = fs.Bool("v", false, "containerd log level debug")
	)
	fs.StringVar(&opts.BaseDir, "base", "", "scratch directory, removed on exit (default: a new /tmp/mh-* directory)")
	fs.StringVar(&opts.BinDir, "bin", "", "directory with containerd, ctr, crictl (default: <repo>/.tmp/bin)")
	fs.StringVar(&opts.SandboxerSocket, "sandboxer-socket", "", "unix socket of magnetar-sandboxer (default: <socket dir>/sandboxer.sock)")
	fs.StringVar(&opts.ShimPath, "shim", "", "path of containerd-shim-magnetar-v2")
	fs.Func("cgroup-parent", "cgroup parent of the pods to run (repeatable); removed on exit if new and empty", func(v string) error {
		opts.CgroupParents = append(opts.CgroupParents, v)
		return nil
	})
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *verbose {
		opts.LogLevel = "debug"
	}
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		opts.LogWriter = f
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	c, err := harness.Start(ctx, opts)
	if err != nil {
		return err
	}
	err = serve(ctx, c, *images, *envFile)
	stopCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if serr := c.Stop(stopCtx); serr != nil {
		err = errors.Join(err, serr)
	}
	if *envFile != "" {
		os.Remove(*envFile)
	}
	return err
}

// serve imports the images if asked, publishes the environment and waits
// for a signal.
func serve(ctx context.Context, c *harness.Containerd, images bool, envFile string) error {
	if images {
		if err := c.ImportPause(ctx); err != nil {
			return err
		}
		if err := c.ImportBusybox(ctx); err != nil {
			return err
		}
	}
	env := strings.Join(c.Env(), "\n") + "\n"
	if _, err := io.WriteString(os.Stdout, env); err != nil {
		return err
	}
	if envFile != "" {
		tmp := envFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(env), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, envFile); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}
