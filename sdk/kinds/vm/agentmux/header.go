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
	// kindStdio is a stdio stream without acknowledgements, ended with
	// its session (what hosts before resumable streams open).
	kindStdio streamKind = 'S'
	// kindStdioOpen opens a resumable stdio stream; kindStdioResume
	// re-attaches one from an offset (see [StdioMode]).
	kindStdioOpen   streamKind = 'O'
	kindStdioResume streamKind = 'R'
	// kindPort carries a TCP connection to a port in the guest (see
	// port.go); kindPortKill drops one whose stream is blocked.
	kindPort     streamKind = 'P'
	kindPortKill streamKind = 'K'
)

// StdioMode is how a stdio stream was asked for.
type StdioMode byte

const (
	// StdioLegacy is a stream of a host that does not acknowledge
	// output: what is sent counts as delivered, and the stream and its
	// FIFO end with the session.
	StdioLegacy StdioMode = iota
	// StdioOpen opens a resumable stream: the agent makes the FIFO and
	// keeps it (and, for output, the bytes not yet acknowledged) across
	// sessions until the host releases it, the output ends and is all
	// acknowledged, or the process is deleted.
	StdioOpen
	// StdioResume re-attaches a stream opened earlier (by a previous
	// session) from [StdioRequest.Offset].
	StdioResume
)

// StdioRequest is what a stdio stream asks the agent for.
type StdioRequest struct {
	StdioHeader
	Mode StdioMode
	// Offset is, for StdioResume of an output stream, how many bytes of
	// the stream the host has delivered: the agent sends from there.
	Offset uint64
}

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

// Reply statuses of a stdio stream.
const (
	replyOK   = 0
	replyErr  = 1
	replyGone = 2
)

// ErrStdioGone is returned by [Client.ResumeStdio] when the agent no
// longer has the stream: it was released, or its output ended and was
// all acknowledged, or its process was deleted.
var ErrStdioGone = errors.New("agentmux: stdio stream gone")

// ReplyStdio answers a stdio stream's header: the guest path of its FIFO,
// or why there is none ([ErrStdioGone] for a stream to resume that no
// longer exists). The agent's [StdioHandler] calls it first.
func ReplyStdio(w io.Writer, path string, err error) error {
	status, msg := byte(replyOK), path
	switch {
	case errors.Is(err, ErrStdioGone):
		status, msg = replyGone, err.Error()
	case err != nil:
		status, msg = replyErr, err.Error()
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
	switch b[0] {
	case replyOK:
		return string(msg), nil
	case replyGone:
		return "", ErrStdioGone
	}
	return "", fmt.Errorf("agent: %s", msg)
}

// Acknowledgements go from the host to the agent on a resumable output
// stream, each an 8-byte big-endian offset: the host has delivered every
// byte of the stream before it (written it to the caller's FIFO and
// recorded the offset), so the agent may drop them. [AckRelease] instead
// tells the agent that the host is done with the stream.
const ackLen = 8

// AckRelease, sent as an acknowledgement, releases a stream: the agent
// drops what it holds of it and closes its FIFO.
const AckRelease = ^uint64(0)

// WriteAck sends an acknowledgement of offset off (or [AckRelease]).
func WriteAck(w io.Writer, off uint64) error {
	var b [ackLen]byte
	binary.BigEndian.PutUint64(b[:], off)
	_, err := w.Write(b[:])
	return err
}

// ReadAck reads the next acknowledgement.
func ReadAck(r io.Reader) (uint64, error) {
	var b [ackLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[:]), nil
}
