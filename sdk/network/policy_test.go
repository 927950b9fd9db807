package network

import (
	"encoding/json"
	"testing"
)

func TestParseRule(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/8":        "10.0.0.0/8",
		"10.1.2.3/8":        "10.0.0.0/8",
		"192.0.2.1":         "192.0.2.1/32",
		"192.0.2.0/24:443":  "192.0.2.0/24:443",
		"192.0.2.1:53":      "192.0.2.1/32:53",
		"fd00::/8":          "fd00::/8",
		"[fd00::1]:443":     "[fd00::1/128]:443",
		"[2001:db8::/32]:1": "[2001:db8::/32]:1",
		"::1":               "::1/128",
	} {
		r, err := ParseRule(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if r.String() != want {
			t.Errorf("%q parsed as %q, want %q", in, r, want)
		}
		back, err := ParseRule(r.String())
		if err != nil || back != r {
			t.Errorf("%q does not round-trip: %v %v", r, back, err)
		}
	}
	for _, in := range []string{"", "10.0.0.0/33", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:", "host:80", "[fd00::1]x", "[fd00::1", "::ffff:10.0.0.1", "fe80::1%eth0", "10.0.0.1:80:90", "10.0.0.1/8/8"} {
		if r, err := ParseRule(in); err == nil {
			t.Errorf("%q accepted as %v", in, r)
		}
	}
}

func TestPolicyValidateJSON(t *testing.T) {
	p := Policy{Default: ActionDeny, DNS: ActionAllow, Allow: []Rule{{}}}
	if p.Validate() == nil {
		t.Error("a rule with no prefix was accepted")
	}
	if (Policy{Default: "maybe"}).Validate() == nil {
		t.Error("default action maybe was accepted")
	}
	r, _ := ParseRule("10.0.0.0/8:80")
	p = Policy{Default: ActionDeny, Allow: []Rule{r}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var q Policy
	if err := json.Unmarshal(b, &q); err != nil || len(q.Allow) != 1 || q.Allow[0] != r || q.Default != ActionDeny {
		t.Errorf("round trip of %s: %+v %v", b, q, err)
	}
	if (Policy{}).AllowsAll() != true || p.AllowsAll() {
		t.Error("AllowsAll")
	}
}
