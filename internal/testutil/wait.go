package testutil

import (
	"fmt"
	"testing"
	"time"
)

// pollInterval is how often Poll and Eventually look again.
const pollInterval = 10 * time.Millisecond

// Poll calls cond until it returns true or timeout passes, and reports
// whether it did. It is the one polling loop of the tests: use it, or
// [Eventually], instead of sleeping and hoping.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollInterval)
	}
}

// Eventually fails the test with the message unless cond returns true
// within timeout (see [Poll]).
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("after %s: %s", timeout, fmt.Sprintf(format, args...))
	}
}
