// Command nonewprivs is a stand-in for
// registry.k8s.io/e2e-test-images/nonewprivs: installed set-user-ID root, it
// prints its effective user ID, which shows whether the no_new_privs flag
// kept the kernel from honouring the set-user-ID bit. Build it static
// (CGO_ENABLED=0).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
