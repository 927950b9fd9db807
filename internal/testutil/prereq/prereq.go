// Package prereq is how tests skip for a missing prerequisite (root, a
// binary, a kernel feature, an image): they skip, or fail when
// MAGNETAR_E2E_REQUIRED=1 (CI) so that nothing that must run is silently
// skipped. It imports nothing of Magnetar's, so that any package's tests
// can use it; most use it through package testutil.
package prereq

import (
	"fmt"
	"os"
	"testing"
)

// Required reports whether missing prerequisites fail tests instead of
// skipping them (MAGNETAR_E2E_REQUIRED=1).
func Required() bool { return os.Getenv("MAGNETAR_E2E_REQUIRED") == "1" }

// SkipOrFail skips the test with the message, or fails it when
// [Required].
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatal(msg + " (MAGNETAR_E2E_REQUIRED=1)")
	}
	t.Skip(msg)
}
