//go:build linux

package unixsock_test

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/magnetar-io/magnetar/internal/unixsock"
)

// TestListen: the socket has mode 0600 whatever the umask, serves
// connections, and is removed when the listener closes.
func TestListen(t *testing.T) {
	old := syscall.Umask(0) // the most permissive: the mode must not come from it
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := unixsock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if n, err := c.Read(b); n != 1 || b[0] != 'x' {
		t.Fatalf("read %d %q, %v", n, b, err)
	}
	c.Close()
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket after Close: %v", err)
	}
	if _, err := unixsock.Listen(filepath.Join(t.TempDir(), "missing", "s.sock")); err == nil {
		t.Error("Listen in a missing directory succeeded")
	}
}
