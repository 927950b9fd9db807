// Command hello-wasm is Magnetar's example WebAssembly workload: a WASI
// preview 1 program (GOOS=wasip1 GOARCH=wasm) that prints a greeting, its
// arguments and environment, optionally echoes stdin, and exits with a
// chosen code. `make examples` builds it and packages it as an OCI image
// whose entrypoint is /hello.wasm, the layout runwasi and Kuasar's wasm
// sandboxer accept.
//
// With -task it is a small worker for examples/agent-loop: it reads the
// whitespace-separated integers of a task file, prints each step, and
// writes their product to a result file (WASI preview 1 has files, but no
// sockets and no way to run a shell).
//
//	hello-wasm [-echo] [-exit N] [-sleep D] [-count D] [-task FILE [-result FILE]] [args...]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func main() {
	echo := flag.Bool("echo", false, "copy stdin to stdout, upper-cased")
	exit := flag.Int("exit", 0, "exit with this code")
	sleep := flag.Duration("sleep", 0, "sleep this long before exiting")
	count := flag.Duration("count", 0, "print 0, 1, 2, ... one a line at this interval, forever")
	task := flag.String("task", "", "multiply the integers of this file and write the product to -result")
	result := flag.String("result", "", "the result file of -task (default: the task file + .result)")
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
	if *task != "" {
		out := *result
		if out == "" {
			out = *task + ".result"
		}
		if err := multiply(*task, out); err != nil {
			fmt.Fprintf(os.Stderr, "task: %v\n", err)
			os.Exit(1)
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

// multiply reads the integers of the task file, prints each step and
// writes "the answer is PRODUCT" to the result file.
func multiply(task, result string) error {
	b, err := os.ReadFile(task)
	if err != nil {
		return err
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return fmt.Errorf("%s holds no numbers", task)
	}
	product := int64(1)
	for i, f := range fields {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return fmt.Errorf("%s: %q is not an integer", task, f)
		}
		product *= n
		fmt.Printf("step %d of %d: times %d makes %d\n", i+1, len(fields), n, product)
	}
	if err := os.WriteFile(result, fmt.Appendf(nil, "the answer is %d\n", product), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", result)
	return nil
}
