// Package ctxutil joins Magnetar's two ways of saying "stop": contexts and
// closed channels (a server's closing, an abort).
package ctxutil

import "context"

// UntilClosed returns a context derived from ctx that also ends when done
// is closed, with cause as its [context.Cause] (context.Canceled when cause
// is nil). The returned function releases it, like a context.CancelFunc.
func UntilClosed(ctx context.Context, done <-chan struct{}, cause error) (context.Context, context.CancelFunc) {
	if cause == nil {
		cause = context.Canceled
	}
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-done:
			cancel(cause)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}
