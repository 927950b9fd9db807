package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// FindPort returns the device node of the virtio-serial port called name:
// the entry of portsDir (/sys/class/virtio-ports) whose "name" file holds
// name, as a node in devDir. Without udev there is no
// /dev/virtio-ports/<name> link, so sysfs is the only way. The error lists
// the ports seen.
func FindPort(portsDir, devDir, name string) (string, error) {
	ents, err := os.ReadDir(portsDir)
	if err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("find port %q: %w", name, err)
	}
	var seen []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(portsDir, e.Name(), "name"))
		if err != nil {
			continue
		}
		n := strings.TrimSpace(string(b))
		if n == name {
			return filepath.Join(devDir, e.Name()), nil
		}
		seen = append(seen, e.Name()+"="+n)
	}
	sort.Strings(seen)
	return "", fmt.Errorf("virtio-serial port %q not found (ports: %v)", name, seen)
}

// waitPort polls FindPort until the port appears (modules probe devices
// asynchronously) or ctx is done.
func waitPort(ctx context.Context, portsDir, devDir, name string) (string, error) {
	for {
		p, err := FindPort(portsDir, devDir, name)
		if err == nil {
			if _, serr := os.Stat(p); serr == nil {
				return p, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
