package supervisor

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/magnetar-io/magnetar/internal/testutil"
)

// channel connects a supervisor (in this process, no worker process) to
// a worker's Client over a control channel, as start does.
type channel struct {
	s   *supervisor
	c   *Client
	raw *net.UnixConn // the worker's end, for raw messages
	w   *worker
}

func newChannel(t *testing.T, s *supervisor) *channel {
	t.Helper()
	if s == nil {
		s = &supervisor{log: hclog.NewNullLogger(), fds: newFDStore(0), listeners: map[string]*net.UnixListener{}, relays: map[string]*Relay{}}
		t.Cleanup(s.fds.closeAll)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "control")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	w := &worker{ctl: conn(fds[0]), done: make(chan struct{})}
	go s.serve(w)
	raw := conn(fds[1])
	c := &Client{conn: raw, waiting: map[int]chan reply{}}
	go c.read()
	t.Cleanup(func() {
		raw.Close()
		w.ctl.Close()
		<-w.done
	})
	return &channel{s: s, c: c, raw: raw, w: w}
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestFDStore: a worker stores descriptors and removes one; the next
// worker fetches the others (more than one page of them), uses them (the
// same pipes), and sweeps those it did not take.
func TestFDStore(t *testing.T) {
	ch := newChannel(t, nil)
	first, err := ch.c.FDStore()
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Take("anything"); got != nil {
		t.Fatalf("empty store handed over %v", got)
	}
	const n = 2*fdListPage + 3
	readers := map[string]*os.File{}
	for i := range n {
		r, w := testutil.Pipe(t)
		name := fmt.Sprintf("tty/ns/c%03d/stdout", i)
		if err := first.Store(name, w); err != nil {
			t.Fatalf("Store %s: %v", name, err)
		}
		w.Close() // the supervisor's copy keeps the pipe open
		readers[name] = r
	}
	if err := first.Remove("tty/ns/c000/stdout"); err != nil {
		t.Fatal(err)
	}
	if err := first.Remove("tty/ns/c000/stdout"); err == nil || !strings.Contains(err.Error(), "no descriptor stored") {
		t.Fatalf("second Remove: %v, want an unknown-name error", err)
	}
	// The removed pipe has no writer left: its reader sees end of file.
	if _, err := readers["tty/ns/c000/stdout"].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read of a removed pipe: %v, want EOF", err)
	}

	next, err := newChannel(t, ch.s).c.FDStore() // a new worker, same supervisor
	if err != nil {
		t.Fatal(err)
	}
	w := next.Take("tty/ns/c001/stdout")
	if w == nil {
		t.Fatal("the next worker did not get a stored descriptor")
	}
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	buf := make([]byte, 1)
	if _, err := readers["tty/ns/c001/stdout"].Read(buf); err != nil || buf[0] != 'x' {
		t.Fatalf("the handed-over descriptor is not the stored pipe: %q, %v", buf, err)
	}
	swept, err := next.Sweep()
	if err != nil || len(swept) != n-2 {
		t.Fatalf("Sweep removed %d (%v), want %d", len(swept), err, n-2)
	}
	if got := len(ch.s.fds.entries()); got != 1 {
		t.Fatalf("store holds %d descriptors after the sweep, want the taken one", got)
	}
	if err := next.Remove("tty/ns/c001/stdout"); err != nil {
		t.Fatal(err)
	}
	if _, err := readers["tty/ns/c001/stdout"].Read(buf); err != io.EOF {
		t.Fatalf("read after the last Remove: %v, want EOF", err)
	}
}

// TestFDStoreRefusesBadInput: bad names, a wrong number of descriptors,
// descriptors sent with other operations, unknown operations and a full
// store are refused with an error, leave the store as it was, and leak no
// descriptor in the supervisor; a message with more descriptors than the
// supervisor takes, or garbage, closes the channel.
func TestFDStoreRefusesBadInput(t *testing.T) {
	s := &supervisor{log: hclog.NewNullLogger(), fds: newFDStore(2), listeners: map[string]*net.UnixListener{}, relays: map[string]*Relay{}}
	t.Cleanup(s.fds.closeAll)
	ch := newChannel(t, s)
	_, w := testutil.Pipe(t)
	wfd := int(w.Fd())
	if _, err := ch.c.callFDs(request{Op: opFDStore, Name: "kept"}, []int{wfd}); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	for _, tc := range []struct {
		name string
		req  request
		fds  []int
		want string
	}{
		{"no descriptor", request{Op: opFDStore, Name: "a"}, nil, "exactly one descriptor, got 0"},
		{"two descriptors", request{Op: opFDStore, Name: "a"}, []int{wfd, wfd}, "exactly one descriptor, got 2"},
		{"empty name", request{Op: opFDStore}, []int{wfd}, "1 to 512 bytes"},
		{"long name", request{Op: opFDStore, Name: strings.Repeat("x", maxFDName+1)}, []int{wfd}, "1 to 512 bytes"},
		{"control byte", request{Op: opFDStore, Name: "a\nb"}, []int{wfd}, "not printable ASCII"},
		{"non-ASCII", request{Op: opFDStore, Name: "caf\u00e9"}, []int{wfd}, "not printable ASCII"},
		{"unknown name", request{Op: opFDRemove, Name: "nope"}, nil, `no descriptor stored as "nope"`},
		{"remove with a descriptor", request{Op: opFDRemove, Name: "kept"}, []int{wfd}, "takes no descriptor"},
		{"list with a descriptor", request{Op: opFDList}, []int{wfd}, "takes no descriptor"},
		{"relay with a descriptor", request{Op: opRelay, Path: "/x", Backend: "/y"}, []int{wfd}, "takes no descriptor"},
		{"unknown operation", request{Op: "fdsteal", Name: "kept"}, nil, `unknown operation "fdsteal"`},
	} {
		_, err := ch.c.callFDs(tc.req, tc.fds)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	// The store is full with two: a third name is refused, replacing is not.
	if _, err := ch.c.callFDs(request{Op: opFDStore, Name: "second"}, []int{wfd}); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.c.callFDs(request{Op: opFDStore, Name: "third"}, []int{wfd}); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("store beyond its maximum: %v, want a full error", err)
	}
	if _, err := ch.c.callFDs(request{Op: opFDStore, Name: "second"}, []int{wfd}); err != nil {
		t.Errorf("replacing in a full store: %v", err)
	}
	if got := openFDs(t); got != before+1 {
		t.Errorf("open descriptors %d after the refusals, want %d (one more stored)", got, before+1)
	}
	if got := s.fds.entries(); len(got) != 2 || got[0].Name != "kept" || got[1].Name != "second" {
		t.Errorf("store after bad input: %v", got)
	}

	// More descriptors than the supervisor takes with one message: the
	// channel is closed (as for garbage), nothing is kept.
	many := []int{wfd, wfd, wfd, wfd, wfd, wfd}
	if _, _, err := ch.raw.WriteMsgUnix([]byte(`{"id":99,"op":"fdstore","name":"many"}`), unix.UnixRights(many...), nil); err != nil {
		t.Fatal(err)
	}
	<-ch.w.done
	if _, err := ch.c.FDStore(); err == nil {
		t.Error("the channel still answers after a message with too many descriptors")
	}
	// One more stored, one less: the supervisor's end of the channel.
	if got := openFDs(t); got != before {
		t.Errorf("open descriptors %d after a message with too many, want %d", got, before)
	}

	// Garbage with a descriptor on a new channel: closed too, fd not kept.
	ch = newChannel(t, s)
	if _, _, err := ch.raw.WriteMsgUnix([]byte("{garbage"), unix.UnixRights(wfd), nil); err != nil {
		t.Fatal(err)
	}
	<-ch.w.done
	if got := len(s.fds.entries()); got != 2 {
		t.Errorf("store holds %d after garbage, want 2", got)
	}
}

// TestFDStoreEntries: the store is a list of name -> fd that a new store
// can be rebuilt from (as a supervisor re-executing itself would).
func TestFDStoreEntries(t *testing.T) {
	r, w := testutil.Pipe(t)
	s := newFDStore(0)
	fd, err := unix.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.store("out", fd); err != nil {
		t.Fatal(err)
	}
	again := newFDStoreFrom(0, s.entries())
	defer again.closeAll()
	names, fds, more, err := again.list("")
	if err != nil || more || len(names) != 1 || names[0] != "out" {
		t.Fatalf("list of the rebuilt store: %v %v %v", names, more, err)
	}
	if _, err := unix.Write(fds[0], []byte("y")); err != nil {
		t.Fatal(err)
	}
	closeFDs(fds)
	buf := make([]byte, 1)
	if _, err := r.Read(buf); err != nil || buf[0] != 'y' {
		t.Fatalf("read %q, %v", buf, err)
	}
}
