package cgpath

import (
	"testing"

	"github.com/containerd/errdefs"
)

func TestExpandSlice(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "/",
		"-.slice":                   "/",
		"kubepods.slice":            "/kubepods.slice",
		"kubepods-besteffort.slice": "/kubepods.slice/kubepods-besteffort.slice",
		"a-b-c.slice":               "/a.slice/a-b.slice/a-b-c.slice",
	} {
		if got, err := ExpandSlice(in); err != nil || got != want {
			t.Errorf("ExpandSlice(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"kubepods", "a--b.slice", "-a.slice", "a-.slice", "a/b.slice", ".slice"} {
		if _, err := ExpandSlice(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("ExpandSlice(%q): %v, want invalid argument", bad, err)
		}
	}
}
