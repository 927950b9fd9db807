package agentmux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// streamKind is the first byte of every stream.
type streamKind byte

const (
	kindTTRPC streamKind = 'T'
	kindStdio streamKind = 'S'
)

// Stream names a standard stream.
type Stream byte

// The standard streams.
const (
	Stdin  Stream = 0
	Stdout Stream = 1
	Stderr Stream = 2
)

// String names the stream: stdin, stdout or stderr.
func (s Stream) String() string {
	switch s {
	case Stdin:
		return "stdin"
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return fmt.Sprintf("stream(%d)", byte(s))
}

// maxIDLen bounds the IDs in a header (containerd's IDs are at most 76
// bytes; exec IDs are free-form but short).
const maxIDLen = 255

// StdioHeader follows the kind byte of a stdio stream: which stream of
// which process it carries. The IDs name the FIFO in the guest; they are
// validated like containerd's identifiers are (no path separators).
type StdioHeader struct {
	Container, Exec string
	Stream          Stream
}

// String is container/exec/stream, for errors and logs.
func (h StdioHeader) String() string {
	return fmt.Sprintf("%s/%s/%s", h.Container, h.Exec, h.Stream)
}

// Validate checks the header's fields.
func (h StdioHeader) Validate() error {
	if h.Stream > Stderr {
		return fmt.Errorf("bad stream %d", byte(h.Stream))
	}
	if h.Container == "" {
		return errors.New("no container id")
	}
	for _, id := range []string{h.Container, h.Exec} {
		if len(id) > maxIDLen || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
			return fmt.Errorf("bad id %q", id)
		}
	}
	return nil
}

// encode is: stream byte, then the container and exec IDs, each a length
// byte and the bytes.
func (h StdioHeader) encode() ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	b := []byte{byte(h.Stream), byte(len(h.Container))}
	b = append(b, h.Container...)
	b = append(b, byte(len(h.Exec)))
	return append(b, h.Exec...), nil
}

func readHeader(r io.Reader) (StdioHeader, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return StdioHeader{}, err
	}
	h := StdioHeader{Stream: Stream(b[0])}
	c := make([]byte, b[1])
	if _, err := io.ReadFull(r, c); err != nil {
		return StdioHeader{}, err
	}
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return StdioHeader{}, err
	}
	e := make([]byte, b[0])
	if _, err := io.ReadFull(r, e); err != nil {
		return StdioHeader{}, err
	}
	h.Container, h.Exec = string(c), string(e)
	return h, h.Validate()
}

// ReplyStdio answers a stdio stream's header: the guest path of its FIFO,
// or why there is none. The agent's [StdioHandler] calls it first.
func ReplyStdio(w io.Writer, path string, err error) error {
	status, msg := byte(0), path
	if err != nil {
		status, msg = 1, err.Error()
	}
	if len(msg) > 0xffff {
		msg = msg[:0xffff]
	}
	b := []byte{status, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(msg)))
	_, werr := w.Write(append(b, msg...))
	return werr
}

func readReply(r io.Reader) (string, error) {
	var b [3]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", err
	}
	msg := make([]byte, binary.BigEndian.Uint16(b[1:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return "", err
	}
	if b[0] != 0 {
		return "", fmt.Errorf("agent: %s", msg)
	}
	return string(msg), nil
}
