package sdk_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
)

// BenchmarkPorts measures DialPort (the port proxy through the sandboxer,
// Connect over a unix socket) against a direct TCP connection made in the
// sandbox's network namespace, to the same echo server in a runc sandbox:
// connection set-up, the round trip of one byte on an open connection
// (the latency the proxy adds) and the throughput of 16 MiB echoed.
func BenchmarkPorts(b *testing.B) {
	sock := apitest.Serve(b, fileKinds["runc"].backend(b))
	rootfs := testutil.BusyboxRootfs(b, filepath.Join(b.TempDir(), "rootfs"))
	ctx := context.Background()
	c := dialTB(b, sock)
	sb, err := c.CreateSandbox(ctx, "runc")
	if err != nil {
		b.Fatal(err)
	}
	defer sb.Delete(context.Background(), sdk.Force())
	// -ll: a persistent server, a cat per connection.
	ctr, err := sb.Run(ctx, sdk.FromRootfs(rootfs), sdk.Args("nc", "-ll", "-p", "8080", "-e", "cat"))
	if err != nil {
		b.Fatal(err)
	}
	netns := fmt.Sprintf("/proc/%d/ns/net", ctr.PID)
	dials := map[string]func() (net.Conn, error){
		"dialport": func() (net.Conn, error) { return sb.DialPort(ctx, 8080) },
		"direct":   func() (net.Conn, error) { return dialIn(netns, "127.0.0.1:8080") },
	}
	testutil.Eventually(b, 30*time.Second, func() bool {
		conn, err := dials["direct"]()
		if err == nil {
			conn.Close()
		}
		return err == nil
	}, "nc listens")
	for _, via := range []string{"direct", "dialport"} {
		dial := dials[via]
		b.Run(via+"/connect", func(b *testing.B) {
			for b.Loop() {
				conn, err := dial()
				if err != nil {
					b.Fatal(err)
				}
				// The server answers once its cat runs: a connection is
				// usable end to end after one round trip.
				roundTrip(b, conn, []byte{1})
				conn.Close()
			}
		})
		b.Run(via+"/roundtrip-1B", func(b *testing.B) {
			conn, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			one := []byte{1}
			for b.Loop() {
				roundTrip(b, conn, one)
			}
		})
		b.Run(via+"/echo-16MiB", func(b *testing.B) {
			data := bytes.Repeat([]byte("0123456789abcdef"), 1<<20)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				conn, err := dial()
				if err != nil {
					b.Fatal(err)
				}
				errc := make(chan error, 1)
				go func() {
					_, err := conn.Write(data)
					errc <- err
				}()
				n, err := io.CopyN(io.Discard, conn, int64(len(data)))
				if werr := <-errc; err == nil {
					err = werr
				}
				conn.Close()
				if err != nil || n != int64(len(data)) {
					b.Fatalf("echoed %d of %d bytes: %v", n, len(data), err)
				}
			}
		})
	}
}

// roundTrip writes p on conn and reads as many bytes back.
func roundTrip(b *testing.B, conn net.Conn, p []byte) {
	if _, err := conn.Write(p); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, len(p))); err != nil {
		b.Fatal(err)
	}
}

// dialIn connects to addr from within the network namespace at path (the
// socket stays in it afterwards).
func dialIn(path, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // unlocked only once back in our own namespace
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer own.Close()
		ns, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		c, err := net.Dial("tcp", addr)
		if unix.Setns(int(own.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// BenchmarkPause measures pausing and resuming a whole sandbox with one
// running container, per kind that can pause (the API's PauseSandbox and
// ResumeSandbox, Connect over a unix socket; a wasm sandbox cannot be
// paused, and a VM's pause is measured by nothing here yet).
func BenchmarkPause(b *testing.B) {
	for _, name := range []string{"runc", "gvisor"} {
		k := fileKinds[name]
		b.Run(name, func(b *testing.B) {
			c := dialTB(b, apitest.Serve(b, k.backend(b)))
			ctx := context.Background()
			sb, err := c.CreateSandbox(ctx, name)
			if err != nil {
				b.Fatal(err)
			}
			defer sb.Delete(context.Background(), sdk.Force())
			if _, err := sb.Run(ctx, sdk.FromRootfs(k.rootfs(b)), sdk.Args(k.sleep...)); err != nil {
				b.Fatal(err)
			}
			var pause, resume time.Duration
			for b.Loop() {
				t0 := time.Now()
				if err := sb.Pause(ctx); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := sb.Resume(ctx); err != nil {
					b.Fatal(err)
				}
				pause += t1.Sub(t0)
				resume += time.Since(t1)
			}
			b.ReportMetric(float64(pause.Microseconds())/float64(b.N)/1000, "ms-pause/op")
			b.ReportMetric(float64(resume.Microseconds())/float64(b.N)/1000, "ms-resume/op")
		})
	}
}
