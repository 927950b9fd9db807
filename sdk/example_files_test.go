package sdk_test

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"strings"
	"time"

	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/embedded"
)

// A code-execution loop: write a script into a sandbox, run it, read the
// file it produced, and walk the results with io/fs. The client here is
// embedded (engine in process); one from [sdk.Dial] works the same.
// (exampleRootfs is a directory holding a busybox root file system.)
func ExampleFiles() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := embedded.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // deletes the sandbox

	sb, err := c.CreateSandbox(ctx, "runc")
	if err != nil {
		log.Fatal(err)
	}
	ctr, err := sb.Run(ctx, sdk.FromRootfs(exampleRootfs), sdk.Args("sleep", "300"))
	if err != nil {
		log.Fatal(err)
	}
	files := ctr.Files()

	// Put a script in (streamed from any io.Reader; atomic: all or nothing).
	if err := files.MkdirAll(ctx, "/work/out", 0); err != nil {
		log.Fatal(err)
	}
	script := "#!/bin/sh\nfor i in 1 2 3; do echo line $i >> /work/out/result.txt; done\necho done\n"
	if _, err := files.WriteFile(ctx, "/work/run.sh", strings.NewReader(script), sdk.WriteOptions{Perm: 0o755, Atomic: true}); err != nil {
		log.Fatal(err)
	}

	// Watch the output directory, then run the script.
	watch, err := files.Watch(ctx, "/work/out", false)
	if err != nil {
		log.Fatal(err)
	}
	defer watch.Close()
	p, err := ctr.Exec(ctx, sdk.Args("/work/run.sh"))
	if err != nil {
		log.Fatal(err)
	}
	out, status, err := p.CombinedOutput(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("script: %s(exit %d)\n", out, status.Code)
	ev, err := watch.Next()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("event:", ev.Type, ev.Path)

	// Read what it produced: an io.ReadCloser, streamed.
	r, err := files.Open(ctx, "/work/out/result.txt")
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	if _, err := io.Copy(os.Stdout, r); err != nil {
		log.Fatal(err)
	}

	// Or through io/fs, read-only.
	err = fs.WalkDir(files.FS(ctx), "work", func(path string, d fs.DirEntry, err error) error {
		if err == nil {
			fmt.Println("walk:", path, d.IsDir())
		}
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// script: done
	// (exit 0)
	// event: created /work/out/result.txt
	// line 1
	// line 2
	// line 3
	// walk: work true
	// walk: work/out true
	// walk: work/out/result.txt false
	// walk: work/run.sh false
}
