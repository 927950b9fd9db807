package critest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/magnetar-io/magnetar/internal/harness"
)

// expectations is expectations.toml.
type expectations struct {
	// Skip is the shared skip list, given to every handler's run.
	Skip []rule `toml:"skip"`
	// Kinds are the handlers to run, in order; the first is the baseline
	// (stock runc).
	Kinds []kind `toml:"kind"`
}

// rule names specs by a regular expression on their full text (the
// container texts and the spec's text joined by spaces) or by their exact
// full texts, with the reason.
type rule struct {
	Spec   string   `toml:"spec"`
	Specs  []string `toml:"specs"`
	Reason string   `toml:"reason"`
	re     *regexp.Regexp
}

type kind struct {
	Handler string `toml:"handler"`
	// Focus, if set, runs only the specs it matches (Reason says why).
	Focus       string `toml:"focus"`
	FocusReason string `toml:"focus_reason"`
	// NotApplicable are specs that cannot apply to the kind, not run.
	NotApplicable []rule `toml:"not_applicable"`
	// NotYet are specs that apply but the kind does not pass yet (work
	// left, said in the reason); not run, and shown as such.
	NotYet []rule `toml:"not_yet"`
	// Parallel is how many ginkgo nodes run the kind's specs at once
	// (critest --parallel; [Serial] specs still run alone); 0 is
	// defaultParallel. MAGNETAR_CRITEST_PARALLEL overrides it for all.
	Parallel int `toml:"parallel"`
	focus    *regexp.Regexp
}

// defaultParallel: most specs wait on a container's sleep or a timeout,
// not the CPU, so a few at once cut a handler's run on CI's 2 cores.
const defaultParallel = 3

// nodes is how many ginkgo nodes run k's specs.
func (k *kind) nodes() int {
	if v, err := strconv.Atoi(os.Getenv("MAGNETAR_CRITEST_PARALLEL")); err == nil && v > 0 {
		return v
	}
	if k.Parallel > 0 {
		return k.Parallel
	}
	return defaultParallel
}

func loadExpectations(t *testing.T) *expectations {
	data, err := os.ReadFile("expectations.toml")
	if err != nil {
		t.Fatal(err)
	}
	var e expectations
	dec := toml.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("expectations.toml: %v", err)
	}
	compile := func(rs []rule, where string) {
		for i := range rs {
			if rs[i].Reason == "" {
				t.Fatalf("expectations.toml: %s rule %q%q has no reason", where, rs[i].Spec, rs[i].Specs)
			}
			if (rs[i].Spec == "") == (len(rs[i].Specs) == 0) {
				t.Fatalf("expectations.toml: %s rule %q: give either spec or specs", where, rs[i].Reason)
			}
			if len(rs[i].Specs) > 0 {
				quoted := make([]string, len(rs[i].Specs))
				for j, n := range rs[i].Specs {
					quoted[j] = regexp.QuoteMeta(n)
				}
				rs[i].Spec = "^(?:" + strings.Join(quoted, "|") + ")$"
			}
			re, err := regexp.Compile(rs[i].Spec)
			if err != nil {
				t.Fatalf("expectations.toml: %s: %v", where, err)
			}
			rs[i].re = re
		}
	}
	compile(e.Skip, "skip")
	if len(e.Kinds) == 0 || e.Kinds[0].Handler != harness.RuncHandler {
		t.Fatalf("expectations.toml: the first kind must be the baseline %q", harness.RuncHandler)
	}
	for i := range e.Kinds {
		k := &e.Kinds[i]
		compile(k.NotApplicable, k.Handler)
		compile(k.NotYet, k.Handler+" not_yet")
		if k.Focus != "" {
			if k.FocusReason == "" {
				t.Fatalf("expectations.toml: %s: focus without focus_reason", k.Handler)
			}
			re, err := regexp.Compile(k.Focus)
			if err != nil {
				t.Fatalf("expectations.toml: %s focus: %v", k.Handler, err)
			}
			k.focus = re
		}
		// MAGNETAR_CRITEST_FULL=1 runs every spec for every kind, to
		// classify what lies outside the focused subsets.
		if os.Getenv("MAGNETAR_CRITEST_FULL") == "1" {
			k.Focus, k.focus = "", nil
		}
	}
	return &e
}

// alternation joins the rules' expressions for ginkgo's --ginkgo.skip.
func alternation(rs ...[]rule) string {
	var parts []string
	for _, r := range rs {
		for _, x := range r {
			parts = append(parts, "(?:"+x.Spec+")")
		}
	}
	return strings.Join(parts, "|")
}

func match(rs []rule, spec string) *rule {
	for i := range rs {
		if rs[i].re.MatchString(spec) {
			return &rs[i]
		}
	}
	return nil
}

// specResult is one spec of a ginkgo JSON report.
type specResult struct {
	Name    string
	State   string // passed, failed, skipped, pending, panicked, timedout, ...
	Message string // failure or skip message
	RunTime time.Duration
}

// ginkgoReport is the part of ginkgo's JSON report read here.
type ginkgoReport []struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeText            string
		LeafNodeType            string
		State                   string
		RunTime                 time.Duration
		Failure                 *struct {
			Message  string
			Location struct {
				FileName   string
				LineNumber int
			}
		}
	}
}

func readReport(path string) (map[string]specResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r ginkgoReport
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]specResult{}
	for _, suite := range r {
		for _, s := range suite.SpecReports {
			if s.LeafNodeType != "It" {
				continue
			}
			name := strings.Join(append(slices.Clone(s.ContainerHierarchyTexts), s.LeafNodeText), " ")
			res := specResult{Name: name, State: s.State, RunTime: s.RunTime}
			if s.Failure != nil {
				res.Message = fmt.Sprintf("%s (%s:%d)", strings.TrimSpace(s.Failure.Message), filepath.Base(s.Failure.Location.FileName), s.Failure.Location.LineNumber)
			}
			out[name] = res
		}
	}
	return out, nil
}

// outcome is what became of one kind's run.
type outcome struct {
	kind     *kind
	passed   []string
	na       map[string][]string // reason -> specs
	notYet   map[string][]string // reason -> specs
	hostSkip []string            // skipped at run time on this host, like the baseline
	notRun   int                 // outside the kind's focus
	failed   []string
	duration time.Duration
}

// TestCritest runs cri-tools' critest against the stock runc handler and
// every Magnetar handler listed in expectations.toml, in one private
// containerd with the sandboxer, and fails when a Magnetar handler does not
// pass every spec the file does not exempt for its kind.
func TestCritest(t *testing.T) {
	exp := loadExpectations(t)
	e := setup(t)

	var outcomes []*outcome
	var baseline map[string]specResult
	for i := range exp.Kinds {
		k := &exp.Kinds[i]
		if only := os.Getenv("MAGNETAR_CRITEST_HANDLERS"); only != "" && i > 0 && !slices.Contains(strings.Split(only, ","), k.Handler) {
			continue
		}
		o := &outcome{kind: k, na: map[string][]string{}, notYet: map[string][]string{}}
		t.Run(k.Handler, func(t *testing.T) {
			report := filepath.Join(e.base, "report-"+k.Handler+".json")
			args := []string{
				"--runtime-endpoint", e.ctrd.CRIEndpoint(),
				"--image-endpoint", e.ctrd.CRIEndpoint(),
				"--runtime-handler", k.Handler,
				"--ginkgo.no-color",
				"--ginkgo.json-report", report,
				"--ginkgo.timeout", ginkgoTimeout(),
				"--ginkgo.skip", alternation(exp.Skip, k.NotApplicable, k.NotYet),
			}
			if k.focus != nil {
				args = append(args, "--ginkgo.focus", k.Focus)
			}
			if n := k.nodes(); n > 1 {
				// critest runs its nodes through the ginkgo command,
				// looked up in PATH (built by hack/build-tools.sh).
				args = append(args, "--parallel", strconv.Itoa(n))
			}
			logPath := filepath.Join(e.base, "critest-"+k.Handler+".log")
			cmd := exec.Command(filepath.Join(e.binDir, "critest"), args...)
			cmd.Dir = e.tmp
			cmd.Env = append(os.Environ(), "TMPDIR="+e.tmp, "PATH="+e.binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
			f, err := os.Create(logPath)
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stdout, cmd.Stderr = f, f
			start := time.Now()
			runErr := cmd.Run()
			f.Close()
			o.duration = time.Since(start).Round(time.Second)
			results, err := readReport(report)
			if err != nil {
				t.Fatalf("critest %s: %v (run: %v)\n%s", k.Handler, err, runErr, tail(logPath))
			}
			if i == 0 {
				baseline = results
			}
			names := make([]string, 0, len(results))
			for n := range results {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				r := results[n]
				switch {
				case match(exp.Skip, n) != nil:
					continue
				case match(k.NotApplicable, n) != nil:
					reason := match(k.NotApplicable, n).Reason
					o.na[reason] = append(o.na[reason], n)
					continue
				case match(k.NotYet, n) != nil:
					reason := match(k.NotYet, n).Reason
					o.notYet[reason] = append(o.notYet[reason], n)
					continue
				case k.focus != nil && !k.focus.MatchString(n):
					o.notRun++
					continue
				}
				switch r.State {
				case "passed":
					o.passed = append(o.passed, n)
				case "skipped":
					// Skipped at run time (the host lacks AppArmor, ...):
					// fine when the baseline skipped it too.
					if b, ok := baseline[n]; ok && b.State == "skipped" || i == 0 {
						o.hostSkip = append(o.hostSkip, n)
						continue
					}
					o.failed = append(o.failed, n)
					t.Errorf("%s: skipped, but the baseline %s ran it: %s", n, harness.RuncHandler, r.Message)
				default:
					o.failed = append(o.failed, n)
					t.Errorf("%s: %s: %s", n, r.State, r.Message)
				}
			}
			n := 8 // MAGNETAR_CRITEST_SLOWEST=n lists more
			if v, err := strconv.Atoi(os.Getenv("MAGNETAR_CRITEST_SLOWEST")); err == nil {
				n = v
			}
			t.Logf("%s: slowest specs:\n%s", k.Handler, slowest(results, n))
			t.Logf("%s: %d passed, %d not applicable, %d skipped by the host, %d outside the focus, %d failed in %v on %d nodes",
				k.Handler, len(o.passed), countNA(o), len(o.hostSkip), o.notRun, len(o.failed), o.duration, k.nodes())
			if t.Failed() {
				t.Logf("critest log (tail):\n%s", tail(logPath))
			}
		})
		outcomes = append(outcomes, o)
	}
	table := conformanceTable(exp, outcomes)
	t.Logf("conformance table:\n%s", table)
	if os.Getenv("MAGNETAR_CRITEST_README") == "1" && !t.Failed() {
		if err := updateReadme(table); err != nil {
			t.Fatal(err)
		}
	}
}

// ginkgoTimeout bounds one handler's critest run: a full run (no focused
// subsets, MAGNETAR_CRITEST_FULL=1) of the vm kind under QEMU TCG takes
// much longer than CI's.
func ginkgoTimeout() string {
	if os.Getenv("MAGNETAR_CRITEST_FULL") == "1" {
		return "110m"
	}
	return "25m"
}

// slowest lists the n specs that ran longest, with their times (to see
// what a kind's run costs in CI).
func slowest(results map[string]specResult, n int) string {
	rs := make([]specResult, 0, len(results))
	for _, r := range results {
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].RunTime > rs[j].RunTime })
	var b strings.Builder
	for i := 0; i < n && i < len(rs); i++ {
		fmt.Fprintf(&b, "  %v %s (%s)\n", rs[i].RunTime.Round(100*time.Millisecond), rs[i].Name, rs[i].State)
	}
	return b.String()
}

func countNA(o *outcome) int { return count(o.na) }

func count(m map[string][]string) int {
	n := 0
	for _, s := range m {
		n += len(s)
	}
	return n
}

// tail returns the end of a log file.
func tail(path string) string {
	data, _ := os.ReadFile(path)
	const max = 16 << 10
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return string(data)
}

// conformanceTable renders the README's table: per handler, what passed,
// what does not apply and why.
func conformanceTable(exp *expectations, outcomes []*outcome) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| Handler | Passed | Not applicable | Not yet | Skipped on this host | Not run (focus) | Failed |\n|---|---|---|---|---|---|---|\n")
	for _, o := range outcomes {
		fmt.Fprintf(&b, "| `%s` | %d | %d | %d | %d | %d | %d |\n", o.kind.Handler, len(o.passed), countNA(o), count(o.notYet), len(o.hostSkip), o.notRun, len(o.failed))
	}
	if len(outcomes) > 0 && len(outcomes[0].hostSkip) > 0 {
		fmt.Fprintf(&b, "\nSkipped by critest itself on this host, for %s too (%d):\n\n", harness.RuncHandler, len(outcomes[0].hostSkip))
		for _, n := range outcomes[0].hostSkip {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	b.WriteString("\nSkipped for every handler (shared skip list):\n\n")
	for _, r := range exp.Skip {
		fmt.Fprintf(&b, "- `%s`: %s\n", r.Spec, r.Reason)
	}
	for _, o := range outcomes {
		if len(o.na) == 0 && len(o.notYet) == 0 && o.kind.Focus == "" {
			continue
		}
		fmt.Fprintf(&b, "\n`%s`:\n\n", o.kind.Handler)
		if o.kind.Focus != "" {
			fmt.Fprintf(&b, "- runs only `%s`: %s\n", o.kind.Focus, o.kind.FocusReason)
		}
		seen := map[string]bool{}
		for _, r := range o.kind.NotApplicable {
			if n := len(o.na[r.Reason]); n > 0 && !seen[r.Reason] {
				seen[r.Reason] = true
				fmt.Fprintf(&b, "- %d not applicable: %s\n", n, r.Reason)
			}
		}
		for _, r := range o.kind.NotYet {
			if n := len(o.notYet[r.Reason]); n > 0 && !seen[r.Reason] {
				seen[r.Reason] = true
				fmt.Fprintf(&b, "- %d not yet: %s\n", n, r.Reason)
			}
		}
	}
	return b.String()
}

const (
	readmeBegin = "<!-- critest:begin (generated by MAGNETAR_CRITEST_README=1 make test-critest) -->\n"
	readmeEnd   = "<!-- critest:end -->"
)

// updateReadme replaces the README's table between its markers.
func updateReadme(table string) error {
	root, err := harness.ModuleRoot()
	if err != nil {
		return err
	}
	path := filepath.Join(root, "README.md")
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(data)
	i, j := strings.Index(s, readmeBegin), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("README.md has no critest markers")
	}
	s = s[:i+len(readmeBegin)] + table + s[j:]
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
