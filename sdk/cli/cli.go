// Package cli is the magnetar command-line tool: it drives a
// magnetar-sandboxer through Magnetar's API with the Go SDK
// ([github.com/magnetar-io/magnetar/sdk]). The main package only calls
// [Main]; tests run [CLI.Run] in-process.
//
// Exit codes: 0 on success; for run and exec, the container's or the
// process's exit code once it ran, and 125 when it could not be run; 1 for
// any other error, with a message on standard error.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
)

// CLI is one invocation environment of the tool.
type CLI struct {
	// Stdin, Stdout and Stderr are the tool's standard streams.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Getenv reads environment variables (MAGNETAR_ADDRESS); nil reads
	// none.
	Getenv func(string) string
	// Signals, if not nil, delivers signals the tool received: run and
	// exec forward them to the process they attached to; any other command
	// stops at the first (logs -f, events, files watch and port-forward
	// exit 0, others with 128 plus the signal's number).
	Signals <-chan os.Signal
}

// Main runs the tool with the process's standard streams and environment
// and returns its exit code.
func Main(ctx context.Context, args []string, signals <-chan os.Signal) int {
	c := &CLI{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Signals: signals}
	return c.Run(ctx, args)
}

// Exit codes.
const (
	exitError     = 1   // a CLI error
	exitCannotRun = 125 // run or exec could not run the process
)

// exitCode makes Run exit with code; err, if not nil, is printed.
type exitCode struct {
	code int
	err  error
}

func (e *exitCode) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitCode) Unwrap() error { return e.err }

// cannotRun marks err as a failure to run the process (exit code 125).
func cannotRun(err error) error {
	if err == nil {
		return nil
	}
	var ec *exitCode
	if errors.As(err, &ec) {
		return err
	}
	return &exitCode{code: exitCannotRun, err: err}
}

// globals are the flags every command takes.
type globals struct {
	address    string
	output     string
	token      string
	tokenFile  string
	caCert     string
	clientCert string
	clientKey  string
	envSet     bool
}

func (g *globals) register(fs *flag.FlagSet, getenv func(string) string) {
	def := sdk.DefaultAddress
	if v := getenv("MAGNETAR_ADDRESS"); v != "" {
		def = v
	}
	if g.address == "" {
		g.address = def
	}
	if g.output == "" {
		g.output = "table"
	}
	if !g.envSet {
		g.envSet = true
		g.token, g.tokenFile = getenv("MAGNETAR_TOKEN"), getenv("MAGNETAR_TOKEN_FILE")
		g.caCert = getenv("MAGNETAR_CA_CERT")
		g.clientCert, g.clientKey = getenv("MAGNETAR_CLIENT_CERT"), getenv("MAGNETAR_CLIENT_KEY")
	}
	fs.StringVar(&g.address, "address", g.address, "sandboxer API `address`: unix:///path, a socket path or https://host:port (env MAGNETAR_ADDRESS)")
	fs.StringVar(&g.token, "token", g.token, "bearer `token` of a remote sandboxer's tenant (env MAGNETAR_TOKEN; prefer --token-file: arguments are visible to other users)")
	fs.StringVar(&g.tokenFile, "token-file", g.tokenFile, "`file` holding the bearer token (env MAGNETAR_TOKEN_FILE)")
	fs.StringVar(&g.caCert, "ca-cert", g.caCert, "PEM `file` of the CAs that sign a remote sandboxer's certificate (env MAGNETAR_CA_CERT; default: the system's)")
	fs.StringVar(&g.clientCert, "client-cert", g.clientCert, "PEM client certificate `file` for a sandboxer that verifies clients (env MAGNETAR_CLIENT_CERT)")
	fs.StringVar(&g.clientKey, "client-key", g.clientKey, "PEM client key `file` (env MAGNETAR_CLIENT_KEY)")
	fs.StringVar(&g.output, "o", g.output, "output `format`: table or json")
	fs.StringVar(&g.output, "output", g.output, "output `format`: table or json")
}

// dialOptions are the SDK options of the token and TLS flags.
func (g *globals) dialOptions() ([]sdk.Option, error) {
	var opts []sdk.Option
	token := g.token
	if g.tokenFile != "" {
		b, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read the token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	if token != "" {
		opts = append(opts, sdk.WithToken(token))
	}
	if g.caCert != "" {
		opts = append(opts, sdk.WithCAFile(g.caCert))
	}
	if g.clientCert != "" || g.clientKey != "" {
		opts = append(opts, sdk.WithClientCertificate(g.clientCert, g.clientKey))
	}
	return opts, nil
}

// command is one subcommand.
type command struct {
	name    string
	aliases []string
	// usage is the synopsis after "magnetar ".
	usage   string
	summary string
	// help is the long description; examples are shell lines.
	help     string
	examples []string
	// interspersed allows flags after positional arguments (not for
	// commands that take a command line to run).
	interspersed bool
	// cannotRunCode makes usage errors exit with 125 (run, exec).
	cannotRunCode bool
	// forwardsSignals says the command reads CLI.Signals itself (run,
	// exec forward them to the process); any other command is interrupted
	// by the first signal: its context ends.
	forwardsSignals bool
	flags           func(fs *flag.FlagSet)
	run             func(ctx context.Context, env *env, args []string) error
	// sub are subcommands (images, sandbox); the first is the default.
	sub []*command
}

// env is what a running command gets.
type env struct {
	*CLI
	g      *globals
	client *sdk.Client
}

// dial connects to the sandboxer once.
func (e *env) dial(ctx context.Context) (*sdk.Client, error) {
	if e.client != nil {
		return e.client, nil
	}
	opts, err := e.g.dialOptions()
	if err != nil {
		return nil, err
	}
	c, err := sdk.Dial(ctx, e.g.address, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the sandboxer at %s: %w", e.g.address, err)
	}
	e.client = c
	return c, nil
}

func (e *env) json() bool { return e.g.output == "json" }

// printJSON writes v as indented JSON.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Run runs the tool with args (without the program name) and returns its
// exit code.
func (c *CLI) Run(ctx context.Context, args []string) int {
	if c.Stdin == nil {
		c.Stdin = strings.NewReader("")
	}
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	if c.Getenv == nil {
		c.Getenv = func(string) string { return "" }
	}
	g := &globals{}
	fs := flag.NewFlagSet("magnetar", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs, c.Getenv)
	cmds := commands()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.topHelp(cmds, fs)
			return 0
		}
		fmt.Fprintf(c.Stderr, "magnetar: %v\nRun 'magnetar --help' for usage.\n", err)
		return exitError
	}
	rest := fs.Args()
	if len(rest) == 0 {
		c.topHelp(cmds, fs)
		return exitError
	}
	if rest[0] == "help" {
		if len(rest) > 1 {
			if cmd := find(cmds, rest[1]); cmd != nil {
				c.cmdHelp(cmd, "magnetar "+cmd.name, c.Stdout)
				return 0
			}
		}
		c.topHelp(cmds, fs)
		return 0
	}
	cmd := find(cmds, rest[0])
	if cmd == nil {
		fmt.Fprintf(c.Stderr, "magnetar: unknown command %q\nRun 'magnetar --help' for usage.\n", rest[0])
		return exitError
	}
	e := &env{CLI: c, g: g}
	defer func() {
		if e.client != nil {
			e.client.Close()
		}
	}()
	return c.runCommand(ctx, e, cmd, "magnetar "+cmd.name, rest[1:])
}

func (c *CLI) runCommand(ctx context.Context, e *env, cmd *command, path string, args []string) int {
	if len(cmd.sub) > 0 {
		sub := cmd.sub[0]
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			sub = find(cmd.sub, args[0])
			if sub == nil {
				fmt.Fprintf(c.Stderr, "%s: unknown subcommand %q\nRun '%s --help' for usage.\n", path, args[0], path)
				return exitError
			}
			args = args[1:]
		} else if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			c.cmdHelp(cmd, path, c.Stdout)
			return 0
		}
		return c.runCommand(ctx, e, sub, path+" "+sub.name, args)
	}
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	e.g.register(fs, c.Getenv)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	usageErr := exitError
	if cmd.cannotRunCode {
		usageErr = exitCannotRun
	}
	pos, err := parse(fs, args, cmd.interspersed)
	if errors.Is(err, flag.ErrHelp) {
		c.cmdHelp(cmd, path, c.Stdout)
		return 0
	}
	if err == nil && e.g.output != "table" && e.g.output != "json" {
		err = fmt.Errorf("unknown output format %q: want table or json", e.g.output)
	}
	if err != nil {
		fmt.Fprintf(c.Stderr, "%s: %v\nRun '%s --help' for usage.\n", path, err, path)
		return usageErr
	}
	var interrupted func() (os.Signal, bool)
	if c.Signals != nil && !cmd.forwardsSignals {
		var stop func()
		ctx, interrupted, stop = c.interruptible(ctx)
		defer stop()
	}
	err = cmd.run(ctx, e, pos)
	if err == nil {
		return 0
	}
	if interrupted != nil {
		// A command that ends on its own when interrupted (logs -f,
		// events, port-forward) returned nil above; any other exits as a
		// process killed by the signal would, without a message.
		if sig, ok := interrupted(); ok && (errors.Is(err, context.Canceled) || errdefs.IsCanceled(err)) {
			if s, ok := sig.(syscall.Signal); ok {
				return 128 + int(s)
			}
			return 128 + int(syscall.SIGINT)
		}
	}
	var ec *exitCode
	code := exitError
	if errors.As(err, &ec) {
		code = ec.code
		if ec.err == nil {
			return code
		}
	}
	fmt.Fprintf(c.Stderr, "magnetar: %v\n", err)
	return code
}

// interruptible returns a context that ends when the first signal of
// c.Signals arrives, a function that tells which (and whether one did),
// and one that stops watching.
func (c *CLI) interruptible(parent context.Context) (context.Context, func() (os.Signal, bool), func()) {
	ctx, cancel := context.WithCancel(parent)
	var (
		mu  sync.Mutex
		got os.Signal
	)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-c.Signals:
			mu.Lock()
			got = s
			mu.Unlock()
			cancel()
		case <-done:
		}
	}()
	which := func() (os.Signal, bool) {
		mu.Lock()
		defer mu.Unlock()
		return got, got != nil
	}
	var once sync.Once
	return ctx, which, func() {
		once.Do(func() { close(done) })
		cancel()
	}
}

// usageError reports wrong arguments.
type usageError string

func (u usageError) Error() string { return string(u) }

// parse parses flags; with interspersed, flags may follow positional
// arguments (until "--"). It returns the positional arguments.
func parse(fs *flag.FlagSet, args []string, interspersed bool) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		// flag stops at "--" too, and swallows it: tell the cases apart.
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if !interspersed || len(rest) == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func find(cmds []*command, name string) *command {
	for _, c := range cmds {
		if c.name == name {
			return c
		}
		for _, a := range c.aliases {
			if a == name {
				return c
			}
		}
	}
	return nil
}

func (c *CLI) topHelp(cmds []*command, fs *flag.FlagSet) {
	w := c.Stdout
	fmt.Fprint(w, `magnetar drives a Magnetar sandboxer: sandboxes of several kinds (runc,
wasm, ...), containers in them, and its local image store.

Usage:
  magnetar [--address ADDR] [-o table|json] COMMAND [ARGS...]

Commands:
`)
	for _, cmd := range cmds {
		name := cmd.name
		if len(cmd.aliases) > 0 {
			name += ", " + strings.Join(cmd.aliases, ", ")
		}
		fmt.Fprintf(w, "  %-24s %s\n", name, cmd.summary)
	}
	fmt.Fprint(w, "\nGlobal flags (also accepted after the command):\n")
	printFlags(w, fs)
	fmt.Fprint(w, `
Examples:
  magnetar kinds
  magnetar run --kind wasm ./hello.oci.tar
  magnetar run --rootfs /srv/busybox -- sh -c 'echo hello'
  magnetar ps -o json

Run 'magnetar COMMAND --help' for the flags and examples of a command.
`)
}

func (c *CLI) cmdHelp(cmd *command, path string, w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  magnetar %s\n\n%s\n", cmd.usage, strings.TrimSpace(cmd.help))
	if len(cmd.sub) > 0 {
		fmt.Fprint(w, "\nSubcommands:\n")
		for _, s := range cmd.sub {
			fmt.Fprintf(w, "  %-10s %s\n", s.name, s.summary)
		}
	} else {
		fs := flag.NewFlagSet(path, flag.ContinueOnError)
		if cmd.flags != nil {
			cmd.flags(fs)
		}
		if hasFlags(fs) {
			fmt.Fprint(w, "\nFlags:\n")
			printFlags(w, fs)
		}
		fmt.Fprint(w, "\nGlobal flags: --address ADDR, -o/--output table|json\n")
	}
	if len(cmd.examples) > 0 {
		fmt.Fprint(w, "\nExamples:\n")
		for _, ex := range cmd.examples {
			fmt.Fprintf(w, "  %s\n", ex)
		}
	}
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// printFlags lists flags, one-letter ones with one dash, others with two,
// and flags that share a variable on one line.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	type entry struct {
		names []string
		f     *flag.Flag
	}
	var entries []*entry
	byUsage := map[string]*entry{}
	fs.VisitAll(func(f *flag.Flag) {
		name := "--" + f.Name
		if len(f.Name) == 1 {
			name = "-" + f.Name
		}
		if e, ok := byUsage[f.Usage]; ok {
			e.names = append(e.names, name)
			return
		}
		e := &entry{names: []string{name}, f: f}
		byUsage[f.Usage] = e
		entries = append(entries, e)
	})
	for _, e := range entries {
		sort.Slice(e.names, func(i, j int) bool { return len(e.names[i]) < len(e.names[j]) })
		arg, usage := flag.UnquoteUsage(e.f)
		names := strings.Join(e.names, ", ")
		if arg != "" {
			names += " " + arg
		}
		def := ""
		if e.f.DefValue != "" && e.f.DefValue != "false" && e.f.DefValue != "[]" && e.f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", e.f.DefValue)
		}
		fmt.Fprintf(w, "  %-26s %s%s\n", names, usage, def)
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }

func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}
