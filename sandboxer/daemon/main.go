package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/sandboxer/supervisor"
)

// Main is the magnetar-sandboxer command: it parses args (without the
// program name), loads the config file and runs the daemon until SIGINT or
// SIGTERM. It returns the process exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "upgrade" {
		return upgradeMain(args[1:], stderr)
	}
	fs := flag.NewFlagSet("magnetar-sandboxer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath = fs.String("config", "", "config file (TOML, version = 1); defaults apply without one")
		listen     = fs.String("listen", "", "unix socket for containerd's sandbox controller (default "+DefaultListen+")")
		apiTLSCert = fs.String("api-tls-cert", "", "PEM certificate (chain) of the remote API listeners")
		apiTLSKey  = fs.String("api-tls-key", "", "PEM private key of the remote API listeners")
		apiCA      = fs.String("api-client-ca", "", "PEM CAs of client certificates: remote clients must then present one (mTLS)")
		apiTenants = fs.String("api-tenants", "", "tenants file of the remote API (tokens as SHA-256 hex, quotas, limits); re-read when it changes")
		gvPlatform = fs.String("gvisor-platform", "", "runsc platform of the gvisor kind: kvm, systrap or ptrace (default: chosen by probing)")
		guestDir   = fs.String("vm-guest-dir", "", "directory with the microVM guest's vmlinux and initramfs.cpio.gz (default "+DefaultGuestDir+")")
		stateDir   = fs.String("state-dir", "", "state directory (default "+DefaultStateDir+")")
		runDir     = fs.String("run-dir", "", "runtime directory for sockets (default "+DefaultRunDir+")")
		logLevel   = fs.String("log-level", "", "trace, debug, info, warn or error (default "+DefaultLogLevel+")")
		ttrpcAddr  = fs.String("containerd-ttrpc-address", "", "containerd's ttrpc socket, for task events")
		version    = fs.Bool("version", false, "print the version and exit")
		hostAccess = fs.Bool("api-allow-host-access", false, "let Magnetar's API callers reach the host (rootfs_path, bind mounts, raw OCI specs as given): whoever can reach the API socket is then root on the host")
		noSup      = fs.Bool("no-supervisor", false, "run as a single process, without the supervisor that keeps containers and connections across crashes and upgrades")
		handoverV  = fs.Bool("handover-version", false, "print the version of the supervisor state this binary takes over in a live upgrade, and exit")
	)
	var apiListen, remoteListen listFlag
	fs.Var(&apiListen, "api-listen", "unix socket for Magnetar's API, or - for none (default <run-dir>/api.sock); or tcp://HOST:PORT, repeatable, for remote access over TLS (needs --api-tls-cert, --api-tls-key and --api-tenants)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var apiSocket string
	for _, v := range apiListen {
		if strings.HasPrefix(v, "tcp://") {
			remoteListen = append(remoteListen, v)
		} else {
			apiSocket = v
		}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "magnetar-sandboxer: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *version {
		fmt.Fprintf(stderr, "magnetar-sandboxer %s\n", Version())
		return 0
	}
	if *handoverV {
		fmt.Println(supervisor.HandoverVersion)
		return 0
	}

	cfg := DefaultConfig()
	if *configPath != "" {
		var err error
		if cfg, err = LoadConfig(*configPath); err != nil {
			fmt.Fprintf(stderr, "magnetar-sandboxer: %v\n", err)
			return 2
		}
	}
	for _, o := range []struct{ flag, field *string }{
		{listen, &cfg.Listen}, {&apiSocket, &cfg.APIListen},
		{apiTLSCert, &cfg.Remote.TLSCert}, {apiTLSKey, &cfg.Remote.TLSKey}, {apiCA, &cfg.Remote.ClientCA}, {apiTenants, &cfg.Remote.TenantsFile}, {stateDir, &cfg.StateDir}, {runDir, &cfg.RunDir},
		{logLevel, &cfg.LogLevel}, {guestDir, &cfg.Backends.VM.GuestDir}, {gvPlatform, &cfg.Backends.GVisor.Platform}, {ttrpcAddr, &cfg.Containerd.TTRPCAddress},
	} {
		if *o.flag != "" {
			*o.field = *o.flag
		}
	}
	if len(remoteListen) > 0 {
		cfg.Remote.Listen = remoteListen
	}
	if *noSup {
		cfg.NoSupervisor = true
	}
	if *hostAccess {
		cfg.APIAllowHostAccess = true
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "magnetar-sandboxer: %v\n", err)
		return 2
	}
	sup, err := supervisor.Connect()
	if err != nil {
		fmt.Fprintf(stderr, "magnetar-sandboxer: %v\n", err)
		return 2
	}
	cfg.sup = sup

	log := hclog.New(&hclog.LoggerOptions{
		Name:   "magnetar-sandboxer",
		Level:  hclog.LevelFromString(cfg.LogLevel),
		Output: stderr,
	})
	routeContainerdLogs(log.Named("containerd"))
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A supervisor re-executed by a live upgrade takes over its
	// predecessor's state, the state dir's lock included.
	handover, err := supervisor.TakeHandover()
	if err != nil {
		log.Error("cannot take over the previous supervisor", "error", err)
		return 1
	}
	var lock *os.File
	if sup == nil {
		// The process that owns the state dir: the supervisor, or the
		// daemon when it runs alone. A second one is refused.
		if handover != nil {
			lock = handover.File(stateLock)
		}
		if lock == nil {
			if lock, err = lockStateDir(cfg.StateDir); err != nil {
				log.Error("cannot start", "error", err)
				return 1
			}
		}
		defer lock.Close()
	}
	if sup == nil && !cfg.NoSupervisor {
		exe, err := os.Executable()
		if err != nil {
			log.Error("find own executable", "error", err)
			return 1
		}
		scfg := supervisor.Config{Exe: exe, Args: args, PIDFile: PIDFile(cfg.RunDir), Keep: map[string]*os.File{stateLock: lock}, Handover: handover}
		if err := supervisor.Run(ctx, scfg, log.Named("supervisor")); err != nil {
			log.Error("supervisor failed", "error", err)
			return 1
		}
		return 0
	}
	if err := useScratchDir(filepath.Join(cfg.RunDir, "tmp")); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	if err := Run(ctx, cfg, log); err != nil {
		log.Error("sandboxer failed", "error", err)
		return 1
	}
	return 0
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

// Set adds a value.
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// stateLock names the state dir's lock among the files a live upgrade
// hands to the new supervisor.
const stateLock = "state-lock"

// PIDFile is where the supervisor of a daemon with run directory runDir
// writes its pid.
func PIDFile(runDir string) string { return filepath.Join(runDir, "sandboxer.pid") }

// upgradeMain is `magnetar-sandboxer upgrade`: it asks the running
// supervisor to replace its worker with the binary now installed.
func upgradeMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("magnetar-sandboxer upgrade", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runDir := fs.String("run-dir", DefaultRunDir, "runtime directory of the daemon to upgrade")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	pid, err := supervisor.Upgrade(PIDFile(*runDir))
	if err != nil {
		fmt.Fprintf(stderr, "magnetar-sandboxer upgrade: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "magnetar-sandboxer upgrade: asked supervisor %d to start the new binary (see its log)\n", pid)
	return 0
}

// lockStateDir takes an exclusive lock on the state dir, so that a second
// sandboxer on it is refused with a clear error and changes nothing.
func lockStateDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, "sandboxer.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another magnetar-sandboxer serves state dir %s (lock %s is held)", dir, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// useScratchDir makes dir, emptied, this process's $XDG_RUNTIME_DIR. go-runc creates a console socket's directory and an exec's
// process spec there (else in /tmp) for the length of one runc call, and
// removes them after it: a worker killed during the call leaves them
// behind. Here they stay under the run dir, and the next worker (the only
// user of the directory: workers never overlap) removes them.
func useScratchDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("empty %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// The worker's children inherit it; runc (rootful), runsc, QEMU and
	// the wasm runners do not use it.
	return os.Setenv("XDG_RUNTIME_DIR", dir)
}
