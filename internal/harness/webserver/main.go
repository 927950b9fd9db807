// Command webserver is a stand-in for the web servers cri-tools' critest
// runs (registry.k8s.io/e2e-test-images/nginx and httpd, and
// gcr.io/k8s-staging-cri-tools/hostnet-nginx): it answers every HTTP GET
// with 200 and a short page. Installed as "nginx" or "httpd" in an image,
// that is the process name `pidof` finds. Build it static (CGO_ENABLED=0).
//
//	webserver [-title ARGV0] [-port N] [-pidfile PATH]
//
// -title re-executes the program with ARGV0 as its first argument (what
// /proc/<pid>/cmdline shows first, e.g. "nginx: master process ..."); the
// process ID and name stay.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

func main() {
	port := flag.Int("port", 80, "TCP port to listen on (all addresses)")
	pidfile := flag.String("pidfile", "", "write the process ID to this file once listening")
	title := flag.String("title", "", "re-execute with this first argument")
	flag.Parse()
	if *title != "" && os.Args[0] != *title {
		exe, err := os.Executable()
		if err == nil {
			err = syscall.Exec(exe, append([]string{*title}, os.Args[1:]...), os.Environ())
		}
		fmt.Fprintf(os.Stderr, "webserver: re-execute as %q: %v\n", *title, err)
		os.Exit(1)
	}
	exe, _ := os.Executable()
	name := filepath.Base(exe)
	srv := &http.Server{
		Addr:              ":" + strconv.Itoa(*port),
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "<html><body><h1>%s (magnetar test stand-in)</h1></body></html>\n", name)
		}),
	}
	ln, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
	if *pidfile != "" {
		if err := os.WriteFile(*pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
	}
	fmt.Printf("%s listening on %s\n", name, srv.Addr)
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
