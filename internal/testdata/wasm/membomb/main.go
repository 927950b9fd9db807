// Command membomb allocates and touches memory until it cannot: a runaway
// module for Magnetar's isolation tests.
package main

import "fmt"

var hold [][]byte

func main() {
	fmt.Println("membomb started")
	for i := 0; ; i++ {
		b := make([]byte, 8<<20)
		for j := range b {
			if j%4096 == 0 {
				b[j] = byte(i)
			}
		}
		hold = append(hold, b)
	}
}
