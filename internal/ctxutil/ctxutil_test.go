package ctxutil

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntilClosed(t *testing.T) {
	done := make(chan struct{})
	why := errors.New("closing")
	ctx, cancel := UntilClosed(context.Background(), done, why)
	defer cancel()
	if ctx.Err() != nil {
		t.Fatal("ended before the close")
	}
	close(done)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("did not end when done closed")
	}
	if !errors.Is(context.Cause(ctx), why) {
		t.Errorf("cause = %v, want %v", context.Cause(ctx), why)
	}

	ctx, cancel = UntilClosed(context.Background(), make(chan struct{}), nil)
	cancel()
	if !errors.Is(context.Cause(ctx), context.Canceled) {
		t.Errorf("released: cause = %v, want canceled", context.Cause(ctx))
	}
}
