package engine

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNetDevBytes(t *testing.T) {
	dev := `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  999999     10    0    0    0     0          0         0   999999     10    0    0    0     0       0          0
  eth0:    1000     10    0    0    0     0          0         0      200      2    0    0    0     0       0          0
  tap0:    5000     10    0    0    0     0          0         0     5000      2    0    0    0     0       0          0
  eth1:      24      1    0    0    0     0          0         0        6      1    0    0    0     0       0          0
`
	path := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(path, []byte(dev), 0o600); err != nil {
		t.Fatal(err)
	}
	rx, tx, err := netDevBytes(path)
	if err != nil || rx != 1024 || tx != 206 {
		t.Errorf("netDevBytes = %d, %d, %v; want 1024, 206 (lo and tap left out)", rx, tx, err)
	}
	if _, _, err := netDevBytes(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("netDevBytes of a missing file: no error")
	}
}
