package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/magnetar-io/magnetar/sdk"
)

// egressFlags are the flags of an egress policy.
type egressFlags struct {
	allow, deny stringList
	denyAll     bool
	dns         string
}

func (f *egressFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.allow, "allow", "let traffic to `CIDR[:PORT]` through (repeatable; bridge network)")
	fs.Var(&f.deny, "deny", "refuse traffic to `CIDR[:PORT]` (repeatable, read before --allow; bridge network)")
	fs.BoolVar(&f.denyAll, "deny-all", false, "refuse traffic that no --allow matches (bridge network)")
	fs.StringVar(&f.dns, "dns-policy", "", "`allow|deny` DNS (port 53) before the rules; default: judged by the rules")
}

func (f *egressFlags) set() bool {
	return len(f.allow) > 0 || len(f.deny) > 0 || f.denyAll || f.dns != ""
}

func (f *egressFlags) policy() sdk.EgressPolicy {
	return sdk.EgressPolicy{DenyByDefault: f.denyAll, Allow: f.allow, Deny: f.deny, DNS: f.dns}
}

// networkFlags select a new sandbox's network.
type networkFlags struct {
	mode, name string
	egress     egressFlags
}

func (f *networkFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.mode, "network", "", "network `mode`: bridge (own address, NAT), none (loopback only) or host; default: the sandboxer's (none unless configured)")
	fs.StringVar(&f.name, "network-name", "", "bridge `network` of the sandboxer; default: its first")
	f.egress.register(fs)
}

// option is the sandbox option of the flags; nil for the default.
func (f *networkFlags) option() (sdk.SandboxOption, error) {
	bridge := f.mode == string(sdk.NetworkBridge)
	if (f.name != "" || f.egress.set()) && !bridge {
		return nil, usageError("--network-name, --allow, --deny, --deny-all and --dns-policy need --network bridge")
	}
	switch {
	case bridge:
		return sdk.WithBridgeNetwork(f.name, f.egress.policy()), nil
	case f.mode == "":
		return nil, nil
	}
	return sdk.WithNetwork(sdk.Network(f.mode)), nil
}

func egressCmd() *command {
	var f egressFlags
	return &command{
		name: "egress", usage: "sandbox egress [--deny-all] [--allow CIDR[:PORT]]... [--deny CIDR[:PORT]]... [--dns-policy allow|deny] ID",
		summary: "Replace the egress policy of a sandbox on a bridge network",
		help: `Replaces what a sandbox on a bridge network may send, at once, while it
runs: connections the new policy refuses stop. Without flags, everything is
allowed. Traffic is judged in this order: loopback and replies to
connections made to the sandbox pass; then DNS if --dns-policy is given;
then --deny; then --allow; then --deny-all (refuse) or allow.`,
		examples: []string{
			"magnetar sandbox egress --deny-all --allow 10.0.0.0/8:443 --dns-policy allow pod1",
			"magnetar sandbox egress --deny 169.254.169.254 pod1",
			"magnetar sandbox egress pod1",
		},
		interspersed: true,
		flags:        f.register,
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageError("sandbox egress needs one sandbox ID")
			}
			c, err := e.dial(ctx)
			if err != nil {
				return err
			}
			sb, err := c.Sandbox(ctx, args[0])
			if err != nil {
				return err
			}
			if err := sb.UpdateNetworkPolicy(ctx, f.policy()); err != nil {
				return err
			}
			if e.json() {
				return e.printJSON(sb)
			}
			fmt.Fprintln(e.Stdout, sb.ID)
			return nil
		},
	}
}
