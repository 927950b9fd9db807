package supervisor

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
)

// FDStore is a worker's side of the supervisor's descriptor store (see
// fdstore.go): it stores and removes the worker's descriptors, and holds
// the ones earlier workers stored, fetched once when it was made, until
// the code that resumes using them takes them. It satisfies
// backend.FDStore. It is safe for concurrent use.
type FDStore struct {
	c *Client

	mu        sync.Mutex
	inherited map[string]*os.File
}

// FDStore fetches every descriptor the supervisor stores and returns the
// worker's store. Call it once, before recovering anything.
func (c *Client) FDStore() (*FDStore, error) {
	s := &FDStore{c: c, inherited: map[string]*os.File{}}
	after := ""
	for {
		r, err := c.call(request{Op: opFDList, After: after})
		if err != nil {
			s.closeInherited()
			return nil, err
		}
		if len(r.fds) != len(r.resp.Names) {
			closeFDs(r.fds)
			s.closeInherited()
			return nil, fmt.Errorf("supervisor: %d stored descriptors came with %d names", len(r.fds), len(r.resp.Names))
		}
		for i, name := range r.resp.Names {
			if old := s.inherited[name]; old != nil || name <= after {
				closeFDs(r.fds)
				s.closeInherited()
				return nil, fmt.Errorf("supervisor: stored descriptor %q listed out of order", name)
			}
			s.inherited[name] = os.NewFile(uintptr(r.fds[i]), name)
		}
		if !r.resp.More || len(r.resp.Names) == 0 {
			return s, nil
		}
		after = r.resp.Names[len(r.resp.Names)-1]
	}
}

// Store hands a copy of f to the supervisor under name, replacing what it
// stored under that name before. The caller keeps f.
func (s *FDStore) Store(name string, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	err = rc.Control(func(fd uintptr) {
		_, cerr = s.c.callFDs(request{Op: opFDStore, Name: name}, []int{int(fd)})
	})
	return errors.Join(err, cerr)
}

// Take returns the descriptor an earlier worker stored as name, or nil.
// The caller owns the returned file; the supervisor keeps its copy until
// Remove.
func (s *FDStore) Take(name string) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.inherited[name]
	delete(s.inherited, name)
	return f
}

// Remove makes the supervisor close the descriptor stored as name.
func (s *FDStore) Remove(name string) error {
	if f := s.Take(name); f != nil {
		f.Close()
	}
	_, err := s.c.call(request{Op: opFDRemove, Name: name})
	return err
}

// Sweep removes every inherited descriptor that was not taken: after the
// worker recovered its sandboxes, these belonged to processes that are
// gone. It returns their names.
func (s *FDStore) Sweep() ([]string, error) {
	s.mu.Lock()
	names := make([]string, 0, len(s.inherited))
	for name := range s.inherited {
		names = append(names, name)
	}
	s.mu.Unlock()
	slices.Sort(names)
	var errs []error
	for _, name := range names {
		errs = append(errs, s.Remove(name))
	}
	return names, errors.Join(errs...)
}

func (s *FDStore) closeInherited() {
	for name, f := range s.inherited {
		f.Close()
		delete(s.inherited, name)
	}
}
