package backend

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseSysctls(t *testing.T) {
	got, err := ParseSysctls(map[string]string{
		"net.ipv4.ip_forward":               "1",
		"kernel.shm_rmid_forced":            "1",
		"fs.mqueue.msg_max":                 "100",
		"kernel.hostname":                   "x",
		"net/ipv4/conf/eth0.100/forwarding": "1",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Sysctl{
		{Key: "fs.mqueue.msg_max", Path: "fs/mqueue/msg_max", Value: "100", Namespace: SysctlIPC},
		{Key: "kernel.hostname", Path: "kernel/hostname", Value: "x", Namespace: SysctlUTS},
		{Key: "kernel.shm_rmid_forced", Path: "kernel/shm_rmid_forced", Value: "1", Namespace: SysctlIPC},
		{Key: "net.ipv4.ip_forward", Path: "net/ipv4/ip_forward", Value: "1", Namespace: SysctlNet},
		{Key: "net/ipv4/conf/eth0.100/forwarding", Path: "net/ipv4/conf/eth0.100/forwarding", Value: "1", Namespace: SysctlNet},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sysctl %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []map[string]string{
		{"vm.swappiness": "1"},          // not namespaced: the host's
		{"kernel.pid_max": "100"},       // idem
		{"net..ipv4": "1"},              // malformed
		{"net/../../etc/passwd": "1"},   // escapes /proc/sys
		{"/net/ipv4/ip_forward": "1"},   // absolute
		{"net.ipv4.ip_forward": "1\n0"}, // two values
		{"": "1"},
	} {
		if _, err := ParseSysctls(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseSysctls(%q) = %v, want invalid argument", bad, err)
		}
	}
}

func TestResolvConf(t *testing.T) {
	d := DNSConfig{Servers: []string{"10.10.10.10", "10.0.0.1"}, Searches: []string{"google.com", "svc"}, Options: []string{"ndots:8"}}
	want := "nameserver 10.10.10.10\nnameserver 10.0.0.1\nsearch google.com svc\noptions ndots:8\n"
	if got := string(d.ResolvConf()); got != want {
		t.Errorf("ResolvConf = %q, want %q", got, want)
	}
	if d.IsZero() || !(DNSConfig{}).IsZero() {
		t.Error("IsZero")
	}
}
