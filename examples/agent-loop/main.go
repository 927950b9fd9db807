// Command agent-loop is what a code-execution platform (an AI agent's
// tool, a notebook, a judge) does with a Magnetar sandbox, through the Go
// SDK and a running magnetar-sandboxer: it creates a sandbox that ends by
// itself when forgotten, writes a script into it, runs it while streaming
// its output, reads the file the script produced, serves that file with
// an HTTP server in the sandbox and fetches it through DialPort, shows the
// sandbox's usage, pauses and resumes it, and removes it.
//
//	agent-loop [-address unix:///run/magnetar/api.sock] [-kind runc] BUSYBOX.oci.tar
//
// The image must have sh and httpd (busybox: make examples builds
// .tmp/examples/busybox.oci.tar). Kinds: runc, gvisor (its ports need a
// network namespace: -netns), vm (no DialPort yet: the step is skipped).
package main

import (
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

func main() {
	address := flag.String("address", envOr("MAGNETAR_ADDRESS", "unix:///run/magnetar/api.sock"), "sandboxer API address")
	kind := flag.String("kind", "runc", "sandbox kind")
	netns := flag.String("netns", "", "network namespace path for the sandbox (gvisor's ports need one)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: agent-loop [-address ADDR] [-kind KIND] [-netns PATH] BUSYBOX.oci.tar")
		os.Exit(2)
	}
	if err := run(*address, *kind, *netns, flag.Arg(0)); err != nil {
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

func run(address, kind, netns, image string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := sdk.Dial(ctx, address)
	if err != nil {
		return err
	}
	defer c.Close()
	imgs, err := c.ImportImage(ctx, image, nil)
	if err != nil || len(imgs) == 0 {
		return fmt.Errorf("import %s: %v", image, err)
	}

	// A sandbox that a forgotten session does not leak: it ends after 10
	// minutes, or after 2 idle ones.
	opts := []sdk.SandboxOption{sdk.WithTimeoutAfter(10 * time.Minute), sdk.WithIdleTimeout(2 * time.Minute)}
	if netns != "" {
		opts = append(opts, sdk.WithNetNS(netns))
	}
	sb, err := c.CreateSandbox(ctx, kind, opts...)
	if err != nil {
		return err
	}
	defer func() {
		step("remove the sandbox")
		_ = sb.Delete(context.Background(), sdk.Force())
	}()
	step("sandbox %s (%s), ends by itself at %s or after %v idle", sb.ID, sb.Kind, sb.ExpiresAt.Format(time.TimeOnly), sb.IdleTimeout)

	// The workspace: a container that stays while the agent works.
	ws, err := sb.Run(ctx, sdk.FromImage(imgs[0].Name), sdk.Args("sleep", "3600"))
	if err != nil {
		return err
	}
	files := ws.Files()
	if err := files.MkdirAll(ctx, "/work", 0o755); err != nil {
		return err
	}
	if _, err := files.WriteFile(ctx, "/work/task.sh", strings.NewReader(script), sdk.WriteOptions{Perm: 0o755, Atomic: true}); err != nil {
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
	result, err := files.ReadFile(ctx, "/work/result.txt")
	if err != nil {
		return err
	}
	step("read /work/result.txt: %q", strings.TrimSpace(string(result)))

	// A server in the sandbox, reached through the sandboxer.
	if _, err := ws.Exec(ctx, sdk.Args("httpd", "-f", "-p", "8080", "-h", "/work")); err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return sb.DialPort(ctx, 8080)
	}}}
	var body []byte
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := hc.Get("http://sandbox/result.txt")
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			break
		}
		if errdefs.IsNotImplemented(err) || time.Now().After(deadline) {
			step("no HTTP through DialPort on this kind: %v", err)
			break
		}
		time.Sleep(100 * time.Millisecond) // httpd is starting
	}
	if body != nil {
		step("GET http://sandbox:8080/result.txt through DialPort: %q", strings.TrimSpace(string(body)))
	}
	hc.CloseIdleConnections()

	if u, err := sb.Usage(ctx); err == nil {
		step("usage: cpu %v, memory %d KiB, %d pids, net rx %d B tx %d B", u.CPU, u.MemoryBytes>>10, u.Pids, u.NetRxBytes, u.NetTxBytes)
	}
	if err := sb.Pause(ctx); err != nil {
		step("pause: %v", err)
	} else {
		step("paused (state %s)", sb.State)
		if err := sb.Resume(ctx); err != nil {
			return err
		}
		step("resumed (state %s)", sb.State)
	}
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
