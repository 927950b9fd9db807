package sdk_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
	"github.com/magnetar-io/magnetar/sdk"
	"github.com/magnetar-io/magnetar/sdk/internal/apitest"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/qemu"
)

// TestVMFilesAndPorts runs the file service's and DialPort's assertions
// (those of TestFiles and TestDialPort) in one microVM sandbox: the
// files are the host's bind mount of each container's root, which the
// guest sees through 9p; the ports are reached by the guest agent. Then
// a connection open when the sandbox stops ends with an error.
func TestVMFilesAndPorts(t *testing.T) {
	kernel, initrd := testutil.GuestImage(t)
	testutil.RequireRoot(t, "mounts")
	testutil.RequireRunc(t) // busybox-static for the root file system
	b, err := vm.New(vm.Config{Driver: qemu.New(qemu.Options{}), Kernel: kernel, Initrd: initrd, VCPUs: 1, MemoryMiB: 256, BootTimeout: 2 * time.Minute})
	must(t, err)
	sock := apitest.Serve(t, b)
	c := dial(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	sb, err := c.CreateSandbox(ctx, vm.Kind, sdk.WithID("vmfiles"))
	must(t, err)
	defer sb.Delete(context.Background(), sdk.Force())

	rootfs := testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
	secret := filepath.Join(filepath.Dir(rootfs), "secret")
	plantTraps(t, rootfs, secret)
	t.Run("files", func(t *testing.T) {
		checkFiles(ctx, t, fileKinds["runc"], c, sb, rootfs, secret, "vm")
	})

	big := portRootfs(t, rootfs, 4<<20)
	t.Run("ports", func(t *testing.T) {
		checkDialPort(ctx, t, sock, sb, rootfs, big, 20)
	})

	// The sandbox stops: an open connection ends (its server was stopped,
	// or the agent's session ended with the VM).
	conn, err := sb.DialPort(ctx, 8080)
	must(t, err)
	defer conn.Close()
	rerr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		rerr <- err
	}()
	must(t, sb.Stop(ctx))
	select {
	case err := <-rerr:
		if err == nil {
			t.Error("read on a connection of a stopped sandbox returned a byte")
		}
	case <-ctx.Done():
		t.Fatal("a connection outlived its sandbox")
	}
}
