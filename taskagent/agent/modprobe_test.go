package agent_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/magnetar-io/magnetar/taskagent/agent"
)

// TestResolveModule: a module is found by its name ("-" or "_") or by an
// alias, with its dependencies first; an unknown one and a file that
// leaves the directory are errors.
func TestResolveModule(t *testing.T) {
	const list = "# on demand\nmodule bridge llc.ko stp.ko bridge.ko\nalias rtnl-link-bridge bridge\nalias net-pf-7* bridge\nmodule bad_one ../x.ko\n"
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"bridge", []string{"/m/llc.ko", "/m/stp.ko", "/m/bridge.ko"}},
		{"rtnl-link-bridge", []string{"/m/llc.ko", "/m/stp.ko", "/m/bridge.ko"}},
		{"net-pf-7-proto-1", []string{"/m/llc.ko", "/m/stp.ko", "/m/bridge.ko"}},
		{"vxlan", nil},
		{"bad-one", nil},
	} {
		got, err := agent.ResolveModule(strings.NewReader(list), "/m", tc.name)
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: %v, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	if _, err := agent.ResolveModule(strings.NewReader("modul x\n"), "/m", "x"); err == nil {
		t.Error("a bad line was accepted")
	}
}
