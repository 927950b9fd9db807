package binds

import (
	"reflect"
	"testing"

	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestSubmounts: a non-recursive read-only rbind is followed by its host
// submounts with their own flags; "rro", read-write, plain bind and
// non-bind mounts are copied as they are, and the caller's slice is left.
func TestSubmounts(t *testing.T) {
	host := []*mountinfo.Info{
		{Mountpoint: "/src", Options: "rw"},
		{Mountpoint: "/src/a", Options: "rw,nosuid"},
		{Mountpoint: "/src/a/b", Options: "ro,nosuid"},
		{Mountpoint: "/srcx", Options: "rw"},
	}
	in := []specs.Mount{
		{Destination: "/r", Type: "bind", Source: "/src", Options: []string{"rbind", "rro"}},
		{Destination: "/n", Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
		{Destination: "/b", Type: "bind", Source: "/src", Options: []string{"bind", "ro"}},
		{Destination: "/w", Type: "bind", Source: "/src", Options: []string{"rbind", "rw"}},
		{Destination: "/t", Type: "tmpfs", Source: "tmpfs", Options: []string{"ro"}},
	}
	orig := append([]specs.Mount(nil), in...)
	got := Submounts(in, host)
	want := []specs.Mount{
		in[0],
		in[1],
		{Destination: "/n/a", Type: "bind", Source: "/src/a", Options: []string{"rbind", "rw"}},
		{Destination: "/n/a/b", Type: "bind", Source: "/src/a/b", Options: []string{"rbind", "ro"}},
		in[2], in[3], in[4],
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mounts:\n%+v\nwant:\n%+v", got, want)
	}
	if !reflect.DeepEqual(in, orig) {
		t.Errorf("the caller's mounts changed: %+v", in)
	}
}
