package vm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTemplateSizes(t *testing.T) {
	c := Config{VCPUs: 2, Pool: PoolConfig{Classes: []PoolClass{{Count: 1, MemoryMiB: 192}, {Count: 0, MemoryMiB: 512}, {Count: 1}}}}
	got, err := c.templateSizes()
	if err != nil {
		t.Fatal(err)
	}
	want := []vmSize{{2, 256}, {2, 192}} // the default size once; a class of count 0 has none
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("sizes %v, want %v", got, want)
	}
	c.Template.Sizes = []TemplateSize{{MemoryMiB: 224}}
	if got, _ = c.templateSizes(); len(got) != 1 || got[0] != (vmSize{2, 224}) {
		t.Errorf("explicit sizes %v, want [2x224MiB]", got)
	}
	c.Template.Sizes = []TemplateSize{{VCPUs: -1}}
	if _, err := c.templateSizes(); err == nil {
		t.Error("a negative size was accepted")
	}
	c.Template = TemplateConfig{RetryInterval: -time.Second}
	if _, err := c.templateSizes(); err == nil {
		t.Error("a negative retry interval was accepted")
	}
}

// TestLoadTemplateChecks: a template loads only when its metadata has the
// wanted key and its files are intact and unchanged.
func TestLoadTemplateChecks(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := stampOf(kernel)
	if err != nil {
		t.Fatal(err)
	}
	state := []byte("saved device state")
	sum := sha256.Sum256(state)
	m := templateMetadata{Format: templateFormat, Key: "00112233445566778899aabbccddeeff", VCPUs: 1, MemoryMiB: 1,
		MAC: "02:00:00:00:00:01", StateSHA256: hex.EncodeToString(sum[:]), Files: []fileStamp{st}}
	write := func() {
		b, _ := json.Marshal(m)
		for name, data := range map[string][]byte{templateMeta: b, templateState: state} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Truncate(filepath.Join(dir, templateMemory), 1<<20); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, templateMemory), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	write()
	tp, err := loadTemplate(dir, m)
	if err != nil {
		t.Fatalf("intact template: %v", err)
	}
	if tp.meta.MAC != m.MAC || tp.size != (vmSize{1, 1}) {
		t.Errorf("loaded %+v", tp)
	}
	other := m
	other.Key = "ff" + m.Key[2:]
	if _, err := loadTemplate(dir, other); err == nil {
		t.Error("a template of another key loaded")
	}
	// A truncated state.
	if err := os.WriteFile(filepath.Join(dir, templateState), state[:4], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTemplate(dir, m); err == nil {
		t.Error("a template with a truncated state loaded")
	}
	write()
	// A short memory file.
	if err := os.Truncate(filepath.Join(dir, templateMemory), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTemplate(dir, m); err == nil {
		t.Error("a template with a short memory file loaded")
	}
	write()
	// The kernel changed.
	if err := os.WriteFile(kernel, []byte("another kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadTemplate(dir, m); err == nil {
		t.Error("a template of a changed kernel loaded")
	}
}
