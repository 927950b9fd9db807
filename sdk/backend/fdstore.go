package backend

import "os"

// FDStore keeps open file descriptors on behalf of a kind in a process
// that outlives the one running the kind (magnetar-sandboxer's
// supervisor), so that what they keep open survives a restart: a
// terminal's pty master, the ends of stdio FIFOs and pipes whose closing
// the container or containerd would notice. After a restart, the kind
// takes back what it stored and resumes.
type FDStore interface {
	// Store hands a copy of f to the store under name, replacing what
	// was stored under that name. The caller keeps f.
	Store(name string, f *os.File) error
	// Take returns the file stored as name before this process started,
	// or nil. The caller owns it; the store keeps its copy until Remove.
	Take(name string) *os.File
	// Remove closes the store's copy of name.
	Remove(name string) error
}
