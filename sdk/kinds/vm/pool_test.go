package vm

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// fakeVMs boots and destroys fake pooled VMs, recording what it did.
type fakeVMs struct {
	mu        sync.Mutex
	booted    []*pooledVM
	gones     map[*pooledVM]chan struct{}
	destroyed map[*pooledVM]bool
	fail      int           // the next fail boots fail
	block     chan struct{} // when set, boots wait for it (or ctx)
}

func newFakeVMs() *fakeVMs {
	return &fakeVMs{gones: map[*pooledVM]chan struct{}{}, destroyed: map[*pooledVM]bool{}}
}

func (f *fakeVMs) boot(ctx context.Context, sz vmSize) (*pooledVM, error) {
	f.mu.Lock()
	block := f.block
	if f.fail > 0 {
		f.fail--
		f.mu.Unlock()
		return nil, errors.New("no guest image")
	}
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	g := make(chan struct{})
	pv := &pooledVM{gone: g}
	f.mu.Lock()
	f.booted = append(f.booted, pv)
	f.gones[pv] = g
	f.mu.Unlock()
	return pv, nil
}

func (f *fakeVMs) destroy(pv *pooledVM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.destroyed[pv] {
		panic("destroyed twice")
	}
	f.destroyed[pv] = true
}

func (f *fakeVMs) counts() (booted, destroyed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.booted), len(f.destroyed)
}

func (f *fakeVMs) kill(pv *pooledVM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.gones[pv])
}

var (
	small = vmSize{VCPUs: 1, MemoryMiB: 256}
	big   = vmSize{VCPUs: 2, MemoryMiB: 512}
)

func readyOf(p *pool, sz vmSize) int { return p.stats().Ready[sz.String()] }

func TestPoolFillsEachClassWithinBudget(t *testing.T) {
	f := newFakeVMs()
	// Room for 2 small and 1 big (1024 MiB), not for the second big.
	p := newPool([]vmSize{small, big}, []int{2, 2}, 1024, time.Millisecond, f.boot, f.destroy)
	p.start()
	defer p.close()
	testutil.Eventually(t, 5*time.Second, func() bool { return readyOf(p, small) == 2 && readyOf(p, big) == 1 },
		"pool did not fill: %+v", p.stats())
	if st := p.stats(); st.MemoryMiB != 1024 || st.Booted != 3 {
		t.Errorf("stats = %+v, want 1024 MiB held and 3 booted", st)
	}
	// Nothing more is booted while the budget is used.
	p.poke()
	if b, _ := f.counts(); b != 3 {
		t.Errorf("booted %d VMs, want 3", b)
	}
}

func TestPoolClaimMatchesSizeAndRefills(t *testing.T) {
	f := newFakeVMs()
	p := newPool([]vmSize{small}, []int{1}, 0+256, time.Millisecond, f.boot, f.destroy)
	p.start()
	defer p.close()
	testutil.Eventually(t, 5*time.Second, func() bool { return readyOf(p, small) == 1 }, "pool did not fill")
	if pv := p.claim(big); pv != nil {
		t.Fatal("claimed a VM of a size the pool does not keep")
	}
	pv := p.claim(small)
	if pv == nil {
		t.Fatal("no VM claimed")
	}
	select {
	case <-pv.claimed:
	default:
		t.Error("a claimed VM is not marked claimed")
	}
	// The pool boots a replacement; the claimed VM is the caller's.
	testutil.Eventually(t, 5*time.Second, func() bool { return readyOf(p, small) == 1 }, "pool did not refill")
	if st := p.stats(); st.Claimed != 1 || st.Booted != 2 {
		t.Errorf("stats = %+v, want 1 claimed, 2 booted", st)
	}
	// A second claim right away takes the replacement; a third misses.
	// Boots are blocked first, so that the refill the second claim starts
	// cannot finish before the third (it did, now and then).
	f.mu.Lock()
	f.block = make(chan struct{}) // the next boot stays under way
	f.mu.Unlock()
	if p.claim(small) == nil {
		t.Fatal("no replacement claimed")
	}
	if p.claim(small) != nil {
		t.Fatal("claimed from an empty pool")
	}
	if st := p.stats(); st.Missed != 1 {
		t.Errorf("missed = %d, want 1", st.Missed)
	}
	p.close()
	_, d := f.counts()
	if d != 0 {
		t.Errorf("close destroyed %d claimed VMs, want none", d)
	}
}

func TestPoolReplacesDeadVM(t *testing.T) {
	f := newFakeVMs()
	p := newPool([]vmSize{small}, []int{1}, 0+256, time.Millisecond, f.boot, f.destroy)
	p.start()
	defer p.close()
	testutil.Eventually(t, 5*time.Second, func() bool { return readyOf(p, small) == 1 }, "pool did not fill")
	f.mu.Lock()
	first := f.booted[0]
	f.mu.Unlock()
	f.kill(first)
	testutil.Eventually(t, 5*time.Second, func() bool {
		b, d := f.counts()
		return b == 2 && d == 1 && readyOf(p, small) == 1
	}, "dead VM not replaced: %+v", p.stats())
	f.mu.Lock()
	destroyed := f.destroyed[first]
	f.mu.Unlock()
	if !destroyed {
		t.Error("the dead VM was not destroyed")
	}
	if st := p.stats(); st.Died != 1 {
		t.Errorf("died = %d, want 1", st.Died)
	}
}

func TestPoolCloseDestroysReadyAndCancelsBoot(t *testing.T) {
	f := newFakeVMs()
	p := newPool([]vmSize{small, big}, []int{1, 1}, 0+768, time.Millisecond, f.boot, f.destroy)
	p.start()
	testutil.Eventually(t, 5*time.Second, func() bool { return readyOf(p, small) == 1 && readyOf(p, big) == 1 }, "pool did not fill")
	f.mu.Lock()
	f.block = make(chan struct{})
	f.mu.Unlock()
	if p.claim(small) == nil { // a replacement boot starts and blocks
		t.Fatal("no VM claimed")
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return p.stats().Booting[small.String()] == 1 }, "no boot under way")
	p.close() // must not wait for the blocked boot
	b, d := f.counts()
	if b != 2 || d != 1 {
		t.Errorf("booted %d, destroyed %d; want 2 and 1 (the unclaimed big VM)", b, d)
	}
	if p.claim(big) != nil {
		t.Error("claimed from a closed pool")
	}
}

func TestPoolRetriesFailedBoots(t *testing.T) {
	f := newFakeVMs()
	f.fail = 2
	p := newPool([]vmSize{small}, []int{1}, 0+256, time.Millisecond, f.boot, f.destroy)
	p.start()
	defer p.close()
	testutil.Eventually(t, 5*time.Second, func() bool { return readyOf(p, small) == 1 }, "pool did not fill after failures")
	if st := p.stats(); st.BootFailures != 2 || st.LastError != "no guest image" {
		t.Errorf("stats = %+v, want 2 failures, last error \"no guest image\"", st)
	}
}

func TestValidatePool(t *testing.T) {
	c := Config{MemoryMiB: 384}
	sizes, counts, budget, err := c.validatePool(PoolConfig{Classes: []PoolClass{{Count: 2}, {Count: 1, VCPUs: 2, MemoryMiB: 512}, {Count: 0, VCPUs: 4}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 2 || sizes[0] != (vmSize{1, 384}) || sizes[1] != (vmSize{2, 512}) || counts[0] != 2 || counts[1] != 1 {
		t.Errorf("sizes %v counts %v", sizes, counts)
	}
	if budget != 2*384+512 {
		t.Errorf("budget = %d, want the classes' sum %d", budget, 2*384+512)
	}
	for _, bad := range []PoolConfig{
		{Classes: []PoolClass{{Count: -1}}},
		{Classes: []PoolClass{{Count: 1}, {Count: 1, VCPUs: 1, MemoryMiB: 384}}}, // same size twice
		{MemoryBudgetMiB: -1},
	} {
		if _, _, _, err := c.validatePool(bad); err == nil {
			t.Errorf("validatePool(%+v): no error", bad)
		}
	}
}
