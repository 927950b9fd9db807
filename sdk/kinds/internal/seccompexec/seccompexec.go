// Package seccompexec applies a container's seccomp profile to processes
// started in it by exec, for a runtime that applies the profile to the
// container's init only (runsc 20240729: `runsc exec` has no seccomp
// option). The host compiles the OCI profile into a BPF program ([Compile],
// with github.com/elastic/go-seccomp-bpf); the exec'd process is a helper
// ([Main], the program's own executable bound into the container) that sets
// no_new_privs, installs the program and executes the command, which so
// starts under the filter as runc's exec'd processes do.
package seccompexec

import (
	"debug/elf"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Env marks the helper in its environment; it is removed before the
// command runs.
const Env = "MAGNETAR_SECCOMP_EXEC"

// defaultPath is searched for a command when the process has no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Dir is where the helper (and, for a dynamically linked one, its loader
// and libraries) is bound in a container.
const Dir = "/.magnetar-exec"

// Compile converts an OCI seccomp profile into a BPF program for this
// machine's architecture (other architectures get the default action), in
// the kernel's sock_filter layout. Rules with arguments come first, so
// that they take precedence over a rule for the same system call without
// arguments, as with libseccomp; system calls this architecture does not
// have are left out, as runc leaves them. SCMP_ACT_NOTIFY (a listener the
// helper cannot have) and unknown operators are errors.
func Compile(p *specs.LinuxSeccomp) ([]byte, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, err
	}
	def, err := action(p.DefaultAction, p.DefaultErrnoRet)
	if err != nil {
		return nil, fmt.Errorf("default action: %w", err)
	}
	plain := map[string]seccomp.Action{}
	var plainOrder []string
	cond := map[seccomp.Action][]seccomp.NameWithConditions{}
	for _, sc := range p.Syscalls {
		act, err := action(sc.Action, sc.ErrnoRet)
		if err != nil {
			return nil, fmt.Errorf("syscalls %v: %w", sc.Names, err)
		}
		conds, possible, err := conditions(sc.Args)
		if err != nil {
			return nil, fmt.Errorf("syscalls %v: %w", sc.Names, err)
		}
		if !possible {
			continue
		}
		for _, name := range sc.Names {
			if _, ok := info.SyscallNames[name]; !ok {
				continue
			}
			if len(conds) == 0 {
				if _, ok := plain[name]; !ok {
					plain[name] = act
					plainOrder = append(plainOrder, name)
				}
				continue
			}
			cond[act] = append(cond[act], seccomp.NameWithConditions{Name: name, Conditions: conds})
		}
	}
	var groups []seccomp.SyscallGroup
	for _, act := range slices.Sorted(maps.Keys(cond)) {
		// A rule without arguments of the same action covers these.
		ncs := slices.DeleteFunc(cond[act], func(nc seccomp.NameWithConditions) bool {
			a, ok := plain[nc.Name]
			return ok && a == act
		})
		if len(ncs) > 0 {
			groups = append(groups, seccomp.SyscallGroup{NamesWithCondtions: ncs, Action: act})
		}
	}
	byAction := map[seccomp.Action][]string{}
	for _, name := range plainOrder {
		byAction[plain[name]] = append(byAction[plain[name]], name)
	}
	for _, act := range slices.Sorted(maps.Keys(byAction)) {
		groups = append(groups, seccomp.SyscallGroup{Names: byAction[act], Action: act})
	}
	var prog []bpf.Instruction
	if len(groups) == 0 {
		prog = []bpf.Instruction{bpf.RetConstant{Val: uint32(def)}}
	} else {
		// The library takes only a named default action (errno EPERM for
		// "errno"): assemble with it, then set the last instruction, the
		// default's return, to the profile's.
		named := def &^ seccomp.Action(unix.SECCOMP_RET_DATA)
		policy := seccomp.Policy{DefaultAction: named, Syscalls: groups}
		if prog, err = policy.Assemble(); err != nil {
			return nil, err
		}
		last, ok := prog[len(prog)-1].(bpf.RetConstant)
		if !ok {
			return nil, errors.New("assembled program does not end with the default action")
		}
		last.Val = uint32(def)
		prog[len(prog)-1] = last
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, 8*len(raw))
	for _, r := range raw {
		out = binary.NativeEndian.AppendUint16(out, r.Op)
		out = append(out, r.Jt, r.Jf)
		out = binary.NativeEndian.AppendUint32(out, r.K)
	}
	return out, nil
}

// action maps an OCI action; errno defaults to EPERM, as with runc.
func action(a specs.LinuxSeccompAction, errno *uint) (seccomp.Action, error) {
	ret := seccomp.Action(unix.EPERM)
	if errno != nil {
		ret = seccomp.Action(*errno) & seccomp.Action(unix.SECCOMP_RET_DATA)
	}
	switch a {
	case specs.ActAllow:
		return seccomp.ActionAllow, nil
	case specs.ActErrno:
		return seccomp.ActionErrno | ret, nil
	case specs.ActTrace:
		return seccomp.ActionTrace | ret, nil
	case specs.ActKill, specs.ActKillThread:
		return seccomp.ActionKillThread, nil
	case specs.ActKillProcess:
		return seccomp.ActionKillProcess, nil
	case specs.ActTrap:
		return seccomp.ActionTrap, nil
	case specs.ActLog:
		return seccomp.ActionLog, nil
	}
	return 0, fmt.Errorf("seccomp action %q cannot be applied to exec'd processes", a)
}

// operations are the OCI comparisons the library has as they are
// (SCMP_CMP_MASKED_EQ is made of bit tests in conditions).
var operations = map[specs.LinuxSeccompOperator]seccomp.Operation{
	specs.OpEqualTo:      seccomp.Equal,
	specs.OpNotEqual:     seccomp.NotEqual,
	specs.OpLessThan:     seccomp.LessThan,
	specs.OpLessEqual:    seccomp.LessOrEqual,
	specs.OpGreaterThan:  seccomp.GreaterThan,
	specs.OpGreaterEqual: seccomp.GreaterOrEqual,
}

// conditions maps a rule's argument checks (all must hold). possible is
// false for a rule that can never match (a masked value with bits outside
// its mask).
func conditions(args []specs.LinuxSeccompArg) (_ seccomp.ArgumentConditions, possible bool, _ error) {
	var out seccomp.ArgumentConditions
	for _, a := range args {
		if op, ok := operations[a.Op]; ok {
			out = append(out, seccomp.Condition{Argument: uint32(a.Index), Operation: op, Value: a.Value})
			continue
		}
		if a.Op != specs.OpMaskedEqual {
			return nil, false, fmt.Errorf("seccomp operator %q is not known", a.Op)
		}
		// arg & Value == ValueTwo: every bit of ValueTwo set (one
		// condition a bit: the library's BitsSet is "any of") and the
		// mask's other bits clear.
		mask, want := a.Value, a.ValueTwo
		if want&^mask != 0 {
			return nil, false, nil
		}
		if clear := mask &^ want; clear != 0 {
			out = append(out, seccomp.Condition{Argument: uint32(a.Index), Operation: seccomp.BitsNotSet, Value: clear})
		}
		for b := uint64(1); b != 0; b <<= 1 {
			if want&b != 0 {
				out = append(out, seccomp.Condition{Argument: uint32(a.Index), Operation: seccomp.BitsSet, Value: b})
			}
		}
	}
	if errs := out.Validate(); len(errs) > 0 {
		return nil, false, errors.New(errs[0])
	}
	return out, true, nil
}

// Bind returns the bind mounts that put the executable exe in a container
// as the helper, under [Dir], and the command that runs it there. A
// statically linked exe runs as it is; a dynamically linked one (a race
// or cgo build) through its loader, bound with the libraries it needs
// (DT_NEEDED, found in the host's library directories), so that the
// container's own libraries are neither needed nor touched.
func Bind(exe string) (mounts []specs.Mount, command []string, _ error) {
	bind := func(src, name string) {
		mounts = append(mounts, specs.Mount{Destination: filepath.Join(Dir, name), Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
	}
	helper := filepath.Join(Dir, "helper")
	bind(exe, "helper")
	f, err := elf.Open(exe)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	interp := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, nil, fmt.Errorf("%s: interpreter: %w", exe, err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if interp == "" {
		return mounts, []string{helper}, nil
	}
	dirs := []string{filepath.Dir(interp), "/lib/" + multiarch(), "/usr/lib/" + multiarch(), "/lib64", "/usr/lib64", "/lib", "/usr/lib"}
	seen := map[string]bool{filepath.Base(interp): true}
	bind(interp, filepath.Base(interp))
	need, err := f.ImportedLibraries()
	if err != nil {
		return nil, nil, err
	}
	for len(need) > 0 {
		lib := need[0]
		need = need[1:]
		if seen[lib] {
			continue
		}
		seen[lib] = true
		path := ""
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
				path = filepath.Join(d, lib)
				break
			}
		}
		if path == "" {
			return nil, nil, fmt.Errorf("%s needs %s, not found in %v", exe, lib, dirs)
		}
		bind(path, lib)
		lf, err := elf.Open(path)
		if err != nil {
			return nil, nil, err
		}
		more, err := lf.ImportedLibraries()
		lf.Close()
		if err != nil {
			return nil, nil, err
		}
		need = append(need, more...)
	}
	return mounts, []string{filepath.Join(Dir, filepath.Base(interp)), "--library-path", Dir, helper}, nil
}

// multiarch is Debian's library directory name for this architecture.
func multiarch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64-linux-gnu"
	case "arm64":
		return "aarch64-linux-gnu"
	}
	return runtime.GOARCH + "-linux-gnu"
}

// Wrap returns a copy of p that runs p's command through the helper,
// started by command (from [Bind]), with the program prog (from
// [Compile]).
func Wrap(p *specs.Process, command []string, prog []byte) *specs.Process {
	w := *p
	w.Args = append(append(slices.Clone(command), base64.StdEncoding.EncodeToString(prog)), p.Args...)
	w.Env = append(slices.Clone(p.Env), Env+"=1")
	return &w
}

// Main runs the helper and never returns when the process was started as
// one; otherwise it returns false at once. It is called first thing in
// main by the programs whose executable is bound into containers (the
// gvisor kind's pod init).
func Main() bool {
	if os.Getenv(Env) != "1" {
		return false
	}
	os.Exit(run(os.Args[1:]))
	return true
}

// run installs the program args[0] and executes args[1:]: exit status 126
// if it cannot, 127 if the command is not found (as a shell says).
func run(args []string) int {
	// no_new_privs and the filter belong to the calling thread, which
	// then executes the command.
	runtime.LockOSThread()
	os.Unsetenv(Env)
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "seccomp exec: no command")
		return 126
	}
	raw, err := base64.StdEncoding.DecodeString(args[0])
	if err != nil || len(raw) == 0 || len(raw)%8 != 0 || len(raw)/8 > 0xffff {
		fmt.Fprintln(os.Stderr, "seccomp exec: bad filter")
		return 126
	}
	filter := make([]unix.SockFilter, len(raw)/8)
	for i := range filter {
		b := raw[8*i:]
		filter[i] = unix.SockFilter{Code: binary.NativeEndian.Uint16(b), Jt: b[2], Jf: b[3], K: binary.NativeEndian.Uint32(b[4:])}
	}
	// Without a PATH, search where runc and runsc do; the command's
	// environment stays as it was given.
	_, hasPath := os.LookupEnv("PATH")
	if !hasPath {
		os.Setenv("PATH", defaultPath)
	}
	path, err := exec.LookPath(args[1])
	if !hasPath {
		os.Unsetenv("PATH")
	}
	if errors.Is(err, exec.ErrDot) {
		err = nil
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "exec: %q: executable file not found in $PATH\n", args[1])
		return 127
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "seccomp exec: no_new_privs:", err)
		return 126
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		fmt.Fprintln(os.Stderr, "seccomp exec: install filter:", e)
		return 126
	}
	err = syscall.Exec(path, args[1:], os.Environ())
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", args[1], err)
	return 126
}
