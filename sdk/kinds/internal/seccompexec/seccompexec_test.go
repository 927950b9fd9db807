package seccompexec

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	cseccomp "github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestMain(m *testing.M) {
	if Main() {
		return
	}
	os.Exit(m.Run())
}

// helper runs script under the helper (this test binary) with prog, the
// way a wrapped exec does, and returns its output and exit code.
func helper(t *testing.T, prog []byte, script string) (string, int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := Wrap(&specs.Process{Args: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}}, []string{exe}, prog)
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Env = p.Env
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestProfileAppliesToCommand: a profile that refuses sethostname (errno
// EPERM) and mkdir (errno ENOSPC, its own errnoRet) is in force in the
// command the helper executes, which shows mode 2 and no_new_privs, and
// the helper's marker is gone from its environment.
func TestProfileAppliesToCommand(t *testing.T) {
	enospc := uint(28)
	prog, err := Compile(&specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Syscalls: []specs.LinuxSyscall{
			{Names: []string{"sethostname"}, Action: specs.ActErrno},
			{Names: []string{"mkdir", "mkdirat", "no_such_syscall"}, Action: specs.ActErrno, ErrnoRet: &enospc},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out, code := helper(t, prog, `grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; hostname magnetar-test || echo hostname refused; mkdir `+dir+`/x || echo mkdir refused; env | grep -c `+Env+` || true`)
	for _, want := range []string{"Seccomp:\t2", "NoNewPrivs:\t1", "hostname refused", "No space left on device", "mkdir refused", "\n0\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	if _, err := os.Stat(dir + "/x"); err == nil {
		t.Error("mkdir went through the filter")
	}
}

// TestDefaultProfile: containerd's default profile (no capabilities)
// compiles; under it a command runs, and creating a network namespace
// (clone/unshare flags the profile masks) is refused.
func TestDefaultProfile(t *testing.T) {
	prog, err := Compile(cseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}))
	if err != nil {
		t.Fatal(err)
	}
	out, code := helper(t, prog, `echo ran; unshare -n true && echo unshared || echo unshare refused`)
	if code != 0 || !strings.Contains(out, "ran") || !strings.Contains(out, "unshare refused") {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
	if out, code := helper(t, prog, "exec /no/such/program"); code == 0 {
		t.Errorf("a missing program: exit 0:\n%s", out)
	}
	// A process without a PATH finds its command where runc would, and
	// keeps its empty environment.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := Wrap(&specs.Process{Args: []string{"sh", "-c", "env | grep -c PATH || true"}}, []string{exe}, prog)
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Env = p.Env
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "0\n" {
		t.Errorf("no PATH: %v, output %q; want the command run with no PATH", err, out)
	}
}

// TestCompileRefuses: an action the helper cannot carry out and an
// unknown operator are errors; a masked value outside its mask never
// matches (the rule is left out).
func TestCompileRefuses(t *testing.T) {
	for _, p := range []specs.LinuxSeccomp{
		{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActNotify}}},
		{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"read"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Op: "SCMP_CMP_SOMETHING"}}}}},
	} {
		if _, err := Compile(&p); err == nil {
			t.Errorf("%+v compiled", p)
		}
	}
	prog, err := Compile(&specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{
		{Names: []string{"sethostname"}, Action: specs.ActErrno, Args: []specs.LinuxSeccompArg{{Index: 1, Value: 1, ValueTwo: 2, Op: specs.OpMaskedEqual}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if out, code := helper(t, prog, "hostname $(hostname)"); code != 0 {
		t.Errorf("a rule that never matches refused sethostname: exit %d\n%s", code, out)
	}
}
