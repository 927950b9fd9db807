package direct_test

import (
	"os"
	"testing"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// TestMain removes the default cgroup parent the tests' sandboxes create.
func TestMain(m *testing.M) { os.Exit(testutil.RemovingCgroups(m.Run, "/magnetar")) }
