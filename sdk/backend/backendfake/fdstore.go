package backendfake

import (
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// FDStore is a backend.FDStore in this process, for tests: it keeps
// copies of the descriptors stored, and hands out new copies to Take for
// as long as they are stored (as a supervisor does to each new worker).
type FDStore struct {
	mu  sync.Mutex
	fds map[string]int
}

// NewFDStore returns an empty store.
func NewFDStore() *FDStore { return &FDStore{fds: map[string]int{}} }

// Store keeps a copy of f as name.
func (m *FDStore) Store(name string, f *os.File) error {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.fds[name]; ok {
		unix.Close(old)
	}
	m.fds[name] = fd
	return nil
}

// Take returns a copy of what is stored as name, or nil.
func (m *FDStore) Take(name string) *os.File {
	m.mu.Lock()
	defer m.mu.Unlock()
	fd, ok := m.fds[name]
	if !ok {
		return nil
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(nfd), name)
}

// Remove closes what is stored as name.
func (m *FDStore) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if fd, ok := m.fds[name]; ok {
		unix.Close(fd)
		delete(m.fds, name)
	}
	return nil
}

// Names lists what is stored, sorted.
func (m *FDStore) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.fds))
	for n := range m.fds {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Close closes everything stored.
func (m *FDStore) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, fd := range m.fds {
		unix.Close(fd)
		delete(m.fds, n)
	}
}
