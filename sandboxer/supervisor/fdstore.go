package supervisor

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The supervisor's file descriptor store, after systemd's (FDSTORE=1): the
// worker hands it named descriptors that must outlive the worker (a
// terminal's pty master, ends of stdio FIFOs and pipes), removes them when
// they are no longer needed, and a new worker fetches them all when it
// starts. The supervisor never reads or writes what it stores: it only
// keeps the descriptors open.
//
// Operations of the control channel (see control.go):
//
//	fdstore  {name}  + exactly one descriptor: store it (a descriptor stored
//	                   under the same name before is closed)
//	fdremove {name}  close and forget the descriptor stored as name
//	fdlist   {after} the stored names after `after` in sorted order, at most
//	                   fdListPage of them, with their descriptors (copies)
//	                   in the same order; more=true when there are others
//
// The store is a plain list of name -> fd ([fdStore.entries]) so that a
// supervisor that re-executes itself can carry it across exec: clear
// FD_CLOEXEC on each descriptor, pass the list on, and rebuild the store
// with [newFDStoreFrom].

// Operations of the fd store on the control channel.
const (
	opFDStore  = "fdstore"
	opFDRemove = "fdremove"
	opFDList   = "fdlist"
)

// Bounds of the fd store.
const (
	// DefaultFDStoreMax bounds how many descriptors the store keeps
	// (systemd's FileDescriptorStoreMax=).
	DefaultFDStoreMax = 16384
	// maxFDName bounds a stored descriptor's name, in bytes.
	maxFDName = 512
	// fdListPage is how many descriptors one fdlist answer carries (one
	// message carries at most 253, SCM_MAX_FD).
	fdListPage = 64
	// maxFDsIn is how many descriptors the supervisor receives with one
	// message; more are dropped by the kernel (MSG_CTRUNC) and the
	// message refused.
	maxFDsIn = 4
)

// storedFD is one entry of the store.
type storedFD struct {
	Name string
	FD   int
}

// fdStore holds the named descriptors. It is safe for concurrent use.
type fdStore struct {
	max int

	mu  sync.Mutex
	fds map[string]int
}

func newFDStore(max int) *fdStore {
	if max <= 0 {
		max = DefaultFDStoreMax
	}
	return &fdStore{max: max, fds: map[string]int{}}
}

// newFDStoreFrom rebuilds a store from the entries of an earlier one
// (carried across exec); the store owns their descriptors.
func newFDStoreFrom(max int, entries []storedFD) *fdStore {
	s := newFDStore(max)
	for _, e := range entries {
		unix.CloseOnExec(e.FD)
		s.fds[e.Name] = e.FD
	}
	return s
}

// entries lists the store, sorted by name. The descriptors stay owned by
// the store.
func (s *fdStore) entries() []storedFD {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]storedFD, 0, len(s.fds))
	for n, fd := range s.fds {
		out = append(out, storedFD{Name: n, FD: fd})
	}
	slices.SortFunc(out, func(a, b storedFD) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// checkFDName accepts the names the store keeps: 1 to maxFDName bytes of
// printable ASCII.
func checkFDName(name string) error {
	if name == "" || len(name) > maxFDName {
		return fmt.Errorf("descriptor name must have 1 to %d bytes, has %d", maxFDName, len(name))
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e {
			return fmt.Errorf("descriptor name %q: byte %#x is not printable ASCII", name, c)
		}
	}
	return nil
}

// store keeps fd under name; on error the caller still owns fd.
func (s *fdStore) store(name string, fd int) error {
	if err := checkFDName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, replaced := s.fds[name]
	if !replaced && len(s.fds) >= s.max {
		return fmt.Errorf("descriptor store is full (%d descriptors)", s.max)
	}
	s.fds[name] = fd
	if replaced {
		unix.Close(old)
	}
	return nil
}

// remove closes and forgets the descriptor stored as name.
func (s *fdStore) remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd, ok := s.fds[name]
	if !ok {
		return fmt.Errorf("no descriptor stored as %q", name)
	}
	delete(s.fds, name)
	unix.Close(fd)
	return nil
}

// list returns up to fdListPage names after `after` (sorted) with copies
// of their descriptors, which the caller closes, and whether more follow.
func (s *fdStore) list(after string) (names []string, fds []int, more bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]string, 0, len(s.fds))
	for n := range s.fds {
		if n > after {
			all = append(all, n)
		}
	}
	slices.Sort(all)
	if len(all) > fdListPage {
		all, more = all[:fdListPage], true
	}
	for _, n := range all {
		fd, err := unix.FcntlInt(uintptr(s.fds[n]), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			closeFDs(fds)
			return nil, nil, false, fmt.Errorf("copy descriptor %q: %w", n, err)
		}
		names, fds = append(names, n), append(fds, fd)
	}
	return names, fds, more, nil
}

// closeAll closes every stored descriptor.
func (s *fdStore) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, fd := range s.fds {
		unix.Close(fd)
		delete(s.fds, n)
	}
}

// handle answers an fd store request that came with the descriptors fds
// (which it owns): the response's error, and the descriptors to send back.
func (s *fdStore) handle(req request, fds []int) (resp response, out []int) {
	resp.ID = req.ID
	fail := func(format string, args ...any) (response, []int) {
		closeFDs(fds)
		resp.Err = fmt.Sprintf(format, args...)
		return resp, nil
	}
	switch req.Op {
	case opFDStore:
		if len(fds) != 1 {
			return fail("%s %q takes exactly one descriptor, got %d", req.Op, req.Name, len(fds))
		}
		if err := s.store(req.Name, fds[0]); err != nil {
			return fail("%s: %v", req.Op, err)
		}
	case opFDRemove:
		if len(fds) != 0 {
			return fail("%s takes no descriptor, got %d", req.Op, len(fds))
		}
		if err := s.remove(req.Name); err != nil {
			return fail("%s: %v", req.Op, err)
		}
	case opFDList:
		if len(fds) != 0 {
			return fail("%s takes no descriptor, got %d", req.Op, len(fds))
		}
		names, list, more, err := s.list(req.After)
		if err != nil {
			return fail("%s: %v", req.Op, err)
		}
		resp.Names, resp.More = names, more
		return resp, list
	default:
		return fail("unknown operation %q", req.Op)
	}
	return resp, nil
}

// isFDStoreOp tells the operations that handle answers.
func isFDStoreOp(op string) bool {
	return op == opFDStore || op == opFDRemove || op == opFDList
}
