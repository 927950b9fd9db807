package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/hypervisor"
)

// VM templates. With [TemplateConfig.Enabled] the backend boots one VM
// per templated size in the background, waits for its agent, closes the
// session and saves the VM (a template): its CPU and device state in
// <RunDir>/vmtemplate/<size>-<key>/state, its memory in memory next to it
// (the template VM ran on a shared mapping of that file, so the state
// leaves the memory out). A VM of that size is then restored instead of
// booted: QEMU maps the memory file privately (copy-on-write: the restored
// VMs share the template's pages until they write them) and loads the
// state. The restored VM is a warm VM (warm.go) that was never booted: its
// own work directory under the pool's, a tap in the pool namespace with
// the template's MAC, a fresh agent session (the agent reconnects as after
// a sandboxer restart); the sandbox adopts it like a pooled VM (cgroup,
// tap into the pod netns, Setup: host name, DNS, mounts, addresses, guest
// clock, fresh entropy). The warm pool fills itself by restoring too.
//
// The key is a digest of the guest kernel, the initrd, the hypervisor
// (binary and accelerator) and the VM's config; a template whose files
// changed (seen before each restore) is dropped and rebuilt, and the
// templates of another key are removed at start. A template is built in
// <RunDir>/vmtemplate/.build-<hex> and renamed into place once its files
// are synced, so a crash leaves a complete template or a build directory
// the next start removes. A restore that fails (bad state, a guest that
// does not answer) is logged, the template dropped and rebuilt, and the
// sandbox boots cold.

const (
	templateDirName = "vmtemplate"
	templateBuild   = ".build-"
	templateIDPfx   = "tmpl-"
	templateMeta    = "meta.json"
	templateState   = "state"
	templateMemory  = "memory"
	// templateFormat changes when what a template holds changes.
	templateFormat = "magnetar-vm-template-1"
)

// restoreTimeout bounds a restore up to an answering agent; past it the
// sandbox boots cold.
const restoreTimeout = 30 * time.Second

// TemplateConfig configures VM templates (template.go).
type TemplateConfig struct {
	// Enabled builds the templates and restores VMs from them.
	Enabled bool
	// Sizes are the VM sizes given a template; empty: the default size
	// ([Config.VCPUs] × [Config.MemoryMiB]) and the pool's classes.
	Sizes []TemplateSize
	// RetryInterval is the wait after a failed build (default 30s,
	// doubled after each further failure up to 10 minutes).
	RetryInterval time.Duration
}

// TemplateSize is a VM size with a template; 0 takes [Config.VCPUs] and
// [Config.MemoryMiB].
type TemplateSize struct {
	VCPUs     int
	MemoryMiB int
}

// TemplateStats describes the templates and what they did.
type TemplateStats struct {
	// Ready lists the sizes ("<vcpus>x<MiB>") with a template.
	Ready []string
	// Built counts templates built; BuildFailures failed builds, the last
	// of which is LastError.
	Built, BuildFailures int
	// Restored counts VMs restored; RestoreFailures restores that failed
	// (the sandbox booted cold), the last of which is LastRestoreError.
	Restored, RestoreFailures int
	LastError                 string
	LastRestoreError          string
}

// template is a saved VM of one size.
type template struct {
	size   vmSize
	dir    string
	state  string
	memory string
	meta   templateMetadata
}

// templateMetadata is <dir>/meta.json.
type templateMetadata struct {
	Format      string `json:"format"`
	Key         string `json:"key"`
	VCPUs       int    `json:"vcpus"`
	MemoryMiB   int    `json:"memory_mib"`
	MAC         string `json:"mac"`
	StateSHA256 string `json:"state_sha256"`
	// Files are the files the key digests, with what stat said of them.
	Files []fileStamp `json:"files"`
}

// fileStamp is what stat says of a file, to notice a change cheaply.
type fileStamp struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	MTime int64  `json:"mtime_ns"`
	Ino   uint64 `json:"ino"`
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{Path: path, Size: fi.Size(), MTime: fi.ModTime().UnixNano()}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Ino = s.Ino
	}
	return st, nil
}

// templates builds and hands out the templates. It is safe for
// concurrent use.
type templates struct {
	b     *Backend
	sizes []vmSize
	retry time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	ready map[vmSize]*template
	st    TemplateStats
}

func (b *Backend) templateRoot() string { return filepath.Join(b.cfg.RunDir, templateDirName) }

// templateSizes returns the sizes to template, normalised, in order.
func (c Config) templateSizes() ([]vmSize, error) {
	tc := c.Template
	if tc.RetryInterval < 0 {
		return nil, fmt.Errorf("vm template: negative retry interval: %w", errdefs.ErrInvalidArgument)
	}
	var in []vmSize
	if len(tc.Sizes) == 0 {
		in = append(in, vmSize{VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB})
		for _, cl := range c.Pool.Classes {
			if cl.Count > 0 {
				in = append(in, vmSize{VCPUs: cl.VCPUs, MemoryMiB: cl.MemoryMiB})
			}
		}
	}
	for i, s := range tc.Sizes {
		if s.VCPUs < 0 || s.MemoryMiB < 0 {
			return nil, fmt.Errorf("vm template: size %d: negative: %w", i, errdefs.ErrInvalidArgument)
		}
		in = append(in, vmSize{VCPUs: s.VCPUs, MemoryMiB: s.MemoryMiB})
	}
	seen := map[vmSize]bool{}
	var out []vmSize
	for _, sz := range in {
		if sz.VCPUs == 0 {
			sz.VCPUs = c.VCPUs
		}
		if sz.MemoryMiB == 0 {
			sz.MemoryMiB = c.MemoryMiB
		}
		sz = sz.norm()
		if !seen[sz] {
			seen[sz] = true
			out = append(out, sz)
		}
	}
	return out, nil
}

// startTemplates removes what an earlier run left (all of it when
// templates are off) and starts building them.
func (b *Backend) startTemplates() error {
	if !b.cfg.Template.Enabled {
		return b.sweepTemplates(nil)
	}
	sizes, err := b.cfg.templateSizes()
	if err != nil {
		return err
	}
	if _, ok := b.cfg.Driver.(hypervisor.Snapshotter); !ok {
		return fmt.Errorf("vm template: the %s driver cannot restore vms: %w", b.cfg.Driver.Name(), errdefs.ErrInvalidArgument)
	}
	if n := len(b.templateRoot()) + 1 + len(templateBuild) + 12 + len("/agent.sock"); n > maxSockPath {
		return fmt.Errorf("vm template: run dir %s too long for the template's sockets: %w", b.cfg.RunDir, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(b.templateRoot(), 0o700); err != nil {
		return fmt.Errorf("vm template: %w", err)
	}
	retry := b.cfg.Template.RetryInterval
	if retry <= 0 {
		retry = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.tmpl = &templates{
		b: b, sizes: sizes, retry: retry, ctx: ctx, cancel: cancel,
		kick: make(chan struct{}, 1), ready: map[vmSize]*template{},
	}
	b.tmpl.wg.Add(1)
	go b.tmpl.run()
	return nil
}

// closeTemplates stops building (a build under way is cancelled and its
// VM ended). The templates stay for the next start.
func (b *Backend) closeTemplates() {
	if b.tmpl != nil {
		b.tmpl.cancel()
		b.tmpl.wg.Wait()
	}
}

// TemplateStats describes the VM templates; ok is false when they are off.
func (b *Backend) TemplateStats() (_ TemplateStats, ok bool) {
	t := b.tmpl
	if t == nil {
		return TemplateStats{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.st
	for _, sz := range t.sizes {
		if t.ready[sz] != nil {
			st.Ready = append(st.Ready, sz.String())
		}
	}
	return st, true
}

// sweepTemplates removes the template directories not in keep (dir
// names) and the builds an earlier run left (ending their VMs).
func (b *Backend) sweepTemplates(keep map[string]bool) error {
	ents, err := os.ReadDir(b.templateRoot())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vm template: %w", err)
	}
	var errs []error
	for _, e := range ents {
		dir := filepath.Join(b.templateRoot(), e.Name())
		if hx, ok := strings.CutPrefix(e.Name(), templateBuild); ok && isPoolHex(hx) {
			if err := b.endLeftVM(dir, templateIDPfx+hx); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if !keep[e.Name()] {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("vm template: %w", err))
			}
		}
	}
	if keep == nil {
		if err := os.Remove(b.templateRoot()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("vm template: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (t *templates) poke() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// run loads or builds the template of each size, one at a time, and
// rebuilds those dropped.
func (t *templates) run() {
	defer t.wg.Done()
	b := t.b
	wait := t.retry
	for {
		names, metas, err := t.keys()
		if err == nil {
			if err = b.sweepTemplates(names); err != nil {
				b.log("vm template sweep", "error", err)
				err = nil
			}
		}
		missing := false
		for _, sz := range t.sizes {
			if err != nil || t.ctx.Err() != nil {
				break
			}
			t.mu.Lock()
			have := t.ready[sz] != nil
			t.mu.Unlock()
			if have {
				continue
			}
			dir := filepath.Join(b.templateRoot(), metas[sz].dirName())
			tp, lerr := loadTemplate(dir, metas[sz])
			if lerr != nil {
				if !errors.Is(lerr, os.ErrNotExist) {
					b.log("vm template unusable, rebuilding", "size", sz.String(), "error", lerr)
					_ = os.RemoveAll(dir)
				}
				t0 := time.Now()
				tp, err = b.buildTemplate(t.ctx, sz, metas[sz])
				if err != nil {
					break
				}
				b.log("vm template built", "size", sz.String(), "dir", dir, "took", time.Since(t0))
				t.mu.Lock()
				t.st.Built++
				t.mu.Unlock()
			}
			t.mu.Lock()
			t.ready[sz] = tp
			t.mu.Unlock()
			b.pokePool()
		}
		if t.ctx.Err() != nil {
			return
		}
		if err != nil {
			missing = true
			b.log("vm template build failed", "error", err)
			t.mu.Lock()
			t.st.BuildFailures++
			t.st.LastError = err.Error()
			t.mu.Unlock()
		}
		var tm *time.Timer
		var c <-chan time.Time
		if missing {
			tm = time.NewTimer(wait)
			c = tm.C
			wait = min(2*wait, 10*time.Minute)
		} else {
			wait = t.retry
		}
		select {
		case <-t.ctx.Done():
			if tm != nil {
				tm.Stop()
			}
			return
		case <-t.kick:
		case <-c:
		}
		if tm != nil {
			tm.Stop()
		}
	}
}

// keys computes the metadata each size's template must have (without the
// build's own fields) and the directory names.
func (t *templates) keys() (map[string]bool, map[vmSize]templateMetadata, error) {
	b := t.b
	sn := b.cfg.Driver.(hypervisor.Snapshotter)
	hvKey, err := sn.SnapshotKey(t.ctx, "")
	if err != nil {
		return nil, nil, err
	}
	h := sha256.New()
	var files []fileStamp
	for _, p := range []string{b.cfg.Kernel, b.cfg.Initrd} {
		if p == "" {
			continue
		}
		st, err := digestFile(h, p)
		if err != nil {
			return nil, nil, fmt.Errorf("vm template: %w", err)
		}
		files = append(files, st)
	}
	fmt.Fprintf(h, "\x00%s\x00%s\x00tcg-cache=%d\x00fpr=%v\x00nics=1\x00share=%s", templateFormat, hvKey,
		b.cfg.TCGCacheMiB, b.cfg.FreePageReporting, shareTag)
	base := h.Sum(nil)
	names := map[string]bool{}
	metas := map[vmSize]templateMetadata{}
	for _, sz := range t.sizes {
		k := sha256.Sum256(fmt.Appendf(base[:len(base):len(base)], "\x00%s", sz))
		m := templateMetadata{Format: templateFormat, Key: hex.EncodeToString(k[:]), VCPUs: sz.VCPUs, MemoryMiB: sz.MemoryMiB, Files: files}
		metas[sz] = m
		names[m.dirName()] = true
	}
	return names, metas, nil
}

func (m templateMetadata) dirName() string {
	return fmt.Sprintf("%dx%dMiB-%s", m.VCPUs, m.MemoryMiB, m.Key[:16])
}

// digestFile adds path's contents to h and returns its stamp.
func digestFile(h io.Writer, path string) (fileStamp, error) {
	st, err := stampOf(path)
	if err != nil {
		return st, err
	}
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return st, err
	}
	return st, nil
}

// loadTemplate reads the template in dir and checks it against want.
func loadTemplate(dir string, want templateMetadata) (*template, error) {
	b, err := os.ReadFile(filepath.Join(dir, templateMeta))
	if err != nil {
		return nil, err
	}
	var m templateMetadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", templateMeta, err)
	}
	if m.Format != want.Format || m.Key != want.Key || m.VCPUs != want.VCPUs || m.MemoryMiB != want.MemoryMiB {
		return nil, errors.New("metadata of another key")
	}
	tp := &template{
		size: vmSize{VCPUs: m.VCPUs, MemoryMiB: m.MemoryMiB}, dir: dir,
		state: filepath.Join(dir, templateState), memory: filepath.Join(dir, templateMemory), meta: m,
	}
	if err := tp.check(); err != nil {
		return nil, err
	}
	return tp, nil
}

// check verifies the template's files: the state's digest, the memory's
// size, and that the kernel and initrd are the ones it was built from.
func (tp *template) check() error {
	for _, f := range tp.meta.Files {
		st, err := stampOf(f.Path)
		if err != nil || st != f {
			return fmt.Errorf("%s changed since the template was built", f.Path)
		}
	}
	fi, err := os.Stat(tp.memory)
	if err != nil {
		return err
	}
	if fi.Size() < int64(tp.meta.MemoryMiB)<<20 {
		return fmt.Errorf("memory file of %d bytes, want %d MiB", fi.Size(), tp.meta.MemoryMiB)
	}
	h := sha256.New()
	if _, err := digestFile(h, tp.state); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != tp.meta.StateSHA256 {
		return errors.New("state file corrupt (digest mismatch)")
	}
	return nil
}

// buildTemplate boots a VM of size sz, waits for its agent and saves it
// into the directory of m (see the top of this file).
func (b *Backend) buildTemplate(ctx context.Context, sz vmSize, m templateMetadata) (_ *template, retErr error) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	hx := hex.EncodeToString(rnd[:])
	id := templateIDPfx + hx
	dir := filepath.Join(b.templateRoot(), templateBuild+hx)
	shared := filepath.Join(dir, "shared")
	if err := os.MkdirAll(shared, 0o711); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = os.RemoveAll(dir)
			retErr = fmt.Errorf("vm template %s: %w", sz, retErr)
		}
	}()
	m.MAC = hypervisorMAC(rnd)
	w, err := b.startWarm(ctx, sz, warmSpec{id: id, dir: dir, shared: shared, mac: m.MAC, tap: poolTapPfx + hx,
		memory: filepath.Join(dir, templateMemory), background: true})
	if err != nil {
		return nil, err
	}
	// A fresh session after the restore, as after a sandboxer restart.
	w.ps.closeAgent()
	sctx, cancel := context.WithTimeout(ctx, b.cfg.BootTimeout)
	defer cancel()
	saver, ok := w.vm.(hypervisor.StateSaver)
	if !ok {
		b.stopWarm(w)
		return nil, fmt.Errorf("the %s driver cannot save a vm", b.cfg.Driver.Name())
	}
	state := filepath.Join(dir, templateState)
	err = saver.SaveState(sctx, state)
	b.stopWarm(w)
	if err != nil {
		return nil, err
	}
	// The template's files, synced before the rename makes it one.
	h := sha256.New()
	if _, err := digestFile(h, state); err != nil {
		return nil, err
	}
	m.StateSHA256 = hex.EncodeToString(h.Sum(nil))
	for _, p := range []string{state, filepath.Join(dir, templateMemory)} {
		if err := syncFile(p); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{"qemu.log", "console.log"} {
		_ = os.Remove(filepath.Join(dir, p))
	}
	if err := os.Remove(shared); err != nil {
		return nil, err
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, templateMeta), mb, 0o600); err != nil {
		return nil, err
	}
	final := filepath.Join(b.templateRoot(), m.dirName())
	if err := os.RemoveAll(final); err != nil {
		return nil, err
	}
	if err := os.Rename(dir, final); err != nil {
		return nil, err
	}
	if err := syncFile(b.templateRoot()); err != nil {
		return nil, err
	}
	return loadTemplate(final, m)
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// template returns the ready template of size sz, or nil. A template
// whose files changed is dropped (and rebuilt).
func (t *templates) template(sz vmSize) *template {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	tp := t.ready[sz]
	t.mu.Unlock()
	if tp == nil {
		return nil
	}
	if err := tp.check(); err != nil {
		t.drop(tp, err)
		return nil
	}
	return tp
}

// drop forgets a template that failed and has it rebuilt.
func (t *templates) drop(tp *template, why error) {
	t.mu.Lock()
	if t.ready[tp.size] == tp {
		delete(t.ready, tp.size)
		_ = os.RemoveAll(tp.dir)
	}
	t.st.RestoreFailures++
	t.st.LastRestoreError = why.Error()
	t.mu.Unlock()
	t.b.log("vm template dropped, rebuilding", "size", tp.size.String(), "error", why)
	t.poke()
}

// restoreWarm restores a VM of size sz from its template as a warm VM;
// nil, nil when there is no template. A failed restore drops the
// template (logged); the caller boots cold.
func (b *Backend) restoreWarm(ctx context.Context, sz vmSize, background bool) (*warmVM, error) {
	tp := b.tmpl.template(sz)
	if tp == nil {
		return nil, nil
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	hx := hex.EncodeToString(rnd[:])
	dir := filepath.Join(b.poolRoot(), hx)
	rctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	t0 := time.Now()
	w, err := b.startWarm(rctx, sz, warmSpec{id: poolIDPrefix + hx, dir: dir, shared: filepath.Join(dir, "shared"),
		mac: tp.meta.MAC, tap: poolTapPfx + hx, memory: tp.memory, incoming: tp.state, background: background, pooled: background})
	if err != nil {
		if ctx.Err() == nil {
			b.tmpl.drop(tp, fmt.Errorf("restore: %w", err))
		}
		return nil, err
	}
	b.tmpl.mu.Lock()
	b.tmpl.st.Restored++
	b.tmpl.mu.Unlock()
	b.log("vm restored from template", "vm", w.id, "size", sz.String(), "took", time.Since(t0))
	return w, nil
}

// templateInfo is what a sandbox's StartInfo says of its restore.
func templateInfo(info map[string]string, w *warmVM, took time.Duration) {
	info["template_restore"] = took.String()
	if d := w.vm.Info()["restore_duration"]; d != "" {
		info["vmm_restore"] = d
	}
}
