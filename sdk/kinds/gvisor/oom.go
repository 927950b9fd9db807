package gvisor

import (
	"maps"
	"time"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/cgoom"
)

// OOM kills in a gVisor pod.
//
// The host kernel's OOM killer acts in the sandbox's cgroup (see
// limits.go), which holds the sentry, the gofers and, on the systrap and
// ptrace platforms, one stub process per address space of the containers'
// processes. It usually kills the stub of the process that grew: that
// process then ends (runsc 20240729 reports exit code 1, not 137) and the
// pod goes on; when it kills the sentry, every container ends with
// SIGKILL. The cgroup's OOM event does not say whose stub it was, so the
// kind reports an OOM kill for the containers whose init fails (a non-zero
// exit) within oomWindow of the event, either side, and, when the pod has
// one running container only, for that one at once (the killed process was
// in it). A process other than an init killed in a pod of several running
// containers is not reported.
const oomWindow = 5 * time.Second

// containerEnd tells whether a container runs, and when its init failed
// (a non-zero exit; zero otherwise).
type containerEnd func() (running bool, failedAt time.Time)

// watchOOM watches the sandbox's cgroup for OOM kills.
func (s *sandbox) watchOOM(pid int) {
	s.oom = cgoom.Pid(s.b.stop, &s.b.wg, pid, s.sawOOM)
}

// sawOOM reports the OOM kill the cgroup just saw.
func (s *sandbox) sawOOM() {
	now := time.Now()
	s.mu.Lock()
	s.oomAt = now
	ends := maps.Clone(s.ctrEnds)
	s.mu.Unlock()
	var running, failed []string
	for id, end := range ends { // not under s.mu: an init's lock comes first
		r, at := end()
		if r {
			running = append(running, id)
		} else if !at.IsZero() && now.Sub(at) < oomWindow {
			failed = append(failed, id)
		}
	}
	if len(running) == 1 {
		failed = append(failed, running[0])
	}
	for _, id := range failed {
		s.reportOOM(id)
	}
}

// failed is told that container id's init failed: an OOM kill seen within
// oomWindow before is reported for it.
func (s *sandbox) failed(id string) {
	s.mu.Lock()
	recent := !s.oomAt.IsZero() && time.Since(s.oomAt) < oomWindow
	s.mu.Unlock()
	if recent {
		s.reportOOM(id)
	}
}

// reportOOM reports one OOM kill of container id per event of the cgroup.
func (s *sandbox) reportOOM(id string) {
	s.mu.Lock()
	at := s.oomAt
	dup := !s.oomReported[id].Before(at)
	if !dup {
		s.oomReported[id] = at
	}
	s.mu.Unlock()
	if !dup && s.cfg.Events != nil {
		s.cfg.Events.OOM(s.cfg.ID, id)
	}
}
