package vm

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// The warm pool keeps VMs booted ahead of their sandboxes, per size class,
// so that a sandbox of a pooled size adopts one (warm.go) instead of
// booting its own. This file is the pool's bookkeeping: which VMs are
// ready or booting, the memory budget, refilling in the background,
// replacing pooled VMs that died, and ending them all on close. Booting
// and destroying a VM are given to it (warm.go; fakes in the tests).

// PoolConfig configures the warm pool of pre-booted VMs. The zero value
// (no classes) disables it.
type PoolConfig struct {
	// Classes are the VM sizes kept warm.
	Classes []PoolClass
	// MemoryBudgetMiB bounds the guest memory of the VMs the pool holds,
	// ready or booting (claimed VMs are their sandboxes'). 0: the sum of
	// the classes' Count × memory.
	MemoryBudgetMiB int
	// RetryInterval is the wait after a failed boot (default 5s), doubled
	// after each further failure up to 5 minutes.
	RetryInterval time.Duration
}

// PoolClass is one VM size kept warm. A sandbox adopts a pooled VM when
// the size [Config] gives it (from its resources or the defaults) is the
// class's.
type PoolClass struct {
	// Count is how many VMs of this size the pool keeps ready.
	Count int
	// VCPUs and MemoryMiB are the size; 0 takes [Config.VCPUs] and
	// [Config.MemoryMiB] (the size of a sandbox that sets no resources).
	VCPUs     int
	MemoryMiB int
}

// PoolStats describes the pool's state and what it did.
type PoolStats struct {
	// Ready and Booting count the pooled VMs per class ("<vcpus>x<MiB>").
	Ready, Booting map[string]int
	// MemoryMiB is the guest memory of the VMs the pool holds.
	MemoryMiB int
	// Claimed counts sandboxes that adopted a pooled VM; Missed those of
	// a pooled size that found none ready (and booted their own).
	Claimed, Missed int
	// Booted counts VMs the pool booted; BootFailures failed boots, the
	// last of which is LastError; Died counts pooled VMs that exited
	// unclaimed.
	Booted, BootFailures, Died int
	LastError                  string
}

// Driver defaults of a zero size (see [Config]).
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 256
)

// norm returns sz with the driver defaults for its zero fields, so that
// sizes compare by what the VM gets.
func (sz vmSize) norm() vmSize {
	if sz.VCPUs <= 0 {
		sz.VCPUs = defaultVCPUs
	}
	if sz.MemoryMiB <= 0 {
		sz.MemoryMiB = defaultMemoryMiB
	}
	return sz
}

func (sz vmSize) String() string { return fmt.Sprintf("%dx%dMiB", sz.VCPUs, sz.MemoryMiB) }

// validatePool checks pc and returns its classes' sizes (normalised, in
// config order) and counts, and the budget.
func (c Config) validatePool(pc PoolConfig) ([]vmSize, []int, int, error) {
	if pc.MemoryBudgetMiB < 0 || pc.RetryInterval < 0 {
		return nil, nil, 0, fmt.Errorf("vm pool: negative memory budget or retry interval: %w", errdefs.ErrInvalidArgument)
	}
	seen := map[vmSize]bool{}
	var sizes []vmSize
	var counts []int
	sum := 0
	for i, cl := range pc.Classes {
		if cl.Count < 0 || cl.VCPUs < 0 || cl.MemoryMiB < 0 {
			return nil, nil, 0, fmt.Errorf("vm pool: class %d: negative count or size: %w", i, errdefs.ErrInvalidArgument)
		}
		sz := vmSize{VCPUs: cl.VCPUs, MemoryMiB: cl.MemoryMiB}
		if sz.VCPUs == 0 {
			sz.VCPUs = c.VCPUs
		}
		if sz.MemoryMiB == 0 {
			sz.MemoryMiB = c.MemoryMiB
		}
		sz = sz.norm()
		if seen[sz] {
			return nil, nil, 0, fmt.Errorf("vm pool: class %d: size %s given twice: %w", i, sz, errdefs.ErrInvalidArgument)
		}
		seen[sz] = true
		if cl.Count == 0 {
			continue
		}
		sizes = append(sizes, sz)
		counts = append(counts, cl.Count)
		sum += cl.Count * sz.MemoryMiB
	}
	budget := pc.MemoryBudgetMiB
	if budget == 0 {
		budget = sum
	}
	return sizes, counts, budget, nil
}

// pooledVM is what the pool holds of one VM.
type pooledVM struct {
	size vmSize
	// gone is closed when the VM exited.
	gone <-chan struct{}
	// warm is the VM itself (warm.go; nil in the bookkeeping tests).
	warm *warmVM
	// claimed is closed when a sandbox took it (the pool stops watching).
	claimed chan struct{}
}

// pool is the bookkeeping of the warm pool. It is safe for concurrent use.
type pool struct {
	sizes   []vmSize
	counts  []int
	budget  int
	retry   time.Duration
	boot    func(ctx context.Context, sz vmSize) (*pooledVM, error)
	destroy func(*pooledVM)

	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	ready   map[vmSize][]*pooledVM
	booting map[vmSize]int
	used    int // MiB of ready and booting VMs
	st      PoolStats
}

// newPool returns a pool (not started: see start).
func newPool(sizes []vmSize, counts []int, budget int, retry time.Duration,
	boot func(context.Context, vmSize) (*pooledVM, error), destroy func(*pooledVM),
) *pool {
	if retry <= 0 {
		retry = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{
		sizes: sizes, counts: counts, budget: budget, retry: retry, boot: boot, destroy: destroy,
		ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1),
		ready: map[vmSize][]*pooledVM{}, booting: map[vmSize]int{},
	}
}

// start runs the refill loop.
func (p *pool) start() {
	p.wg.Add(1)
	go p.run()
}

func (p *pool) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// next reserves a boot for the first class short of its count whose VM
// fits in the budget.
func (p *pool) next() (vmSize, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return vmSize{}, false
	}
	for i, sz := range p.sizes {
		if len(p.ready[sz])+p.booting[sz] >= p.counts[i] || p.used+sz.MemoryMiB > p.budget {
			continue
		}
		p.booting[sz]++
		p.used += sz.MemoryMiB
		return sz, true
	}
	return vmSize{}, false
}

// run boots one VM at a time (booting is CPU-bound: the pool does not
// compete with the sandboxes more than that) until every class is full or
// the budget is used, then waits for a claim or a death.
func (p *pool) run() {
	defer p.wg.Done()
	wait := p.retry
	for {
		sz, ok := p.next()
		if !ok {
			select {
			case <-p.kick:
				continue
			case <-p.ctx.Done():
				return
			}
		}
		pv, err := p.boot(p.ctx, sz)
		p.mu.Lock()
		p.booting[sz]--
		p.used -= sz.MemoryMiB
		if err != nil {
			p.st.BootFailures++
			p.st.LastError = err.Error()
			p.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			wait = min(2*wait, 5*time.Minute)
			continue
		}
		wait = p.retry
		if p.closed {
			p.mu.Unlock()
			p.destroy(pv)
			return
		}
		pv.size, pv.claimed = sz, make(chan struct{})
		p.ready[sz] = append(p.ready[sz], pv)
		p.used += sz.MemoryMiB
		p.st.Booted++
		p.mu.Unlock()
		p.wg.Add(1)
		go p.watch(pv)
	}
}

// watch removes and destroys a pooled VM that exits before a claim.
func (p *pool) watch(pv *pooledVM) {
	defer p.wg.Done()
	select {
	case <-pv.claimed:
		return
	case <-p.ctx.Done():
		return // close destroys it
	case <-pv.gone:
	}
	if p.take(pv) {
		p.mu.Lock()
		p.st.Died++
		p.mu.Unlock()
		p.destroy(pv)
		p.poke()
	}
}

// take removes pv from the ready VMs; false if it was not there (claimed
// or closed meanwhile).
func (p *pool) take(pv *pooledVM) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.ready[pv.size]
	for i, x := range l {
		if x == pv {
			p.ready[pv.size] = append(l[:i:i], l[i+1:]...)
			p.used -= pv.size.MemoryMiB
			return true
		}
	}
	return false
}

// pooled reports whether the pool keeps VMs of size sz.
func (p *pool) pooled(sz vmSize) bool {
	for _, s := range p.sizes {
		if s == sz {
			return true
		}
	}
	return false
}

// claim takes a ready VM of size sz (normalised), or returns nil. A VM
// taken is the caller's: the pool no longer watches or destroys it, and
// boots a replacement.
func (p *pool) claim(sz vmSize) *pooledVM {
	if !p.pooled(sz) {
		return nil
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	var pv *pooledVM
	for len(p.ready[sz]) > 0 && pv == nil {
		l := p.ready[sz]
		pv, p.ready[sz] = l[0], l[1:] // the oldest first
		p.used -= sz.MemoryMiB
		select {
		case <-pv.gone: // died: its watcher cannot take it any more
			p.st.Died++
			dead := pv
			pv = nil
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.destroy(dead) }()
		default:
		}
	}
	if pv == nil {
		p.st.Missed++
	} else {
		p.st.Claimed++
		close(pv.claimed)
	}
	p.mu.Unlock()
	p.poke()
	return pv
}

// stats returns a snapshot of the pool's state.
func (p *pool) stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.st
	st.Ready, st.Booting, st.MemoryMiB = map[string]int{}, map[string]int{}, p.used
	for _, sz := range p.sizes {
		st.Ready[sz.String()] = len(p.ready[sz])
		st.Booting[sz.String()] = p.booting[sz]
	}
	return st
}

// close stops refilling (a boot under way is cancelled) and destroys the
// ready VMs; it returns when all are gone.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	var all []*pooledVM
	sizes := make([]vmSize, 0, len(p.ready))
	for sz := range p.ready {
		sizes = append(sizes, sz)
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i].MemoryMiB < sizes[j].MemoryMiB })
	for _, sz := range sizes {
		all = append(all, p.ready[sz]...)
		delete(p.ready, sz)
	}
	p.used = 0
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	var wg sync.WaitGroup
	for _, pv := range all {
		wg.Add(1)
		go func() { defer wg.Done(); p.destroy(pv) }()
	}
	wg.Wait()
}
