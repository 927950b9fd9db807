package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestCommandLineGolden(t *testing.T) {
	base := hypervisor.Config{
		ID: "pod1", Dir: "/run/magnetar/vm/pod1",
		Kernel: "/var/lib/magnetar/vmlinux", Initrd: "/var/lib/magnetar/initramfs.cpio.gz",
		VCPUs: 1, MemoryMiB: 256,
	}
	full := base
	full.ID, full.Dir = "pod,2", "/run/magnetar/vm/pod,2"
	full.VCPUs, full.MemoryMiB = 2, 512
	full.KernelArgs = []string{"magnetar.debug"}
	full.Shares = []hypervisor.Share{
		{HostPath: "/run/magnetar/vm/pod,2/shared", Tag: "shared"},
		{HostPath: "/var/lib/vol", Tag: "vol0", ReadOnly: true},
	}
	full.Taps = []hypervisor.Tap{
		{Name: "tap0", MAC: "52:54:00:12:34:56"},
		{File: os.Stdin, MAC: "52:54:00:12:34:57"},
		{File: os.Stdout},
	}
	tcg := hypervisor.AccelChoice{Accel: hypervisor.AccelTCG, TSCkHz: 2445404}
	template := base
	template.MemoryFile, template.MemoryShared, template.TCGCacheMiB, template.FreePageReporting = "/run/magnetar/vmtemplate/t/memory", true, 32, true
	restored := template
	restored.MemoryShared, restored.Incoming = false, "/run/magnetar/vmtemplate/t/state"
	for _, tc := range []struct {
		name   string
		cfg    hypervisor.Config
		choice hypervisor.AccelChoice
	}{
		{"tcg-minimal", base, tcg},
		{"tcg-full", full, tcg},
		{"tcg-template", template, tcg},
		{"tcg-restored", restored, tcg},
		{"kvm", base, hypervisor.AccelChoice{Accel: hypervisor.AccelKVM}},
		{"tcg-no-tsc", hypervisor.Config{ID: "x", Dir: "/d", Kernel: "/k", VCPUs: 1, MemoryMiB: 128},
			hypervisor.AccelChoice{Accel: hypervisor.AccelTCG}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := "qemu-system-x86_64 \\\n  " + strings.Join(quoteAll(commandLine(tc.cfg, tc.choice)), " \\\n  ") + "\n"
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got != string(want) {
				t.Errorf("command line differs from %s (go test -update to accept):\n%s", path, got)
			}
		})
	}
}

// quoteAll pairs options with their values and shell-quotes values with
// spaces, one option per line in the golden file.
func quoteAll(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			v := args[i+1]
			if strings.ContainsAny(v, " ") {
				v = "'" + v + "'"
			}
			a += " " + v
			i++
		}
		out = append(out, a)
	}
	return out
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ok := hypervisor.Config{ID: "a", Dir: dir, Kernel: kernel}
	got, err := validate(ok)
	if err != nil {
		t.Fatal(err)
	}
	if got.VCPUs != DefaultVCPUs || got.MemoryMiB != DefaultMemoryMiB {
		t.Errorf("defaults not applied: %+v", got)
	}
	long := filepath.Join(dir, strings.Repeat("d", 100))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*hypervisor.Config){
		"no id":          func(c *hypervisor.Config) { c.ID = "" },
		"relative dir":   func(c *hypervisor.Config) { c.Dir = "rel" },
		"missing kernel": func(c *hypervisor.Config) { c.Kernel = filepath.Join(dir, "nope") },
		"missing initrd": func(c *hypervisor.Config) { c.Initrd = filepath.Join(dir, "nope") },
		"long dir":       func(c *hypervisor.Config) { c.Dir = long },
		"bad tag":        func(c *hypervisor.Config) { c.Shares = []hypervisor.Share{{HostPath: dir, Tag: "a,b"}} },
		"dup tag": func(c *hypervisor.Config) {
			c.Shares = []hypervisor.Share{{HostPath: dir, Tag: "a"}, {HostPath: dir, Tag: "a"}}
		},
		"share not dir": func(c *hypervisor.Config) { c.Shares = []hypervisor.Share{{HostPath: kernel, Tag: "a"}} },
		"bad mac":       func(c *hypervisor.Config) { c.Taps = []hypervisor.Tap{{Name: "tap0", MAC: "zz"}} },
		"empty tap":     func(c *hypervisor.Config) { c.Taps = []hypervisor.Tap{{}} },
		"negative":      func(c *hypervisor.Config) { c.MemoryMiB = -1 },
	} {
		c := ok
		mut(&c)
		if _, err := validate(c); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
}
