// Command busyloop spins forever without making host calls: a runaway
// module for Magnetar's isolation tests.
package main

import "fmt"

var sink uint64

func main() {
	fmt.Println("busyloop started")
	for i := uint64(0); ; i++ {
		sink += i * i
	}
}
