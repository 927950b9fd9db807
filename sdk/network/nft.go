//go:build linux

package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family inet) that holds a sandbox's
// egress policy in its network namespace.
const TableName = "magnetar"

// applyPolicy replaces the egress table in the network namespace at
// netnsPath with one enforcing p, in one atomic netlink batch: the old
// table's rules hold until the new ones do.
func applyPolicy(netnsPath string, p Policy) error {
	f, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	// Adding then deleting makes the delete succeed whether or not the
	// table existed; the batch is one transaction.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: "egress", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	addDenyChain(c, t)
	for _, exprs := range policyRules(p, true) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply egress policy: %w", err)
	}
	return nil
}

// hasTable reports whether the egress table exists in the namespace.
func hasTable(netnsPath string) (bool, error) {
	f, err := os.Open(netnsPath)
	if err != nil {
		return false, err
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return false, err
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	for _, t := range ts {
		if t.Name == TableName {
			return true, nil
		}
	}
	return false, nil
}

// addDenyChain adds to t the regular chain that rejects refused traffic.
// Refused traffic is rejected rather than dropped, so that a process
// learns at once: a TCP reset (connection refused), else an ICMP
// administratively-prohibited (host unreachable).
func addDenyChain(c *nftables.Conn, t *nftables.Table) {
	deny := c.AddChain(&nftables.Chain{Name: denyChain, Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: deny, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}})
	c.AddRule(&nftables.Rule{Table: t, Chain: deny, Exprs: []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED},
	}})
}

// policyRules are the rules of the egress chain, in order; with loopback,
// first a rule accepting what leaves through lo (a chain on the output
// hook of the sandbox's namespace).
func policyRules(p Policy, loopback bool) [][]expr.Any {
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictJump, Chain: denyChain}
	verdict := func(a Action) expr.Any {
		if a == ActionDeny {
			return drop
		}
		return accept
	}
	var rules [][]expr.Any
	if loopback {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("lo")},
			accept,
		})
	}
	// Replies to connections made to the sandbox (its served ports).
	rules = append(rules, []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirReply}},
		accept,
	})
	if p.DNS != "" {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rules = append(rules, append(portMatch(proto, 53), verdict(p.DNS)))
		}
	}
	for _, r := range p.Deny {
		for _, m := range ruleMatches(r) {
			rules = append(rules, append(m, drop))
		}
	}
	for _, r := range p.Allow {
		for _, m := range ruleMatches(r) {
			rules = append(rules, append(m, accept))
		}
	}
	if p.Default == ActionDeny {
		rules = append(rules, []expr.Any{drop})
	}
	return rules
}

// ruleMatches are the expressions matching r: one list, or two (TCP and
// UDP) with a port.
func ruleMatches(r Rule) [][]expr.Any {
	var addr []expr.Any
	a := r.Prefix.Addr()
	fam, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if a.Is6() {
		fam, off = unix.NFPROTO_IPV6, 24
	}
	n := uint32(a.BitLen() / 8)
	addr = append(addr,
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
	)
	if r.Prefix.Bits() > 0 {
		addr = append(addr, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n})
		if r.Prefix.Bits() < a.BitLen() {
			addr = append(addr, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: prefixMask(r.Prefix), Xor: make([]byte, n)})
		}
		addr = append(addr, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()})
	}
	if r.Port == 0 {
		return [][]expr.Any{addr}
	}
	var out [][]expr.Any
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		out = append(out, append(append([]expr.Any{}, addr...), portMatch(proto, r.Port)...))
	}
	return out
}

// portMatch matches a TCP or UDP destination port.
func portMatch(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func prefixMask(p netip.Prefix) []byte {
	n := p.Addr().BitLen() / 8
	m := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// ifname is an interface name as nftables compares it (IFNAMSIZ bytes,
// NUL padded).
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// denyChain is the regular chain that rejects refused traffic.
const denyChain = "deny"

// ctDirReply is IP_CT_DIR_REPLY: a packet in the reply direction of its
// connection.
const ctDirReply = 1
