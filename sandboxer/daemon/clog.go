package daemon

import (
	"io"

	clog "github.com/containerd/log"
	"github.com/hashicorp/go-hclog"
	"github.com/sirupsen/logrus"
)

// routeContainerdLogs sends what containerd's packages log (through
// github.com/containerd/log, a process-wide logrus logger; the runc
// backend reuses containerd's process code) to the daemon's logger, so
// that the daemon has one log stream with one format and level.
func routeContainerdLogs(log hclog.Logger) {
	l := clog.L.Logger
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.TraceLevel) // hclog filters
	l.ReplaceHooks(logrus.LevelHooks{})
	l.AddHook(hclogHook{log: log})
}

type hclogHook struct{ log hclog.Logger }

func (hclogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h hclogHook) Fire(e *logrus.Entry) error {
	args := make([]any, 0, 2*len(e.Data))
	for k, v := range e.Data {
		args = append(args, k, v)
	}
	switch e.Level {
	case logrus.TraceLevel:
		h.log.Trace(e.Message, args...)
	case logrus.DebugLevel:
		h.log.Debug(e.Message, args...)
	case logrus.InfoLevel:
		h.log.Info(e.Message, args...)
	case logrus.WarnLevel:
		h.log.Warn(e.Message, args...)
	default:
		h.log.Error(e.Message, args...)
	}
	return nil
}
