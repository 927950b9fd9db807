package apiserver

import (
	"testing"

	containerv1 "github.com/magnetar-io/magnetar/gen/magnetar/container/v1"
	sandboxv1 "github.com/magnetar-io/magnetar/gen/magnetar/sandbox/v1"
	"github.com/magnetar-io/magnetar/sdk/direct"
	"github.com/magnetar-io/magnetar/sdk/engine"
)

// direct's network modes and output streams have the API's numbers.
func TestEnumNumbers(t *testing.T) {
	for api, want := range map[sandboxv1.NetworkMode]direct.NetworkMode{
		sandboxv1.NetworkMode_NETWORK_MODE_UNSPECIFIED: direct.NetworkDefault,
		sandboxv1.NetworkMode_NETWORK_MODE_NONE:        direct.NetworkNone,
		sandboxv1.NetworkMode_NETWORK_MODE_HOST:        direct.NetworkHost,
		sandboxv1.NetworkMode_NETWORK_MODE_NETNS:       direct.NetworkNetNS,
	} {
		if direct.NetworkMode(api) != want {
			t.Errorf("%s is direct mode %d, want %d", api, api, want)
		}
	}
	for s, want := range map[direct.Stream]containerv1.OutputStream{
		direct.Stdout: containerv1.OutputStream_OUTPUT_STREAM_STDOUT,
		direct.Stderr: containerv1.OutputStream_OUTPUT_STREAM_STDERR,
	} {
		if outputStreams[s] != want || int32(s) != int32(want) {
			t.Errorf("stream %d converts to %s, want %s", s, outputStreams[s], want)
		}
	}
}

// A filter value the engine has no counterpart of matches nothing, as
// comparing in the API's terms did.
func TestConvertFilters(t *testing.T) {
	states := convertAll([]sandboxv1.SandboxState{sandboxv1.SandboxState_SANDBOX_STATE_READY, sandboxv1.SandboxState_SANDBOX_STATE_UNSPECIFIED},
		engineSandboxStates, func(st sandboxv1.SandboxState) engine.SandboxState { return engine.SandboxState(st.String()) })
	if len(states) != 2 || states[0] != engine.SandboxReady {
		t.Fatalf("states = %q", states)
	}
	for _, st := range []engine.SandboxState{engine.SandboxCreated, engine.SandboxReady, engine.SandboxStopped, engine.SandboxUnknown} {
		if st == states[1] {
			t.Errorf("UNSPECIFIED converts to the engine's %q", st)
		}
	}
	if got := convertAll(nil, engineSandboxStates, nil); got != nil {
		t.Errorf("no states = %q, want nil (no filter)", got)
	}
	topics := convertAll([]sandboxv1.EventType{sandboxv1.EventType_EVENT_TYPE_PROCESS_EXITED, sandboxv1.EventType(99)}, eventTopics, sandboxv1.EventType.String)
	if len(topics) != 2 || topics[0] != engine.TopicTaskExit {
		t.Fatalf("topics = %q", topics)
	}
	if _, ok := eventTypes[topics[1]]; ok {
		t.Errorf("an unknown type converts to the topic %q", topics[1])
	}
	if len(eventTopics) != len(eventTypes) || len(engineSandboxStates) != len(sandboxStates) {
		t.Error("a conversion map is not one-to-one")
	}
}
