package direct

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// collect follows l until its streams close.
func collect(t *testing.T, ctx context.Context, l *outputLog) []Chunk {
	t.Helper()
	var out []Chunk
	if err := l.follow(ctx, func(c Chunk) error {
		out = append(out, c)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestOutputLogLateFollower(t *testing.T) {
	l := newOutputLog(2)
	l.copyFrom(Stdout, strings.NewReader("out"))
	l.copyFrom(Stderr, strings.NewReader("err"))
	got := collect(t, context.Background(), l)
	if len(got) != 2 || got[0].Stream != Stdout || string(got[0].Data) != "out" || got[1].Stream != Stderr || string(got[1].Data) != "err" {
		t.Errorf("got %+v", got)
	}
	// Every follower sees everything kept.
	if again := collect(t, context.Background(), l); len(again) != 2 {
		t.Errorf("second follower got %+v", again)
	}
}

func TestOutputLogFollowsLiveOutput(t *testing.T) {
	l := newOutputLog(1)
	r, w := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.copyFrom(Stdout, r)
	}()
	got := make(chan string, 1)
	go func() {
		var b strings.Builder
		_ = l.follow(context.Background(), func(c Chunk) error {
			b.Write(c.Data)
			return nil
		})
		got <- b.String()
	}()
	for _, s := range []string{"a", "b", "c"} {
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	<-done
	if s := <-got; s != "abc" {
		t.Errorf("followed %q, want abc", s)
	}
}

func TestOutputLogDropsOldest(t *testing.T) {
	l := newOutputLog(1)
	chunk := bytes.Repeat([]byte("x"), outputBufferLimit/2)
	for range 3 {
		l.append(Stdout, chunk)
	}
	l.closeStream()
	if got := collect(t, context.Background(), l); len(got) != 2 {
		t.Errorf("kept %d chunks, want 2 (the oldest dropped past the limit)", len(got))
	}
}

func TestOutputLogStops(t *testing.T) {
	l := newOutputLog(1)
	l.append(Stdout, []byte("a"))
	stop := errors.New("stop")
	if err := l.follow(context.Background(), func(Chunk) error { return stop }); err != stop {
		t.Errorf("follow with a failing send = %v, want its error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.follow(ctx, func(Chunk) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("follow after ctx ended = %v, want context.Canceled", err)
	}
}
