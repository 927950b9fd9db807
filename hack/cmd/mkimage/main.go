// Command mkimage writes OCI image archives without a registry or a container
// engine, for `ctr -n k8s.io images import`.
//
//	mkimage busybox [-busybox /bin/busybox] -name docker.io/library/busybox:1.36 -o busybox.tar
//	mkimage dir -name NAME [-entrypoint ARG]... [-cmd ARG]... [-env K=V]... [-workdir DIR] [-user U] ROOTFS -o out.tar
//
// -entrypoint, -cmd and -env may be repeated; each occurrence is one element.
// Flags may come before or after ROOTFS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/magnetar-io/magnetar/internal/ociimage"
)

const usage = `usage:
  mkimage busybox [-busybox PATH] -name NAME -o OUT.tar
  mkimage dir -name NAME [-entrypoint ARG]... [-cmd ARG]... [-env K=V]... [-workdir DIR] [-user U] ROOTFS -o OUT.tar
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return flag.ErrHelp
	}
	fs := flag.NewFlagSet("mkimage "+args[0], flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	var (
		name = fs.String("name", "", "full image reference, e.g. docker.io/library/busybox:1.36 (required)")
		out  = fs.String("o", "", "output archive path (required)")
		cfg  ociimage.Config
	)
	switch args[0] {
	case "busybox":
		busybox := fs.String("busybox", ociimage.DefaultBusybox, "statically linked busybox to copy")
		pos, err := parse(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 0 || *name == "" || *out == "" {
			fs.Usage()
			return flag.ErrHelp
		}
		img, err := ociimage.BusyboxImage(ctx, *busybox, *name, "")
		if err != nil {
			return err
		}
		return ociimage.WriteArchiveFile(ctx, *out, img)
	case "dir":
		var entrypoint, cmd, env list
		fs.Var(&entrypoint, "entrypoint", "entrypoint element (repeatable)")
		fs.Var(&cmd, "cmd", "cmd element (repeatable)")
		fs.Var(&env, "env", "KEY=value (repeatable)")
		fs.StringVar(&cfg.WorkingDir, "workdir", "", "working directory")
		fs.StringVar(&cfg.User, "user", "", "user[:group]")
		pos, err := parse(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 || *name == "" || *out == "" {
			fs.Usage()
			return flag.ErrHelp
		}
		cfg.Entrypoint, cfg.Cmd, cfg.Env = entrypoint, cmd, env
		layer, err := ociimage.BuildLayer(ctx, pos[0])
		if err != nil {
			return err
		}
		return ociimage.WriteArchiveFile(ctx, *out, ociimage.Image{Name: *name, Config: cfg, Layers: []ociimage.Layer{layer}})
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

// parse parses flags interleaved with positional arguments and returns the
// positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
