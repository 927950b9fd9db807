package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/magnetar-io/magnetar/sdk"
)

func portForwardCmd() *command {
	var address string
	return &command{
		name: "port-forward", usage: "port-forward [--listen-address ADDR] SANDBOX [LOCAL:]REMOTE...",
		summary: "Forward local ports to ports in a sandbox",
		help: `Listens on LOCAL (on 127.0.0.1 unless --address says otherwise; 0 or no
LOCAL picks a free port) and carries each connection to port REMOTE on the
sandbox's loopback, through the sandboxer, until interrupted. Prints one line
per forwarded port once it listens.`,
		examples:     []string{"magnetar port-forward pod1 8080:80", "magnetar port-forward pod1 :5432"},
		interspersed: true,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&address, "listen-address", "127.0.0.1", "local `address` to listen on")
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) < 2 {
				return usageError("port-forward needs a SANDBOX and at least one [LOCAL:]REMOTE")
			}
			type fwd struct {
				local  string
				remote int
			}
			var fwds []fwd
			for _, a := range args[1:] {
				local, remote, ok := strings.Cut(a, ":")
				if !ok {
					local, remote = "0", a
				}
				if local == "" {
					local = "0"
				}
				r, err := strconv.Atoi(remote)
				if err != nil || r < 1 || r > 65535 {
					return usageError(fmt.Sprintf("port-forward: remote port %q is not between 1 and 65535", remote))
				}
				if l, err := strconv.Atoi(local); err != nil || l < 0 || l > 65535 {
					return usageError(fmt.Sprintf("port-forward: local port %q is not between 0 and 65535", local))
				}
				fwds = append(fwds, fwd{local, r})
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			sb, err := c.Sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var wg sync.WaitGroup
			errc := make(chan error, len(fwds))
			for _, f := range fwds {
				ln, err := net.Listen("tcp", net.JoinHostPort(address, f.local))
				if err != nil {
					return err
				}
				context.AfterFunc(ctx, func() { ln.Close() })
				fmt.Fprintf(e.Stdout, "Forwarding %s -> %s:%d\n", ln.Addr(), sb.ID, f.remote)
				wg.Go(func() {
					errc <- forward(ctx, ln, sb, f.remote, e)
				})
			}
			var ferr error
			select {
			case <-ctx.Done():
			case ferr = <-errc:
			}
			cancel()
			wg.Wait()
			return ferr
		},
	}
}

// forward serves ln until ctx ends: each connection goes to port on the
// sandbox.
func forward(ctx context.Context, ln net.Listener, sb *sdk.Sandbox, port int, e *env) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		local, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer local.Close()
			remote, err := sb.DialPort(ctx, port)
			if err != nil {
				fmt.Fprintf(e.Stderr, "magnetar: port-forward to %s:%d: %v\n", sb.ID, port, err)
				return
			}
			defer remote.Close()
			stop := context.AfterFunc(ctx, func() { local.Close(); remote.Close() })
			defer stop()
			splice(local, remote)
		})
	}
}

// splice copies both ways, passing half-closes on, until both directions
// ended.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && (err == nil || errors.Is(err, io.EOF)) {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Go(func() { half(a, b) })
	wg.Go(func() { half(b, a) })
	wg.Wait()
}
