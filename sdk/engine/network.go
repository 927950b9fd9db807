package engine

import (
	"context"
	"fmt"
	"slices"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk/network"
)

// TopicSandboxNetworkPolicy is published when a sandbox's egress policy
// changes ([Engine.SetEgressPolicy]).
const TopicSandboxNetworkPolicy = "/sandboxes/network-policy"

// NetworkSpec asks for a network namespace made by the engine and attached
// to one of the networks of [Config.Network] (a bridge with NAT).
type NetworkSpec struct {
	// Name is the network; "" is the first configured.
	Name string
	// Egress is the sandbox's egress policy (zero: everything allowed).
	Egress network.Policy
}

// NetworkStatus is a sandbox's attachment to a network of the engine.
type NetworkStatus struct {
	Name string
	// IPs are the sandbox's addresses with their prefix length.
	IPs     []string
	Gateway string
	Egress  network.Policy
}

// networkRecord is the persisted NetworkStatus.
type networkRecord struct {
	Name    string         `json:"name"`
	IPs     []string       `json:"ips,omitempty"`
	Gateway string         `json:"gateway,omitempty"`
	Egress  network.Policy `json:"egress"`
}

func (r *networkRecord) status() *NetworkStatus {
	if r == nil {
		return nil
	}
	return &NetworkStatus{Name: r.Name, IPs: slices.Clone(r.IPs), Gateway: r.Gateway, Egress: r.Egress}
}

// Network returns the engine's networks ([Config.Network]), or nil.
func (e *Engine) Network() *network.Manager { return e.net }

// NetworkSweepError returns what New could not do when it removed the
// network attachments of sandboxes it does not know (a crash's leftovers)
// and applied the known sandboxes' policies again; nil if it did all.
func (e *Engine) NetworkSweepError() error { return e.sweepErr }

// checkNetworkSpec checks a sandbox's request for a network of the
// engine's before anything is made.
func (e *Engine) checkNetworkSpec(spec SandboxSpec) error {
	ns := spec.Network
	if ns == nil {
		return nil
	}
	if e.net == nil {
		return fmt.Errorf("bridge networks are not configured in this engine: %w", errdefs.ErrFailedPrecondition)
	}
	if spec.NetNSPath != "" || spec.PrivateNetwork {
		return Invalid("network", "a bridge network makes its own namespace: no netns path, no private network")
	}
	if _, err := e.net.Network(ns.Name); err != nil {
		return Invalid("network.name", "%v", err)
	}
	if err := ns.Egress.Validate(); err != nil {
		return Invalid("network.egress", "%v", err)
	}
	if err := e.net.Check(); err != nil {
		return err
	}
	return e.checkEgressKind(spec.Kind, ns.Egress)
}

// checkEgressKind refuses a policy that a kind's sandboxes would not obey.
func (e *Engine) checkEgressKind(kind string, p network.Policy) error {
	b, ok := e.backends[kind]
	if !ok || p.AllowsAll() || b.Info().Capabilities.EgressPolicy {
		return nil
	}
	return fmt.Errorf("egress policies are not enforced for sandbox kind %q (see the kind's egress_policy capability): %w", kind, errdefs.ErrNotImplemented)
}

// enforcement is where the policies of a kind's sandboxes are enforced.
func (e *Engine) enforcement(kind string) network.Enforcement {
	if b, ok := e.backends[kind]; ok && b.Info().Capabilities.EgressOnHost {
		return network.EnforceHost
	}
	return network.EnforceNetNS
}

// SetEgressPolicy replaces the egress policy of a sandbox on a network of
// the engine's, at once and atomically (the old rules hold until the new
// ones do; connections the new policy refuses stop), and publishes a
// [TopicSandboxNetworkPolicy] event. A sandbox without such a network is
// errdefs.ErrFailedPrecondition.
func (e *Engine) SetEgressPolicy(ctx context.Context, id string, p network.Policy) (SandboxStatus, error) {
	sb, err := e.get(id)
	if err != nil {
		return SandboxStatus{}, err
	}
	if err := p.Validate(); err != nil {
		return SandboxStatus{}, Invalid("egress", "%v", err)
	}
	sb.lifecycle.Lock()
	defer sb.lifecycle.Unlock()
	sb.mu.Lock()
	nr, kind, ns := sb.rec.Network, sb.rec.Kind, sb.rec.Namespace
	sb.mu.Unlock()
	if nr == nil || e.net == nil {
		return SandboxStatus{}, fmt.Errorf("sandbox %q is not on a bridge network: it has no egress policy: %w", id, errdefs.ErrFailedPrecondition)
	}
	if err := e.checkEgressKind(kind, p); err != nil {
		return SandboxStatus{}, err
	}
	// The record first: a crash between the two is mended on recovery,
	// which applies the recorded policy again.
	sb.mu.Lock()
	old := sb.rec.Network.Egress
	sb.rec.Network.Egress = p
	err = sb.persist()
	if err != nil {
		sb.rec.Network.Egress = old
	}
	sb.mu.Unlock()
	if err != nil {
		return SandboxStatus{}, err
	}
	if err := e.net.SetPolicy(id, p, e.enforcement(kind)); err != nil {
		return SandboxStatus{}, fmt.Errorf("sandbox %q: %w", id, err)
	}
	e.events.publish(Event{Topic: TopicSandboxNetworkPolicy, Namespace: ns, SandboxID: id})
	return sb.status(), nil
}

// sweepNetworks removes the network attachments of sandboxes the engine
// does not know (a crash between attaching and recording, or while
// deleting) and applies the recorded policy of those it knows again.
func (e *Engine) sweepNetworks(ctx context.Context) error {
	if e.net == nil {
		return nil
	}
	known := map[string]*networkRecord{}
	kinds := map[string]string{}
	for id, sb := range e.sandboxes {
		if sb.rec.Network != nil {
			known[id] = sb.rec.Network
			kinds[id] = sb.rec.Kind
		}
	}
	_, err := e.net.Sweep(ctx, func(id string) bool { return known[id] != nil })
	for id, nr := range known {
		if perr := e.net.SetPolicy(id, nr.Egress, e.enforcement(kinds[id])); perr != nil && !errdefs.IsNotFound(perr) {
			err = fmt.Errorf("sandbox %s: apply its egress policy again: %w", id, perr)
		}
	}
	return err
}
