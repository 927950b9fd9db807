package vm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/magnetar-io/magnetar/sdk/kinds/vm/agentmux"
)

// offsetsDir holds, under a sandbox's directory, the offset files of its
// processes' output streams: <offsetsDir>/<container>/<process>.<stream>.
// They are host state: never in the shared directory the guest can write.
const offsetsDir = "stdio-offsets"

// offsetPath is the offset file of a process's output stream.
func (c *container) offsetPath(execID string, st agentmux.Stream) string {
	name := "init." + st.String()
	if execID != "" {
		name = "exec." + execID + "." + st.String()
	}
	return filepath.Join(c.s.cfg.Dir, offsetsDir, c.id, name)
}

// offsetRecord is an output stream's offset file: 8 bytes, big-endian,
// how many bytes of the stream the host has written to the caller's FIFO.
// It is updated in place with one 8-byte pwrite per chunk, which a crash
// of the process (the case it is for) cannot tear; it is not fsynced, as
// a crash of the machine ends the VM and its streams too.
type offsetRecord struct{ f *os.File }

// createOffsetRecord creates (or truncates) the offset file at path with
// offset 0.
func createOffsetRecord(path string) (*offsetRecord, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	r := &offsetRecord{f: f}
	if err := r.store(0); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

// openOffsetRecord opens the offset file at path and returns the offset
// it holds.
func openOffsetRecord(path string) (*offsetRecord, uint64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, err
	}
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		f.Close()
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("offset file %s is truncated", path)
		}
		return nil, 0, err
	}
	return &offsetRecord{f: f}, binary.BigEndian.Uint64(b[:]), nil
}

// store records off.
func (r *offsetRecord) store(off uint64) error {
	if r == nil {
		return nil
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], off)
	_, err := r.f.WriteAt(b[:], 0)
	return err
}

// Close closes the file.
func (r *offsetRecord) Close() {
	if r != nil {
		r.f.Close()
	}
}
