package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/magnetar-io/magnetar/internal/atomicfile"
	"github.com/magnetar-io/magnetar/sdk/backend"
)

// execsDir holds, per container, one record per exec'd process:
// <sandbox dir>/execs/<container ID>/<exec ID>.json. A file per process,
// not the sandbox record, so that an exec (a Kubernetes probe every few
// seconds) rewrites a few hundred bytes, not the whole sandbox.
const execsDir = "execs"

const execRecordSuffix = ".json"

// execRecord is the persisted part of an exec'd process. It is written
// crash-safely when the process is created, started and when it exits,
// and removed when the process is deleted.
type execRecord struct {
	Version     int            `json:"version"`
	ID          string         `json:"id"`
	ContainerID string         `json:"containerId"`
	Process     *specs.Process `json:"process"`
	Stdio       backend.Stdio  `json:"stdio"`
	Pid         uint32         `json:"pid,omitempty"`
	State       ProcessState   `json:"state"`
	// BackendState is what the backend's RecoveryState returned after
	// Start (a start time against pid reuse, ...).
	BackendState []byte              `json:"backendState,omitempty"`
	Exit         *backend.ExitStatus `json:"exit,omitempty"`
}

func (s *sandbox) execDir(cid string) string { return filepath.Join(s.dir, execsDir, cid) }

func (s *sandbox) execRecordPath(cid, execID string) string {
	return filepath.Join(s.execDir(cid), execID+execRecordSuffix)
}

// saveExec writes the record of exec'd process p as it is now. Writes of
// one process are serialised, and none happens after forgetExec.
func (s *sandbox) saveExec(p *process) error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	if p.forgotten {
		return nil
	}
	p.mu.Lock()
	rec := execRecord{
		Version: 1, ID: p.id, ContainerID: p.c.id, Process: p.spec, Stdio: p.stdio,
		Pid: p.pid, State: p.state, BackendState: p.recState,
	}
	if p.state == ProcessStopped {
		ex := p.exit
		rec.Exit = &ex
	}
	p.mu.Unlock()
	data, err := json.Marshal(&rec)
	if err != nil {
		return fmt.Errorf("encode record of exec %q: %w", p.id, err)
	}
	if err := os.MkdirAll(s.execDir(p.c.id), 0o700); err != nil {
		return fmt.Errorf("create exec record dir: %w", err)
	}
	if err := atomicfile.WriteFile(s.execRecordPath(p.c.id, p.id), data, 0o600); err != nil {
		return fmt.Errorf("write record of exec %q: %w", p.id, err)
	}
	return nil
}

// forgetExec removes the record of exec'd process p for good.
func (s *sandbox) forgetExec(p *process) error {
	p.saveMu.Lock()
	defer p.saveMu.Unlock()
	p.forgotten = true
	if err := os.Remove(s.execRecordPath(p.c.id, p.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove record of exec %q: %w", p.id, err)
	}
	return nil
}

// readExecRecord reads and checks the record at path of an exec of
// container cid.
func readExecRecord(path, cid, execID string) (*execRecord, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rec execRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	switch {
	case rec.ID != execID || rec.ContainerID != cid:
		return nil, fmt.Errorf("%s is the record of exec %q of container %q: %w", path, rec.ID, rec.ContainerID, errdefs.ErrInvalidArgument)
	case rec.Process == nil:
		return nil, fmt.Errorf("%s has no process spec: %w", path, errdefs.ErrInvalidArgument)
	case rec.State != ProcessCreated && rec.State != ProcessRunning && rec.State != ProcessStopped:
		return nil, fmt.Errorf("%s: state %q: %w", path, rec.State, errdefs.ErrInvalidArgument)
	case rec.State == ProcessStopped && rec.Exit == nil:
		return nil, fmt.Errorf("%s: stopped without an exit status: %w", path, errdefs.ErrInvalidArgument)
	case rec.State == ProcessRunning && rec.Pid == 0:
		return nil, fmt.Errorf("%s: running without a pid: %w", path, errdefs.ErrInvalidArgument)
	}
	if err := validateStdio(rec.Stdio); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rec, nil
}

// recoverExecs rebuilds the exec'd processes of recovered container c
// from their records. A record that cannot be read or does not check
// out, or a temporary file of a write cut short, is removed: nothing can
// be done with it. A process its backend cannot re-attach to is reported
// exited with an unknown status (255), like a lost container.
func (s *sandbox) recoverExecs(ctx context.Context, c *container) {
	dir := s.execDir(c.id)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return // no exec was recorded
	}
	er, canRecover := c.impl.(backend.ExecRecoverer)
	for _, ent := range ents {
		path := filepath.Join(dir, ent.Name())
		id, ok := strings.CutSuffix(ent.Name(), execRecordSuffix)
		if !ok || !ent.Type().IsRegular() || ValidateID("exec", id) != nil {
			_ = os.RemoveAll(path)
			continue
		}
		rec, err := readExecRecord(path, c.id, id)
		if err != nil {
			_ = os.Remove(path)
			continue
		}
		var impl backend.Process
		if canRecover {
			impl, err = er.RecoverExec(ctx, backend.ExecConfig{ID: id, Process: rec.Process, Stdio: rec.Stdio},
				backend.ExecRecord{Pid: rec.Pid, State: rec.BackendState, Exited: rec.State == ProcessStopped})
		} else {
			err = fmt.Errorf("recover exec: %w", errdefs.ErrNotImplemented)
		}
		if err != nil {
			impl = lostProcess{}
		}
		p := &process{
			c: c, id: id, impl: impl, stdio: rec.Stdio, spec: rec.Process, recState: rec.BackendState,
			state: rec.State, pid: rec.Pid, done: make(chan struct{}),
		}
		if rec.Exit != nil {
			p.exit = *rec.Exit
		}
		if pr, ok := impl.(backend.PidReporter); ok && err == nil && rec.State == ProcessCreated && pr.Pid() != 0 {
			// Its start was cut short by the restart, but the process
			// runs: it is watched, and can be killed and deleted.
			p.state, p.pid = ProcessRunning, pr.Pid()
			_ = s.saveExec(p)
		}
		c.execs[id] = p
		switch {
		case rec.State == ProcessStopped:
			close(p.done)
		case err != nil:
			p.setExited(backend.ExitStatus{Code: 255})
			_ = s.saveExec(p)
		case rec.State == ProcessRunning:
			s.e.watchProcess(s, p)
		}
	}
}

// removeStaleExecs removes the exec records of containers the sandbox
// has no record of (their container was deleted while the records'
// removal was cut short).
func (s *sandbox) removeStaleExecs() {
	ents, err := os.ReadDir(filepath.Join(s.dir, execsDir))
	if err != nil {
		return
	}
	for _, ent := range ents {
		if _, ok := s.rec.Containers[ent.Name()]; !ok {
			_ = os.RemoveAll(filepath.Join(s.dir, execsDir, ent.Name()))
		}
	}
}
