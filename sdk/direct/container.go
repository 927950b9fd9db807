package direct

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/magnetar-io/magnetar/internal/atomicfile"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/sdk/backend"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// newID returns a random 32-hex-digit ID.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Process describes the process of a container or an exec.
type Process struct {
	// Entrypoint, if set, replaces the image's entrypoint (and drops its
	// cmd); containers only.
	Entrypoint []string
	// Args are the arguments; for a container from an image, they replace
	// the image's cmd.
	Args []string
	// Env is added to the image's (or, for an exec, the container's)
	// environment, key by key.
	Env []string
	// Cwd is the working directory.
	Cwd string
	// User, if set, is who the process runs as.
	User *User
	// Terminal gives the process a terminal; OpenStdin an open stdin.
	Terminal  bool
	OpenStdin bool
	// ConsoleSize, if set, is the terminal's size.
	ConsoleSize *ConsoleSize
}

// User is who a process runs as.
type User struct {
	UID, GID       uint32
	AdditionalGids []uint32
}

// ConsoleSize is the size of a terminal.
type ConsoleSize struct {
	Width, Height uint32
}

// Mount is a mount of a container.
type Mount struct {
	Source      string
	Destination string
	// Type defaults to "bind", whose Options default to "rbind".
	Type     string
	Options  []string
	Readonly bool
}

// ContainerRequest describes a container to create.
type ContainerRequest struct {
	SandboxID string
	// ID is the container's ID; with none, one is generated.
	ID string
	// Image (a reference to an image of the store) or RootfsPath (an
	// absolute path on the host) is the container's root file system.
	Image      string
	RootfsPath string
	Process    Process
	Mounts     []Mount
	// Resources, if set, are the container's resources.
	Resources      *Resources
	Labels         map[string]string
	Annotations    map[string]string
	ReadonlyRootfs bool
	// OCISpecJSON, if set, is the container's whole OCI spec, used as is
	// (but for the root of a container from an image); Process, Mounts
	// and Resources are then ignored.
	OCISpecJSON []byte
}

// Container is a container made through the service.
type Container struct {
	// Status is the engine's state of the container's init process.
	Status engine.ProcessStatus
	// Image or RootfsPath is what the container was created from.
	Image      string
	RootfsPath string
	// Process holds the args, env, cwd, terminal and open stdin of the
	// container's process.
	Process     Process
	Labels      map[string]string
	Annotations map[string]string
	CreatedAt   time.Time
	// StartedAt is zero until the container started.
	StartedAt time.Time
}

// containerMeta is what the service remembers about a container beyond the
// engine's state, persisted next to its bundle.
type containerMeta struct {
	Image       string            `json:"image,omitempty"`
	RootfsPath  string            `json:"rootfsPath,omitempty"`
	Args        []string          `json:"args,omitempty"`
	Env         []string          `json:"env,omitempty"`
	Cwd         string            `json:"cwd,omitempty"`
	Terminal    bool              `json:"terminal,omitempty"`
	OpenStdin   bool              `json:"openStdin,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	CreatedAt   time.Time         `json:"createdAt"`
	StartedAt   time.Time         `json:"startedAt,omitzero"`
}

const metaFile = "meta.json"

func (s *Service) readMeta(ctx context.Context, sandboxID, id string) containerMeta {
	var m containerMeta
	dir, err := s.e.ContainerDir(ctx, sandboxID, id)
	if err != nil {
		return m
	}
	if data, err := os.ReadFile(filepath.Join(dir, metaFile)); err == nil {
		_ = json.Unmarshal(data, &m)
	}
	return m
}

func writeMeta(dir string, m containerMeta) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, metaFile), data, 0o600)
}

func (s *Service) toContainer(ctx context.Context, st engine.ProcessStatus) Container {
	m := s.readMeta(ctx, st.SandboxID, st.ContainerID)
	return Container{
		Status: st, Image: m.Image, RootfsPath: m.RootfsPath,
		Process: Process{Args: m.Args, Env: m.Env, Cwd: m.Cwd, Terminal: m.Terminal, OpenStdin: m.OpenStdin},
		Labels:  m.Labels, Annotations: m.Annotations, CreatedAt: m.CreatedAt, StartedAt: m.StartedAt,
	}
}

// locate finds the sandbox of a container.
func (s *Service) locate(ctx context.Context, id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("container_id is required: %w", errdefs.ErrInvalidArgument)
	}
	sb, err := s.e.SandboxOf(ctx, id)
	if err == nil {
		// Every call about a container is activity of its sandbox (see
		// SandboxRequest.IdleTimeout).
		s.e.Touch(sb)
	}
	return sb, err
}

// CreateContainer builds a bundle and creates the container.
//
// A container from an image takes the image from the store (it is not
// pulled), registers itself as a user of the image's root file system
// (released by DeleteContainer, or by RemoveImage once the container is
// gone), unpacks it if needed and gets a writable root: an overlay mount
// with the image's root file system as the lower directory and
// <container dir>/upper and <container dir>/work as upper and work
// directories, which the backend mounts at <bundle>/rootfs and unmounts on
// delete (the container dir goes with the container). ReadonlyRootfs
// uses the same overlay and sets the spec's root read-only, as CRI does:
// the runtime must still create mount points (/proc, /dev, /run...) in the
// root before making it read-only, which a read-only mount would not let
// it. See buildSpec for the process defaults.
//
// Every field is checked before anything is created (docs/api.md,
// "Limits"): errdefs.ErrInvalidArgument, most often an
// [engine.FieldError] naming the field, or errdefs.ErrPermissionDenied
// for what needs host access ([WithHostAccess]).
func (s *Service) CreateContainer(ctx context.Context, req ContainerRequest) (_ Container, retErr error) {
	if err := validateContainerRequest(&req, s.hostAllowed(ctx)); err != nil {
		return Container{}, err
	}
	sbst, err := s.e.Sandbox(ctx, req.SandboxID)
	if err != nil {
		return Container{}, err
	}
	id := req.ID
	if id == "" {
		id = newID()
	}
	if err := engine.ValidateID("container", id); err != nil {
		return Container{}, err
	}
	if other, err := s.e.SandboxOf(ctx, id); err == nil {
		return Container{}, fmt.Errorf("container %q already exists in sandbox %q: %w", id, other, errdefs.ErrAlreadyExists)
	}
	var img *imageRootfs
	if ref := req.Image; ref != "" {
		im, err := s.useImage(ctx, ref, id)
		if err != nil {
			return Container{}, err
		}
		defer func() { s.doneCreating(context.WithoutCancel(ctx), id, retErr != nil) }()
		dir, err := s.images.Rootfs(ctx, im.Digest, nil)
		if err != nil {
			return Container{}, err
		}
		img = &imageRootfs{config: im.Config, dir: dir}
	}
	spec, err := buildSpec(ctx, sbst, sbst.HostNetwork, sbst.CgroupParent, id, &req, img, s.hostAllowed(ctx))
	if err != nil {
		return Container{}, err
	}
	dir, err := s.e.ContainerDir(ctx, sbst.ID, id)
	if err != nil {
		return Container{}, err
	}
	defer func() {
		if retErr != nil {
			s.forget(procKey{id, ""})
			_ = os.RemoveAll(dir)
		}
	}()
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return Container{}, err
	}
	var rootfs []mount.Mount
	if img != nil {
		if rootfs, err = imageMounts(dir, img.dir); err != nil {
			return Container{}, err
		}
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return Container{}, err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		return Container{}, err
	}
	proc := req.Process
	pio, err := s.newProcIO(dir, "", proc.OpenStdin, spec.Process.Terminal)
	if err != nil {
		return Container{}, err
	}
	s.mu.Lock()
	s.procs[procKey{id, ""}] = pio
	s.mu.Unlock()
	meta := containerMeta{
		Image: req.Image, RootfsPath: req.RootfsPath, Args: spec.Process.Args, Env: spec.Process.Env,
		Cwd: spec.Process.Cwd, Terminal: spec.Process.Terminal, OpenStdin: proc.OpenStdin,
		Labels: req.Labels, Annotations: req.Annotations, CreatedAt: time.Now().UTC(),
	}
	if err := writeMeta(dir, meta); err != nil {
		return Container{}, err
	}
	st, err := s.e.CreateContainer(ctx, sbst.ID, engine.ContainerSpec{ID: id, Bundle: bundle, Rootfs: rootfs, Spec: spec, Stdio: pio.stdio})
	if err != nil {
		return Container{}, err
	}
	s.watchExit(sbst.ID, id, "", pio)
	return s.toContainer(ctx, st), nil
}

// imageMounts returns the root file system mount of a container from an
// image whose unpacked root file system is lower: an overlay with its upper
// and work directories in the container's directory dir.
func imageMounts(dir, lower string) ([]mount.Mount, error) {
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, p := range []string{lower, upper, work} {
		// Overlay options are comma separated, lower directories colon
		// separated.
		if strings.ContainsAny(p, ",:") {
			return nil, fmt.Errorf("overlay directory %q contains ',' or ':': %w", p, errdefs.ErrInvalidArgument)
		}
	}
	// The upper directory's attributes are those of the container's "/".
	if err := os.Mkdir(upper, 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		return nil, err
	}
	return []mount.Mount{{
		Type: "overlay", Source: "overlay",
		Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work},
	}}, nil
}

// StartContainer starts a created container.
func (s *Service) StartContainer(ctx context.Context, id string) (engine.ProcessStatus, error) {
	sb, err := s.locate(ctx, id)
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	st, err := s.e.Start(ctx, sb, id, "")
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	if dir, err := s.e.ContainerDir(ctx, sb, st.ContainerID); err == nil {
		m := s.readMeta(ctx, sb, st.ContainerID)
		m.StartedAt = time.Now().UTC()
		_ = writeMeta(dir, m)
	}
	return st, nil
}

// Container returns one container.
func (s *Service) Container(ctx context.Context, id string) (Container, error) {
	sb, err := s.locate(ctx, id)
	if err != nil {
		return Container{}, err
	}
	st, err := s.e.State(ctx, sb, id, "")
	if err != nil {
		return Container{}, err
	}
	return s.toContainer(ctx, st), nil
}

// ContainerFilter selects containers; empty fields match everything.
type ContainerFilter struct {
	// SandboxID is the sandbox of the containers; one that does not
	// exist is an error.
	SandboxID string
	// Labels must all be among the containers' labels.
	Labels map[string]string
}

// ListContainers lists the containers matching every field of f.
func (s *Service) ListContainers(ctx context.Context, f ContainerFilter) ([]Container, error) {
	var sandboxes []string
	if f.SandboxID != "" {
		sandboxes = []string{f.SandboxID}
	} else {
		for _, sb := range s.e.ListSandboxes(ctx) {
			sandboxes = append(sandboxes, sb.ID)
		}
	}
	var out []Container
	for _, sb := range sandboxes {
		sts, err := s.e.Containers(ctx, sb)
		if err != nil {
			if f.SandboxID != "" {
				return nil, err
			}
			continue
		}
		for _, st := range sts {
			c := s.toContainer(ctx, st)
			if matchLabels(c.Labels, f.Labels) {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// DeleteContainer deletes an exited container; force kills it first. It
// returns the container's last state.
func (s *Service) DeleteContainer(ctx context.Context, id string, force bool) (engine.ProcessStatus, error) {
	sb, err := s.locate(ctx, id)
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	if force {
		if st, err := s.e.State(ctx, sb, id, ""); err == nil && st.State == engine.ProcessRunning {
			if err := s.e.Kill(ctx, sb, id, "", syscall.SIGKILL, true); err != nil && !errdefs.IsNotFound(err) {
				return engine.ProcessStatus{}, err
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := s.e.Wait(wctx, sb, id, "")
			cancel()
			if err != nil {
				return engine.ProcessStatus{}, err
			}
		}
	}
	st, err := s.e.Delete(ctx, sb, id, "")
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	s.forgetContainer(id)
	if s.images != nil {
		// The backend has unmounted the root file system: the image may
		// go. Should saving fail, RemoveImage releases the use later.
		_ = s.images.Release(ctx, id)
	}
	return st, nil
}

// forgetContainer drops the stdio state of a container and its execs.
func (s *Service) forgetContainer(id string) {
	s.mu.Lock()
	var keys []procKey
	for k := range s.procs {
		if k.container == id {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	for _, k := range keys {
		s.forget(k)
	}
}

// ExecRequest describes a process to run in a container.
type ExecRequest struct {
	ContainerID string
	// ExecID is the process's ID; with none, one is generated.
	ExecID string
	// Process needs Args; it inherits the rest from the container's
	// process. Entrypoint is ignored.
	Process Process
}

// Exec creates and starts a process in a running container. The status
// returned has the process's ExecID.
func (s *Service) Exec(ctx context.Context, req ExecRequest) (_ engine.ProcessStatus, retErr error) {
	id := req.ContainerID
	sb, err := s.locate(ctx, id)
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	execID := req.ExecID
	if execID == "" {
		execID = newID()[:12]
	}
	if err := engine.ValidateID("exec", execID); err != nil {
		return engine.ProcessStatus{}, err
	}
	p := req.Process
	if len(p.Args) == 0 {
		return engine.ProcessStatus{}, fmt.Errorf("process.args must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := validateProcess("process", &p, false); err != nil {
		return engine.ProcessStatus{}, err
	}
	dir, err := s.e.ContainerDir(ctx, sb, id)
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	spec, err := readSpec(filepath.Join(dir, "bundle", "config.json"))
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	proc := *spec.Process
	proc.Args, proc.Terminal = p.Args, p.Terminal
	proc.Env = append(append([]string(nil), proc.Env...), p.Env...)
	if p.Cwd != "" {
		proc.Cwd = p.Cwd
	}
	if u := p.User; u != nil {
		proc.User = specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.AdditionalGids}
	}
	if cs := p.ConsoleSize; cs != nil && proc.Terminal {
		proc.ConsoleSize = &specs.Box{Width: uint(cs.Width), Height: uint(cs.Height)}
	}
	pio, err := s.newProcIO(dir, execID, p.OpenStdin, proc.Terminal)
	if err != nil {
		return engine.ProcessStatus{}, err
	}
	key := procKey{id, execID}
	s.mu.Lock()
	s.procs[key] = pio
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.forget(key)
		}
	}()
	if _, err := s.e.Exec(ctx, sb, engine.ExecSpec{ContainerID: id, ExecID: execID, Process: &proc, Stdio: pio.stdio}); err != nil {
		return engine.ProcessStatus{}, err
	}
	s.watchExit(sb, id, execID, pio)
	st, err := s.e.Start(ctx, sb, id, execID)
	if err != nil {
		_, _ = s.e.Delete(ctx, sb, id, execID)
		return engine.ProcessStatus{}, err
	}
	st.ExecID = execID
	return st, nil
}

func readSpec(path string) (*specs.Spec, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("container was not made through Magnetar's API: %w", errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, err
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("container spec has no process: %w", errdefs.ErrFailedPrecondition)
	}
	return &spec, nil
}

// Signal sends signal sig (1 to 64) to a process of a container, the
// init for an empty execID; all sends it to every process of the
// container.
func (s *Service) Signal(ctx context.Context, containerID, execID string, sig uint32, all bool) error {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return err
	}
	if sig == 0 || sig > 64 {
		return fmt.Errorf("signal %d is not a valid signal number: %w", sig, errdefs.ErrInvalidArgument)
	}
	return s.e.Kill(ctx, sb, containerID, execID, syscall.Signal(sig), all)
}

// Wait blocks until a process exits.
func (s *Service) Wait(ctx context.Context, containerID, execID string) (backend.ExitStatus, error) {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return backend.ExitStatus{}, err
	}
	return s.e.Wait(ctx, sb, containerID, execID)
}

// ResizePTY resizes a process's terminal.
func (s *Service) ResizePTY(ctx context.Context, containerID, execID string, width, height uint32) error {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return err
	}
	return s.e.ResizePTY(ctx, sb, containerID, execID, width, height)
}

// WriteStdin writes data to a process's stdin; eof closes it afterwards.
// It returns how many bytes were written.
func (s *Service) WriteStdin(ctx context.Context, containerID, execID string, data []byte, eof bool) (int, error) {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return 0, err
	}
	p := s.proc(procKey{containerID, execID})
	if p == nil {
		return 0, fmt.Errorf("process %q of container %q has no stdio managed by this server: %w", execID, containerID, errdefs.ErrNotFound)
	}
	n, err := p.write(data, eof)
	if err != nil {
		return 0, err
	}
	if eof {
		// The runtime holds the FIFO open too (as containerd's shims do);
		// it lets go on CloseStdin.
		if err := s.e.CloseStdin(ctx, sb, containerID, execID); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// CloseStdin closes a process's stdin.
func (s *Service) CloseStdin(ctx context.Context, containerID, execID string) error {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return err
	}
	if p := s.proc(procKey{containerID, execID}); p != nil {
		if err := p.closeStdin(); err != nil {
			return err
		}
	}
	return s.e.CloseStdin(ctx, sb, containerID, execID)
}

// Output is the output of a process kept by the service, from
// [Service.Output].
type Output struct {
	s                           *Service
	sandboxID, containerID, eid string
	ring                        *ring
}

// Output returns the output of a process, the init for an empty execID.
func (s *Service) Output(ctx context.Context, containerID, execID string) (*Output, error) {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return nil, err
	}
	p := s.proc(procKey{containerID, execID})
	if p == nil {
		return nil, fmt.Errorf("process %q of container %q has no output kept by this server: %w", execID, containerID, errdefs.ErrNotFound)
	}
	return &Output{s: s, sandboxID: sb, containerID: containerID, eid: execID, ring: p.ring}, nil
}

// Bounds returns the offsets of the oldest byte of output kept and of the
// byte after the newest.
func (o *Output) Bounds() (start, end int64) {
	return o.ring.bounds()
}

// Follow calls send with the process's output from offset from (from the
// oldest byte kept for a negative one) until its output streams close,
// then waits for the process to exit and returns how it exited. Offsets
// count the bytes of both streams from the process's first one; each
// chunk carries its own. An offset whose output is no longer kept (the
// ring keeps the newest [DefaultOutputRingSize] bytes or so) fails with
// errdefs.ErrOutOfRange, as does a follower that falls that far behind.
// It stops at the first error of send, and returns it, or when ctx ends;
// when the service closes, it fails with errdefs.ErrUnavailable (the next
// service goes on from the same offsets).
func (o *Output) Follow(ctx context.Context, from int64, send func(Chunk) error) (backend.ExitStatus, error) {
	if err := o.ring.follow(ctx.Done(), from, send); err != nil {
		return backend.ExitStatus{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.ExitStatus{}, err
	}
	return o.s.e.Wait(ctx, o.sandboxID, o.containerID, o.eid)
}

// Read calls send with the process's output from offset from (from the
// oldest byte kept for a negative one) up to the end it had at the call,
// and returns without waiting for more. If the process had exited by
// then and every byte of its output was sent, it returns its exit status
// too (exited true). Errors are those of [Output.Follow]; ctx ending
// stops it early with ctx's error.
func (o *Output) Read(ctx context.Context, from int64, send func(Chunk) error) (st backend.ExitStatus, exited bool, err error) {
	complete, err := o.ring.snapshot(ctx.Done(), from, send)
	if err != nil {
		return backend.ExitStatus{}, false, err
	}
	if err := ctx.Err(); err != nil {
		return backend.ExitStatus{}, false, err
	}
	if !complete {
		return backend.ExitStatus{}, false, nil
	}
	ps, err := o.s.e.State(ctx, o.sandboxID, o.containerID, o.eid)
	if err != nil {
		return backend.ExitStatus{}, false, err
	}
	if ps.State != engine.ProcessStopped {
		return backend.ExitStatus{}, false, nil
	}
	return backend.ExitStatus{Code: ps.ExitCode, ExitedAt: ps.ExitedAt}, true, nil
}

// Stats returns a container's resource usage.
func (s *Service) Stats(ctx context.Context, containerID string) (*backend.Stats, error) {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return nil, err
	}
	return s.e.Stats(ctx, sb, containerID)
}

// UpdateResources changes the set fields of a container's resources;
// res is required.
func (s *Service) UpdateResources(ctx context.Context, containerID string, res *Resources) error {
	if err := validateResources("resources", res); err != nil {
		return err
	}
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return err
	}
	lr := mergeResources(nil, res)
	if lr == nil {
		return fmt.Errorf("resources are required: %w", errdefs.ErrInvalidArgument)
	}
	return s.e.Update(ctx, sb, containerID, lr)
}

// Processes lists a container's processes.
func (s *Service) Processes(ctx context.Context, containerID string) ([]backend.ProcessInfo, error) {
	sb, err := s.locate(ctx, containerID)
	if err != nil {
		return nil, err
	}
	return s.e.Pids(ctx, sb, containerID)
}
