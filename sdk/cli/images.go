package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/magnetar-io/magnetar/sdk"
)

func imagesCmd() *command {
	ls := &command{
		name: "ls", aliases: []string{"list"}, usage: "images ls", summary: "List the images of the store (default)",
		help: "Lists the images of the sandboxer's local image store.", examples: []string{"magnetar images", "magnetar images ls -o json"},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("images ls takes no arguments")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			imgs, err := c.Images(ctx)
			if err != nil {
				return err
			}
			return printImages(e, imgs)
		},
	}
	imp := &command{
		name: "import", usage: "images import PATH", summary: "Import an OCI layout, OCI archive or docker-save archive",
		help: `Imports the images of an OCI image layout directory, an OCI archive or a
'docker save' archive into the store, and unpacks them. PATH is read by the
sandboxer, on its host. Progress goes to standard error.`,
		examples:     []string{"magnetar images import ./hello.oci.tar", "magnetar images import /srv/images/app-layout"},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageError("images import needs one PATH")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			imgs, err := c.ImportImage(ctx, args[0], e.progress())
			if err != nil {
				return err
			}
			return printImages(e, imgs)
		},
	}
	pull := &command{
		name: "pull", usage: "images pull REF", summary: "Pull an image from a registry",
		help:         "Pulls an image from a registry over HTTPS into the store, and unpacks it. Progress goes to standard error.",
		examples:     []string{"magnetar images pull docker.io/library/busybox:1.36"},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageError("images pull needs one REF")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			img, err := c.PullImage(ctx, args[0], e.progress())
			if err != nil {
				return err
			}
			return printImages(e, []sdk.Image{img})
		},
	}
	rm := &command{
		name: "rm", aliases: []string{"remove"}, usage: "images rm REF...", summary: "Remove images",
		help:         "Removes image names from the store (a digest removes every name of the image), and their content once no name refers to it. An image that a container uses cannot be removed.",
		examples:     []string{"magnetar images rm busybox:1.36", "magnetar images rm sha256:4bcff6..."},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			return forEach(ctx, e, args, "images rm needs at least one REF", "remove", func(c *sdk.Client, ref string) error {
				return c.RemoveImage(ctx, ref)
			})
		},
	}
	return &command{
		name: "images", aliases: []string{"image"}, usage: "images [ls|import|pull|rm] ...", summary: "Manage the sandboxer's image store",
		help:     "Lists, imports, pulls and removes the images of the sandboxer's local image store. Without a subcommand, lists them.",
		examples: []string{"magnetar images", "magnetar images import ./hello.oci.tar", "magnetar images rm busybox:1.36"},
		sub:      []*command{ls, imp, pull, rm},
	}
}

func printImages(e *env, imgs []sdk.Image) error {
	if e.json() {
		return e.printJSON(nonNil(imgs))
	}
	t := newTable(e.Stdout, "IMAGE", "DIGEST", "PLATFORM", "SIZE")
	for _, img := range imgs {
		t.row(img.Name, shortDigest(img.Digest), img.Platform.String(), humanBytes(img.Size))
	}
	return t.flush()
}

func shortDigest(d string) string {
	algo, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) <= 12 {
		return d
	}
	return algo + ":" + hex[:12]
}

func sandboxCmd() *command {
	var (
		kind, id, hostname string
		netf               networkFlags
		lbls               stringList
		force, quiet       bool
		timeout, idle      time.Duration
	)
	ls := &command{
		name: "ls", aliases: []string{"list", "ps"}, usage: "sandbox ls [-q]", summary: "List sandboxes (default)",
		help: "Lists the sandboxes of the sandboxer.", examples: []string{"magnetar sandbox ls", "magnetar sandbox ls -o json"},
		interspersed: true,
		flags:        func(fs *flag.FlagSet) { fs.BoolVar(&quiet, "q", false, "print IDs only") },
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("sandbox ls takes no arguments")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			return listSandboxes(ctx, e, c, quiet)
		},
	}
	create := &command{
		name: "create", usage: "sandbox create --kind KIND [FLAGS]", summary: "Create and start a sandbox",
		help: "Creates a sandbox and starts it, ready for containers ('magnetar run --sandbox ID'); prints its ID.",
		examples: []string{
			"magnetar sandbox create --kind runc --id pod1 --label app=web",
			"magnetar sandbox create --kind wasm --network none",
			"magnetar sandbox create --network bridge --deny-all --allow 10.0.0.0/8:443 --dns-policy allow",
		},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&kind, "kind", "runc", "sandbox `kind` (see 'magnetar kinds')")
			fs.StringVar(&id, "id", "", "sandbox `ID`; default: chosen by the sandboxer")
			fs.StringVar(&hostname, "hostname", "", "host `name` in the sandbox; default: the ID")
			netf.register(fs)
			fs.Var(&lbls, "label", "add a label `KEY=value` (repeatable)")
			fs.DurationVar(&timeout, "timeout", 0, "stop and remove the sandbox this `long` after its creation (0: never)")
			fs.DurationVar(&idle, "idle-timeout", 0, "stop and remove the sandbox once idle this `long`: no call about it and no process (0: never)")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("sandbox create takes no arguments")
			}
			var opts []sdk.SandboxOption
			nopt, err := netf.option()
			if err != nil {
				return err
			}
			if nopt != nil {
				opts = append(opts, nopt)
			}
			if timeout != 0 {
				opts = append(opts, sdk.WithTimeoutAfter(timeout))
			}
			if idle != 0 {
				opts = append(opts, sdk.WithIdleTimeout(idle))
			}
			if id != "" {
				opts = append(opts, sdk.WithID(id))
			}
			if hostname != "" {
				opts = append(opts, sdk.WithHostname(hostname))
			}
			if len(lbls) > 0 {
				m := map[string]string{}
				for _, l := range lbls {
					k, v, ok := strings.Cut(l, "=")
					if !ok {
						return usageError(fmt.Sprintf("label %q is not KEY=value", l))
					}
					m[k] = v
				}
				opts = append(opts, sdk.WithLabels(m))
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			sb, err := c.CreateSandbox(ctx, kind, opts...)
			if err != nil {
				return err
			}
			if e.json() {
				return e.printJSON(sb)
			}
			fmt.Fprintln(e.Stdout, sb.ID)
			return nil
		},
	}
	stop := &command{
		name: "stop", usage: "sandbox stop ID...", summary: "Stop sandboxes and their containers",
		help:     "Stops every container of each sandbox (SIGTERM, then SIGKILL after the sandboxer's timeout), then the sandbox.",
		examples: []string{"magnetar sandbox stop pod1"}, interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			return eachSandbox(ctx, e, args, func(sb *sdk.Sandbox) error { return sb.Stop(ctx) })
		},
	}
	rm := &command{
		name: "rm", aliases: []string{"remove"}, usage: "sandbox rm [-f] ID...", summary: "Remove sandboxes",
		help:     "Removes stopped sandboxes with everything they hold; with -f, running ones too.",
		examples: []string{"magnetar sandbox rm pod1", "magnetar sandbox rm -f $(magnetar sandbox ls -q)"}, interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&force, "f", false, "stop running sandboxes first")
			fs.BoolVar(&force, "force", false, "stop running sandboxes first")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			return eachSandbox(ctx, e, args, func(sb *sdk.Sandbox) error {
				if force {
					return sb.Delete(ctx, sdk.Force())
				}
				return sb.Delete(ctx)
			})
		},
	}
	var setIdle time.Duration
	timeoutCmd := &command{
		name: "timeout", usage: "sandbox timeout [--idle DURATION] ID DURATION", summary: "Set a sandbox's lifetime",
		help: `Sets when the sandbox ends: DURATION from now (0: no deadline), and with
--idle once it has been idle that long (no call about it or its containers
and no process; 0: never). At its end the sandbox is stopped and removed.`,
		examples: []string{"magnetar sandbox timeout pod1 30m", "magnetar sandbox timeout --idle 5m pod1 0"}, interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&setIdle, "idle", 0, "idle `timeout` (0: never)")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 2 {
				return usageError("sandbox timeout needs a sandbox ID and a duration")
			}
			d, err := time.ParseDuration(args[1])
			if err != nil || d < 0 {
				return usageError(fmt.Sprintf("sandbox timeout: duration %q: want a Go duration such as 90s or 30m, not negative", args[1]))
			}
			return eachSandbox(ctx, e, args[:1], func(sb *sdk.Sandbox) error { return sb.SetTimeout(ctx, d, setIdle) })
		},
	}
	return &command{
		name: "sandbox", aliases: []string{"sandboxes", "sb"}, usage: "sandbox [ls|create|stop|rm|timeout|egress] ...", summary: "Manage sandboxes",
		help:     "Creates, lists, stops and removes sandboxes. Without a subcommand, lists them.",
		examples: []string{"magnetar sandbox create --kind runc --id pod1", "magnetar run --sandbox pod1 busybox:1.36 echo hi", "magnetar sandbox rm -f pod1"},
		sub:      []*command{ls, create, stop, rm, timeoutCmd, egressCmd()},
	}
}

func eachSandbox(ctx context.Context, e *env, ids []string, fn func(*sdk.Sandbox) error) error {
	return forEach(ctx, e, ids, "needs at least one sandbox ID", "", func(c *sdk.Client, id string) error {
		sb, err := c.Sandbox(ctx, id)
		if err != nil {
			return err
		}
		return fn(sb)
	})
}

// forEach dials the sandboxer and applies fn to each of ids, printing the
// IDs it succeeded for; the errors of the others are joined, each prefixed
// with verb (if any) and its ID. With no ids it is a usage error saying
// need.
func forEach(ctx context.Context, e *env, ids []string, need, verb string, fn func(c *sdk.Client, id string) error) error {
	if len(ids) == 0 {
		return usageError(need)
	}
	c, err := e.dial(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := fn(c, id); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", strings.TrimSpace(verb+" "+id), err))
			continue
		}
		fmt.Fprintln(e.Stdout, id)
	}
	return errors.Join(errs...)
}
