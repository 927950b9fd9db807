package engine

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// DefaultEventLogSize is how many bytes of events the engine keeps on disk
// by default (see Config.EventLogSize): some thousands of events.
const DefaultEventLogSize = 1 << 20

// eventLogDir is the event log's directory in the state dir.
const eventLogDir = "events"

// eventLog keeps the newest events on disk, so that a watcher resumes
// after the last event it saw, also across restarts of the engine: one
// JSON object per line, in at most two segment files named after the
// sequence number of their first event (16 hex digits, ".log"). A segment
// grows to half the log's size; then a new one starts and the oldest goes.
// Each event is one write(2) at the end of its file: a process that dies
// loses no event written before, and at worst a torn last line from a
// crash of the machine, which opening the log drops.
type eventLog struct {
	dir    string
	segMax int64

	mu     sync.Mutex
	segs   []*eventSegment // oldest first; at least one
	last   uint64          // sequence number of the newest event
	err    error           // the first write error, reported by read
	closed bool
}

type eventSegment struct {
	first uint64 // sequence number of its first event
	f     *os.File
	size  int64
}

func openEventLog(dir string, size int64) (_ *eventLog, retErr error) {
	if size <= 0 {
		size = DefaultEventLogSize
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create event log dir: %w", err)
	}
	l := &eventLog{dir: dir, segMax: max(size/2, 4<<10)}
	defer func() {
		if retErr != nil {
			l.close()
		}
	}()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var firsts []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok || len(name) != 16 {
			continue
		}
		if n, err := strconv.ParseUint(name, 16, 64); err == nil && n > 0 {
			firsts = append(firsts, n)
		}
	}
	slices.Sort(firsts)
	for len(firsts) > 2 {
		_ = os.Remove(l.segPath(firsts[0]))
		firsts = firsts[1:]
	}
	if len(firsts) == 0 {
		firsts = []uint64{1}
	}
	for i, first := range firsts {
		f, err := os.OpenFile(l.segPath(first), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		seg := &eventSegment{first: first, f: f}
		l.segs = append(l.segs, seg)
		if i < len(firsts)-1 {
			st, err := f.Stat()
			if err != nil {
				return nil, err
			}
			seg.size = st.Size()
			continue
		}
		// The newest: find its last whole event, drop what follows.
		last, end, err := scanEvents(f)
		if err != nil {
			return nil, err
		}
		if err := f.Truncate(end); err != nil {
			return nil, err
		}
		seg.size = end
		l.last = first - 1
		if last > 0 {
			l.last = last
		}
	}
	return l, nil
}

// scanEvents returns the sequence number of the last whole event of f and
// where it ends.
func scanEvents(f *os.File) (last uint64, end int64, err error) {
	br := bufio.NewReader(io.NewSectionReader(f, 0, 1<<62))
	var pos int64
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return last, pos, nil // a torn or no last line
		}
		var ev Event
		if json.Unmarshal(line, &ev) != nil || ev.Seq == 0 {
			return last, pos, nil
		}
		last = ev.Seq
		pos += int64(len(line))
	}
}

func (l *eventLog) segPath(first uint64) string {
	return filepath.Join(l.dir, fmt.Sprintf("%016x.log", first))
}

// append gives ev the next sequence number and writes it.
func (l *eventLog) append(ev *Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last++
	ev.Seq = l.last
	if l.closed {
		return
	}
	line, err := json.Marshal(ev)
	if err != nil {
		l.fail(err)
		return
	}
	line = append(line, '\n')
	seg := l.segs[len(l.segs)-1]
	if seg.size > 0 && seg.size+int64(len(line)) > l.segMax {
		f, err := os.OpenFile(l.segPath(ev.Seq), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			l.fail(err)
			return
		}
		seg = &eventSegment{first: ev.Seq, f: f}
		l.segs = append(l.segs, seg)
		for len(l.segs) > 2 {
			old := l.segs[0]
			l.segs = l.segs[1:]
			_ = os.Remove(l.segPath(old.first))
			old.f.Close()
		}
	}
	if _, err := seg.f.WriteAt(line, seg.size); err != nil {
		l.fail(err)
		return
	}
	seg.size += int64(len(line))
}

func (l *eventLog) fail(err error) {
	if l.err == nil {
		l.err = fmt.Errorf("event log: %w", err)
	}
}

// lastSeq is the sequence number of the newest event (0: none yet).
func (l *eventLog) lastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// read returns the events whose sequence number is after after and at
// most upTo, at most max of them, oldest first.
func (l *eventLog) read(after, upTo uint64, max int) ([]Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("the engine is closed; resume after event %d: %w", after, errdefs.ErrUnavailable)
	}
	if l.err != nil {
		return nil, l.err
	}
	first := l.segs[0].first
	if l.segs[0].size == 0 {
		first = l.last + 1
	}
	if after+1 < first {
		return nil, fmt.Errorf("events after %d are no longer kept (the oldest kept is %d): %w", after, first, errdefs.ErrOutOfRange)
	}
	if after > l.last {
		return nil, fmt.Errorf("event %d is beyond the newest event (%d): %w", after, l.last, errdefs.ErrInvalidArgument)
	}
	var out []Event
	for i, seg := range l.segs {
		if i+1 < len(l.segs) && l.segs[i+1].first <= after+1 {
			continue
		}
		br := bufio.NewReader(io.NewSectionReader(seg.f, 0, seg.size))
		for len(out) < max {
			line, err := br.ReadBytes('\n')
			if err != nil {
				break
			}
			if seq, ok := lineSeq(line); ok && seq <= after {
				continue
			}
			var ev Event
			if err := json.Unmarshal(bytes.TrimSpace(line), &ev); err != nil {
				return nil, fmt.Errorf("event log %s: %w", l.segPath(seg.first), err)
			}
			if ev.Seq > upTo {
				return out, nil
			}
			if ev.Seq > after {
				out = append(out, ev)
			}
		}
	}
	return out, nil
}

// lineSeq reads the sequence number at the start of a line, where
// encoding/json puts Event's first field.
func lineSeq(line []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
	if !ok {
		return 0, false
	}
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	return n, err == nil
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for _, s := range l.segs {
		s.f.Close()
	}
}
