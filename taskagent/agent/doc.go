// Package agent is Magnetar's task agent for microVM sandboxes. The binary
// magnetar-agent runs it as the guest's PID 1: Boot mounts the basic file
// systems, loads the kernel modules listed in the initramfs, brings up the
// loopback interface and starts reaping orphaned processes; Serve then finds
// the virtio-serial port named "agent", multiplexes it with agentmux and
// serves magnetar.agent.v1.AgentService over ttrpc on every stream the host
// opens. When the port reads EOF (no host connected) it reopens it and
// serves a new session.
//
// Everything the agent needs beyond the kernel command line flag
// magnetar.debug=1 comes through AgentService.Setup.
package agent
