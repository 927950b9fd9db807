// Command minish is a tiny shell-like interpreter for WASI preview 1, used
// by Magnetar's wasm tests. It runs `;`-separated commands given as its
// arguments (`minish -c SCRIPT` or `minish WORDS...`):
//
//	echo WORDS...   print the words
//	exit N          exit with status N
//	sleep N         sleep N seconds (fractions allowed)
//	cat             copy stdin to stdout
//	tick            print "tick" every tenth of a second, forever
//	tr a-z A-Z      copy stdin to stdout in upper case
//	env             print the environment
//	pwd             print the working directory
//	ls DIR          list a directory
//	read FILE       print a file
//	write FILE WORDS...  write words to a file
//
// Any other command fails with status 127.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "-c" {
		args = args[1:]
	}
	script := strings.Join(args, " ")
	status := 0
	for _, cmd := range strings.Split(script, ";") {
		f := strings.Fields(cmd)
		if len(f) == 0 {
			continue
		}
		status = run(f)
	}
	os.Exit(status)
}

func run(f []string) int {
	switch f[0] {
	case "true":
		return 0
	case "false":
		return 1
	case "echo":
		fmt.Println(strings.Join(f[1:], " "))
		return 0
	case "exit":
		n := 0
		if len(f) > 1 {
			n, _ = strconv.Atoi(f[1])
		}
		os.Exit(n)
	case "sleep":
		if len(f) > 1 {
			s, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				fmt.Fprintln(os.Stderr, "sleep:", err)
				return 1
			}
			time.Sleep(time.Duration(s * float64(time.Second)))
		}
		return 0
	case "tick":
		for {
			fmt.Println("tick")
			time.Sleep(100 * time.Millisecond)
		}
	case "cat":
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, "cat:", err)
			return 1
		}
		return 0
	case "tr":
		if len(f) != 3 || f[1] != "a-z" || f[2] != "A-Z" {
			fmt.Fprintln(os.Stderr, "tr: only `tr a-z A-Z` is supported")
			return 2
		}
		r := bufio.NewReader(os.Stdin)
		w := bufio.NewWriter(os.Stdout)
		defer w.Flush()
		for {
			line, err := r.ReadString('\n')
			w.WriteString(strings.ToUpper(line))
			w.Flush()
			if err != nil {
				return 0
			}
		}
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
		return 0
	case "pwd":
		wd, err := os.Getwd()
		if err != nil {
			fmt.Fprintln(os.Stderr, "pwd:", err)
			return 1
		}
		fmt.Println(wd)
		return 0
	case "ls":
		dir := "."
		if len(f) > 1 {
			dir = f[1]
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ls:", err)
			return 1
		}
		for _, e := range ents {
			fmt.Println(e.Name())
		}
		return 0
	case "read":
		if len(f) != 2 {
			return 2
		}
		data, err := os.ReadFile(f[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "read:", err)
			return 1
		}
		os.Stdout.Write(data)
		return 0
	case "write":
		if len(f) < 2 {
			return 2
		}
		if err := os.WriteFile(f[1], []byte(strings.Join(f[2:], " ")+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "write:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "minish: %s: command not found\n", f[0])
	return 127
}
