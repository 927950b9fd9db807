package supervisor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// ttrpc's wire format (github.com/containerd/ttrpc channel.go): a 10-byte
// header (payload length, stream ID, message type, flags, big endian)
// followed by the payload.
const (
	headerLen  = 10
	maxPayload = 4 << 20 // ttrpc's messageLengthMax

	typeRequest  = 0x1
	typeResponse = 0x2
	typeData     = 0x3

	flagRemoteClosed = 0x1
	flagRemoteOpen   = 0x2
)

// frame is one ttrpc message, header included.
type frame []byte

func (f frame) streamID() uint32 { return binary.BigEndian.Uint32(f[4:8]) }
func (f frame) typ() byte        { return f[8] }
func (f frame) flags() byte      { return f[9] }

// readFrame reads one whole frame. A frame over ttrpc's size limit is an
// error: the relay never forwards what neither end would accept.
func readFrame(r io.Reader) (frame, error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:4])
	if n > maxPayload {
		return nil, fmt.Errorf("ttrpc message of %d bytes exceeds the limit of %d", n, maxPayload)
	}
	f := make(frame, headerLen+int(n))
	copy(f, h[:])
	if _, err := io.ReadFull(r, f[headerLen:]); err != nil {
		return nil, fmt.Errorf("read ttrpc message: %w", err)
	}
	return f, nil
}

// method returns the full method name ("/service/method") of a request
// frame.
func (f frame) method() (string, error) {
	var req ttrpc.Request
	if err := proto.Unmarshal(f[headerLen:], &req); err != nil {
		return "", fmt.Errorf("decode ttrpc request: %w", err)
	}
	return "/" + req.Service + "/" + req.Method, nil
}

// withMetadata returns request frame f with key=value added to the
// request's metadata, under the same stream ID, type and flags.
func (f frame) withMetadata(key, value string) (frame, error) {
	var req ttrpc.Request
	if err := proto.Unmarshal(f[headerLen:], &req); err != nil {
		return nil, fmt.Errorf("decode ttrpc request: %w", err)
	}
	req.Metadata = append(req.Metadata, &ttrpc.KeyValue{Key: key, Value: value})
	payload, err := proto.Marshal(&req)
	if err != nil {
		return nil, err
	}
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("ttrpc message of %d bytes exceeds the limit of %d", len(payload), maxPayload)
	}
	g := make(frame, headerLen+len(payload))
	copy(g, f[:headerLen])
	binary.BigEndian.PutUint32(g[:4], uint32(len(payload)))
	copy(g[headerLen:], payload)
	return g, nil
}

// errorResponse is a response frame ending stream sid with an error.
func errorResponse(sid uint32, code codes.Code, msg string) frame {
	payload, err := proto.Marshal(&ttrpc.Response{Status: status.New(code, msg).Proto()})
	if err != nil {
		panic(err) // a status always marshals
	}
	f := make(frame, headerLen+len(payload))
	binary.BigEndian.PutUint32(f[:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(f[4:8], sid)
	f[8] = typeResponse
	copy(f[headerLen:], payload)
	return f
}

// frameReader reads whole frames from r and keeps the bytes of a frame it
// has begun to read: when a read is interrupted (a handover sets a read
// deadline), buf holds them, so that no byte of the stream is lost when
// the connection goes to the next supervisor.
type frameReader struct {
	r     io.Reader
	buf   []byte // bytes read and not yet returned as a frame
	chunk []byte // read buffer
}

// next returns the next whole frame.
func (fr *frameReader) next() (frame, error) {
	if fr.chunk == nil {
		fr.chunk = make([]byte, 32<<10)
	}
	for {
		if len(fr.buf) >= headerLen {
			n := binary.BigEndian.Uint32(fr.buf[:4])
			if n > maxPayload {
				return nil, fmt.Errorf("ttrpc message of %d bytes exceeds the limit of %d", n, maxPayload)
			}
			if total := headerLen + int(n); len(fr.buf) >= total {
				f := frame(bytes.Clone(fr.buf[:total]))
				fr.buf = fr.buf[total:]
				if len(fr.buf) == 0 {
					fr.buf = nil
				}
				return f, nil
			}
		}
		k, err := fr.r.Read(fr.chunk)
		fr.buf = append(fr.buf, fr.chunk[:k]...)
		if err != nil {
			if errors.Is(err, io.EOF) && len(fr.buf) > 0 {
				err = fmt.Errorf("read ttrpc message: %w", io.ErrUnexpectedEOF)
			}
			return nil, err
		}
	}
}
