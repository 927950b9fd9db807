package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// offsetsDir holds, under a sandbox's directory, the offset files of its
// processes' output streams: <offsetsDir>/<container>/<process>.<stream>,
// each with its journal (<...>.journal). They are host state: never in
// the shared directory the guest can write.
const offsetsDir = "stdio-offsets"

// offsetPath is the offset file of a process's output stream.
func (c *container) offsetPath(execID string, st agentmux.Stream) string {
	name := "init." + st.String()
	if execID != "" {
		name = "exec." + execID + "." + st.String()
	}
	return filepath.Join(c.s.cfg.Dir, offsetsDir, c.id, name)
}

// offsetRecord is an output stream's state on the host, so that a
// sandboxer killed at any point loses and repeats no byte of it:
//
//   - the journal holds the bytes received from the agent, each at its
//     offset in the stream (a sparse file: delivered parts are punched
//     out);
//   - the offset file holds two native-endian int64s, mapped shared into
//     memory: delivered (how much of the stream the caller's FIFO got)
//     and received (how much the journal holds, acknowledged to the
//     agent).
//
// A chunk from the agent is written to the journal, then received is
// raised and the agent acknowledged; the journal is delivered to the FIFO
// with splice(2) whose input offset is delivered itself, in the mapping:
// the kernel moves the bytes and advances the offset in one system call,
// which no kill can split. After a restart the next process delivers
// [delivered, received) and resumes the agent at received. Not fsynced: a
// crash of the machine ends the VM and its streams too.
type offsetRecord struct {
	f       *os.File // the offset file
	mem     []byte   // its mapping
	journal *os.File
	punched int64 // the journal is a hole below this
}

// offsetFileSize is the offset file's size: delivered, received.
const offsetFileSize = 16

// punchEvery is how much delivered journal is let stand before it is
// punched out.
const punchEvery = 1 << 20

// createOffsetRecord creates (or truncates) the offset file at path and
// its journal, at offset 0.
func createOffsetRecord(path string) (*offsetRecord, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(offsetFileSize); err != nil {
		f.Close()
		return nil, err
	}
	return mapOffsetRecord(path, f, true)
}

// openOffsetRecord opens the offset file at path and its journal, and
// returns the offset the agent resumes the stream at (received). An
// offset file of the format before journals (8 bytes, big-endian, the
// delivered offset) is converted.
func openOffsetRecord(path string) (*offsetRecord, uint64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	switch fi.Size() {
	case offsetFileSize:
	case 8:
		f.Close()
		if f, err = convertOffsetFile(path); err != nil {
			return nil, 0, err
		}
	default:
		f.Close()
		return nil, 0, fmt.Errorf("offset file %s has %d bytes, want %d", path, fi.Size(), offsetFileSize)
	}
	r, err := mapOffsetRecord(path, f, false)
	if err != nil {
		return nil, 0, err
	}
	d, rcv := r.delivered().Load(), r.received().Load()
	if d < 0 || rcv < d {
		r.Close()
		return nil, 0, fmt.Errorf("offset file %s is damaged (delivered %d, received %d)", path, d, rcv)
	}
	return r, uint64(rcv), nil
}

// convertOffsetFile rewrites an offset file of the old format (8 bytes,
// big-endian, delivered = received) in the new one, whole
// (crash-safely), with an empty journal.
func convertOffsetFile(path string) (*os.File, error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(old) != 8 {
		return nil, fmt.Errorf("offset file %s is truncated", path)
	}
	off := binary.BigEndian.Uint64(old)
	var b [offsetFileSize]byte
	binary.NativeEndian.PutUint64(b[0:], off)
	binary.NativeEndian.PutUint64(b[8:], off)
	if err := atomicfile.WriteFile(path, b[:], 0o600); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR, 0)
}

// mapOffsetRecord maps the offset file f and opens the journal (a new,
// empty one when fresh). It takes f.
func mapOffsetRecord(path string, f *os.File, fresh bool) (*offsetRecord, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, offsetFileSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("map offset file %s: %w", path, err)
	}
	flag := os.O_RDWR | os.O_CREATE
	if fresh {
		flag |= os.O_TRUNC
	}
	j, err := os.OpenFile(path+".journal", flag, 0o600)
	if err != nil {
		_ = unix.Munmap(mem)
		f.Close()
		return nil, err
	}
	return &offsetRecord{f: f, mem: mem, journal: j}, nil
}

// delivered is the offset that splice advances (an int64 in the mapping).
func (r *offsetRecord) delivered() *atomic.Int64 {
	return (*atomic.Int64)(unsafe.Pointer(&r.mem[0]))
}

// received is how much of the stream the journal holds.
func (r *offsetRecord) received() *atomic.Int64 {
	return (*atomic.Int64)(unsafe.Pointer(&r.mem[8]))
}

// pending tells whether received bytes wait for delivery.
func (r *offsetRecord) pending() bool {
	return r != nil && r.delivered().Load() < r.received().Load()
}

// receive writes chunk, the stream's bytes from offset at, to the
// journal, then records them received.
func (r *offsetRecord) receive(chunk []byte, at int64) error {
	if _, err := r.journal.WriteAt(chunk, at); err != nil {
		return err
	}
	r.received().Store(at + int64(len(chunk)))
	return nil
}

// skip marks everything received as delivered (the caller's end is gone).
func (r *offsetRecord) skip() {
	r.delivered().Store(r.received().Load())
	r.punch()
}

// deliver moves the journal's undelivered bytes to w, which a write
// deadline may interrupt (the abort). A FIFO gets them by splice (each
// move and the delivered offset in one system call); a regular file, which
// splice cannot write from a file, by a read and a write (a kill between
// the two repeats that chunk there).
func (r *offsetRecord) deliver(w *os.File) error {
	rc, err := w.SyscallConn()
	if err != nil {
		return err
	}
	jfd := int(r.journal.Fd())
	off := (*int64)(unsafe.Pointer(&r.mem[0]))
	for {
		want := r.received().Load() - r.delivered().Load()
		if want <= 0 {
			r.punch()
			return nil
		}
		var n int64
		var serr error
		werr := rc.Write(func(wfd uintptr) bool {
			n, serr = unix.Splice(jfd, off, int(wfd), nil, int(min(want, 1<<20)), unix.SPLICE_F_NONBLOCK)
			return serr != unix.EAGAIN
		})
		switch {
		case werr != nil:
			return werr
		case errors.Is(serr, unix.EINVAL):
			return r.deliverCopy(w)
		case serr != nil:
			return serr
		case n == 0:
			return fmt.Errorf("journal %s ends before offset %d", r.journal.Name(), r.received().Load())
		}
		if r.delivered().Load()-r.punched >= punchEvery {
			r.punch()
		}
	}
}

// deliverCopy is deliver through memory, for an output that is no pipe.
func (r *offsetRecord) deliverCopy(w *os.File) error {
	buf := make([]byte, 32<<10)
	for {
		d := r.delivered().Load()
		want := r.received().Load() - d
		if want <= 0 {
			r.punch()
			return nil
		}
		n, err := r.journal.ReadAt(buf[:min(want, int64(len(buf)))], d)
		if n == 0 {
			return fmt.Errorf("journal %s at %d: %w", r.journal.Name(), d, err)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		r.delivered().Store(d + int64(n))
	}
}

// punchMargin is how far behind the delivered offset the journal is kept:
// splice moves references to the journal's pages into the pipe, and
// punching a hole zeroes the part of a page it covers in place, so only
// whole pages that no pipe can still hold (a pipe holds at most 1 MiB
// unless the host raised fs.pipe-max-size) are freed.
const punchMargin = 2 << 20

// punch frees the journal's delivered part, but for the last punchMargin.
func (r *offsetRecord) punch() {
	end := (r.delivered().Load() - punchMargin) &^ 4095
	if end > r.punched {
		if unix.Fallocate(int(r.journal.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, r.punched, end-r.punched) == nil {
			r.punched = end
		}
	}
}

// removeOffsetRecord removes the offset file at path and its journal.
func removeOffsetRecord(path string) error {
	var errs []error
	for _, f := range []string{path, path + ".journal"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close unmaps and closes the files.
func (r *offsetRecord) Close() {
	if r != nil {
		_ = unix.Munmap(r.mem)
		r.f.Close()
		r.journal.Close()
	}
}
