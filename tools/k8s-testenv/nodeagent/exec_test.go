package nodeagent

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary act as `testenv container-exec` for TestContainerExecAsRoot.
func TestMain(m *testing.M) {
	if spec := os.Getenv("NODEAGENT_TEST_CONTAINER_EXEC"); spec != "" {
		if err := RunContainerExec([]string{spec}); err != nil {
			os.Stderr.WriteString("container-exec: " + err.Error() + "\n")
			os.Exit(111)
		}
	}
	os.Exit(m.Run())
}

// The launcher mounts volumes (read-only ones too), sets the hostname, changes directory, drops
// to the pod's user and keeps NET_ADMIN as an ambient capability. Needs root; runs in a mount
// namespace of its own (unshare), so nothing shows outside.
func TestContainerExecAsRoot(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (mount and UTS namespaces, setpriv)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // the pod's user must get through to the mounts
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	vol := filepath.Join(dir, "vol")
	roVol := filepath.Join(dir, "ro")
	for _, d := range []string{vol, roVol} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(vol, "greeting"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root") // mount targets live under here, created by the launcher
	uid := int64(65534)
	script := `id -u; hostname; pwd; cat ` + root + `/data/greeting; echo; grep CapAmb /proc/self/status; ` +
		`touch ` + root + `/ro/x 2>/dev/null && echo ro-writable || echo ro-refused; echo "$GREETING"; ` +
		`touch ` + dir + `/outside 2>/dev/null && echo root-writable || echo root-refused; ` +
		`touch ` + root + `/data/new && echo volume-writable; echo x > /dev/null && echo dev-null-ok`
	spec := ExecSpec{
		Hostname:   "pod-under-test",
		Mounts:     []ExecMount{{Source: vol, Target: root + "/data"}, {Source: roVol, Target: root + "/ro", ReadOnly: true}},
		WorkingDir: root + "/work",
		UID:        &uid, GID: &uid,
		Caps:         []string{"NET_ADMIN"},
		ReadOnlyRoot: true,
		Argv:         []string{"/bin/sh", "-c", script},
		Env:          []string{"PATH=" + defaultPath, "GREETING=from-env"},
	}
	data, _ := json.Marshal(spec)
	specPath := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(specPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave", os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NODEAGENT_TEST_CONTAINER_EXEC="+specPath)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("launcher: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []string{"65534", "pod-under-test", root + "/work", "hello", "CapAmb:\t0000000000001000", "ro-refused", "from-env", "root-refused", "volume-writable", "dev-null-ok"}
	if len(lines) != len(want) {
		t.Fatalf("output:\n%s", out)
	}
	for i := range want {
		if strings.TrimSpace(lines[i]) != want[i] {
			t.Errorf("line %d = %q, want %q", i, lines[i], want[i])
		}
	}
	// readOnlyRootFilesystem held only inside: the test's directory is writable here.
	if err := os.WriteFile(filepath.Join(dir, "outside"), nil, 0o644); err != nil {
		t.Errorf("the machine's file system became read-only: %v", err)
	}
	// The bind mounts stayed in the launcher's mount namespace.
	if _, err := os.Stat(filepath.Join(root, "data", "greeting")); err == nil {
		t.Error("the volume's bind mount is visible outside the container")
	}
	if h, _ := os.Hostname(); h == "pod-under-test" {
		t.Error("the machine's hostname changed")
	}
}
