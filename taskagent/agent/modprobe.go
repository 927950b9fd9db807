package agent

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// OnDemandModules is the list of the modules that the guest loads only when
// its kernel asks for them (hack/build-guest.sh writes it): lines
// "module <name> <file>..." with the files in load order, dependencies
// first, relative to the list's directory, and "alias <pattern> <name>"
// (a module alias, such as rtnl-link-bridge, with modinfo's * and ?
// wildcards).
const OnDemandModules = "/modules/on-demand/list"

// ModprobeMain serves the kernel's request for a module when this binary
// runs as /sbin/modprobe, the guest kernel's usermode helper (request_module
// runs "modprobe -q -- <name or alias>": for instance a container with
// CAP_NET_ADMIN creating a bridge). Loading every module a container might
// want at boot would slow every VM's start for what few pods use. It
// reports whether it ran, with the exit code.
func ModprobeMain() (int, bool) {
	if filepath.Base(os.Args[0]) != "modprobe" {
		return 0, false
	}
	var names []string
	quiet, opts := false, true
	for _, a := range os.Args[1:] {
		switch {
		case opts && a == "--":
			opts = false
		case opts && strings.HasPrefix(a, "-"):
			quiet = quiet || a == "-q" || a == "--quiet"
		default:
			names = append(names, a)
		}
	}
	if len(names) == 0 {
		fmt.Fprintln(os.Stderr, "modprobe: no module named")
		return 1, true
	}
	f, err := os.Open(OnDemandModules)
	if err != nil {
		if !quiet {
			fmt.Fprintln(os.Stderr, "modprobe:", err)
		}
		return 1, true
	}
	defer f.Close()
	files, err := ResolveModule(f, filepath.Dir(OnDemandModules), names[0])
	if err == nil {
		for _, p := range files {
			if err = loadModule(p); err != nil {
				break
			}
		}
	}
	if err != nil {
		if !quiet {
			fmt.Fprintln(os.Stderr, "modprobe:", err)
		}
		return 1, true
	}
	return 0, true
}

// ResolveModule reads an on-demand module list (see [OnDemandModules]) and
// returns the files to load, in order, for name: a module's name ("-" and
// "_" alike, as modprobe takes them) or an alias of one. Files are joined
// to dir.
func ResolveModule(r io.Reader, dir, name string) ([]string, error) {
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	modules := map[string][]string{}
	type alias struct{ pattern, module string }
	var aliases []alias
	s := bufio.NewScanner(r)
	for s.Scan() {
		f := strings.Fields(s.Text())
		switch {
		case len(f) == 0 || strings.HasPrefix(f[0], "#"):
		case f[0] == "module" && len(f) >= 3:
			modules[norm(f[1])] = f[2:]
		case f[0] == "alias" && len(f) == 3:
			aliases = append(aliases, alias{f[1], norm(f[2])})
		default:
			return nil, fmt.Errorf("module list: bad line %q", s.Text())
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	mod := norm(name)
	if _, ok := modules[mod]; !ok {
		for _, a := range aliases {
			if ok, _ := path.Match(a.pattern, name); ok {
				mod = a.module
				break
			}
		}
	}
	files, ok := modules[mod]
	if !ok {
		return nil, fmt.Errorf("module %s not found in this guest", name)
	}
	out := make([]string, 0, len(files))
	for _, f := range files {
		if filepath.IsAbs(f) || f != filepath.Clean(f) || strings.HasPrefix(f, "..") {
			return nil, fmt.Errorf("module list: bad file %q", f)
		}
		out = append(out, filepath.Join(dir, f))
	}
	return out, nil
}
