package direct

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// DefaultOutputRingSize is how many bytes of a process's output the service
// keeps on disk by default (see [WithOutputRingSize]).
const DefaultOutputRingSize = 1 << 20

// minOutputRingSize is the smallest ring accepted: two segments of at least
// one largest record each.
const minOutputRingSize = 4 * (recordHeader + maxRecord)

// The ring's on-disk format. A process's output is a sequence of records,
// each a header (the stream, one byte, then the payload's length, four bytes
// big endian) and the payload, in segment files named after the offset of
// their first payload byte in the process's output (16 hex digits, ".seg").
// Offsets count payload bytes of both streams from the process's first byte
// on. A segment grows to half the ring's size; then a new one starts and all
// but the two newest are removed, so between half the ring and the whole
// ring is kept.
//
// A file's size is where its last record ends: a record is the header,
// written first with the length asked for, then the payload moved from
// the FIFO into the file by splice(2) (so that a byte taken from the FIFO is
// in the file, in the page cache, in the same system call), then the header
// again if fewer bytes came. A process that dies in between leaves a last
// record whose header promises more than the file holds; opening the ring
// takes the file's end as the truth.
const (
	recordHeader = 5
	maxRecord    = 32 << 10
	segSuffix    = ".seg"
)

// errRingClosed ends followers when the service closes: the client may
// resume from its offset with the next server.
var errRingClosed = fmt.Errorf("the sandboxer is shutting down; resume from the last offset received: %w", errdefs.ErrUnavailable)

// ring is a process's output kept on disk in at most two segment files of
// a directory of its own, with the copies that fill it from the process's
// output FIFOs and the followers that read it. It is safe for concurrent
// use.
type ring struct {
	dir    string
	segMax int64

	mu   sync.Mutex
	segs []*segment // oldest first; at least one
	// open counts the streams still being copied; closed is set when the
	// ring stops (service closing), done when open fell to zero.
	open     int
	closed   bool
	noSplice bool
	changed  chan struct{}
}

type segment struct {
	f *os.File
	// base and end are the offsets of the first payload byte and of the
	// byte after the last; size is the file's size.
	base, end int64
	size      int64
}

// openRing opens (creating it if needed) the ring in dir, keeping about
// size bytes. A torn last record is repaired, segments that do not follow
// each other are dropped (older first).
func openRing(dir string, size int64) (_ *ring, retErr error) {
	if size < minOutputRingSize {
		size = minOutputRingSize
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	r := &ring{dir: dir, segMax: size / 2, changed: make(chan struct{})}
	defer func() {
		if retErr != nil {
			r.closeFiles()
		}
	}()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var bases []int64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), segSuffix)
		if !ok || len(name) != 16 {
			continue
		}
		b, err := strconv.ParseUint(name, 16, 63)
		if err != nil {
			continue
		}
		bases = append(bases, int64(b))
	}
	slices.Sort(bases)
	if len(bases) == 0 {
		bases = []int64{0}
	}
	// Newest first: keep what follows on from the newest segment back.
	for i := len(bases) - 1; i >= 0; i-- {
		if len(r.segs) == 2 || (len(r.segs) > 0 && r.segs[0].base <= bases[i]) {
			_ = os.Remove(r.segPath(bases[i]))
			continue
		}
		seg, err := r.openSegment(bases[i], len(r.segs) == 0)
		if err != nil {
			return nil, err
		}
		if len(r.segs) > 0 && seg.end != r.segs[0].base {
			seg.f.Close()
			_ = os.Remove(r.segPath(bases[i]))
			continue
		}
		r.segs = append([]*segment{seg}, r.segs...)
	}
	return r, nil
}

func (r *ring) segPath(base int64) string {
	return filepath.Join(r.dir, fmt.Sprintf("%016x%s", base, segSuffix))
}

// openSegment opens or creates a segment and finds its end; last repairs
// a torn last record (a record that is not whole elsewhere is an error).
func (r *ring) openSegment(base int64, last bool) (*segment, error) {
	f, err := os.OpenFile(r.segPath(base), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	seg := &segment{f: f, base: base, end: base}
	br := bufio.NewReaderSize(io.NewSectionReader(f, 0, st.Size()), 64<<10)
	var pos int64
	for pos < st.Size() {
		var hdr [recordHeader]byte
		n, _ := io.ReadFull(br, hdr[:])
		length := int64(binary.BigEndian.Uint32(hdr[1:]))
		bad := n < recordHeader || (hdr[0] != byte(Stdout) && hdr[0] != byte(Stderr)) || length > maxRecord
		if !bad && pos+recordHeader+length > st.Size() {
			// Torn: the payload that made it is the record.
			length = st.Size() - pos - recordHeader
			if length > 0 && last {
				binary.BigEndian.PutUint32(hdr[1:], uint32(length))
				if _, err := f.WriteAt(hdr[:], pos); err != nil {
					f.Close()
					return nil, err
				}
			} else {
				bad = true
			}
		}
		if bad {
			if !last {
				f.Close()
				return nil, fmt.Errorf("output segment %s: bad record at %d: %w", r.segPath(base), pos, errdefs.ErrDataLoss)
			}
			if err := f.Truncate(pos); err != nil {
				f.Close()
				return nil, err
			}
			break
		}
		if _, err := br.Discard(int(length)); err != nil {
			break
		}
		pos += recordHeader + length
		seg.end += length
	}
	seg.size = pos
	return seg, nil
}

// start and end are the offsets of the oldest byte kept and of the byte
// after the newest.
func (r *ring) bounds() (start, end int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.segs[0].base, r.segs[len(r.segs)-1].end
}

func (r *ring) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// current returns the segment to append a record of n payload bytes to,
// starting a new one (and dropping the oldest beyond two) when the last is
// full.
func (r *ring) current(n int) (*segment, error) {
	last := r.segs[len(r.segs)-1]
	if last.size == 0 || last.size+recordHeader+int64(n) <= r.segMax {
		return last, nil
	}
	f, err := os.OpenFile(r.segPath(last.end), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	seg := &segment{f: f, base: last.end, end: last.end}
	r.segs = append(r.segs, seg)
	for len(r.segs) > 2 {
		old := r.segs[0]
		r.segs = r.segs[1:]
		_ = os.Remove(r.segPath(old.base))
		old.f.Close()
	}
	return seg, nil
}

// write appends p as records of stream (tests and the fallback of fill).
func (r *ring) write(stream Stream, p []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errRingClosed
	}
	for len(p) > 0 {
		n := min(len(p), maxRecord)
		seg, err := r.current(n)
		if err != nil {
			return err
		}
		rec := make([]byte, recordHeader+n)
		rec[0] = byte(stream)
		binary.BigEndian.PutUint32(rec[1:], uint32(n))
		copy(rec[recordHeader:], p[:n])
		if _, err := seg.f.WriteAt(rec, seg.size); err != nil {
			return err
		}
		seg.size += int64(len(rec))
		seg.end += int64(n)
		p = p[n:]
	}
	r.notifyLocked()
	return nil
}

// spliceFrom moves up to n bytes (known to be buffered) from the pipe fd
// into a record of stream. It returns how many it moved.
func (r *ring) spliceFrom(stream Stream, fd, n int) (int, error) {
	n = min(n, maxRecord)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errRingClosed
	}
	if r.noSplice {
		return r.readFromLocked(stream, fd, n)
	}
	seg, err := r.current(n)
	if err != nil {
		return 0, err
	}
	var hdr [recordHeader]byte
	hdr[0] = byte(stream)
	binary.BigEndian.PutUint32(hdr[1:], uint32(n))
	if _, err := seg.f.WriteAt(hdr[:], seg.size); err != nil {
		return 0, err
	}
	off := seg.size + recordHeader
	m, err := unix.Splice(fd, nil, int(seg.f.Fd()), &off, n, unix.SPLICE_F_NONBLOCK)
	if m <= 0 {
		_ = seg.f.Truncate(seg.size)
		if errors.Is(err, unix.EINVAL) {
			// The state dir's file system takes no splice: copy.
			r.noSplice = true
			return r.readFromLocked(stream, fd, n)
		}
		return 0, err
	}
	if int(m) < n {
		binary.BigEndian.PutUint32(hdr[1:], uint32(m))
		if _, err := seg.f.WriteAt(hdr[:], seg.size); err != nil {
			return 0, err
		}
	}
	seg.size += recordHeader + m
	seg.end += m
	r.notifyLocked()
	return int(m), nil
}

// readFromLocked is spliceFrom through a buffer, for file systems without
// splice: a crash between the read and the write loses what was read.
func (r *ring) readFromLocked(stream Stream, fd, n int) (int, error) {
	buf := make([]byte, recordHeader+n)
	m, err := unix.Read(fd, buf[recordHeader:])
	if m <= 0 {
		return 0, err
	}
	seg, err := r.current(m)
	if err != nil {
		return 0, err
	}
	buf[0] = byte(stream)
	binary.BigEndian.PutUint32(buf[1:], uint32(m))
	if _, err := seg.f.WriteAt(buf[:recordHeader+m], seg.size); err != nil {
		return 0, err
	}
	seg.size += int64(recordHeader + m)
	seg.end += int64(m)
	r.notifyLocked()
	return m, nil
}

// cursor is a follower's place in the ring: the record starting at pos in
// the segment starting at base, whose first skip payload bytes were sent;
// off is the offset of the next byte to send.
type cursor struct {
	base, pos int64
	skip      int64
	off       int64
}

// seek returns a cursor at offset off, or at the oldest byte kept for a
// negative off. An offset no longer kept is errdefs.ErrOutOfRange, one
// beyond the end errdefs.ErrInvalidArgument.
func (r *ring) seek(off int64) (cursor, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return cursor{}, errRingClosed
	}
	return r.seekIn(r.segs, off)
}

// seekIn is seek in segs, the ring's or a snapshot's.
func (r *ring) seekIn(segs []*segment, off int64) (cursor, error) {
	start, end := segs[0].base, segs[len(segs)-1].end
	if off < 0 {
		off = start
	}
	if off < start {
		return cursor{}, fmt.Errorf("output before offset %d is no longer kept (offset %d asked; %d bytes kept per process): %w", start, off, 2*r.segMax, errdefs.ErrOutOfRange)
	}
	if off > end {
		return cursor{}, fmt.Errorf("offset %d is beyond the output's end (%d): %w", off, end, errdefs.ErrInvalidArgument)
	}
	seg := segs[len(segs)-1]
	for _, s := range segs {
		if off < s.end {
			seg = s
			break
		}
	}
	c := cursor{base: seg.base, off: off}
	at := seg.base
	br := bufio.NewReaderSize(io.NewSectionReader(seg.f, 0, seg.size), 64<<10)
	for c.pos < seg.size {
		var hdr [recordHeader]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return cursor{}, err
		}
		length := int64(binary.BigEndian.Uint32(hdr[1:]))
		if off < at+length {
			c.skip = off - at
			return c, nil
		}
		if _, err := br.Discard(int(length)); err != nil {
			return cursor{}, err
		}
		c.pos += recordHeader + length
		at += length
	}
	return c, nil
}

// Chunk is a piece of a process's output.
type Chunk struct {
	Stream Stream
	Data   []byte
	// Offset is where Data starts in the process's output (both streams
	// counted); the next chunk starts at Offset+len(Data).
	Offset int64
}

// read returns the records after c, up to about max payload bytes, and
// advances c. It fails with errdefs.ErrOutOfRange when c's data is gone.
func (r *ring) read(c *cursor, max int) ([]Chunk, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errRingClosed
	}
	return r.readIn(r.segs, c, max)
}

// readIn is read from segs, the ring's or a snapshot's.
func (r *ring) readIn(segs []*segment, c *cursor, max int) ([]Chunk, error) {
	if c.off < segs[0].base {
		return nil, fmt.Errorf("output before offset %d was dropped before it was sent (the follower fell more than %d bytes behind): %w", segs[0].base, r.segMax, errdefs.ErrOutOfRange)
	}
	var out []Chunk
	total := 0
	for total < max {
		i := slices.IndexFunc(segs, func(s *segment) bool { return s.base == c.base })
		if i < 0 {
			return nil, fmt.Errorf("output segment at %d is gone: %w", c.base, errdefs.ErrOutOfRange)
		}
		seg := segs[i]
		if c.pos >= seg.size {
			if i == len(segs)-1 {
				break
			}
			c.base, c.pos = segs[i+1].base, 0
			continue
		}
		var hdr [recordHeader]byte
		if _, err := seg.f.ReadAt(hdr[:], c.pos); err != nil {
			return nil, err
		}
		length := int64(binary.BigEndian.Uint32(hdr[1:]))
		data := make([]byte, length-c.skip)
		if _, err := seg.f.ReadAt(data, c.pos+recordHeader+c.skip); err != nil {
			return nil, err
		}
		out = append(out, Chunk{Stream: Stream(hdr[0]), Data: data, Offset: c.off})
		total += len(data)
		c.off += int64(len(data))
		c.pos += recordHeader + length
		c.skip = 0
	}
	return out, nil
}

// follow calls send with the output from offset from (the oldest kept for
// a negative one) until every stream was copied to its end (nil), done is
// closed (nil) or the ring closes (errRingClosed).
func (r *ring) follow(done <-chan struct{}, from int64, send func(Chunk) error) error {
	c, err := r.seek(from)
	if err != nil {
		return err
	}
	for {
		r.mu.Lock()
		finished, changed := r.open <= 0, r.changed
		r.mu.Unlock()
		chunks, err := r.read(&c, 256<<10)
		if err != nil {
			return err
		}
		for _, ch := range chunks {
			if err := send(ch); err != nil {
				return err
			}
		}
		if len(chunks) > 0 {
			continue
		}
		if finished {
			return nil
		}
		select {
		case <-changed:
		case <-done:
			return nil
		}
	}
}

// snapshot calls send with the output from offset from (the oldest kept
// for a negative one) up to the end it had when snapshot was called, and
// reports whether every stream had been copied to its end by then (the
// output sent is then all there will be). It reads the segments as they
// were at the call through descriptors of its own, so a process that
// keeps writing neither extends the snapshot nor drops its bytes. It stops
// early (nil) when done is closed.
func (r *ring) snapshot(done <-chan struct{}, from int64, send func(Chunk) error) (complete bool, err error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false, errRingClosed
	}
	complete = r.open <= 0
	segs := make([]*segment, 0, len(r.segs))
	defer func() {
		for _, s := range segs {
			s.f.Close()
		}
	}()
	for _, s := range r.segs {
		f, err := dupFile(s.f)
		if err != nil {
			r.mu.Unlock()
			return false, err
		}
		segs = append(segs, &segment{f: f, base: s.base, end: s.end, size: s.size})
	}
	r.mu.Unlock()
	c, err := r.seekIn(segs, from)
	if err != nil {
		return false, err
	}
	for {
		select {
		case <-done:
			return false, nil
		default:
		}
		chunks, err := r.readIn(segs, &c, 256<<10)
		if err != nil {
			return false, err
		}
		if len(chunks) == 0 {
			return complete, nil
		}
		for _, ch := range chunks {
			if err := send(ch); err != nil {
				return false, err
			}
		}
	}
}

// dupFile returns a descriptor of its own for f's file (close-on-exec).
func dupFile(f *os.File) (*os.File, error) {
	sc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	var derr error
	if err := sc.Control(func(x uintptr) {
		fd, derr = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// streamStarted and streamDone count the copies that fill the ring.
func (r *ring) streamStarted() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.open++
}

func (r *ring) streamDone() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.open--
	r.notifyLocked()
}

// close stops the ring and closes its files: copies and followers end
// with errRingClosed (followers that saw every stream's end with nil).
// What is on disk stays for the next service.
func (r *ring) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	r.closeFiles()
	r.notifyLocked()
}

func (r *ring) closeFiles() {
	for _, s := range r.segs {
		s.f.Close()
	}
}
