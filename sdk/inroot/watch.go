//go:build linux

package inroot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// EventType is what happened to a path.
type EventType int

// Event types.
const (
	Created EventType = iota + 1
	Modified
	Removed
)

// String names the event type.
func (t EventType) String() string {
	switch t {
	case Created:
		return "created"
	case Modified:
		return "modified"
	case Removed:
		return "removed"
	}
	return "unknown"
}

// Event is one change under a watched directory.
type Event struct {
	Type  EventType
	Path  string
	IsDir bool
}

// MaxWatches bounds the directories one recursive watch follows.
const MaxWatches = 8192

const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

type watcher struct {
	root      string // host path of the root
	f         *os.File
	ifd       int
	recursive bool
	paths     map[int]string // watch descriptor -> path inside the root
	top       int
}

// Watch watches the directory p inside the root at the host path root
// (and, if recursive, its subdirectories, new ones included, at most
// [MaxWatches]) with inotify. started is called once the watches are in
// place, then fn with each batch of events. Watch returns nil when ctx ends
// or the directory is removed or unmounted, or the first error of fn. No
// file descriptor of the root is kept open between batches, so the watch
// does not keep its mount busy.
func Watch(ctx context.Context, root, p string, recursive bool, started func() error, fn func(events []Event, overflow bool) error) error {
	p, err := Clean(p)
	if err != nil {
		return err
	}
	ifd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return mapErr("watch", p, err)
	}
	w := &watcher{root: root, f: os.NewFile(uintptr(ifd), "inotify"), ifd: ifd, recursive: recursive, paths: map[int]string{}}
	defer w.f.Close()
	r, err := Open(root)
	if err != nil {
		return err
	}
	w.top, err = w.add(r, p, true)
	if err == nil && recursive {
		err = w.addTree(r, p, 0)
	}
	r.Close()
	if err != nil {
		return err
	}
	if err := started(); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { w.f.Close() })
	defer stop()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("watch %s: %w", p, err)
		}
		events, overflow, done := w.parse(buf[:n])
		if len(events) > 0 || overflow {
			if err := fn(events, overflow); err != nil {
				return err
			}
		}
		if done {
			return nil
		}
	}
}

// add watches the directory p. must: errors are returned rather than
// ignored (for the watched directory itself).
func (w *watcher) add(r *Root, p string, must bool) (int, error) {
	if len(w.paths) >= MaxWatches {
		return -1, fmt.Errorf("watch %s: more than %d directories: %w", p, MaxWatches, errdefs.ErrResourceExhausted)
	}
	fd, err := r.openat2(p, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		if !must {
			return -1, nil
		}
		return -1, mapErr("watch", p, err)
	}
	defer unix.Close(fd)
	wd, err := unix.InotifyAddWatch(w.ifd, "/proc/self/fd/"+strconv.Itoa(fd), watchMask)
	if err != nil {
		if err == unix.ENOSPC {
			return -1, fmt.Errorf("watch %s: the host's inotify watches are used up: %w", p, errdefs.ErrResourceExhausted)
		}
		return -1, mapErr("watch", p, err)
	}
	w.paths[wd] = p
	return wd, nil
}

// addTree watches the subdirectories of p.
func (w *watcher) addTree(r *Root, p string, depth int) error {
	if depth > maxDepth {
		return nil
	}
	fd, err := r.openat2(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil // removed meanwhile
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		unix.Close(fd)
		return mapErr("watch", p, err)
	}
	defer unix.Close(dup)
	names, err := readNames(fd, p)
	if err != nil {
		return nil
	}
	for _, n := range names {
		var st unix.Stat_t
		if unix.Fstatat(dup, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		cp := path.Join(p, n)
		wd, err := w.add(r, cp, false)
		if err != nil {
			return err
		}
		if wd >= 0 {
			if err := w.addTree(r, cp, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// parse decodes inotify events; done reports that the watched directory
// is gone.
func (w *watcher) parse(b []byte) (events []Event, overflow, done bool) {
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			break
		}
		nameb := b[unix.SizeofInotifyEvent:end]
		for len(nameb) > 0 && nameb[len(nameb)-1] == 0 {
			nameb = nameb[:len(nameb)-1]
		}
		b = b[end:]
		mask := ev.Mask
		wd := int(ev.Wd)
		if mask&unix.IN_Q_OVERFLOW != 0 {
			overflow = true
			continue
		}
		dir, ok := w.paths[wd]
		if mask&unix.IN_IGNORED != 0 {
			delete(w.paths, wd)
			if wd == w.top {
				done = true
			}
			continue
		}
		if !ok || mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0 {
			if wd == w.top && mask&(unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0 {
				done = true
			}
			continue
		}
		p := path.Join(dir, string(nameb))
		isDir := mask&unix.IN_ISDIR != 0
		var t EventType
		switch {
		case mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
			t = Created
			if isDir && w.recursive {
				if r, err := Open(w.root); err == nil {
					if wd, err := w.add(r, p, false); err == nil && wd >= 0 {
						_ = w.addTree(r, p, 0)
					}
					r.Close()
				}
			}
		case mask&(unix.IN_DELETE|unix.IN_MOVED_FROM) != 0:
			t = Removed
		case mask&(unix.IN_MODIFY|unix.IN_ATTRIB|unix.IN_CLOSE_WRITE) != 0:
			t = Modified
		default:
			continue
		}
		e := Event{Type: t, Path: p, IsDir: isDir}
		// Coalesce repeats (a large write is many IN_MODIFY).
		if n := len(events); n > 0 && events[n-1] == e {
			continue
		}
		events = append(events, e)
	}
	return events, overflow, done
}
