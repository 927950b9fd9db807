// Package sdk is the Go client of Magnetar, the multi-sandbox container
// runtime. It creates sandboxes of any kind (runc, wasm, ...), runs
// containers and processes in them, streams their output, feeds their
// input and manages the local image store, through Magnetar's own API
// (magnetar.sandbox.v1, magnetar.container.v1, magnetar.image.v1).
//
// # Two modes
//
// [Dial] connects to a running magnetar-sandboxer daemon, by default over
// its unix socket (unix:///run/magnetar/api.sock), with the Connect
// protocol or, with [WithGRPC], gRPC. Sandboxes belong to the daemon: they
// keep running when the [Client] is closed.
//
// New of package [github.com/magnetar-io/magnetar/sdk/embedded] runs the
// sandboxer's engine and API server inside the calling process, through an
// in-process transport: no socket, no daemon, no serialization. The
// process then owns the sandboxes: [Client.Close] deletes them and closes
// the engine and the backends. Programs that embed the wasm kind must call
// embedded.RunnerMain first thing in main.
//
// This package itself links no engine and no sandbox kind: it builds on
// every platform Go supports (a Mac included) and pulls in only the
// Connect runtime, protobuf and the generated API.
//
// Both modes expose the same API, so a program written against one runs
// against the other:
//
//	c, err := sdk.Dial(ctx, "unix:///run/magnetar/api.sock") // or embedded.New(ctx)
//	if err != nil { ... }
//	defer c.Close()
//	sb, err := c.CreateSandbox(ctx, "runc")
//	ctr, err := sb.Run(ctx, sdk.FromImage("docker.io/library/busybox:1.36"), sdk.Args("echo", "hi"))
//	out, status, err := ctr.CombinedOutput(ctx)
//
// # Errors
//
// Errors of the API carry containerd's error classes, so callers test them
// with [github.com/containerd/errdefs]: errdefs.IsNotFound(err),
// errdefs.IsAlreadyExists(err), errdefs.IsFailedPrecondition(err), ... The
// underlying *connect.Error is available with errors.As.
package sdk
