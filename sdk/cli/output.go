package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"

	"github.com/magnetar-io/magnetar/sdk"
)

// table writes aligned columns.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)}
	t.row(headers...)
	return t
}

func (t *table) row(cols ...string) {
	for i, c := range cols {
		cols[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func jsonLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// nonNil makes JSON print [] for an empty list.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func labels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}

// ago says how long ago t was, for humans.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseBytes parses a size such as 512, 64k, 64m or 1g (powers of 1024).
func parseBytes(s string) (int64, error) {
	num, mult := strings.ToLower(strings.TrimSpace(s)), int64(1)
	num = strings.TrimSuffix(num, "b")
	if num != "" {
		switch num[len(num)-1] {
		case 'k':
			mult, num = 1<<10, num[:len(num)-1]
		case 'm':
			mult, num = 1<<20, num[:len(num)-1]
		case 'g':
			mult, num = 1<<30, num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q: want a positive number with an optional k, m or g suffix: %w", s, errdefs.ErrInvalidArgument)
	}
	return n * mult, nil
}

// copyOutput copies a process's output to the tool's standard streams
// until the sequence ends or ctx does (an interrupt: not an error). It
// returns the offset after the last byte copied (-1 if none).
func copyOutput(ctx context.Context, e *env, output iter.Seq2[sdk.OutputChunk, error]) (int64, error) {
	next := int64(-1)
	for chunk, err := range output {
		if err != nil {
			if ctx.Err() != nil && errdefs.IsCanceled(err) {
				return next, nil
			}
			return next, err
		}
		w := e.Stdout
		if chunk.Stream == sdk.Stderr {
			w = e.Stderr
		}
		if _, err := w.Write(chunk.Data); err != nil {
			return next, err
		}
		next = chunk.Offset + int64(len(chunk.Data))
	}
	return next, nil
}
