package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
)

// runLabel marks the sandboxes (and containers) that `magnetar run` made,
// so that `rm` removes such a sandbox with its last container.
const runLabel = "io.magnetar.cli/run"

func commands() []*command {
	return []*command{
		kindsCmd(), runCmd(), execCmd(), psCmd(), logsCmd(), stopCmd(), rmCmd(),
		inspectCmd(), eventsCmd(), imagesCmd(), sandboxCmd(), pauseCmd(true), pauseCmd(false), portForwardCmd(),
		cpCmd(), filesCmd(),
	}
}

// pauseCmd is `magnetar pause` (pause true) or `magnetar resume`.
func pauseCmd(pause bool) *command {
	name, summary, help := "pause", "Pause sandboxes: freeze all their containers",
		"Freezes every running container of each sandbox: they use no CPU until 'magnetar resume', and nothing new runs in a paused sandbox."
	if !pause {
		name, summary, help = "resume", "Resume paused sandboxes", "Thaws the containers 'magnetar pause' froze."
	}
	return &command{
		name: name, usage: name + " SANDBOX...", summary: summary, help: help,
		examples: []string{"magnetar " + name + " pod1"}, interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			return eachSandbox(ctx, e, args, func(sb *sdk.Sandbox) error {
				if pause {
					return sb.Pause(ctx)
				}
				return sb.Resume(ctx)
			})
		},
	}
}

func kindsCmd() *command {
	return &command{
		name: "kinds", usage: "kinds", summary: "List the sandbox kinds and whether they work here",
		help:     "Lists the sandbox kinds (backends) of the sandboxer, whether each can be used on its host (and why not), and what each supports.",
		examples: []string{"magnetar kinds", "magnetar kinds -o json"},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("kinds takes no arguments")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			kinds, err := c.Kinds(ctx)
			if err != nil {
				return err
			}
			if e.json() {
				return e.printJSON(kinds)
			}
			t := newTable(e.Stdout, "KIND", "AVAILABLE", "ISOLATION", "CAPABILITIES", "DESCRIPTION")
			for _, k := range kinds {
				desc := k.Description
				if !k.Available {
					desc = k.UnavailableReason
				}
				t.row(k.Name, yesNo(k.Available), k.Capabilities.Isolation, capabilities(k.Capabilities), desc)
			}
			return t.flush()
		},
	}
}

func capabilities(c sdk.Capabilities) string {
	var out []string
	for _, x := range []struct {
		ok   bool
		name string
	}{{c.Exec, "exec"}, {c.TTY, "tty"}, {c.Stdin, "stdin"}, {c.OOMEvents, "oom"}, {c.UpdateResources, "update"}, {c.Stats, "stats"}, {c.Pause, "pause"}, {c.EgressPolicy, "egress"}} {
		if x.ok {
			out = append(out, x.name)
		}
	}
	return strings.Join(out, ",")
}

func runCmd() *command {
	var (
		kind, name, workdir, memory, sandboxID, rootfs, entrypoint string
		envs                                                       stringList
		interactive, remove, detach                                bool
		timeout, idleTimeout                                       time.Duration
		netf                                                       networkFlags
	)
	return &command{
		name: "run", usage: "run [FLAGS] IMAGE|PATH [--] [COMMAND [ARG...]]\n  magnetar run [FLAGS] --rootfs DIR [--] COMMAND [ARG...]",
		summary: "Run a container in a new sandbox and attach to its output",
		help: `Runs a container and prints its output until it exits; magnetar then exits
with the container's exit code (125 if it could not be run).

The root file system comes from an image of the sandboxer's store (IMAGE,
a reference such as docker.io/library/busybox:1.36), from an OCI image
layout directory, OCI archive or 'docker save' archive (PATH, imported into
the store first, with progress on standard error), or from a directory
(--rootfs). COMMAND replaces the image's command and is passed to its
entrypoint (Docker's CMD, Kubernetes' args); --entrypoint replaces the
entrypoint, as Docker's does.

Each run creates a sandbox of --kind (default: wasm for WebAssembly images,
runc otherwise) for the container, unless --sandbox names an existing one.
Flags go before IMAGE; everything after it is the command.`,
		examples: []string{
			"magnetar run --kind wasm ./hello.oci.tar -- arg1",
			"magnetar run --rm docker.io/library/busybox:1.36 echo hello",
			"magnetar run --rootfs /srv/busybox --env GREETING=hi -- sh -c 'echo $GREETING'",
			"echo data | magnetar run -i --rm busybox:1.36 tr a-z A-Z",
			"magnetar run -d --name web --memory 64m busybox:1.36 httpd -f",
			"magnetar run -d --timeout 30m --idle-timeout 5m busybox:1.36 sleep 600",
			"magnetar run --sandbox pod1 busybox:1.36 sleep 60",
			"magnetar run --network bridge --deny-all --allow 192.0.2.0/24:443 --dns-policy allow busybox:1.36 wget https://192.0.2.10/",
		},
		cannotRunCode: true,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&kind, "kind", "", "sandbox `kind` of the new sandbox (see 'magnetar kinds')")
			fs.StringVar(&name, "name", "", "`ID` of the container (and of its new sandbox); default: chosen by the sandboxer")
			fs.StringVar(&name, "id", "", "`ID` of the container (and of its new sandbox); default: chosen by the sandboxer")
			fs.Var(&envs, "env", "set an environment variable `KEY=value` (repeatable)")
			fs.Var(&envs, "e", "set an environment variable `KEY=value` (repeatable)")
			fs.StringVar(&workdir, "workdir", "", "working `directory` in the container")
			fs.StringVar(&workdir, "w", "", "working `directory` in the container")
			fs.BoolVar(&interactive, "i", false, "pass standard input to the container")
			fs.BoolVar(&remove, "rm", false, "remove the container (and its new sandbox) when it exits")
			fs.BoolVar(&detach, "d", false, "print the container ID and leave it running")
			fs.StringVar(&memory, "memory", "", "memory `limit`, for example 64m or 1g")
			fs.StringVar(&sandboxID, "sandbox", "", "run in this existing sandbox `ID` instead of a new one")
			fs.StringVar(&rootfs, "rootfs", "", "use this host `directory` as the root file system")
			fs.StringVar(&entrypoint, "entrypoint", "", "replace the image's entrypoint with this `program`")
			fs.DurationVar(&timeout, "timeout", 0, "stop and remove the new sandbox this `long` after its creation (0: never)")
			fs.DurationVar(&idleTimeout, "idle-timeout", 0, "stop and remove the new sandbox once idle this `long` (0: never)")
			netf.register(fs)
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if remove && detach {
				return cannotRun(usageError("--rm and -d cannot be combined"))
			}
			if rootfs == "" && len(args) == 0 {
				return cannotRun(usageError("run needs an IMAGE, a PATH or --rootfs DIR"))
			}
			nopt, err := netf.option()
			if err != nil {
				return cannotRun(err)
			}
			if nopt != nil && sandboxID != "" {
				return cannotRun(usageError("--network and the egress flags apply to a new sandbox: not with --sandbox"))
			}
			var opts []sdk.ContainerOption
			if name != "" {
				opts = append(opts, sdk.WithContainerID(name))
			}
			if len(envs) > 0 {
				opts = append(opts, sdk.Env(envs...))
			}
			if workdir != "" {
				opts = append(opts, sdk.Cwd(workdir))
			}
			if interactive {
				opts = append(opts, sdk.WithStdin())
			}
			if memory != "" {
				n, err := parseBytes(memory)
				if err != nil {
					return cannotRun(err)
				}
				opts = append(opts, sdk.WithMemoryLimit(n))
			}
			c, err := e.dial(ctx)
			if err != nil {
				return cannotRun(err)
			}
			cmdline := args
			wasm := false
			if rootfs != "" {
				opts = append(opts, sdk.FromRootfs(rootfs))
			} else {
				src := args[0]
				cmdline = args[1:]
				img, err := e.resolveImage(ctx, c, src)
				if err != nil {
					return cannotRun(err)
				}
				wasm = img.Platform.IsWasm() || (len(img.Config.Entrypoint) > 0 && strings.HasSuffix(img.Config.Entrypoint[0], ".wasm"))
				opts = append(opts, sdk.FromImage(img.Name))
			}
			if len(cmdline) > 0 && cmdline[0] == "--" {
				cmdline = cmdline[1:]
			}
			if entrypoint != "" {
				opts = append(opts, sdk.Entrypoint(entrypoint))
			}
			if len(cmdline) > 0 {
				opts = append(opts, sdk.Args(cmdline...))
			} else if rootfs != "" && entrypoint == "" {
				return cannotRun(usageError("run --rootfs needs a COMMAND"))
			}
			opts = append(opts, sdk.WithContainerLabels(map[string]string{runLabel: "true"}))

			var sb *sdk.Sandbox
			ownSandbox := sandboxID == ""
			if ownSandbox {
				if kind == "" {
					kind = "runc"
					if wasm {
						kind = "wasm"
					}
				}
				sopts := []sdk.SandboxOption{sdk.WithLabels(map[string]string{runLabel: "true"})}
				if timeout != 0 {
					sopts = append(sopts, sdk.WithTimeoutAfter(timeout))
				}
				if idleTimeout != 0 {
					sopts = append(sopts, sdk.WithIdleTimeout(idleTimeout))
				}
				if name != "" {
					sopts = append(sopts, sdk.WithID(name))
				}
				if nopt != nil {
					sopts = append(sopts, nopt)
				}
				sb, err = c.CreateSandbox(ctx, kind, sopts...)
			} else {
				if kind != "" || timeout != 0 || idleTimeout != 0 {
					return cannotRun(usageError("--kind, --timeout and --idle-timeout apply to a new sandbox: not with --sandbox"))
				}
				sb, err = c.Sandbox(ctx, sandboxID)
			}
			if err != nil {
				return cannotRun(err)
			}
			cleanupSandbox := func() {
				if ownSandbox {
					cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
					defer cancel()
					_ = sb.Delete(cctx, sdk.Force())
				}
			}
			ctr, err := sb.Run(ctx, opts...)
			if err != nil {
				cleanupSandbox()
				return cannotRun(err)
			}
			if detach {
				fmt.Fprintln(e.Stdout, ctr.ID)
				return nil
			}
			st, err := e.attach(ctx, ctr.Attach, ctr.Stdin, ctr.Signal, interactive)
			if remove {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				defer cancel()
				if derr := ctr.Delete(cctx, sdk.Force()); derr != nil && !errdefs.IsNotFound(derr) {
					fmt.Fprintf(e.Stderr, "magnetar: remove container %s: %v\n", ctr.ID, derr)
				}
				cleanupSandbox()
			}
			if err != nil {
				return err
			}
			return &exitCode{code: st.Code}
		},
	}
}

// resolveImage returns the image src names: a file or directory is
// imported first, anything else is looked up in the store.
func (e *env) resolveImage(ctx context.Context, c *sdk.Client, src string) (sdk.Image, error) {
	if _, err := os.Stat(src); err == nil {
		imgs, err := c.ImportImage(ctx, src, e.progress())
		if err != nil {
			return sdk.Image{}, fmt.Errorf("import %s: %w", src, err)
		}
		if len(imgs) == 0 {
			return sdk.Image{}, fmt.Errorf("%s holds no image: %w", src, errdefs.ErrNotFound)
		}
		if len(imgs) > 1 {
			fmt.Fprintf(e.Stderr, "%s holds %d images; running %s\n", src, len(imgs), imgs[0].Name)
		}
		return imgs[0], nil
	}
	img, err := c.Image(ctx, src)
	if errdefs.IsNotFound(err) {
		return sdk.Image{}, fmt.Errorf("image %s is not in the sandboxer's store (and no such file here): import it with 'magnetar images import PATH' or pull it with 'magnetar images pull REF': %w", src, err)
	}
	return img, err
}

// progress returns a progress printer for standard error: one line per
// layer and phase.
func (e *env) progress() func(sdk.ImportProgress) {
	var last string
	return func(p sdk.ImportProgress) {
		line := fmt.Sprintf("%s %s: %d/%d layers", p.Phase, p.Image, p.LayersDone, p.LayersTotal)
		if p.BytesTotal > 0 && p.LayersDone == p.LayersTotal {
			line += ", " + humanBytes(p.BytesTotal)
		}
		if line != last {
			fmt.Fprintln(e.Stderr, line)
			last = line
		}
	}
}

// attach streams a process's output to the tool's standard streams,
// optionally copies standard input to it and forwards signals, until the
// process exits.
func (e *env) attach(ctx context.Context,
	attach func(context.Context, io.Writer, io.Writer) (sdk.ExitStatus, error),
	stdin func() io.WriteCloser, signal func(context.Context, syscall.Signal) error,
	interactive bool,
) (sdk.ExitStatus, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if e.Signals != nil {
		wg.Go(func() {
			for {
				select {
				case s := <-e.Signals:
					if sig, ok := s.(syscall.Signal); ok {
						_ = signal(ctx, sig)
					}
				case <-ctx.Done():
					return
				}
			}
		})
	}
	stdinDone := make(chan struct{})
	if interactive {
		// Reading the tool's stdin cannot be interrupted: this goroutine
		// ends at end of input, or when the tool exits.
		go func() {
			defer close(stdinDone)
			w := stdin()
			_, _ = io.Copy(w, e.Stdin)
			_ = w.Close()
		}()
	} else {
		close(stdinDone)
	}
	st, err := attach(ctx, e.Stdout, e.Stderr)
	cancel()
	wg.Wait()
	if err != nil {
		return st, err
	}
	select { // let a finished input copy settle; never wait for a blocked read
	case <-stdinDone:
	default:
	}
	return st, nil
}

func execCmd() *command {
	var (
		workdir, execID string
		envs            stringList
		interactive     bool
	)
	return &command{
		name: "exec", usage: "exec [FLAGS] CONTAINER [--] COMMAND [ARG...]",
		summary: "Run a command in a running container",
		help: `Starts another process in a running container, prints its output until
it exits and exits with its exit code (125 if it could not be run).`,
		examples: []string{
			"magnetar exec web -- ls -l /",
			"magnetar exec -e DEBUG=1 -w /tmp web sh -c 'env; pwd'",
			"cat script.sh | magnetar exec -i web sh",
		},
		cannotRunCode: true,
		flags: func(fs *flag.FlagSet) {
			fs.Var(&envs, "env", "set an environment variable `KEY=value` (repeatable)")
			fs.Var(&envs, "e", "set an environment variable `KEY=value` (repeatable)")
			fs.StringVar(&workdir, "workdir", "", "working `directory`; default: the container's")
			fs.StringVar(&workdir, "w", "", "working `directory`; default: the container's")
			fs.BoolVar(&interactive, "i", false, "pass standard input to the process")
			fs.StringVar(&execID, "exec-id", "", "`ID` of the process; default: chosen by the sandboxer")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 1 && args[1] == "--" {
				args = append(args[:1], args[2:]...)
			}
			if len(args) < 2 {
				return cannotRun(usageError("exec needs a CONTAINER and a COMMAND"))
			}
			c, err := e.dial(ctx)
			if err != nil {
				return cannotRun(err)
			}
			ctr, err := c.Container(ctx, args[0])
			if err != nil {
				return cannotRun(err)
			}
			opts := []sdk.ContainerOption{sdk.Args(args[1:]...)}
			if len(envs) > 0 {
				opts = append(opts, sdk.Env(envs...))
			}
			if workdir != "" {
				opts = append(opts, sdk.Cwd(workdir))
			}
			if interactive {
				opts = append(opts, sdk.WithStdin())
			}
			if execID != "" {
				opts = append(opts, sdk.WithExecID(execID))
			}
			p, err := ctr.Exec(ctx, opts...)
			if err != nil {
				return cannotRun(err)
			}
			st, err := e.attach(ctx, p.Attach, p.Stdin, p.Signal, interactive)
			if err != nil {
				return err
			}
			return &exitCode{code: st.Code}
		},
	}
}

func psCmd() *command {
	var (
		sandboxes, quiet bool
		sandboxID        string
	)
	return &command{
		name: "ps", aliases: []string{"ls"}, usage: "ps [FLAGS]", summary: "List containers (or sandboxes)",
		help:         "Lists every container of the sandboxer, or with --sandboxes every sandbox.",
		examples:     []string{"magnetar ps", "magnetar ps --sandbox pod1 -q", "magnetar ls --sandboxes -o json"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&sandboxes, "sandboxes", false, "list sandboxes instead of containers")
			fs.BoolVar(&quiet, "q", false, "print IDs only")
			fs.StringVar(&sandboxID, "sandbox", "", "only the containers of this sandbox `ID`")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("ps takes no arguments")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			if sandboxes {
				return listSandboxes(ctx, e, c, quiet)
			}
			var fs []sdk.Filter
			if sandboxID != "" {
				fs = append(fs, sdk.InSandbox(sandboxID))
			}
			list, err := c.Containers(ctx, fs...)
			if err != nil {
				return err
			}
			switch {
			case e.json():
				return e.printJSON(nonNil(list))
			case quiet:
				for _, ctr := range list {
					fmt.Fprintln(e.Stdout, ctr.ID)
				}
				return nil
			}
			t := newTable(e.Stdout, "CONTAINER", "SANDBOX", "STATE", "SOURCE", "COMMAND", "CREATED", "EXIT")
			for _, ctr := range list {
				src := ctr.Image
				if src == "" {
					src = ctr.RootfsPath
				}
				exit := ""
				if !ctr.ExitedAt.IsZero() {
					exit = strconv.Itoa(ctr.ExitStatus)
				}
				t.row(ctr.ID, ctr.SandboxID, string(ctr.State), truncate(src, 40), truncate(strings.Join(ctr.Process.Args, " "), 30), ago(ctr.CreatedAt), exit)
			}
			return t.flush()
		},
	}
}

func listSandboxes(ctx context.Context, e *env, c *sdk.Client, quiet bool) error {
	list, err := c.Sandboxes(ctx)
	if err != nil {
		return err
	}
	switch {
	case e.json():
		return e.printJSON(nonNil(list))
	case quiet:
		for _, sb := range list {
			fmt.Fprintln(e.Stdout, sb.ID)
		}
		return nil
	}
	t := newTable(e.Stdout, "SANDBOX", "KIND", "STATE", "CREATED", "LABELS")
	for _, sb := range list {
		t.row(sb.ID, sb.Kind, string(sb.State), ago(sb.CreatedAt), labels(sb.Labels))
	}
	return t.flush()
}

func logsCmd() *command {
	var follow bool
	var execID string
	return &command{
		name: "logs", usage: "logs [-f] CONTAINER", summary: "Print a container's output",
		help: `Prints the output the sandboxer kept of a container (its whole output, up
to a limit, if nothing attached before), then, with -f, follows it until the
container exits. Without -f, the output of a running container is printed
until it has been quiet for a moment.`,
		examples:     []string{"magnetar logs web", "magnetar logs -f web", "magnetar logs --exec-id e1 web"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&follow, "f", false, "follow the output until the container exits")
			fs.BoolVar(&follow, "follow", false, "follow the output until the container exits")
			fs.StringVar(&execID, "exec-id", "", "print the output of this exec'd process `ID` instead")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageError("logs needs one CONTAINER")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			ctr, err := c.Container(ctx, args[0])
			if err != nil {
				return err
			}
			output := ctr.Output
			if execID != "" {
				output = ctr.LoadProcess(execID).Output
			}
			if follow || ctr.State == sdk.ContainerStopped {
				return copyOutput(ctx, e, output, 0)
			}
			return copyOutput(ctx, e, output, 300*time.Millisecond)
		},
	}
}

func stopCmd() *command {
	var timeout time.Duration
	return &command{
		name: "stop", usage: "stop [-t DURATION] CONTAINER...", summary: "Stop running containers",
		help:         "Sends SIGTERM to each container's main process and, if it has not exited after the timeout, SIGKILL.",
		examples:     []string{"magnetar stop web", "magnetar stop -t 2s web worker"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.DurationVar(&timeout, "t", 10*time.Second, "how long to wait after SIGTERM before SIGKILL")
			fs.DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait after SIGTERM before SIGKILL")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			return forEach(ctx, e, args, "stop needs at least one CONTAINER", "stop", func(c *sdk.Client, id string) error {
				return stopContainer(ctx, c, id, timeout)
			})
		},
	}
}

func stopContainer(ctx context.Context, c *sdk.Client, id string, timeout time.Duration) error {
	ctr, err := c.Container(ctx, id)
	if err != nil {
		return err
	}
	if ctr.State != sdk.ContainerRunning && ctr.State != sdk.ContainerPaused {
		return nil
	}
	if err := ctr.Signal(ctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := ctr.Wait(wctx); err == nil {
		return nil
	} else if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err := ctr.Signal(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) && !errdefs.IsFailedPrecondition(err) {
		return err
	}
	_, err = ctr.Wait(ctx)
	return err
}

func rmCmd() *command {
	var force bool
	return &command{
		name: "rm", usage: "rm [-f] CONTAINER...", summary: "Remove containers",
		help: `Removes containers whose main process has exited (with -f, running ones
too, killing them). A sandbox that 'magnetar run' created is removed with
its last container.`,
		examples:     []string{"magnetar rm web", "magnetar rm -f $(magnetar ps -q)"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&force, "f", false, "kill running containers first")
			fs.BoolVar(&force, "force", false, "kill running containers first")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			return forEach(ctx, e, args, "rm needs at least one CONTAINER", "remove", func(c *sdk.Client, id string) error {
				return removeContainer(ctx, c, id, force)
			})
		},
	}
}

func removeContainer(ctx context.Context, c *sdk.Client, id string, force bool) error {
	ctr, err := c.Container(ctx, id)
	if err != nil {
		return err
	}
	var opts []sdk.DeleteOption
	if force {
		opts = append(opts, sdk.Force())
	}
	if err := ctr.Delete(ctx, opts...); err != nil {
		if errdefs.IsFailedPrecondition(err) && !force {
			return fmt.Errorf("%w (stop it first or use -f)", err)
		}
		return err
	}
	sb, err := c.Sandbox(ctx, ctr.SandboxID)
	if err != nil || sb.Labels[runLabel] != "true" {
		return nil
	}
	if left, err := sb.Containers(ctx); err == nil && len(left) == 0 {
		return sb.Delete(ctx, sdk.Force())
	}
	return nil
}

func inspectCmd() *command {
	return &command{
		name: "inspect", usage: "inspect ID...", summary: "Show containers, sandboxes or images as JSON",
		help:         "Prints a JSON array with each container, sandbox or image named (looked up in that order).",
		examples:     []string{"magnetar inspect web", "magnetar inspect pod1 docker.io/library/busybox:1.36"},
		interspersed: true,
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) == 0 {
				return usageError("inspect needs at least one ID")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			var (
				out  []any
				errs []error
			)
			for _, id := range args {
				v, err := lookup(ctx, c, id)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				out = append(out, v)
			}
			if len(out) > 0 {
				if err := e.printJSON(out); err != nil {
					return err
				}
			}
			return errors.Join(errs...)
		},
	}
}

// lookup finds id as a container, a sandbox or an image.
func lookup(ctx context.Context, c *sdk.Client, id string) (any, error) {
	if ctr, err := c.Container(ctx, id); err == nil {
		return ctr, nil
	} else if !errdefs.IsNotFound(err) && !errdefs.IsInvalidArgument(err) {
		return nil, err
	}
	if sb, err := c.Sandbox(ctx, id); err == nil {
		return sb, nil
	} else if !errdefs.IsNotFound(err) && !errdefs.IsInvalidArgument(err) {
		return nil, err
	}
	if img, err := c.Image(ctx, id); err == nil {
		return img, nil
	} else if !errdefs.IsNotFound(err) && !errdefs.IsInvalidArgument(err) && !errdefs.IsFailedPrecondition(err) {
		return nil, err
	}
	return nil, fmt.Errorf("no container, sandbox or image %q: %w", id, errdefs.ErrNotFound)
}

func eventsCmd() *command {
	var sandboxes stringList
	return &command{
		name: "events", usage: "events [--sandbox ID]...", summary: "Stream lifecycle events",
		help:         "Prints sandbox, container and process events as they happen, until interrupted. With -o json, one JSON object per line.",
		examples:     []string{"magnetar events", "magnetar events --sandbox pod1 -o json"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.Var(&sandboxes, "sandbox", "only events of this sandbox `ID` (repeatable)")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usageError("events takes no arguments")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			var fs []sdk.Filter
			if len(sandboxes) > 0 {
				fs = append(fs, sdk.InSandbox(sandboxes...))
			}
			for ev, err := range c.Events(ctx, fs...) {
				if err != nil {
					return err
				}
				if e.json() {
					if err := jsonLine(e.Stdout, ev); err != nil {
						return err
					}
					continue
				}
				line := fmt.Sprintf("%s %-18s sandbox=%s", ev.Timestamp.Local().Format(time.RFC3339Nano), ev.Type, ev.SandboxID)
				if ev.ContainerID != "" {
					line += " container=" + ev.ContainerID
				}
				if ev.ExecID != "" {
					line += " exec=" + ev.ExecID
				}
				if ev.PID != 0 {
					line += fmt.Sprintf(" pid=%d", ev.PID)
				}
				if !ev.ExitedAt.IsZero() {
					line += fmt.Sprintf(" exit=%d", ev.ExitStatus)
				}
				if _, err := fmt.Fprintln(e.Stdout, line); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
