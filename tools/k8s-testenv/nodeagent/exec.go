// The container launcher, `testenv container-exec SPEC.json`: the node agent starts it with
// `ip netns exec <pod namespace>`, which gives it the pod's network namespace and a mount
// namespace of its own (slave to the machine's). It bind-mounts the volumes at their mount paths,
// sets the hostname to the pod's name in a UTS namespace of its own, changes to the working
// directory and executes the program, through setpriv when it must change user or keep added
// capabilities. Its process becomes the container's: the agent signals and waits for it.
package nodeagent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExecSpec is what container-exec does, written by the agent next to the container's log.
type ExecSpec struct {
	Hostname   string      `json:"hostname"`
	Mounts     []ExecMount `json:"mounts"`
	WorkingDir string      `json:"workingDir"`
	// UID and GID are nil to stay root; Groups are the supplementary groups (fsGroup and
	// supplementalGroups) when UID or GID is set.
	UID        *int64   `json:"uid,omitempty"`
	GID        *int64   `json:"gid,omitempty"`
	Groups     []int64  `json:"groups,omitempty"`
	Caps       []string `json:"caps,omitempty"` // Kubernetes names: NET_ADMIN
	NoNewPrivs bool     `json:"noNewPrivs,omitempty"`
	// ReadOnlyRoot is readOnlyRootFilesystem: every mount but the volumes, /dev and /proc is made
	// read-only in the container's mount namespace (the machine's file system is its root).
	ReadOnlyRoot bool     `json:"readOnlyRoot,omitempty"`
	Argv         []string `json:"argv"`
	Env          []string `json:"env"`
	SetprivPath  string   `json:"setprivPath"`
}

// ExecMount is one bind mount: Source (a directory or file of the agent's) at Target.
type ExecMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// RunContainerExec is `testenv container-exec SPEC.json`; it only returns on error.
func RunContainerExec(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: testenv container-exec SPEC.json (the node agent runs it)")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var spec ExecSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if len(spec.Argv) == 0 {
		return fmt.Errorf("%s: no program to run", args[0])
	}
	// Namespaces and exec apply to this thread: keep it.
	runtime.LockOSThread()
	if spec.Hostname != "" {
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			return fmt.Errorf("unshare(UTS): %w", err)
		}
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("sethostname %s: %w", spec.Hostname, err)
		}
	}
	// `ip netns exec` made this mount namespace a slave of the machine's; make sure of it so that
	// no bind mount made here shows outside.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making / a slave mount: %w", err)
	}
	for _, m := range spec.Mounts {
		if err := bindMount(m); err != nil {
			return err
		}
	}
	wd := spec.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := os.MkdirAll(wd, 0o755); err != nil {
		return fmt.Errorf("creating the working directory %s: %w", wd, err)
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("changing to the working directory %s: %w", wd, err)
	}
	if spec.ReadOnlyRoot {
		if err := readOnlyRoot(spec.Mounts); err != nil {
			return err
		}
	}
	argv := spec.Argv
	if spec.UID != nil || spec.GID != nil || spec.NoNewPrivs {
		argv = append(setprivArgs(&spec), argv...)
	}
	return fmt.Errorf("executing %s: %w", argv[0], syscall.Exec(argv[0], argv, spec.Env))
}

// readOnlyRoot makes every mount of this (private) mount namespace read-only, recursively, then
// the writable volumes, /dev and /proc writable again, as a container with readOnlyRootFilesystem
// sees them (its /dev and /proc are its own and writable, /tmp is part of the read-only root).
func readOnlyRoot(mounts []ExecMount) error {
	ro := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
	if err := unix.MountSetattr(unix.AT_FDCWD, "/", unix.AT_RECURSIVE, ro); err != nil {
		return fmt.Errorf("readOnlyRootFilesystem: making / read-only: %w", err)
	}
	rw := &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}
	for _, p := range []string{"/dev", "/proc"} {
		// Not a mount point here (EINVAL): nothing to do.
		_ = unix.MountSetattr(unix.AT_FDCWD, p, unix.AT_RECURSIVE, rw)
	}
	for _, m := range mounts {
		if m.ReadOnly {
			continue
		}
		if err := unix.MountSetattr(unix.AT_FDCWD, m.Target, 0, rw); err != nil {
			return fmt.Errorf("readOnlyRootFilesystem: keeping the volume at %s writable: %w", m.Target, err)
		}
	}
	return nil
}

func setprivArgs(spec *ExecSpec) []string {
	sp := spec.SetprivPath
	if sp == "" {
		sp = "/usr/bin/setpriv"
	}
	out := []string{sp}
	if spec.UID != nil {
		out = append(out, "--reuid="+strconv.FormatInt(*spec.UID, 10))
	}
	if spec.GID != nil {
		out = append(out, "--regid="+strconv.FormatInt(*spec.GID, 10))
	}
	if spec.UID != nil || spec.GID != nil {
		if len(spec.Groups) > 0 {
			gs := make([]string, len(spec.Groups))
			for i, g := range spec.Groups {
				gs[i] = strconv.FormatInt(g, 10)
			}
			out = append(out, "--groups="+strings.Join(gs, ","))
		} else {
			out = append(out, "--clear-groups")
		}
	}
	if len(spec.Caps) > 0 && spec.UID != nil && *spec.UID != 0 {
		cs := make([]string, len(spec.Caps))
		for i, c := range spec.Caps {
			cs[i] = "+" + strings.ToLower(strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
		}
		out = append(out, "--inh-caps="+strings.Join(cs, ","), "--ambient-caps="+strings.Join(cs, ","))
	}
	if spec.NoNewPrivs {
		out = append(out, "--no-new-privs")
	}
	return append(out, "--")
}

func bindMount(m ExecMount) error {
	st, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("volume source %s for %s: %w", m.Source, m.Target, err)
	}
	if st.IsDir() {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("creating the mount path %s: %w", m.Target, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
			return fmt.Errorf("creating the mount path's directory %s: %w", filepath.Dir(m.Target), err)
		}
		if _, err := os.Stat(m.Target); os.IsNotExist(err) {
			f, err := os.OpenFile(m.Target, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return fmt.Errorf("creating the mount point %s: %w", m.Target, err)
			}
			f.Close()
		}
	}
	if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s at %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", m.Target, err)
		}
	}
	return nil
}
