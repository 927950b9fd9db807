// Package netnsrun runs a function inside a network namespace, for the
// tests and benchmarks that talk to a sandbox's or a test-made namespace.
package netnsrun

import (
	"runtime"

	"github.com/vishvananda/netns"
)

// Run runs fn on a locked thread that joined the network namespace at
// path; the thread is thrown away afterwards (it is never unlocked, so
// the Go runtime ends it instead of reusing it in the namespace).
func Run(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}
