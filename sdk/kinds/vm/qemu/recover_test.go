package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// TestRecoverGoneVM: recovering a VM whose QEMU is gone (no pid file, or
// a pid that is not this VM's QEMU) returns an exited VM and removes what
// it left: sockets, pid file and (as root) its cgroup.
func TestRecoverGoneVM(t *testing.T) {
	for _, pidFile := range []string{"", strconv.Itoa(os.Getpid())} {
		dir := t.TempDir()
		cfg := hypervisor.Config{ID: "gone", Dir: dir}
		f := vmFiles(dir)
		for _, p := range []string{f.qmp, f.agent} {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if pidFile != "" {
			if err := os.WriteFile(f.pid, []byte(pidFile+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if os.Geteuid() == 0 {
			cfg.CgroupPath = fmt.Sprintf("/magnetar-qemu-gone-test-%d", os.Getpid())
			if cgroups.Mode() == cgroups.Unified {
				if _, err := cgroupsv2.NewManager(unifiedMountpoint, cfg.CgroupPath, &cgroupsv2.Resources{}); err != nil {
					t.Fatal(err)
				}
			} else if _, err := cgroup1.New(cgroup1.StaticPath(cfg.CgroupPath), &specs.LinuxResources{}); err != nil {
				t.Fatal(err)
			}
			exists := false
			for _, d := range cgroupDirs(cfg.CgroupPath) {
				if _, err := os.Stat(d); err == nil {
					exists = true
				}
			}
			if !exists {
				t.Fatalf("test cgroup %s was not created", cfg.CgroupPath)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, err := New(Options{}).Recover(ctx, cfg)
		if err != nil {
			cancel()
			t.Fatalf("pid file %q: %v", pidFile, err)
		}
		st, err := v.Wait(ctx)
		cancel()
		if err != nil || st.Code != hypervisor.UnknownExitCode {
			t.Errorf("pid file %q: Wait = %+v, %v; want exited with the unknown code", pidFile, st, err)
		}
		if err := v.Stop(context.Background(), true); err != nil {
			t.Errorf("Stop of a gone VM: %v", err)
		}
		for _, p := range []string{f.qmp, f.agent, f.pid} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pid file %q: %s left: %v", pidFile, p, err)
			}
		}
		if cfg.CgroupPath != "" {
			for _, d := range cgroupDirs(cfg.CgroupPath) {
				if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("pid file %q: cgroup %s left: %v", pidFile, d, err)
				}
			}
		}
	}
}
