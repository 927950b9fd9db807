package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// qmp is one QMP session: QEMU's JSON control protocol on a unix socket.
// QEMU serves one QMP client at a time, so sessions are short-lived: dial,
// run a command or two, close.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialQMP connects and negotiates capabilities, retrying while the socket
// does not exist yet or refuses, until ctx ends.
func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmp, error) {
	conn, err := dialRetry(ctx, path, exited)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &qmp{conn: conn, r: bufio.NewReader(conn)}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := q.r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err == nil && greeting.QMP == nil {
		err = fmt.Errorf("unexpected greeting %q", line)
	}
	if err == nil {
		_, err = q.execute(ctx, "qmp_capabilities", nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp handshake: %w", err)
	}
	return q, nil
}

// execute runs one command and returns its "return" value; asynchronous
// events read meanwhile are skipped.
func (q *qmp) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.executeWithFile(ctx, cmd, args, nil)
}

// executeWithFile is execute, passing f along with the command (as
// SCM_RIGHTS ancillary data) when f is not nil.
func (q *qmp) executeWithFile(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetDeadline(dl)
	}
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if f == nil {
		_, err = q.conn.Write(append(b, '\n'))
	} else {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("qmp %s: cannot pass a file over a %T", cmd, q.conn)
		}
		// Through SyscallConn, not Fd, which would make f blocking.
		sc, serr := f.SyscallConn()
		if serr != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, serr)
		}
		cerr := sc.Control(func(fd uintptr) {
			_, _, err = uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(fd)), nil)
		})
		if cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: bad reply %q: %w", cmd, line, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

func (q *qmp) close() error { return q.conn.Close() }

// errExited is returned when the VMM exits while a caller waits for it.
var errExited = errors.New("qemu exited")

// dialRetry dials a unix socket until it answers, ctx ends or exited is
// closed.
func dialRetry(ctx context.Context, path string, exited <-chan struct{}) (net.Conn, error) {
	var d net.Dialer
	delay := 5 * time.Millisecond
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(ctx.Err(), err)
		case <-exited:
			t.Stop()
			return nil, errExited
		case <-t.C:
		}
		if delay < 100*time.Millisecond {
			delay *= 2
		}
	}
}
