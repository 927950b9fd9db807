// Command agent-loop is what a code-execution platform (an AI agent's
// tool, a notebook, a judge) does with a Magnetar sandbox, through the Go
// SDK and a running magnetar-sandboxer: it creates a sandbox that ends by
// itself when forgotten, writes a script into it, runs it while streaming
// its output, reads the file the script produced, serves that file with
// an HTTP server in the sandbox and fetches it through DialPort, shows the
// sandbox's usage, pauses and resumes it, and removes it.
//
//	agent-loop [-address unix:///run/magnetar/api.sock] [-kind runc] [-network MODE] [-netns PATH] IMAGE.oci.tar
//
// Kinds runc, gvisor and vm do all of it; IMAGE must have sh and httpd
// (busybox: `make examples` builds .tmp/examples/busybox.oci.tar). A vm
// sandbox's port is reached through its guest agent. A gvisor sandbox's
// port is reached through runsc, which needs gVisor's netstack on a
// network namespace: the program asks for a bridge network for it unless
// -network or -netns says otherwise; its files are served when the
// sandboxer runs gvisor with `[backends.gvisor] host_files = true`, and
// the program writes and reads them through exec otherwise.
//
// The wasm kind runs WebAssembly modules (WASI preview 1): no shell to run
// a script with, no exec, no sockets, no freezer. For it IMAGE is
// examples/hello-wasm (.tmp/examples/hello-wasm.oci.tar): the program
// writes a task file into a container created from it, starts the module,
// which reads the task and writes a result file, streams its output,
// reads the result and shows the usage; it says which steps do not apply
// and why.
//
// `make demo-agent-loop` runs it in every kind (hack/demo-agent-loop.sh).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
)

const script = `#!/bin/sh
# The "agent's" code: some steps, then a result file.
for i in 1 2 3; do echo "step $i of 3"; done
echo "the answer is $((6 * 7))" > /work/result.txt
echo "wrote /work/result.txt" >&2
`

// wasmTask is the task file of the wasm kind's module (hello-wasm -task):
// the numbers it multiplies.
const wasmTask = "2 3 7\n"

func main() {
	address := flag.String("address", envOr("MAGNETAR_ADDRESS", "unix:///run/magnetar/api.sock"), "sandboxer API address")
	kind := flag.String("kind", "runc", "sandbox kind: runc, gvisor, vm or wasm")
	network := flag.String("network", "", "network mode: none, bridge or host (default: bridge for gvisor, else the sandboxer's default)")
	netns := flag.String("netns", "", "run the sandbox in this existing network namespace instead")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: agent-loop [-address ADDR] [-kind KIND] [-network MODE] [-netns PATH] IMAGE.oci.tar")
		fmt.Fprintln(os.Stderr, "IMAGE: busybox for runc, gvisor and vm; examples/hello-wasm for wasm")
		os.Exit(2)
	}
	if err := run(*address, *kind, *network, *netns, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "agent-loop:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func step(format string, args ...any) { fmt.Printf("--> "+format+"\n", args...) }

// skip says that a step does not apply to this kind, and why.
func skip(what, why string) { fmt.Printf("--- %s: does not apply: %s\n", what, why) }

func run(address, kind, network, netns, image string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, address)
	if err != nil {
		return err
	}
	defer c.Close()
	caps, err := capabilities(ctx, c, kind)
	if err != nil {
		return err
	}
	imgs, err := c.ImportImage(ctx, image, nil)
	if err != nil || len(imgs) == 0 {
		return fmt.Errorf("import %s: %v", image, err)
	}

	// A sandbox that a forgotten session does not leak: it ends after 10
	// minutes, or after 2 idle ones.
	opts := []sdk.SandboxOption{sdk.WithTimeoutAfter(10 * time.Minute), sdk.WithIdleTimeout(2 * time.Minute)}
	switch {
	case netns != "":
		opts = append(opts, sdk.WithNetNS(netns))
	case network != "":
		opts = append(opts, sdk.WithNetwork(sdk.Network(network)))
	case kind == "gvisor":
		// runsc reaches a port only in gVisor's netstack on a
		// namespace's interfaces.
		opts = append(opts, sdk.WithNetwork(sdk.NetworkBridge))
	}
	sb, err := c.CreateSandbox(ctx, kind, opts...)
	if err != nil {
		return err
	}
	defer func() {
		step("remove the sandbox")
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := sb.Delete(dctx, sdk.Force()); err != nil {
			fmt.Fprintln(os.Stderr, "agent-loop: remove the sandbox:", err)
		}
	}()
	network = "no bridge network"
	if sb.Network != nil {
		network = fmt.Sprintf("bridge network %q, %s", sb.Network.Name, strings.Join(sb.Network.IPs, " "))
	}
	step("sandbox %s (%s, %s), ends by itself at %s or after %v idle", sb.ID, sb.Kind, network, sb.ExpiresAt.Format(time.TimeOnly), sb.IdleTimeout)

	if caps.Exec {
		err = shellLoop(ctx, sb, imgs[0].Name)
	} else {
		err = moduleLoop(ctx, sb, imgs[0].Name)
	}
	if err != nil {
		return err
	}

	u, err := sb.Usage(ctx)
	if err != nil {
		return fmt.Errorf("usage: %w", err)
	}
	step("usage: cpu %v, memory %d KiB, %d pids, net rx %d B tx %d B", u.CPU, u.MemoryBytes>>10, u.Pids, u.NetRxBytes, u.NetTxBytes)

	if !caps.Pause {
		skip("pause and resume", fmt.Sprintf("the %s kind cannot freeze its containers (wasm: they are instances in one runner process shared by the node's sandboxes)", kind))
		return nil
	}
	if err := sb.Pause(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	step("paused (state %s)", sb.State)
	if err := sb.Resume(ctx); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	step("resumed (state %s)", sb.State)
	return nil
}

// capabilities returns the kind's capabilities, or why it cannot be used.
func capabilities(ctx context.Context, c *sdk.Client, kind string) (sdk.Capabilities, error) {
	kinds, err := c.Kinds(ctx)
	if err != nil {
		return sdk.Capabilities{}, err
	}
	for _, k := range kinds {
		if k.Name != kind {
			continue
		}
		if !k.Available {
			return sdk.Capabilities{}, fmt.Errorf("kind %s is not available on this sandboxer: %s", kind, k.UnavailableReason)
		}
		return k.Capabilities, nil
	}
	return sdk.Capabilities{}, fmt.Errorf("the sandboxer has no kind %q", kind)
}

// shellLoop is the agent's round trip in a sandbox with a shell: a
// script written, run with its output streamed, its result file read and
// served over HTTP through DialPort.
func shellLoop(ctx context.Context, sb *sdk.Sandbox, image string) error {
	// The workspace: a container that stays while the agent works.
	ws, err := sb.Run(ctx, sdk.FromImage(image), sdk.Args("sleep", "3600"))
	if err != nil {
		return err
	}
	fs := workspace{ctr: ws, files: ws.Files()}
	if err := fs.write(ctx, "/work/task.sh", script, 0o755); err != nil {
		return err
	}
	step("wrote /work/task.sh; running it:")
	p, err := ws.Exec(ctx, sdk.Args("/work/task.sh"))
	if err != nil {
		return err
	}
	st, err := p.Attach(ctx, prefixed("    | "), prefixed("    ! "))
	if err != nil {
		return err
	}
	step("task.sh exited with %d", st.Code)
	if st.Code != 0 {
		return fmt.Errorf("task.sh exited with %d", st.Code)
	}
	result, err := fs.read(ctx, "/work/result.txt")
	if err != nil {
		return err
	}
	step("read /work/result.txt: %q", strings.TrimSpace(result))

	// A server in the sandbox, reached through the sandboxer.
	if _, err := ws.Exec(ctx, sdk.Args("httpd", "-f", "-p", "8080", "-h", "/work")); err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return sb.DialPort(ctx, 8080)
	}}}
	defer hc.CloseIdleConnections()
	for deadline := time.Now().Add(30 * time.Second); ; {
		body, err := get(hc, "http://sandbox/result.txt")
		if err == nil {
			step("GET http://sandbox:8080/result.txt through DialPort: %q", strings.TrimSpace(string(body)))
			return nil
		}
		if errdefs.IsNotImplemented(err) {
			skip("HTTP through DialPort", err.Error())
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET through DialPort: %w", err)
		}
		time.Sleep(100 * time.Millisecond) // httpd is starting
	}
}

func get(hc *http.Client, url string) ([]byte, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return body, err
}

// workspace writes and reads a container's files through the file
// service, or through exec where the sandboxer does not serve the kind's
// files (gvisor without host_files).
type workspace struct {
	ctr    *sdk.Container
	files  *sdk.Files
	noFile bool
}

func (w *workspace) write(ctx context.Context, path, data string, perm uint32) error {
	if !w.noFile {
		err := w.files.MkdirAll(ctx, "/work", 0o755)
		if err == nil {
			_, err = w.files.WriteFile(ctx, path, strings.NewReader(data), sdk.WriteOptions{Perm: perm, Atomic: true})
		}
		if !errdefs.IsNotImplemented(err) {
			return err
		}
		w.noFile = true
		step("the file service does not reach this sandbox's files (%v): files go through exec", err)
	}
	p, err := w.ctr.Exec(ctx, sdk.WithStdin(), sdk.Args("sh", "-c", fmt.Sprintf(`mkdir -p /work && cat > %s && chmod %o %s`, path, perm, path)))
	if err != nil {
		return err
	}
	if err := p.WriteStdin(ctx, []byte(data)); err != nil {
		return err
	}
	if err := p.CloseStdin(ctx); err != nil {
		return err
	}
	out, st, err := p.CombinedOutput(ctx)
	if err == nil && st.Code != 0 {
		err = fmt.Errorf("write %s through exec: exit %d: %s", path, st.Code, bytes.TrimSpace(out))
	}
	return err
}

func (w *workspace) read(ctx context.Context, path string) (string, error) {
	if !w.noFile {
		b, err := w.files.ReadFile(ctx, path)
		return string(b), err
	}
	p, err := w.ctr.Exec(ctx, sdk.Args("cat", path))
	if err != nil {
		return "", err
	}
	var out, errOut bytes.Buffer
	st, err := p.Attach(ctx, &out, &errOut)
	if err == nil && st.Code != 0 {
		err = fmt.Errorf("read %s through exec: exit %d: %s", path, st.Code, bytes.TrimSpace(errOut.Bytes()))
	}
	return out.String(), err
}

// moduleLoop is the subset of the round trip that a WebAssembly module
// (WASI preview 1) allows: a task file written into its container before
// it starts, the module's output streamed, its result file read.
func moduleLoop(ctx context.Context, sb *sdk.Sandbox, image string) error {
	skip("a shell script", "a WASI preview 1 module cannot run a shell or any other program; the agent's code is the module itself")
	ctr, err := sb.Create(ctx, sdk.FromImage(image), sdk.Args("-task", "/work/task.txt", "-result", "/work/result.txt"))
	if err != nil {
		return err
	}
	files := ctr.Files()
	if err := files.MkdirAll(ctx, "/work", 0o755); err != nil {
		return err
	}
	if _, err := files.WriteFile(ctx, "/work/task.txt", strings.NewReader(wasmTask), sdk.WriteOptions{Perm: 0o644, Atomic: true}); err != nil {
		return err
	}
	step("wrote /work/task.txt (%q) into container %s; starting the module:", strings.TrimSpace(wasmTask), ctr.ID)
	if err := ctr.Start(ctx); err != nil {
		return err
	}
	st, err := ctr.Attach(ctx, prefixed("    | "), prefixed("    ! "))
	if err != nil {
		return err
	}
	step("the module exited with %d", st.Code)
	if st.Code != 0 {
		return fmt.Errorf("the module exited with %d", st.Code)
	}
	result, err := files.ReadFile(ctx, "/work/result.txt")
	if err != nil {
		return err
	}
	step("read /work/result.txt: %q", strings.TrimSpace(string(result)))
	skip("exec", "the wasm kind has no exec (its capabilities say so): WASI preview 1 cannot start a process in a running module")
	skip("HTTP through DialPort", "WASI preview 1 has no sockets, a module cannot listen; DialPort answers UNIMPLEMENTED for wasm sandboxes")
	return nil
}

// prefixed writes each line to stdout with a prefix.
type prefixed string

func (p prefixed) Write(b []byte) (int, error) {
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			fmt.Print(string(p) + l)
		}
	}
	return len(b), nil
}
