package agentmux

import (
	"bytes"
	"testing"
)

// TestReadRequest decodes each stdio kind: a host without resumable
// streams ('S') is told apart from an open ('O') and a resume ('R', with
// its offset); a short resume is refused.
func TestReadRequest(t *testing.T) {
	h := StdioHeader{Container: "c", Exec: "e", Stream: Stdout}
	hdr, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind streamKind
		tail []byte
		want StdioRequest
	}{
		{kindStdio, nil, StdioRequest{StdioHeader: h, Mode: StdioLegacy}},
		{kindStdioOpen, nil, StdioRequest{StdioHeader: h, Mode: StdioOpen}},
		{kindStdioResume, []byte{0, 0, 0, 0, 0, 0, 1, 2}, StdioRequest{StdioHeader: h, Mode: StdioResume, Offset: 258}},
	} {
		got, err := readRequest(bytes.NewReader(append(append([]byte{}, hdr...), tc.tail...)), tc.kind)
		if err != nil || got != tc.want {
			t.Errorf("kind %c: %+v, %v; want %+v", tc.kind, got, err, tc.want)
		}
	}
	if _, err := readRequest(bytes.NewReader(append(append([]byte{}, hdr...), 1, 2)), kindStdioResume); err == nil {
		t.Error("a resume without its full offset was accepted")
	}
}
