//go:build linux

// Command nftflush tries to remove every nftables rule of its network
// namespace (what `nft flush ruleset` does), and then, should that fail,
// to delete Magnetar's egress table. Tests run it inside a sandbox to show
// that its processes cannot lift their egress policy. It prints what
// happened and exits 0 only if the flush went through.
package main

import (
	"fmt"
	"os"

	"github.com/google/nftables"
)

func main() {
	c, err := nftables.New()
	if err != nil {
		fmt.Println("netlink:", err)
		os.Exit(2)
	}
	c.FlushRuleset()
	if err := c.Flush(); err != nil {
		fmt.Println("flush ruleset:", err)
		c.DelTable(&nftables.Table{Name: "magnetar", Family: nftables.TableFamilyINet})
		if err := c.Flush(); err != nil {
			fmt.Println("delete table:", err)
		}
		os.Exit(1)
	}
	fmt.Println("flushed")
}
