package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/magnetar-io/magnetar/internal/harness"
)

// script is what the busybox containers run: a line of output, then a
// process that keeps the container running.
const script = "echo ready; exec sleep 3600"

// kind is one runtime handler measured, and how much of it.
type kind struct {
	KindInfo
	// direct is the Magnetar kind of direct mode ("" for none).
	direct string
	// image, command and args are the CRI container's (and direct mode's
	// image, entrypoint and args).
	image         string
	command, args []string
	// How many: serial pods, parallel batch sizes and batches of each,
	// pod counts of the memory measurement, direct-mode sandboxes.
	serial   int
	parallel []int
	batches  int
	density  []int
	directN  int
	// missing reports why the kind cannot run here (nil: it can).
	missing func() error
	// warm: the pods adopt VMs of the sandboxer's warm pool (see
	// warmPoolConfig); their pods set memoryLimit (bytes, 0: none).
	warm        bool
	memoryLimit int64
	// template: the pods get VMs restored from the sandboxer's VM
	// template (see templateConfig).
	template bool
}

// handler is k's CRI runtime handler.
func (k *kind) handler() string {
	if k.Handler != "" {
		return k.Handler
	}
	return k.Name
}

// The warm-pool variant of magnetar-vm: its pods set a 64 MiB memory
// limit, hence 64 + 128 MiB (the default overhead) VMs, the size the pool
// keeps (one VM); the cold magnetar-vm pods (256 MiB) never match it.
const (
	warmMemoryLimit = 64 << 20
	warmPoolConfig  = "version = 1\n[backends.vm.pool]\n[[backends.vm.pool.classes]]\ncount = 1\nvcpus = 1\nmemory_mib = 192\n"
)

// The template variant of magnetar-vm: its pods set a 96 MiB memory
// limit, hence 224 MiB VMs, the one size given a template; neither the
// cold nor the warm pods match it.
const (
	templateMemoryLimit = 96 << 20
	templateConfig      = "[backends.vm.template]\nenabled = true\n[[backends.vm.template.sizes]]\nvcpus = 1\nmemory_mib = 224\n"
)

// counts of a run.
type counts struct {
	serial, vmSerial     int
	parallel, vmParallel []int
	batches              int
	density, vmDensity   []int
	direct, vmDirect     int
}

var (
	fullCounts = counts{
		serial: 20, vmSerial: 5,
		parallel: []int{10, 30}, vmParallel: []int{2, 4},
		batches: 3,
		density: []int{1, 5, 10, 20}, vmDensity: []int{1, 2, 4},
		direct: 10, vmDirect: 3,
	}
	shortCounts = counts{
		serial: 3, vmSerial: 1,
		parallel: []int{5}, vmParallel: nil,
		batches: 1,
		density: []int{1, 3}, vmDensity: []int{1},
		direct: 2, vmDirect: 0,
	}
)

// kinds returns the kinds of a run: containerd's stock runc first.
func kinds(o *options) []*kind {
	c := fullCounts
	if o.short {
		c = shortCounts
	}
	busybox := func(k *kind) *kind {
		k.image, k.command = harness.BusyboxImage, []string{"sh", "-c", script}
		k.Workload = "busybox `" + script + "`"
		k.serial, k.parallel, k.batches, k.density, k.directN = c.serial, c.parallel, c.batches, c.density, c.direct
		return k
	}
	ks := []*kind{
		busybox(&kind{KindInfo: KindInfo{Name: harness.RuncHandler, Label: "stock runc (shim + pause)"}, missing: none}),
		busybox(&kind{KindInfo: KindInfo{Name: "magnetar-runc", Label: "magnetar-runc"}, direct: "runc", missing: none}),
		{
			KindInfo: KindInfo{Name: "magnetar-wasm", Label: "magnetar-wasm", Workload: fmt.Sprintf("%s %q", o.wasmImage, o.wasmArgs)},
			direct:   "wasm", image: o.wasmImage, args: o.wasmArgs,
			serial: c.serial, parallel: c.parallel, batches: c.batches, density: c.density, directN: c.direct,
			missing: none,
		},
		busybox(&kind{KindInfo: KindInfo{Name: "magnetar-gvisor", Label: "magnetar-gvisor"}, direct: "gvisor", missing: needRunsc}),
		busybox(&kind{KindInfo: KindInfo{Name: "magnetar-vm", Label: "magnetar-vm"}, direct: "vm", missing: func() error { return needVM(o.guestDir) }}),
	}
	vm := ks[len(ks)-1]
	vm.serial, vm.parallel, vm.density, vm.directN = c.vmSerial, c.vmParallel, c.vmDensity, c.vmDirect
	warm := busybox(&kind{KindInfo: KindInfo{Name: "magnetar-vm-warm", Handler: "magnetar-vm", Label: "magnetar-vm, warm pool"},
		missing: vm.missing, warm: true, memoryLimit: warmMemoryLimit})
	warm.serial, warm.parallel, warm.density, warm.directN = c.vmSerial, nil, nil, 0
	tmpl := busybox(&kind{KindInfo: KindInfo{Name: "magnetar-vm-template", Handler: "magnetar-vm", Label: "magnetar-vm, restored from a template"},
		missing: vm.missing, template: true, memoryLimit: templateMemoryLimit})
	tmpl.serial, tmpl.parallel, tmpl.density, tmpl.directN = c.vmSerial, nil, c.vmDensity, 0
	return append(ks, warm, tmpl)
}

func none() error { return nil }

func needRunsc() error {
	if _, err := exec.LookPath("runsc"); err != nil {
		return errors.New("runsc is not installed (make deps)")
	}
	return nil
}

func needVM(guestDir string) error {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return errors.New("qemu-system-x86_64 is not installed (make deps)")
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(guestDir, f)); err != nil {
			return fmt.Errorf("no microVM guest in %s (make guest)", guestDir)
		}
	}
	return nil
}
