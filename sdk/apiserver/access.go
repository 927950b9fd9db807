package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	filev1 "github.com/magnetar-io/magnetar/gen/magnetar/file/v1"
	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/direct"
)

// Labels the access layer sets on a tenant's sandboxes. They are kept in
// the engine's record, so ownership and quotas survive restarts. Labels
// under [ReservedLabelPrefix] cannot be set by tenants.
const (
	// ReservedLabelPrefix starts the labels only the server sets for
	// tenants' sandboxes.
	ReservedLabelPrefix = "magnetar.io/"
	// TenantLabel names the tenant that owns a sandbox.
	TenantLabel = "magnetar.io/tenant"
	// MilliCPUsLabel is the CPU limit a tenant's sandbox counts against
	// its quota, in thousandths of a CPU.
	MilliCPUsLabel = "magnetar.io/quota-millicpus"
	// MemoryLabel is the memory limit a tenant's sandbox counts against
	// its quota, in bytes.
	MemoryLabel = "magnetar.io/quota-memory-bytes"
)

// AccessConfig configures an [Access].
type AccessConfig struct {
	// Log receives the audit records (every call that changes something:
	// tenant, method, target, result) and refused authentications. Nil
	// discards them.
	Log hclog.Logger
	// StateDir keeps which tenant owns which image
	// (image-owners.json, written crash-safely). Required.
	StateDir string
}

// Access authenticates the API's remote callers by bearer token, confines
// each tenant to its own sandboxes, containers and images, applies its
// quotas and rate limits, and writes the audit log. Its interceptors
// ([Access.Local], [Access.Remote]) go in front of the handlers
// ([Server.Register]); it is safe for concurrent use.
type Access struct {
	d       *direct.Service
	log     hclog.Logger
	tenants atomic.Pointer[Tenants]

	mu       sync.Mutex
	limits   map[string]*limits         // by tenant name
	owners   map[string]string          // sandbox ID -> tenant ("" none), a cache for events
	creating map[string]*sync.Mutex     // by tenant: CreateSandbox's quota check and create
	pulling  map[string]*sync.Mutex     // by tenant: PullImage's image quota check and pull
	images   map[string]map[string]bool // tenant -> image names it pulled
	imgFile  string
}

// limits are one tenant's rate limiter and calls in flight.
type limits struct {
	rate     *rate.Limiter
	inFlight atomic.Int64
	max      atomic.Int64
}

// NewAccess returns the access layer of s's API, with no tenants yet (see
// [Access.SetTenants]).
func (s *Server) NewAccess(cfg AccessConfig) (*Access, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("apiserver: AccessConfig.StateDir is required")
	}
	log := cfg.Log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	a := &Access{
		d: s.d, log: log,
		limits: map[string]*limits{}, owners: map[string]string{}, creating: map[string]*sync.Mutex{},
		pulling: map[string]*sync.Mutex{},
		images:  map[string]map[string]bool{}, imgFile: filepath.Join(cfg.StateDir, "image-owners.json"),
	}
	data, err := os.ReadFile(a.imgFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		var m map[string][]string
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, fmt.Errorf("read %s: %w", a.imgFile, err)
		}
		for t, names := range m {
			a.images[t] = map[string]bool{}
			for _, n := range names {
				a.images[t][n] = true
			}
		}
	}
	a.tenants.Store(&Tenants{})
	return a, nil
}

// SetTenants replaces the tenants and their tokens (a reload): calls
// authenticate against ts from now on, calls in flight keep their tenant.
// The rate limits of tenants that stay are updated in place.
func (a *Access) SetTenants(ts *Tenants) {
	if ts == nil {
		ts = &Tenants{}
	}
	a.tenants.Store(ts)
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, l := range a.limits {
		t, ok := ts.byName[name]
		if !ok {
			delete(a.limits, name)
			continue
		}
		r, b, m := limitsOf(t)
		l.rate.SetLimit(r)
		l.rate.SetBurst(b)
		l.max.Store(m)
	}
}

// Tenants returns the tenants in use.
func (a *Access) Tenants() *Tenants { return a.tenants.Load() }

func limitsOf(t *Tenant) (rate.Limit, int, int64) {
	r, b, m := t.RateLimit, t.RateBurst, t.MaxConcurrentCalls
	if r == 0 {
		r = DefaultRateLimit
	}
	if b == 0 {
		b = DefaultRateBurst
	}
	if m == 0 {
		m = DefaultMaxConcurrentCalls
	}
	return rate.Limit(r), b, int64(m)
}

func (a *Access) limitsFor(t *Tenant) *limits {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.limits[t.Name]
	if !ok {
		r, b, m := limitsOf(t)
		l = &limits{rate: rate.NewLimiter(r, b)}
		l.max.Store(m)
		a.limits[t.Name] = l
	}
	return l
}

// caller is who makes a call.
type caller struct {
	tenant *Tenant // nil: the local administrator
	peer   string
}

func (c caller) name() string {
	if c.tenant == nil {
		return "local"
	}
	return c.tenant.Name
}

func (c caller) admin() bool { return c.tenant == nil || c.tenant.Admin }

// Local is the interceptor of the local socket: every call is the host's
// administrator's (the socket is 0600), and is audited.
func (a *Access) Local() connect.ServerInterceptor {
	return func(next connect.ServerFunc) connect.ServerFunc {
		return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			return a.serve(ctx, spec, stream, caller{}, next)
		}
	}
}

// Remote is the interceptor of a remote listener: a call needs a bearer
// token of a tenant ("Authorization: Bearer <token>"), else it fails with
// UNAUTHENTICATED; then the tenant's rate limit and calls in flight are
// checked (RESOURCE_EXHAUSTED) and a tenant that is not an admin is
// confined to what it owns.
func (a *Access) Remote() connect.ServerInterceptor {
	return func(next connect.ServerFunc) connect.ServerFunc {
		return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
			c := caller{}
			var token string
			if info, ok := connect.CallInfoForServerContext(ctx); ok {
				c.peer = info.PeerAddr
				h := info.RequestHeader().Get("Authorization")
				if v, ok := strings.CutPrefix(h, "Bearer "); ok {
					token = strings.TrimSpace(v)
				}
			}
			t, ok := a.tenants.Load().authenticate(token)
			if !ok {
				reason := "invalid token"
				if token == "" {
					reason = "no bearer token"
				}
				a.log.Warn("refused call", "method", spec.Procedure, "peer", c.peer, "reason", reason)
				return connect.NewError(connect.CodeUnauthenticated, reason+": send \"Authorization: Bearer <token>\" with a token of the tenants file")
			}
			c.tenant = t
			l := a.limitsFor(t)
			if !l.rate.Allow() {
				return connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf("tenant %s is over its rate limit (%g calls/s): retry later", t.Name, float64(l.rate.Limit())))
			}
			if n := l.inFlight.Add(1); n > l.max.Load() {
				l.inFlight.Add(-1)
				return connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf("tenant %s has %d calls in flight, its limit", t.Name, l.max.Load()))
			}
			defer l.inFlight.Add(-1)
			return a.serve(ctx, spec, stream, c, next)
		}
	}
}

// readOnly are the methods not marked NO_SIDE_EFFECTS that change
// nothing either: they are not audited.
var readOnly = map[string]bool{
	"WatchEvents": true, "WatchSandboxUsage": true, "AttachOutput": true, "WaitProcess": true,
	"Read": true, "Watch": true, "DownloadTar": true,
}

// serve runs a call of c: confined when c is a tenant, audited when it
// changes something.
func (a *Access) serve(ctx context.Context, spec connect.Spec, stream connect.ServerStream, c caller, next connect.ServerFunc) error {
	method := spec.Procedure[strings.LastIndexByte(spec.Procedure, '/')+1:]
	g := &guard{ServerStream: stream, a: a, c: c, method: method, ctx: ctx}
	start := time.Now()
	var err error
	if c.admin() {
		err = next(ctx, spec, g)
	} else {
		err = g.scrub(a.serveTenant(direct.DenyHostAccess(ctx), spec, g, next))
	}
	if spec.IdempotencyLevel != connect.IdempotencyNoSideEffects && !readOnly[method] {
		code := "ok"
		if err != nil {
			code = connect.CodeOf(err).String()
		}
		args := []any{"tenant", c.name(), "method", spec.Procedure, "target", g.target, "result", code, "duration", time.Since(start)}
		if c.peer != "" {
			args = append(args, "peer", c.peer)
		}
		if err != nil {
			args = append(args, "error", err.Error())
		}
		a.log.Info("call", args...)
	}
	return err
}

// serveTenant runs a call of a tenant that is not an admin.
func (a *Access) serveTenant(ctx context.Context, spec connect.Spec, g *guard, next connect.ServerFunc) error {
	switch g.method {
	case "CreateSandbox":
		// Quota checks and the create are one step per tenant, so that
		// two concurrent creates cannot both pass the check.
		mu := a.tenantLock(a.creating, g.c.tenant.Name)
		mu.Lock()
		defer mu.Unlock()
	case "RemoveImage":
		return a.removeImage(ctx, spec, g, next)
	case "PullImage":
		return a.pullImage(ctx, spec, g, next)
	}
	return next(ctx, spec, g)
}

// guard is a tenant's view of a call's stream: each request is checked
// (and may be completed) before the handler sees it, and each response
// is filtered to what the tenant owns.
type guard struct {
	connect.ServerStream
	a      *Access
	c      caller
	method string
	ctx    context.Context
	// target is what the call is about, for the audit log.
	target string
	// sandbox is the sandbox the call was found to be about ("" none yet).
	sandbox string
}

func (g *guard) setTarget(t string) {
	if g.target == "" && t != "" {
		g.target = t
	}
}

// Receive reads a request and, for a tenant, checks it.
func (g *guard) Receive(msg any) error {
	if err := g.ServerStream.Receive(msg); err != nil {
		return err
	}
	if g.c.admin() {
		g.setTarget(targetOf(msg))
		return g.a.reserved(msg)
	}
	if err := g.qualify(msg); err != nil {
		return err
	}
	return g.check(msg)
}

// Send filters a response for a tenant.
func (g *guard) Send(msg any) error {
	// What the server named (IDs it chose) is the audit's target.
	switch m := msg.(type) {
	case *sandboxv1.CreateSandboxResponse:
		g.setTarget("sandbox/" + m.GetSandbox().GetId())
	case *containerv1.CreateContainerResponse:
		g.setTarget("sandbox/" + m.GetContainer().GetSandboxId() + "/container/" + m.GetContainer().GetId())
	}
	if !g.c.admin() {
		keep, err := g.filter(msg)
		if err != nil {
			return err
		}
		if !keep {
			return nil
		}
		if pm, ok := msg.(proto.Message); ok {
			_ = walkIDs(pm.ProtoReflect(), func(_, id string) (string, error) { return g.unqualify(id), nil })
		}
	}
	return g.ServerStream.Send(msg)
}

// targetOf names what a request is about, for the audit log.
func targetOf(msg any) string {
	switch m := msg.(type) {
	case interface{ GetSandboxId() string }:
		if id := m.GetSandboxId(); id != "" {
			if c, ok := msg.(interface{ GetContainerId() string }); ok && c.GetContainerId() != "" {
				return "sandbox/" + id + "/container/" + c.GetContainerId()
			}
			return "sandbox/" + id
		}
	}
	switch m := msg.(type) {
	case interface{ GetContainerId() string }:
		if id := m.GetContainerId(); id != "" {
			if e, ok := msg.(interface{ GetExecId() string }); ok && e.GetExecId() != "" {
				return "container/" + id + "/exec/" + e.GetExecId()
			}
			return "container/" + id
		}
	case interface{ GetRef() string }:
		return "image/" + m.GetRef()
	case *imagev1.ImportImageRequest:
		return "path/" + m.GetPath()
	case *sandboxv1.DialPortRequest:
		if t := m.GetTarget(); t != nil {
			return "sandbox/" + t.GetSandboxId() + "/port/" + strconv.Itoa(int(t.GetPort()))
		}
	case *filev1.WriteRequest:
		if h := m.GetHeader(); h != nil {
			return "container/" + h.GetContainerId() + "/file/" + h.GetPath()
		}
	case *filev1.UploadTarRequest:
		if h := m.GetHeader(); h != nil {
			return "container/" + h.GetContainerId() + "/tar/" + h.GetPath()
		}
	}
	return ""
}

// notFound is what a tenant learns about a sandbox, container or image
// it does not own: the same as about one that does not exist.
func notFound(what, id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Sprintf("%s %q: not found", what, id))
}

func denied(format string, args ...any) error {
	return connect.NewError(connect.CodePermissionDenied, fmt.Sprintf(format, args...)+" (not allowed for tenants)")
}

func exhausted(format string, args ...any) error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf(format, args...))
}

// check confines one request of a tenant. Every request type of the API
// is listed: one that is not is refused (TestRemoteTenantIsolation in sandboxer/daemon tries every method).
func (g *guard) check(msg any) error {
	g.setTarget(targetOf(msg))
	switch m := msg.(type) {
	case *sandboxv1.CreateSandboxRequest:
		return g.createSandbox(m)
	case *sandboxv1.ListSandboxesRequest:
		labels := maps.Clone(m.GetLabels())
		if labels == nil {
			labels = map[string]string{}
		}
		labels[TenantLabel] = g.c.tenant.Name
		m.Labels = labels
		return nil
	case *sandboxv1.ListKindsRequest:
		return nil
	case *sandboxv1.WatchEventsRequest:
		for _, id := range m.GetSandboxIds() {
			if err := g.ownSandbox(id); err != nil {
				return err
			}
		}
		return nil
	case *sandboxv1.SetSandboxTimeoutRequest:
		if err := g.ownSandbox(m.GetSandboxId()); err != nil {
			return err
		}
		return g.capTimeout(m)
	case *sandboxv1.DialPortRequest:
		if t := m.GetTarget(); t != nil {
			return g.ownSandbox(t.GetSandboxId())
		}
		if g.sandbox == "" {
			return connect.NewError(connect.CodeInvalidArgument, "the first message of DialPort must name its target")
		}
		return nil
	case *sandboxv1.StartSandboxRequest, *sandboxv1.StopSandboxRequest, *sandboxv1.DeleteSandboxRequest,
		*sandboxv1.GetSandboxRequest, *sandboxv1.PauseSandboxRequest, *sandboxv1.ResumeSandboxRequest,
		*sandboxv1.GetSandboxUsageRequest, *sandboxv1.WatchSandboxUsageRequest, *sandboxv1.UpdateNetworkPolicyRequest:
		return g.ownSandbox(m.(interface{ GetSandboxId() string }).GetSandboxId())

	case *containerv1.CreateContainerRequest:
		if err := g.ownSandbox(m.GetSandboxId()); err != nil {
			return err
		}
		if m.GetRootfsPath() != "" {
			return denied("rootfs_path: a host directory as root file system")
		}
		if len(m.GetOciSpecJson()) > 0 {
			return denied("oci_spec_json")
		}
		if ref := m.GetImage(); ref != "" {
			return g.ownImage(ref)
		}
		return nil
	case *containerv1.ListContainersRequest:
		if id := m.GetSandboxId(); id != "" {
			return g.ownSandbox(id)
		}
		return nil // the answer is filtered
	case *containerv1.StartContainerRequest, *containerv1.GetContainerRequest, *containerv1.DeleteContainerRequest,
		*containerv1.ExecProcessRequest, *containerv1.SignalProcessRequest, *containerv1.WaitProcessRequest,
		*containerv1.ResizePtyRequest, *containerv1.WriteStdinRequest, *containerv1.CloseStdinRequest,
		*containerv1.AttachOutputRequest, *containerv1.ContainerStatsRequest, *containerv1.UpdateContainerResourcesRequest,
		*containerv1.ListProcessesRequest,
		*filev1.StatRequest, *filev1.ListRequest, *filev1.ReadRequest, *filev1.MakeDirRequest, *filev1.RemoveRequest,
		*filev1.RenameRequest, *filev1.WatchRequest, *filev1.DownloadTarRequest:
		return g.ownContainer(m.(interface{ GetContainerId() string }).GetContainerId())
	case *filev1.WriteRequest:
		if h := m.GetHeader(); h != nil {
			return g.ownContainer(h.GetContainerId())
		}
		if g.sandbox == "" {
			return connect.NewError(connect.CodeInvalidArgument, "the first message of Write must be its header")
		}
		return nil
	case *filev1.UploadTarRequest:
		if h := m.GetHeader(); h != nil {
			return g.ownContainer(h.GetContainerId())
		}
		if g.sandbox == "" {
			return connect.NewError(connect.CodeInvalidArgument, "the first message of UploadTar must be its header")
		}
		return nil

	case *imagev1.ImportImageRequest:
		return denied("ImportImage reads a file of the host")
	case *imagev1.PullImageRequest:
		return g.checkPull(m)
	case *imagev1.ListImagesRequest:
		return nil // filtered on the way out
	case *imagev1.GetImageRequest:
		return g.ownImage(m.GetRef())
	case *imagev1.RemoveImageRequest:
		return nil // removeImage checked it
	}
	return connect.NewError(connect.CodePermissionDenied, fmt.Sprintf("%s is not open to tenants", g.method))
}

// filter tells whether a response goes to the tenant, and records what it
// made.
func (g *guard) filter(msg any) (bool, error) {
	switch m := msg.(type) {
	case *sandboxv1.CreateSandboxResponse:
		g.a.remember(m.GetSandbox().GetId(), g.c.tenant.Name)
	case *sandboxv1.WatchEventsResponse:
		return g.a.ownerOf(g.ctx, m.GetEvent().GetSandboxId()) == g.c.tenant.Name, nil
	case *containerv1.ListContainersResponse:
		m.Containers = slices.DeleteFunc(m.Containers, func(c *containerv1.Container) bool {
			return g.a.ownerOf(g.ctx, c.GetSandboxId()) != g.c.tenant.Name
		})
	case *imagev1.PullImageResponse:
		if img := m.GetImage(); img != nil {
			if err := g.a.addImage(g.c.tenant.Name, img.GetName()); err != nil {
				return false, err
			}
		}
	case *imagev1.ListImagesResponse:
		owned := g.a.ownedImages(g.c.tenant.Name)
		m.Images = slices.DeleteFunc(m.Images, func(i *imagev1.Image) bool { return !owned[i.GetName()] })
	}
	return true, nil
}

// ownSandbox fails unless sandbox id is the tenant's.
func (g *guard) ownSandbox(id string) error {
	if g.a.ownerOf(g.ctx, id) != g.c.tenant.Name {
		return notFound("sandbox", id)
	}
	if g.sandbox != "" && g.sandbox != id {
		return connect.NewError(connect.CodeInvalidArgument, "a call is about one sandbox")
	}
	g.sandbox = id
	return nil
}

// ownContainer fails unless container id is in one of the tenant's
// sandboxes.
func (g *guard) ownContainer(id string) error {
	c, err := g.a.d.Container(g.ctx, id)
	if err != nil || g.a.ownerOf(g.ctx, c.Status.SandboxID) != g.c.tenant.Name {
		return notFound("container", id)
	}
	if g.sandbox != "" && g.sandbox != c.Status.SandboxID {
		return connect.NewError(connect.CodeInvalidArgument, "a call is about one container")
	}
	g.sandbox = c.Status.SandboxID
	return nil
}

// ownImage fails unless the tenant pulled image ref.
func (g *guard) ownImage(ref string) error {
	img, err := g.a.d.Image(g.ctx, ref)
	if err != nil || !g.a.ownedImages(g.c.tenant.Name)[img.Name] {
		return notFound("image", ref)
	}
	return nil
}

// ownerOf returns the tenant owning sandbox id ("" for none, and for a
// sandbox that does not exist and was not seen before).
func (a *Access) ownerOf(ctx context.Context, id string) string {
	if id == "" {
		return ""
	}
	st, err := a.d.Sandbox(ctx, id)
	if err != nil {
		// A sandbox deleted since (its last events, the event log's
		// after a restart), or one not made yet: the tenant whose
		// namespace the ID is in.
		a.mu.Lock()
		owner, ok := a.owners[id]
		a.mu.Unlock()
		if ok {
			return owner
		}
		t, _, _ := SplitTenantID(id)
		return t
	}
	owner := st.Labels[TenantLabel]
	a.remember(id, owner)
	return owner
}

// maxOwners bounds the cache of sandbox owners.
const maxOwners = 1 << 16

func (a *Access) remember(id, owner string) {
	if id == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.owners[id]; !ok && len(a.owners) >= maxOwners {
		clear(a.owners)
	}
	a.owners[id] = owner
}

// createSandbox checks a tenant's CreateSandbox against its quotas and
// marks the sandbox as its own (labels). The caller holds the tenant's
// create lock.
func (g *guard) createSandbox(m *sandboxv1.CreateSandboxRequest) error {
	t := g.c.tenant
	for k := range m.GetLabels() {
		if strings.HasPrefix(k, ReservedLabelPrefix) {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Sprintf("labels: %q: the prefix %s is reserved", k, ReservedLabelPrefix))
		}
	}
	if m.GetCgroupParent() != "" {
		return denied("cgroup_parent")
	}
	switch m.GetNetwork().GetMode() {
	case sandboxv1.NetworkMode_NETWORK_MODE_HOST:
		return denied("network mode HOST")
	case sandboxv1.NetworkMode_NETWORK_MODE_NETNS:
		return denied("network mode NETNS (a namespace of the host)")
	}
	q := t.Quota
	var milli, mem int64
	res := m.GetResources()
	if res.GetCpuQuotaUs() > 0 {
		period := int64(res.GetCpuPeriodUs())
		if period <= 0 {
			period = 100000
		}
		milli = (res.GetCpuQuotaUs()*1000 + period - 1) / period
	}
	if res.GetMemoryLimitBytes() > 0 {
		mem = res.GetMemoryLimitBytes()
	}
	if q.MaxMilliCPUs > 0 && milli == 0 {
		return exhausted("tenant %s has a CPU quota (%d millicpus): the sandbox needs resources.cpu_quota_us", t.Name, q.MaxMilliCPUs)
	}
	if q.MaxMemoryBytes > 0 && mem == 0 {
		return exhausted("tenant %s has a memory quota (%d bytes): the sandbox needs resources.memory_limit_bytes", t.Name, q.MaxMemoryBytes)
	}
	if q.MaxLifetime > 0 {
		d := m.GetTimeout().AsDuration()
		switch {
		case m.GetTimeout() == nil || d == 0:
			m.Timeout = durationpb.New(q.MaxLifetime)
		case d > q.MaxLifetime:
			return exhausted("timeout %v is longer than tenant %s's maximum lifetime %v", d, t.Name, q.MaxLifetime)
		}
	}
	var n int
	var usedMilli, usedMem int64
	for _, sb := range g.a.d.ListSandboxes(g.ctx, direct.SandboxFilter{Labels: map[string]string{TenantLabel: t.Name}}) {
		n++
		v, _ := strconv.ParseInt(sb.Labels[MilliCPUsLabel], 10, 64)
		usedMilli += v
		v, _ = strconv.ParseInt(sb.Labels[MemoryLabel], 10, 64)
		usedMem += v
	}
	if q.MaxSandboxes > 0 && n+1 > q.MaxSandboxes {
		return exhausted("tenant %s has %d sandboxes, its quota", t.Name, n)
	}
	if q.MaxMilliCPUs > 0 && usedMilli+milli > q.MaxMilliCPUs {
		return exhausted("tenant %s's sandboxes would have %d millicpus, over its quota of %d", t.Name, usedMilli+milli, q.MaxMilliCPUs)
	}
	if q.MaxMemoryBytes > 0 && usedMem+mem > q.MaxMemoryBytes {
		return exhausted("tenant %s's sandboxes would have %d bytes of memory, over its quota of %d", t.Name, usedMem+mem, q.MaxMemoryBytes)
	}
	labels := maps.Clone(m.GetLabels())
	if labels == nil {
		labels = map[string]string{}
	}
	labels[TenantLabel] = t.Name
	labels[MilliCPUsLabel] = strconv.FormatInt(milli, 10)
	labels[MemoryLabel] = strconv.FormatInt(mem, 10)
	m.Labels = labels
	return nil
}

// capTimeout keeps a SetSandboxTimeout within the tenant's maximum
// lifetime, counted from the sandbox's creation.
func (g *guard) capTimeout(m *sandboxv1.SetSandboxTimeoutRequest) error {
	maxLife := g.c.tenant.Quota.MaxLifetime
	if maxLife <= 0 {
		return nil
	}
	st, err := g.a.d.Sandbox(g.ctx, m.GetSandboxId())
	if err != nil {
		return notFound("sandbox", m.GetSandboxId())
	}
	end := st.CreatedAt.Add(maxLife)
	d := m.GetTimeout().AsDuration()
	if m.GetTimeout() == nil || d <= 0 {
		return exhausted("tenant %s's sandboxes must end within %v of their creation: a timeout is required", g.c.tenant.Name, maxLife)
	}
	if time.Now().Add(d).After(end) {
		return exhausted("the sandbox would end after %s, past tenant %s's maximum lifetime %v", end.Format(time.RFC3339), g.c.tenant.Name, maxLife)
	}
	return nil
}

// ownedImages returns the image names tenant pulled (a copy).
func (a *Access) ownedImages(tenant string) map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.images[tenant])
}

// addImage records that tenant pulled image name.
func (a *Access) addImage(tenant, name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.images[tenant][name] {
		return nil
	}
	if a.images[tenant] == nil {
		a.images[tenant] = map[string]bool{}
	}
	a.images[tenant][name] = true
	if err := a.saveImages(); err != nil {
		delete(a.images[tenant], name)
		return connect.NewError(connect.CodeInternal, "record the image's owner: "+err.Error())
	}
	return nil
}

// saveImages writes the image owners crash-safely; a.mu is held.
func (a *Access) saveImages() error {
	m := map[string][]string{}
	for t, names := range a.images {
		if len(names) > 0 {
			m[t] = slices.Sorted(maps.Keys(names))
		}
	}
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(a.imgFile, data, 0o600)
}

// removeImage is a tenant's RemoveImage: the tenant gives up the image;
// it is removed from the store only when no other tenant holds it.
func (a *Access) removeImage(ctx context.Context, spec connect.Spec, g *guard, next connect.ServerFunc) error {
	var req imagev1.RemoveImageRequest
	if err := g.ServerStream.Receive(&req); err != nil {
		return err
	}
	g.setTarget(targetOf(&req))
	img, err := a.d.Image(ctx, req.GetRef())
	if err != nil || !a.ownedImages(g.c.tenant.Name)[img.Name] {
		return notFound("image", req.GetRef())
	}
	a.mu.Lock()
	others := false
	for t, names := range a.images {
		if t != g.c.tenant.Name && names[img.Name] {
			others = true
		}
	}
	a.mu.Unlock()
	if !others {
		if err := next(ctx, spec, &replay{ServerStream: g.ServerStream, req: &req}); err != nil {
			return err
		}
	} else if err := g.ServerStream.Send(&imagev1.RemoveImageResponse{}); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.images[g.c.tenant.Name], img.Name)
	if err := a.saveImages(); err != nil {
		return connect.NewError(connect.CodeInternal, "record the image's owners: "+err.Error())
	}
	return nil
}

// replay hands a request already read to the handler.
type replay struct {
	connect.ServerStream
	req  proto.Message
	done bool
}

func (r *replay) Receive(msg any) error {
	if r.done {
		return r.ServerStream.Receive(msg)
	}
	r.done = true
	m, ok := msg.(proto.Message)
	if !ok || m.ProtoReflect().Descriptor() != r.req.ProtoReflect().Descriptor() {
		return connect.NewError(connect.CodeInternal, "unexpected request type")
	}
	proto.Reset(m)
	proto.Merge(m, r.req)
	return nil
}
