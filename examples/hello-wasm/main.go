// Command hello-wasm is Magnetar's example WebAssembly workload: a WASI
// preview 1 program (GOOS=wasip1 GOARCH=wasm) that prints a greeting, its
// arguments and environment, optionally echoes stdin, and exits with a
// chosen code. `make examples` builds it and packages it as an OCI image
// whose entrypoint is /hello.wasm, the layout runwasi and Kuasar's wasm
// sandboxer accept.
//
//	hello-wasm [-echo] [-exit N] [-sleep D] [-count D] [args...]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

func main() {
	echo := flag.Bool("echo", false, "copy stdin to stdout, upper-cased")
	exit := flag.Int("exit", 0, "exit with this code")
	sleep := flag.Duration("sleep", 0, "sleep this long before exiting")
	count := flag.Duration("count", 0, "print 0, 1, 2, ... one a line at this interval, forever")
	flag.Parse()

	fmt.Printf("Hello from WebAssembly! (%s/%s)\n", runtime.GOOS, runtime.GOARCH)
	if flag.NArg() > 0 {
		fmt.Printf("args: %s\n", strings.Join(flag.Args(), " "))
	}
	if g := os.Getenv("GREETING"); g != "" {
		fmt.Printf("GREETING=%s\n", g)
	}
	if wd, err := os.Getwd(); err == nil {
		fmt.Printf("cwd: %s\n", wd)
	}
	if *echo {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			fmt.Println(strings.ToUpper(sc.Text()))
		}
	}
	for i := 0; *count > 0; i++ {
		fmt.Println(i)
		time.Sleep(*count)
	}
	if *sleep > 0 {
		time.Sleep(*sleep)
	}
	if *exit != 0 {
		fmt.Fprintf(os.Stderr, "exiting with %d\n", *exit)
	}
	os.Exit(*exit)
}
