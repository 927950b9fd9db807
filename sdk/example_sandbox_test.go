package sdk_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/embedded"
)

// Reach a server that runs in a sandbox: DialPort returns a net.Conn, so
// an http.Client (or any protocol client) can use it as its dialer. The
// sandbox also ends by itself if forgotten, and can be paused.
func ExampleSandbox_DialPort() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := embedded.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Ends after an hour, or after five minutes without a call or a process.
	sb, err := c.CreateSandbox(ctx, "runc", sdk.WithTimeoutAfter(time.Hour), sdk.WithIdleTimeout(5*time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := sb.Run(ctx, sdk.FromRootfs(exampleRootfs), sdk.Args("httpd", "-f", "-p", "8080", "-h", "/etc")); err != nil {
		log.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return sb.DialPort(ctx, 8080)
	}}}
	defer hc.CloseIdleConnections()
	var resp *http.Response
	for resp == nil {
		if resp, err = hc.Get("http://sandbox/group"); err != nil && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond) // httpd is starting
		} else if err != nil {
			log.Fatal(err)
		}
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %s", resp.Status, bytes.SplitAfter(body, []byte("\n"))[0])

	// Freeze everything in it, and thaw it again.
	if err := sb.Pause(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", sb.State)
	if err := sb.Resume(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", sb.State)
	// Output:
	// 200 OK: root:x:0:
	// state: paused
	// state: ready
}
