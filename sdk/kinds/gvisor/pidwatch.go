package gvisor

import (
	"sync"

	"github.com/magnetar-io/magnetar/sdk/kinds/internal/reaper"
)

// watchExit calls exited once pid has exited, reaping it when it is a
// child of this process (after a restart it is not). The wait ends without
// a call when stop is closed.
func watchExit(stop <-chan struct{}, wg *sync.WaitGroup, pid int, exited func()) {
	reaper.Watch(stop, wg, pid, func(int) { exited() })
}
