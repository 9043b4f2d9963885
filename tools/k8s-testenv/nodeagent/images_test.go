package nodeagent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestNormalizeImage(t *testing.T) {
	for in, want := range map[string]string{
		"python":                              "python",
		"python:3.12":                         "python",
		"docker.io/library/python:3.12-slim":  "python",
		"ghcr.io/onemesh/proxy:v1@sha256:abc": "onemesh/proxy",
		"localhost/onemesh/control":           "onemesh/control",
		"registry:5000/team/app:1":            "team/app",
		"onemesh/proxy":                       "onemesh/proxy",
		"library/debian":                      "debian",
	} {
		if got := NormalizeImage(in); got != want {
			t.Errorf("NormalizeImage(%q) = %q, want %q", in, got, want)
		}
	}
}

func writeTable(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "images.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImageTableLookup(t *testing.T) {
	table, err := LoadImageTable(writeTable(t, `{"python:3": "/usr/bin/python3", "onemesh/proxy": ["/bin/proxy", "--default"], "control": "/bin/control"}`))
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := table.Lookup("docker.io/python:3.12"); !ok || e[0] != "/usr/bin/python3" {
		t.Errorf("python: %v %v", e, ok)
	}
	if e, ok := table.Lookup("ghcr.io/onemesh/proxy:dev"); !ok || !reflect.DeepEqual(e, []string{"/bin/proxy", "--default"}) {
		t.Errorf("onemesh/proxy: %v %v", e, ok)
	}
	// The last path segment is the fallback: onemesh/control finds "control".
	if e, ok := table.Lookup("onemesh/control:v2"); !ok || e[0] != "/bin/control" {
		t.Errorf("onemesh/control: %v %v", e, ok)
	}
	if _, ok := table.Lookup("nginx"); ok {
		t.Error("nginx found in a table without it")
	}
}

func TestImageTableRejectsBadValues(t *testing.T) {
	for _, body := range []string{`[]`, `{"x": 3}`, `{"x": ""}`, `{"x": []}`, `not json`} {
		if _, err := LoadImageTable(writeTable(t, body)); err == nil {
			t.Errorf("table %s accepted", body)
		}
	}
	_, err := LoadImageTable(filepath.Join(t.TempDir(), "missing.json"))
	if err == nil || !strings.Contains(err.Error(), "ONEMESH_K8S_IMAGES") {
		t.Errorf("missing table: %v (should say how to fix it)", err)
	}
}

func TestArgvFollowsKubernetesEntrypointRules(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	onPath := filepath.Join(dir, "tool")
	if err := os.WriteFile(onPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	entry := []string{prog, "--image-default"}
	cases := []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"image defaults", nil, nil, []string{prog, "--image-default"}},
		{"args replace the default arguments", nil, []string{"-v"}, []string{prog, "-v"}},
		{"command found on PATH", []string{"tool", "x"}, []string{"y"}, []string{onPath, "x", "y"}},
		{"command naming the image's own program", []string{"/usr/local/bin/onemesh-proxy", "run"}, nil, []string{prog, "run"}},
	}
	for _, c := range cases {
		got, err := Argv(entry, c.command, c.args, dir)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: argv = %v, want %v", c.name, got, c.want)
		}
	}
	if _, err := Argv([]string{filepath.Join(dir, "absent")}, nil, nil, dir); err == nil {
		t.Error("a table entry naming a missing program was accepted")
	}
}
