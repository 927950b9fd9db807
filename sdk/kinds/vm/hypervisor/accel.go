package hypervisor

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// Host holds the files the accelerator decision reads. The zero value is
// not useful; [DefaultHost] returns the real paths, tests point them at
// fakes.
type Host struct {
	// KVMDevice is the KVM device node ("/dev/kvm").
	KVMDevice string
	// CPUInfo is "/proc/cpuinfo".
	CPUInfo string
	// TSCFreqFile is "/sys/devices/system/cpu/cpu0/tsc_freq_khz" (present
	// on some kernels only).
	TSCFreqFile string
}

// DefaultHost returns the paths of this host's files.
func DefaultHost() Host {
	return Host{
		KVMDevice:   "/dev/kvm",
		CPUInfo:     "/proc/cpuinfo",
		TSCFreqFile: "/sys/devices/system/cpu/cpu0/tsc_freq_khz",
	}
}

// AccelChoice is the accelerator picked for a VM and why.
type AccelChoice struct {
	// Accel is [AccelKVM] or [AccelTCG].
	Accel Accel
	// Reason is a human sentence for the log, e.g. "auto: /dev/kvm
	// present but CPU lacks vmx/svm (KVM-PVM?); using tcg".
	Reason string
	// TSCkHz is the host TSC frequency to pass as tsc_early_khz= under
	// TCG (PIT calibration is unreliable there), or 0 if unknown or not
	// needed.
	TSCkHz uint64
}

// ChooseAccel decides the accelerator for a preference. With [AccelAuto]
// (or "") KVM is used only when /dev/kvm exists and the CPU has vmx or svm:
// a KVM-PVM host has /dev/kvm without them and cannot run a stock guest.
// An explicit [AccelKVM] is honoured if /dev/kvm exists at all (for
// PVM-enlightened guests), else it is an error. [AccelTCG] always works.
func ChooseAccel(pref Accel, h Host) (AccelChoice, error) {
	kvmErr := checkKVMDevice(h.KVMDevice)
	virt, cpuErr := cpuVirtFlag(h.CPUInfo)
	switch pref {
	case AccelKVM:
		if kvmErr != nil {
			return AccelChoice{}, fmt.Errorf("accelerator kvm requested: %w", kvmErr)
		}
		reason := "kvm: requested"
		if virt == "" {
			reason += " (CPU lacks vmx/svm: only PVM-enlightened guests will run)"
		}
		return AccelChoice{Accel: AccelKVM, Reason: reason}, nil
	case AccelTCG:
		return tcgChoice(h, "tcg: requested"), nil
	case AccelAuto, "":
	default:
		return AccelChoice{}, fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", pref)
	}
	switch {
	case kvmErr != nil:
		return tcgChoice(h, fmt.Sprintf("auto: %v; using tcg", kvmErr)), nil
	case cpuErr != nil:
		return tcgChoice(h, fmt.Sprintf("auto: %s present but %v; using tcg", h.KVMDevice, cpuErr)), nil
	case virt == "":
		return tcgChoice(h, fmt.Sprintf("auto: %s present but CPU lacks vmx/svm (KVM-PVM?); using tcg", h.KVMDevice)), nil
	}
	return AccelChoice{Accel: AccelKVM, Reason: fmt.Sprintf("auto: %s present and CPU has %s; using kvm", h.KVMDevice, virt)}, nil
}

func tcgChoice(h Host, reason string) AccelChoice {
	khz, src, err := HostTSCkHz(h)
	if err != nil {
		reason += fmt.Sprintf(" (TSC frequency unknown: %v; guest may hang calibrating)", err)
	} else {
		reason += fmt.Sprintf(" (tsc_early_khz=%d from %s)", khz, src)
	}
	return AccelChoice{Accel: AccelTCG, Reason: reason, TSCkHz: khz}
}

func checkKVMDevice(path string) error {
	_, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s absent", path)
	case err != nil:
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// cpuVirtFlag returns "vmx" or "svm" if the first CPU in cpuinfo has it.
func cpuVirtFlag(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read CPU flags: %w", err)
	}
	flags, ok := cpuinfoField(b, "flags")
	if !ok {
		return "", fmt.Errorf("no CPU flags in %s", path)
	}
	for _, f := range strings.Fields(flags) {
		if f == "vmx" || f == "svm" {
			return f, nil
		}
	}
	return "", nil
}

// cpuinfoField returns the value of the first "key : value" line.
func cpuinfoField(b []byte, key string) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// HostTSCkHz returns the host TSC frequency in kHz and where it came from:
// the kernel's tsc_freq_khz when exported, else cpuinfo's "cpu MHz" of the
// first CPU (which on x86 with a constant TSC is the TSC rate, within a few
// ppm).
func HostTSCkHz(h Host) (khz uint64, source string, err error) {
	if h.TSCFreqFile != "" {
		if b, rerr := os.ReadFile(h.TSCFreqFile); rerr == nil {
			if v, perr := ParseTSCFreqKHz(b); perr == nil {
				return v, h.TSCFreqFile, nil
			}
		}
	}
	b, err := os.ReadFile(h.CPUInfo)
	if err != nil {
		return 0, "", err
	}
	v, err := ParseCPUInfoMHz(b)
	if err != nil {
		return 0, "", err
	}
	return v, h.CPUInfo + " cpu MHz", nil
}

// ParseTSCFreqKHz parses the content of a tsc_freq_khz file.
func ParseTSCFreqKHz(b []byte) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("bad tsc_freq_khz %q", strings.TrimSpace(string(b)))
	}
	return v, nil
}

// ParseCPUInfoMHz returns the first CPU's "cpu MHz" from /proc/cpuinfo
// content, in kHz (2445.430 → 2445430).
func ParseCPUInfoMHz(b []byte) (uint64, error) {
	s, ok := cpuinfoField(b, "cpu MHz")
	if !ok {
		return 0, errors.New(`no "cpu MHz" in cpuinfo`)
	}
	mhz, err := strconv.ParseFloat(s, 64)
	if err != nil || mhz <= 0 {
		return 0, fmt.Errorf("bad cpu MHz %q", s)
	}
	return uint64(mhz*1000 + 0.5), nil
}
