package apiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"connectrpc.com/connect/v2"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	imagev1 "github.com/magnetar-io/magnetar/gen/magnetar/image/v1"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
	"github.com/magnetar-io/magnetar/sdk/image"
)

// Tenants' IDs. A tenant names its sandboxes and containers in a
// namespace of its own: the engine's ID of a tenant's sandbox "foo" is
// [TenantID]("acme", "foo") = "acme--foo". The access layer turns the IDs
// of a tenant's requests into the engine's and those of its responses
// (and errors) back, so that a tenant sees only its own IDs; the local
// socket and admins see and use the engine's IDs. A tenant's sandbox made
// before namespaces (a bare ID with the tenant's label) keeps its ID.

// Kinds of the IDs of the API's messages.
const (
	idSandbox   = "sandbox"
	idContainer = "container"
)

// idKind tells whether field fd of message md holds sandbox or container
// IDs ("" neither).
func idKind(md protoreflect.MessageDescriptor, fd protoreflect.FieldDescriptor) string {
	switch fd.Name() {
	case "sandbox_id", "sandbox_ids":
		return idSandbox
	case "container_id":
		return idContainer
	case "id":
		switch md.FullName() {
		case (*sandboxv1.Sandbox)(nil).ProtoReflect().Descriptor().FullName():
			return idSandbox
		case (*containerv1.Container)(nil).ProtoReflect().Descriptor().FullName():
			return idContainer
		}
	}
	return ""
}

// walkIDs replaces every sandbox and container ID set in m, at any depth,
// by fn's answer; fn's first error stops it.
func walkIDs(m protoreflect.Message, fn func(kind, id string) (string, error)) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			if fd.IsList() {
				l := v.List()
				for i := range l.Len() {
					if err = walkIDs(l.Get(i).Message(), fn); err != nil {
						return false
					}
				}
				return true
			}
			err = walkIDs(v.Message(), fn)
		case fd.Kind() == protoreflect.StringKind:
			kind := idKind(m.Descriptor(), fd)
			if kind == "" {
				return true
			}
			if fd.IsList() {
				l := v.List()
				for i := range l.Len() {
					var id string
					if id, err = fn(kind, l.Get(i).String()); err != nil {
						return false
					}
					l.Set(i, protoreflect.ValueOfString(id))
				}
				return true
			}
			var id string
			if id, err = fn(kind, v.String()); err == nil {
				m.Set(fd, protoreflect.ValueOfString(id))
			}
		}
		return err == nil
	})
	return err
}

// newID returns a random 32-hex-digit ID, as the server chooses them.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// qualify turns the IDs of a tenant's request into the engine's. A create
// without an ID gets one chosen here, in the tenant's namespace.
func (g *guard) qualify(msg any) error {
	switch m := msg.(type) {
	case *sandboxv1.CreateSandboxRequest:
		if m.GetSandboxId() == "" {
			m.SandboxId = newID()
		}
	case *containerv1.CreateContainerRequest:
		if m.GetContainerId() == "" {
			m.ContainerId = newID()
		}
	}
	pm, ok := msg.(proto.Message)
	if !ok {
		return nil
	}
	return walkIDs(pm.ProtoReflect(), g.resolve)
}

// resolve is the engine's ID of the tenant's sandbox or container id: the
// one in its namespace, or its sandbox of before namespaces with that ID.
func (g *guard) resolve(kind, id string) (string, error) {
	if id == "" {
		return "", nil
	}
	if err := engine.ValidateID(kind, id); err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, strings.TrimSuffix(err.Error(), ": "+errdefs.ErrInvalidArgument.Error()))
	}
	t := g.c.tenant.Name
	q := TenantID(t, id)
	if engine.ValidateID(kind, q) != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Sprintf("%s id %q is %d bytes long: tenant %s's IDs may have at most %d", kind, id, len(id), t, MaxTenantIDLength(t)))
	}
	if g.exists(kind, q) {
		return q, nil
	}
	if g.exists(kind, id) && g.ownerOfID(kind, id) == t {
		return id, nil
	}
	return q, nil
}

// MaxTenantIDLength is the longest sandbox or container ID tenant may give.
func MaxTenantIDLength(tenant string) int {
	return engine.MaxIDLength - len(TenantID(tenant, ""))
}

func (g *guard) exists(kind, id string) bool {
	var err error
	if kind == idSandbox {
		_, err = g.a.d.Sandbox(g.ctx, id)
	} else {
		_, err = g.a.d.Container(g.ctx, id)
	}
	return err == nil
}

// ownerOfID returns the tenant owning an existing sandbox or container.
func (g *guard) ownerOfID(kind, id string) string {
	if kind == idContainer {
		c, err := g.a.d.Container(g.ctx, id)
		if err != nil {
			return ""
		}
		id = c.Status.SandboxID
	}
	return g.a.ownerOf(g.ctx, id)
}

// unqualify is the tenant's own ID of an engine ID.
func (g *guard) unqualify(id string) string {
	if t, own, ok := SplitTenantID(id); ok && t == g.c.tenant.Name {
		return own
	}
	return id
}

// scrub removes the tenant's namespace from the IDs an error names.
func (g *guard) scrub(err error) error {
	if err == nil {
		return nil
	}
	prefix := TenantID(g.c.tenant.Name, "")
	if !strings.Contains(err.Error(), prefix) {
		return err
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return connect.NewError(connect.CodeOf(err), strings.ReplaceAll(err.Error(), prefix, ""))
	}
	out := connect.NewError(ce.Code(), strings.ReplaceAll(ce.Message(), prefix, ""))
	for _, d := range ce.Details() {
		out = out.WithDetail(d)
	}
	return out
}

// reserved refuses the local socket's and admins' creates of IDs in a
// tenant's namespace: these are the tenant's alone.
func (a *Access) reserved(msg any) error {
	var field, id string
	switch m := msg.(type) {
	case *sandboxv1.CreateSandboxRequest:
		field, id = "sandbox_id", m.GetSandboxId()
	case *containerv1.CreateContainerRequest:
		field, id = "container_id", m.GetContainerId()
	default:
		return nil
	}
	if t, _, ok := SplitTenantID(id); ok {
		if _, known := a.tenants.Load().byName[t]; known {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Sprintf("%s %q: IDs of the form <tenant>%s<id> are tenant %s's namespace", field, id, TenantIDSeparator, t))
		}
	}
	return nil
}

// checkPull holds a tenant's PullImage to its registries.
func (g *guard) checkPull(m *imagev1.PullImageRequest) error {
	t := g.c.tenant
	ref, err := image.NormalizeRef(m.GetRef())
	if err != nil {
		return nil // the handler says why
	}
	host, _, _ := strings.Cut(ref, "/")
	if !t.allowsRegistry(host) {
		return connect.NewError(connect.CodePermissionDenied, fmt.Sprintf("registries: tenant %s may not pull from %s (allowed: %s)", t.Name, host, strings.Join(t.Registries, ", ")))
	}
	if m.GetInsecure() && !t.AllowInsecureRegistries {
		return connect.NewError(connect.CodePermissionDenied, fmt.Sprintf("insecure: tenant %s may not pull over plain HTTP (allow_insecure_registries)", t.Name))
	}
	return nil
}

// cgnat is the shared address space of RFC 6598.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// privateAddrCheck refuses connections of tenant's pulls to the host's and
// its networks' addresses.
func privateAddrCheck(tenant string) func(netip.Addr) error {
	return func(a netip.Addr) error {
		var what string
		switch {
		case a.IsLoopback():
			what = "a loopback address"
		case a.IsPrivate() || cgnat.Contains(a):
			what = "a private address"
		case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
			what = "a link-local address"
		case a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast():
			what = "not a unicast address"
		default:
			return nil
		}
		return fmt.Errorf("registry address %s is %s: tenant %s may not connect to it (allow_private_registries): %w", a, what, tenant, errdefs.ErrPermissionDenied)
	}
}

// tenantLock returns the mutex of tenant in locks (a.mu is not held).
func (a *Access) tenantLock(locks map[string]*sync.Mutex, tenant string) *sync.Mutex {
	a.mu.Lock()
	defer a.mu.Unlock()
	mu, ok := locks[tenant]
	if !ok {
		mu = &sync.Mutex{}
		locks[tenant] = mu
	}
	return mu
}

// pullImage is a tenant's PullImage: its connections are held to public
// addresses unless it may reach private ones, and the image to the bytes
// left of its image quota (its pulls are then one at a time).
func (a *Access) pullImage(ctx context.Context, spec connect.Spec, g *guard, next connect.ServerFunc) error {
	var req imagev1.PullImageRequest
	if err := g.Receive(&req); err != nil {
		return err
	}
	t := g.c.tenant
	var limits direct.PullLimits
	if !t.AllowPrivateRegistries {
		limits.DialCheck = privateAddrCheck(t.Name)
	}
	quota := t.Quota.MaxImageBytes
	if quota > 0 {
		mu := a.tenantLock(a.pulling, t.Name)
		mu.Lock()
		defer mu.Unlock()
		name, _ := image.NormalizeRef(req.GetRef())
		var used int64
		for n := range a.ownedImages(t.Name) {
			if n == name {
				continue // pulled again: replaced
			}
			if img, err := a.d.Image(ctx, n); err == nil {
				used += img.Size
			}
		}
		if used >= quota {
			return exhausted("tenant %s's images have %d bytes, its quota of %d (max_image_bytes): remove some first", t.Name, used, quota)
		}
		limits.MaxBytes = quota - used
		err := next(direct.WithPullLimits(ctx, limits), spec, &replay{ServerStream: g, req: &req})
		if err != nil && connect.CodeOf(err) == connect.CodeResourceExhausted {
			return exhausted("tenant %s's images have %d bytes and a quota of %d (max_image_bytes): %s", t.Name, used, quota, connectMessage(err))
		}
		return err
	}
	return next(direct.WithPullLimits(ctx, limits), spec, &replay{ServerStream: g, req: &req})
}

func connectMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}
