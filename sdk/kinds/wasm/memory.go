package wasm

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/tetratelabs/wazero/experimental"
	"golang.org/x/sys/unix"
)

// pagesToBytes converts wasm pages to bytes.
func pagesToBytes(pages uint32) uint64 { return uint64(pages) * wasmPageSize }

// memoryAllocator backs an instance's linear memory with an anonymous
// mapping of the module's maximum size, reserved and not committed
// (MAP_NORESERVE: the kernel gives pages as the module touches them), so
// that growing never copies, and refuses to grow it past the container's
// memory limit: the module's memory.grow then returns -1, as with a
// module's own maximum. The mapping is unmapped when the instance ends,
// so its memory goes back to the host at once.
type memoryAllocator struct {
	lim     atomic.Uint64 // 0: no limit but the module's maximum
	refused atomic.Bool

	mu  sync.Mutex
	mem *linearMemory
}

func newMemoryAllocator(limit uint64) *memoryAllocator {
	a := &memoryAllocator{}
	a.lim.Store(limit)
	return a
}

func (a *memoryAllocator) limit() uint64 { return a.lim.Load() }

// setLimit changes the limit for later growth.
func (a *memoryAllocator) setLimit(limit uint64) { a.lim.Store(limit) }

// refusedGrowth reports whether the limit refused a growth (an OOM).
func (a *memoryAllocator) refusedGrowth() bool { return a.refused.Load() }

// size is the linear memory's current size in bytes.
func (a *memoryAllocator) size() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mem == nil {
		return 0
	}
	return a.mem.len.Load()
}

// resident is how much of the linear memory is in RAM (mincore), which the
// module touched: its working set. A memory on Go's heap counts whole.
func (a *memoryAllocator) resident() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.mem
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.len.Load()
	if !m.mapped || n == 0 {
		return n
	}
	page := uint64(unix.Getpagesize())
	vec := make([]byte, (n+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m.buf[0])), uintptr(n), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return n
	}
	var in uint64
	for _, v := range vec {
		in += uint64(v & 1)
	}
	return in * page
}

// Allocate implements experimental.MemoryAllocator.
func (a *memoryAllocator) Allocate(capacity, maxBytes uint64) experimental.LinearMemory {
	m := &linearMemory{a: a}
	if maxBytes > 0 {
		if b, err := unix.Mmap(-1, 0, int(maxBytes), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE); err == nil {
			m.buf, m.mapped = b, true
		}
	}
	if m.buf == nil {
		// No address space for the reservation: Go's heap, grown by copying.
		m.buf = make([]byte, 0, capacity)
	}
	a.mu.Lock()
	a.mem = m
	a.mu.Unlock()
	return m
}

// free unmaps the instance's memory (also if wazero did not).
func (a *memoryAllocator) free() {
	a.mu.Lock()
	m := a.mem
	a.mem = nil
	a.mu.Unlock()
	if m != nil {
		m.Free()
	}
}

// linearMemory is one instance's linear memory.
type linearMemory struct {
	a      *memoryAllocator
	mu     sync.Mutex
	buf    []byte
	mapped bool
	len    atomic.Uint64
}

// Reallocate implements experimental.LinearMemory.
func (m *linearMemory) Reallocate(size uint64) []byte {
	if lim := m.a.limit(); lim > 0 && size > lim {
		m.a.refused.Store(true)
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.buf == nil && !m.mapped {
		return nil // freed
	}
	if m.mapped {
		if size > uint64(cap(m.buf)) {
			return nil
		}
		m.len.Store(size)
		return m.buf[:size:size]
	}
	if size > uint64(cap(m.buf)) {
		nb := make([]byte, size, max(size, 2*uint64(cap(m.buf))))
		copy(nb, m.buf)
		m.buf = nb
	}
	m.buf = m.buf[:size]
	m.len.Store(size)
	return m.buf
}

// Free implements experimental.LinearMemory.
func (m *linearMemory) Free() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mapped && m.buf != nil {
		_ = unix.Munmap(m.buf[:cap(m.buf)])
	}
	m.buf, m.mapped = nil, false
	m.len.Store(0)
}
