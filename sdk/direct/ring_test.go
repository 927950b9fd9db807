package direct

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// readAll follows r from offset from until it ends; done, if not nil,
// stops it.
func readAll(t *testing.T, r *ring, from int64, done <-chan struct{}) ([]Chunk, error) {
	t.Helper()
	var out []Chunk
	err := r.follow(done, from, func(c Chunk) error {
		out = append(out, c)
		return nil
	})
	return out, err
}

func joined(chunks []Chunk) (stdout, stderr string) {
	var o, e bytes.Buffer
	for _, c := range chunks {
		if c.Stream == Stderr {
			e.Write(c.Data)
		} else {
			o.Write(c.Data)
		}
	}
	return o.String(), e.String()
}

// closedChan is a closed channel: follow returns once it caught up.
func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func TestRingOffsetsAndOrder(t *testing.T) {
	r, err := openRing(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	for _, w := range []struct {
		s Stream
		d string
	}{{Stdout, "hello "}, {Stderr, "oops"}, {Stdout, "world"}} {
		if err := r.write(w.s, []byte(w.d)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := readAll(t, r, -1, closedChan())
	if err != nil {
		t.Fatal(err)
	}
	want := []Chunk{{Stdout, []byte("hello "), 0}, {Stderr, []byte("oops"), 6}, {Stdout, []byte("world"), 10}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("chunks = %v, want %v", got, want)
	}
	// From an offset in the middle of a record: the rest of it, then on.
	got, err = readAll(t, r, 8, closedChan())
	if err != nil {
		t.Fatal(err)
	}
	if want := []Chunk{{Stderr, []byte("ps"), 8}, {Stdout, []byte("world"), 10}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("from 8: %v, want %v", got, want)
	}
	// At the end: nothing; beyond: invalid.
	if got, err := readAll(t, r, 15, closedChan()); err != nil || len(got) != 0 {
		t.Fatalf("from the end: %v, %v", got, err)
	}
	if _, err := readAll(t, r, 16, closedChan()); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("beyond the end: %v, want InvalidArgument", err)
	}
}

func TestRingWrapsAround(t *testing.T) {
	dir := t.TempDir()
	r, err := openRing(dir, minOutputRingSize)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	// A counter, far more than the ring keeps.
	var all bytes.Buffer
	for i := range 40000 {
		line := fmt.Sprintf("%d\n", i)
		all.WriteString(line)
		if err := r.write(Stdout, []byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	start, end := r.bounds()
	if end != int64(all.Len()) {
		t.Fatalf("end = %d, want %d", end, all.Len())
	}
	if kept := end - start; kept < minOutputRingSize/2-2*(recordHeader+maxRecord) || kept > minOutputRingSize {
		t.Fatalf("kept %d bytes, want about %d", kept, minOutputRingSize)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Fatalf("%d segment files, want 2", len(ents))
	}
	got, err := readAll(t, r, -1, closedChan())
	if err != nil {
		t.Fatal(err)
	}
	out, _ := joined(got)
	if got[0].Offset != start || out != all.String()[start:] {
		t.Fatalf("kept output differs from the last %d bytes written (first offset %d)", end-start, got[0].Offset)
	}
	if _, err := readAll(t, r, start-1, closedChan()); !errdefs.IsOutOfRange(err) {
		t.Fatalf("offset before the ring: %v, want OutOfRange", err)
	}
	// Reopened (a restart): same bounds, same bytes, and it goes on.
	r.close()
	r2, err := openRing(dir, minOutputRingSize)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.close()
	if s2, e2 := r2.bounds(); s2 != start || e2 != end {
		t.Fatalf("reopened bounds %d-%d, want %d-%d", s2, e2, start, end)
	}
	if err := r2.write(Stderr, []byte("more")); err != nil {
		t.Fatal(err)
	}
	got, err = readAll(t, r2, end-3, closedChan())
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint([]Chunk{{Stdout, []byte(all.String()[end-3:]), end - 3}, {Stderr, []byte("more"), end}}); fmt.Sprint(got) != want {
		t.Fatalf("after reopen: %v, want %v", got, want)
	}
}

func TestRingRepairsTornRecord(t *testing.T) {
	dir := t.TempDir()
	r, err := openRing(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.write(Stdout, []byte("whole")); err != nil {
		t.Fatal(err)
	}
	r.close()
	seg := filepath.Join(dir, fmt.Sprintf("%016x%s", 0, segSuffix))
	// A crash after the header (promising 100 bytes) and 3 bytes of
	// payload were in the file.
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	var hdr [recordHeader]byte
	hdr[0] = byte(Stderr)
	binary.BigEndian.PutUint32(hdr[1:], 100)
	f.Write(append(hdr[:], "abc"...))
	f.Close()
	r, err = openRing(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, r, -1, closedChan())
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint([]Chunk{{Stdout, []byte("whole"), 0}, {Stderr, []byte("abc"), 5}}); fmt.Sprint(got) != want {
		t.Fatalf("torn payload: %v, want %v", got, want)
	}
	r.close()
	// A crash right after a header: the record is dropped.
	f, _ = os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(hdr[:3])
	f.Close()
	r, err = openRing(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if _, end := r.bounds(); end != 8 {
		t.Fatalf("end after a torn header = %d, want 8", end)
	}
	if err := r.write(Stdout, []byte("!")); err != nil {
		t.Fatal(err)
	}
	got, _ = readAll(t, r, 7, closedChan())
	if want := fmt.Sprint([]Chunk{{Stderr, []byte("c"), 7}, {Stdout, []byte("!"), 8}}); fmt.Sprint(got) != want {
		t.Fatalf("after repair: %v, want %v", got, want)
	}
}

// TestProcIOCopiesAcrossRestart copies a FIFO through two procIOs in a
// row, as two services across a restart: what was written while none
// copied waits in the FIFO and lands in the ring once, in order.
func TestProcIOCopiesAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := &Service{ringSize: DefaultOutputRingSize}
	p, err := s.newProcIO(dir, "", false, true)
	if err != nil {
		t.Fatal(err)
	}
	// The kind's side: a held read end, then the process's write end.
	hold, err := os.OpenFile(p.stdio.Stdout, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	w, err := os.OpenFile(p.stdio.Stdout, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	write := func(from, to int) {
		for i := from; i < to; i++ {
			line := fmt.Sprintf("%d\n", i)
			want.WriteString(line)
			if _, err := w.WriteString(line); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 1000)
	testutil.Eventually(t, 10*time.Second, func() bool { _, end := p.ring.bounds(); return end == int64(want.Len()) }, "ring end")
	p.close()
	write(1000, 2000) // nobody copies
	p2, err := s.recoverProcIO(dir, "", p.stdio)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.close()
	write(2000, 3000)
	w.Close() // the process exits: end of output
	got, err := readAll(t, p2.ring, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := joined(got); out != want.String() {
		t.Fatalf("copied %d bytes, want %d; differ", len(out), want.Len())
	}
}

// TestProcIOEndsWhenExitedWithoutWriter: a process that exited while no
// service copied leaves its last output in the FIFO; the next service
// takes it and ends the output though no writer is ever seen.
func TestProcIOEndsWhenExitedWithoutWriter(t *testing.T) {
	dir := t.TempDir()
	s := &Service{ringSize: DefaultOutputRingSize}
	p, err := s.newProcIO(dir, "x1", false, false)
	if err != nil {
		t.Fatal(err)
	}
	hold, err := os.OpenFile(p.stdio.Stderr, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	p.close()
	w, err := os.OpenFile(p.stdio.Stderr, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("last words")
	w.Close()
	p2, err := s.recoverProcIO(dir, "x1", p.stdio)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.close()
	var wg sync.WaitGroup
	var got []Chunk
	ended := make(chan struct{})
	wg.Go(func() {
		defer close(ended)
		got, err = readAll(t, p2.ring, -1, nil)
	})
	testutil.Eventually(t, 10*time.Second, func() bool { _, end := p2.ring.bounds(); return end == 10 }, "ring end")
	// No writer since it opened: not the end until the exit is known.
	select {
	case <-ended:
		t.Fatal("output ended before the exit was known")
	default:
	}
	p2.markExited()
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if _, e := joined(got); e != "last words" {
		t.Fatalf("stderr = %q", e)
	}
}

func TestRingFollowerSeesLiveOutputAndClose(t *testing.T) {
	r, err := openRing(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	r.streamStarted()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		var b bytes.Buffer
		errc <- r.follow(ctx.Done(), -1, func(c Chunk) error {
			b.Write(c.Data)
			if b.String() == "ab" {
				got <- b.String()
			}
			return nil
		})
	}()
	r.write(Stdout, []byte("a"))
	r.write(Stdout, []byte("b"))
	if s := <-got; s != "ab" {
		t.Fatal(s)
	}
	// The service closes: the follower is told to resume elsewhere.
	r.close()
	if err := <-errc; !errdefs.IsUnavailable(err) {
		t.Fatalf("follow after close: %v, want Unavailable", err)
	}
}

func TestRingSnapshotEndsAtTheEndOfTheCall(t *testing.T) {
	r, err := openRing(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	r.streamStarted() // a stream still open: the output may grow
	var all bytes.Buffer
	for i := range 120000 { // spans both segments, more than one read
		line := fmt.Sprintf("%d\n", i)
		all.WriteString(line)
		if err := r.write(Stdout, []byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	start, end := r.bounds()
	// A writer that keeps going while the snapshot is read, twice the
	// ring's size (every segment the snapshot started with is dropped):
	// the snapshot still has every byte, and ends at the end it had when
	// it started.
	var got bytes.Buffer
	next := start
	complete, err := r.snapshot(nil, -1, func(c Chunk) error {
		if c.Offset != next {
			t.Fatalf("chunk at %d, want %d", c.Offset, next)
		}
		first := next == start
		next += int64(len(c.Data))
		got.Write(c.Data)
		if first {
			for range 2 << 20 / (16 << 10) {
				if err := r.write(Stderr, bytes.Repeat([]byte("later\n"), (16<<10)/6)); err != nil {
					return err
				}
			}
			if s, _ := r.bounds(); s < end {
				return fmt.Errorf("the ring still keeps offset %d (oldest %d)", end-1, s)
			}
		}
		return nil
	})
	if err != nil || complete {
		t.Fatalf("snapshot: complete %v, %v; want false, nil", complete, err)
	}
	if got.String() != all.String()[start:end] {
		t.Fatalf("snapshot has %d bytes from %d, want the %d bytes %d-%d", got.Len(), start, end-start, start, end)
	}
	// From an offset inside a record, up to the (new) end.
	_, end2 := r.bounds()
	var tail []Chunk
	if _, err := r.snapshot(nil, end2-3, func(c Chunk) error { tail = append(tail, c); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprint([]Chunk{{Stderr, []byte("er\n"), end2 - 3}}); fmt.Sprint(tail) != want {
		t.Fatalf("tail = %v, want %v", tail, want)
	}
	// At the end: nothing; beyond: invalid; before the ring: out of range.
	n := 0
	if _, err := r.snapshot(nil, end2, func(Chunk) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("snapshot at the end: %d chunks, %v", n, err)
	}
	if _, err := r.snapshot(nil, end2+1, func(Chunk) error { return nil }); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("beyond the end: %v, want InvalidArgument", err)
	}
	if s2, _ := r.bounds(); s2 > 0 {
		if _, err := r.snapshot(nil, s2-1, func(Chunk) error { return nil }); !errdefs.IsOutOfRange(err) {
			t.Fatalf("before the ring: %v, want OutOfRange", err)
		}
	}
	// Every stream closed: complete.
	r.streamDone()
	if complete, err := r.snapshot(nil, end2, func(Chunk) error { return nil }); err != nil || !complete {
		t.Fatalf("snapshot after the streams closed: complete %v, %v", complete, err)
	}
	// done stops it early.
	if complete, err := r.snapshot(closedChan(), -1, func(Chunk) error { t.Fatal("sent after done"); return nil }); err != nil || complete {
		t.Fatalf("snapshot with done closed: %v, %v", complete, err)
	}
}
