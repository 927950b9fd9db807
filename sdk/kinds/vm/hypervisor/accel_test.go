package hypervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	cpuinfoPVM = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2445.430\nflags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm\n\nprocessor\t: 1\ncpu MHz\t\t: 2445.430\nflags\t\t: fpu svm\n"
	cpuinfoVMX = "processor\t: 0\ncpu MHz\t\t: 2100.000\nflags\t\t: fpu vme vmx ept\n"
	cpuinfoSVM = "processor\t: 0\ncpu MHz\t\t: 3000.001\nflags\t\t: fpu svm npt\n"
)

func fakeHost(t *testing.T, kvm bool, cpuinfo, tsc string) Host {
	t.Helper()
	dir := t.TempDir()
	h := Host{
		KVMDevice:   filepath.Join(dir, "kvm"),
		CPUInfo:     filepath.Join(dir, "cpuinfo"),
		TSCFreqFile: filepath.Join(dir, "tsc_freq_khz"),
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if kvm {
		write(h.KVMDevice, "")
	}
	if cpuinfo != "" {
		write(h.CPUInfo, cpuinfo)
	}
	if tsc != "" {
		write(h.TSCFreqFile, tsc)
	}
	return h
}

func TestChooseAccel(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pref    Accel
		kvm     bool
		cpuinfo string
		tsc     string
		want    Accel
		khz     uint64
		reason  string // substring
		wantErr bool
	}{
		{name: "pvm host", pref: AccelAuto, kvm: true, cpuinfo: cpuinfoPVM, want: AccelTCG, khz: 2445430,
			reason: "present but CPU lacks vmx/svm (KVM-PVM?); using tcg (tsc_early_khz=2445430 from"},
		{name: "empty pref is auto", pref: "", kvm: true, cpuinfo: cpuinfoPVM, want: AccelTCG, khz: 2445430},
		{name: "vmx host", pref: AccelAuto, kvm: true, cpuinfo: cpuinfoVMX, want: AccelKVM, reason: "CPU has vmx; using kvm"},
		{name: "svm host", pref: AccelAuto, kvm: true, cpuinfo: cpuinfoSVM, want: AccelKVM, reason: "CPU has svm; using kvm"},
		{name: "vmx but no /dev/kvm", pref: AccelAuto, cpuinfo: cpuinfoVMX, want: AccelTCG, khz: 2100000, reason: "absent; using tcg"},
		{name: "tsc file wins", pref: AccelAuto, cpuinfo: cpuinfoVMX, tsc: "2099999\n", want: AccelTCG, khz: 2099999, reason: "tsc_freq_khz)"},
		{name: "bad tsc file falls back", pref: AccelTCG, cpuinfo: cpuinfoVMX, tsc: "x", want: AccelTCG, khz: 2100000},
		{name: "no cpuinfo", pref: AccelAuto, kvm: true, want: AccelTCG, reason: "TSC frequency unknown"},
		{name: "tcg forced on vmx host", pref: AccelTCG, kvm: true, cpuinfo: cpuinfoVMX, want: AccelTCG, khz: 2100000, reason: "tcg: requested"},
		{name: "kvm forced on pvm host", pref: AccelKVM, kvm: true, cpuinfo: cpuinfoPVM, want: AccelKVM, reason: "only PVM-enlightened"},
		{name: "kvm forced without device", pref: AccelKVM, cpuinfo: cpuinfoVMX, wantErr: true},
		{name: "unknown pref", pref: "hvf", kvm: true, cpuinfo: cpuinfoVMX, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ChooseAccel(tc.pref, fakeHost(t, tc.kvm, tc.cpuinfo, tc.tsc))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Accel != tc.want || got.TSCkHz != tc.khz || !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("got %+v, want accel %s khz %d reason containing %q", got, tc.want, tc.khz, tc.reason)
			}
		})
	}
}

func TestParseCPUInfoMHz(t *testing.T) {
	for in, want := range map[string]uint64{
		"cpu MHz\t\t: 2445.430\n":                2445430,
		"cpu MHz : 2445.4304\n":                  2445430,
		"cpu MHz: 1000\ncpu MHz: 2000\n":         1000000,
		"model name : x\ncpu MHz\t: 3600.0005\n": 3600001,
	} {
		got, err := ParseCPUInfoMHz([]byte(in))
		if err != nil || got != want {
			t.Errorf("ParseCPUInfoMHz(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "flags: fpu\n", "cpu MHz: fast\n", "cpu MHz: -1\n"} {
		if got, err := ParseCPUInfoMHz([]byte(in)); err == nil {
			t.Errorf("ParseCPUInfoMHz(%q) = %d, want error", in, got)
		}
	}
}

func TestParseTSCFreqKHz(t *testing.T) {
	if got, err := ParseTSCFreqKHz([]byte("2445404\n")); err != nil || got != 2445404 {
		t.Errorf("got %d, %v", got, err)
	}
	for _, in := range []string{"", "0", "2.4", "abc"} {
		if _, err := ParseTSCFreqKHz([]byte(in)); err == nil {
			t.Errorf("ParseTSCFreqKHz(%q): want error", in)
		}
	}
}

func TestDefaultHostDecides(t *testing.T) {
	ch, err := ChooseAccel(AccelAuto, DefaultHost())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this host: %s: %s", ch.Accel, ch.Reason)
}
