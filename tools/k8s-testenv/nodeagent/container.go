// One container: its supervisor (start, wait, restart with backoff per restartPolicy, stop with
// SIGTERM then SIGKILL), its environment and argv as the kubelet builds them, and its status.
package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	podresource "k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/pkg/kubelet/envvars"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	backoffMin  = 500 * time.Millisecond
	backoffMax  = 5 * time.Second
)

type container struct {
	w    *podWorker
	spec v1.Container
	kind ctrKind

	// Guarded by w.mu.
	state        v1.ContainerState
	lastState    v1.ContainerState
	restartCount int32
	ready        bool
	started      bool
	everStarted  bool
	program      string
	pid          int
	exitCode     int32
	launched     bool
	execSpec     ExecSpec // how the current process was started (exec probes reuse it)

	stopOnce     sync.Once
	stopCh       chan struct{} // closed by stop(): no more restarts, terminate the process
	stopDeadline time.Time
	startedOnce  sync.Once
	startedCh    chan struct{} // closed when the container is first "started" (startup probe passed)
	done         chan struct{} // closed when the supervisor ends
	killCh       chan string   // a failed liveness or startup probe asks for a restart
}

func newContainer(w *podWorker, spec v1.Container, kind ctrKind) *container {
	return &container{
		w: w, spec: spec, kind: kind,
		state:     v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "PodInitializing"}},
		stopCh:    make(chan struct{}),
		startedCh: make(chan struct{}),
		done:      make(chan struct{}),
		killCh:    make(chan string, 1),
	}
}

func (c *container) launch(ctx context.Context) {
	c.w.mu.Lock()
	c.launched = true
	c.w.mu.Unlock()
	go c.supervise(ctx)
}

// stop ends the container: SIGTERM now, SIGKILL at deadline; it is not restarted.
func (c *container) stop(deadline time.Time) {
	c.stopOnce.Do(func() {
		c.w.mu.Lock()
		c.stopDeadline = deadline
		launched := c.launched
		c.w.mu.Unlock()
		close(c.stopCh)
		if !launched {
			close(c.done)
		}
	})
}

func (c *container) wait() { <-c.done }

func (c *container) stopping() bool {
	select {
	case <-c.stopCh:
		return true
	default:
		return false
	}
}

func (c *container) finalExit() int32 {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	return c.exitCode
}

func (c *container) setState(f func()) {
	c.w.mu.Lock()
	f()
	c.w.mu.Unlock()
	c.w.markDirty()
}

func (c *container) markStarted() {
	c.setState(func() { c.started, c.everStarted = true, true })
	c.startedOnce.Do(func() {
		// Tests read this line to check that an app started only after its sidecar was ready.
		c.w.logf("container %s is started (startup probe passed)", c.spec.Name)
		close(c.startedCh)
	})
}

// shouldRestart decides after an exit with code.
func (c *container) shouldRestart(code int32) bool {
	if c.stopping() || c.w.terminating() {
		return false
	}
	policy := c.w.podCopy().Spec.RestartPolicy
	switch c.kind {
	case kindSidecar:
		return true
	case kindInit:
		return code != 0 && policy != v1.RestartPolicyNever
	default:
		switch policy {
		case v1.RestartPolicyNever:
			return false
		case v1.RestartPolicyOnFailure:
			return code != 0
		default:
			return true
		}
	}
}

func (c *container) supervise(ctx context.Context) {
	defer close(c.done)
	backoff := backoffMin
	first := true
	for {
		if c.stopping() {
			return
		}
		if !first {
			c.setState(func() { c.restartCount++ })
		}
		first = false
		cmd, logPath, err := c.startProcess(ctx)
		if err != nil {
			c.w.logf("container %s: %v", c.spec.Name, err)
			c.setState(func() {
				c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: waitingReason(err), Message: err.Error()}}
			})
			c.w.event(v1.EventTypeWarning, waitingReason(err), "container %s: %v", c.spec.Name, err)
			first = true // not started: not a restart
			select {
			case <-c.stopCh:
				c.setState(func() { c.exitCode = 1 })
				return
			case <-time.After(2 * time.Second):
			}
			continue
		}
		pid := cmd.Process.Pid
		startedAt := metav1.Now()
		c.setState(func() {
			c.pid = pid
			c.state = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: startedAt}}
		})
		c.w.logf("container %s started (pid %d, restart %d): %s; log %s", c.spec.Name, pid, c.restartCount, c.program, logPath)
		exited := make(chan struct{})
		var waitErr error
		go func() { waitErr = cmd.Wait(); close(exited) }()
		probeCtx, stopProbes := context.WithCancel(ctx)
		go c.runProbes(probeCtx)

		reason := ""
		select {
		case <-exited:
		case <-c.stopCh:
			c.terminate(pid, exited, c.stopDeadline)
		case why := <-c.killCh:
			reason = why
			c.terminate(pid, exited, time.Now().Add(c.w.gracePeriod()))
		}
		stopProbes()
		// Anything the program left in its process group goes with it, as with a container.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if waitErr != nil && cmd.ProcessState == nil {
			c.w.logf("container %s: waiting for it: %v", c.spec.Name, waitErr)
		}
		code, exitReason := exitStatus(cmd)
		finished := metav1.Now()
		c.setState(func() {
			c.exitCode = code
			c.ready, c.started = false, false
			t := &v1.ContainerStateTerminated{ExitCode: code, Reason: exitReason, StartedAt: startedAt, FinishedAt: finished,
				ContainerID: c.containerID()}
			if reason != "" {
				t.Message = reason
			}
			c.state = v1.ContainerState{Terminated: t}
		})
		c.w.logf("container %s exited with %d (%s)", c.spec.Name, code, exitReason)
		if !c.shouldRestart(code) {
			return
		}
		if finished.Sub(startedAt.Time) > 10*time.Second {
			backoff = backoffMin
		}
		c.setState(func() {
			c.lastState = c.state
			c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container %s", backoff, c.spec.Name)}}
		})
		select {
		case <-c.stopCh:
			c.setState(func() { c.state = c.lastState })
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, backoffMax)
	}
}

func (c *container) containerID() string {
	return fmt.Sprintf("onemesh://%s-%s-%d", c.w.uid, c.spec.Name, c.restartCount)
}

// terminate: SIGTERM to the container's main process, SIGKILL to its group at deadline.
func (c *container) terminate(pid int, exited chan struct{}, deadline time.Time) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
	}
}

func exitStatus(cmd *exec.Cmd) (int32, string) {
	if cmd.ProcessState == nil {
		return 128, "Error"
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return int32(cmd.ProcessState.ExitCode()), "Error"
	}
	if ws.Signaled() {
		return 128 + int32(ws.Signal()), "Error"
	}
	if ws.ExitStatus() == 0 {
		return 0, "Completed"
	}
	return int32(ws.ExitStatus()), "Error"
}

// errImagePull marks a container whose image is not in the table.
type errImagePull struct{ msg string }

func (e *errImagePull) Error() string { return e.msg }

// errConfig marks a container whose env or mounts cannot be built yet.
type errConfig struct{ err error }

func (e *errConfig) Error() string { return e.err.Error() }

func waitingReason(err error) string {
	var ip *errImagePull
	var ce *errConfig
	switch {
	case errors.As(err, &ip):
		return "ErrImagePull"
	case errors.As(err, &ce):
		return "CreateContainerConfigError"
	default:
		return "RunContainerError"
	}
}

// startProcess builds the container's argv, env and mounts and starts it in the pod's namespace.
func (c *container) startProcess(ctx context.Context) (*exec.Cmd, string, error) {
	w := c.w
	table, err := LoadImageTable(w.a.cfg.ImagesPath)
	if err != nil {
		return nil, "", &errImagePull{err.Error()}
	}
	entry, ok := table.Lookup(c.spec.Image)
	if !ok {
		return nil, "", &errImagePull{fmt.Sprintf("image %q (%s) is not in the test node's image table %s: add it there, mapped to a program on this machine",
			c.spec.Image, NormalizeImage(c.spec.Image), w.a.cfg.ImagesPath)}
	}
	pod := w.podCopy()
	env, err := w.buildEnv(ctx, pod, &c.spec)
	if err != nil {
		return nil, "", &errConfig{err}
	}
	envMap := map[string]string{}
	var envList []string
	for _, e := range env {
		envMap[e.Name] = e.Value
		envList = append(envList, e.Name+"="+e.Value)
	}
	mapping := expansion.MappingFuncFor(envMap)
	expand := func(in []string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = expansion.Expand(s, mapping)
		}
		return out
	}
	argv, err := Argv(entry, expand(c.spec.Command), expand(c.spec.Args), envMap["PATH"])
	if err != nil {
		return nil, "", &errImagePull{fmt.Sprintf("image %q: %v", c.spec.Image, err)}
	}
	mounts, err := w.mounts(&c.spec, mapping)
	if err != nil {
		return nil, "", &errConfig{err}
	}
	spec := ExecSpec{Hostname: podHostname(pod), Mounts: mounts, WorkingDir: c.spec.WorkingDir, Argv: argv, Env: envList}
	if err := applySecurity(&spec, pod, &c.spec); err != nil {
		return nil, "", &errConfig{err}
	}

	runDir := filepath.Join(w.dir, "run")
	logDir := filepath.Join(w.dir, "logs")
	for _, d := range []string{runDir, logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, "", err
		}
	}
	specPath := filepath.Join(runDir, c.spec.Name+".json")
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(specPath, data, 0o600); err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(logDir, c.spec.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", podNetnsName(string(w.uid)), w.a.cfg.Exe, "container-exec", specPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=" + defaultPath}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting %s: %w", argv[0], err)
	}
	c.w.mu.Lock()
	c.program = strings.Join(argv, " ")
	c.execSpec = spec
	c.w.mu.Unlock()
	return cmd, logPath, nil
}

// applySecurity sets user, groups and capabilities from the pod's and container's securityContext.
// runAsNonRoot without a non-zero runAsUser is refused, as the kubelet refuses an image whose user
// is root: the image table has no users, so every image runs as root unless the pod says otherwise.
func applySecurity(spec *ExecSpec, pod *v1.Pod, c *v1.Container) error {
	psc, csc := pod.Spec.SecurityContext, c.SecurityContext
	nonRoot := (psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot) ||
		(csc != nil && csc.RunAsNonRoot != nil && *csc.RunAsNonRoot)
	if csc != nil && csc.RunAsNonRoot != nil && !*csc.RunAsNonRoot {
		nonRoot = false
	}
	if uid := effectiveUID(pod, c); nonRoot && (uid == nil || *uid == 0) {
		return fmt.Errorf("container %s has runAsNonRoot and would run as root (the test node's images have no user): set runAsUser", c.Name)
	}
	if psc != nil {
		spec.UID, spec.GID = psc.RunAsUser, psc.RunAsGroup
		if psc.FSGroup != nil {
			spec.Groups = append(spec.Groups, *psc.FSGroup)
		}
		spec.Groups = append(spec.Groups, psc.SupplementalGroups...)
	}
	if csc != nil {
		if csc.RunAsUser != nil {
			spec.UID = csc.RunAsUser
		}
		if csc.RunAsGroup != nil {
			spec.GID = csc.RunAsGroup
		}
		if csc.Capabilities != nil {
			for _, cp := range csc.Capabilities.Add {
				spec.Caps = append(spec.Caps, string(cp))
			}
		}
		if csc.AllowPrivilegeEscalation != nil && !*csc.AllowPrivilegeEscalation {
			spec.NoNewPrivs = true
		}
		if csc.ReadOnlyRootFilesystem != nil && *csc.ReadOnlyRootFilesystem {
			spec.ReadOnlyRoot = true
		}
	}
	if spec.UID != nil && *spec.UID == 0 && spec.GID == nil && !spec.NoNewPrivs {
		spec.UID = nil // root stays root, with all its capabilities
	}
	return nil
}

// ---- environment ----

// serviceEnv is what the kubelet adds: the `kubernetes` Service always, and with
// enableServiceLinks (the default) every Service of the pod's namespace.
func (w *podWorker) serviceEnv(pod *v1.Pod) ([]v1.EnvVar, error) {
	var svcs []*v1.Service
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		list, err := w.a.services.Services(pod.Namespace).List(labels.Everything())
		if err != nil {
			return nil, err
		}
		for _, s := range list {
			if pod.Namespace == metav1.NamespaceDefault && s.Name == "kubernetes" {
				continue
			}
			svcs = append(svcs, s)
		}
	}
	if k, err := w.a.services.Services(metav1.NamespaceDefault).Get("kubernetes"); err == nil {
		svcs = append(svcs, k)
	} else {
		// The lister may lag at start: the API server always gives it 10.96.0.1:443.
		svcs = append(svcs, &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"}, Spec: v1.ServiceSpec{
			ClusterIP: "10.96.0.1", Ports: []v1.ServicePort{{Name: "https", Port: 443, Protocol: v1.ProtocolTCP}}}})
	}
	return envvars.FromServices(svcs), nil
}

// buildEnv is the kubelet's makeEnvironmentVariables: envFrom, then env (with $(VAR) expansion
// and valueFrom), then the Service variables not already set, then PATH, HOSTNAME and HOME.
func (w *podWorker) buildEnv(ctx context.Context, pod *v1.Pod, c *v1.Container) ([]v1.EnvVar, error) {
	svcEnv, err := w.serviceEnv(pod)
	if err != nil {
		return nil, err
	}
	svcMap := map[string]string{}
	for _, e := range svcEnv {
		svcMap[e.Name] = e.Value
	}
	tmp := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := tmp[k]; !ok {
			order = append(order, k)
		}
		tmp[k] = v
	}
	core := w.a.client.CoreV1()
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, ef.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %s: %w", ef.ConfigMapRef.Name, err)
			}
			for k, v := range cm.Data {
				set(ef.Prefix+k, v)
			}
		case ef.SecretRef != nil:
			s, err := core.Secrets(pod.Namespace).Get(ctx, ef.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s: %w", ef.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				set(ef.Prefix+k, string(v))
			}
		}
	}
	mapping := expansion.MappingFuncFor(tmp, svcMap)
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expansion.Expand(e.Value, mapping))
			continue
		}
		v, skip, err := w.envValueFrom(ctx, pod, c, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if !skip {
			set(e.Name, v)
		}
	}
	for _, e := range svcEnv {
		if _, ok := tmp[e.Name]; !ok {
			set(e.Name, e.Value)
		}
	}
	if _, ok := tmp["PATH"]; !ok {
		set("PATH", defaultPath)
	}
	if _, ok := tmp["HOSTNAME"]; !ok {
		set("HOSTNAME", podHostname(pod))
	}
	if _, ok := tmp["HOME"]; !ok {
		home := "/root"
		if uid := effectiveUID(pod, c); uid != nil && *uid != 0 {
			home = "/"
		}
		set("HOME", home)
	}
	out := make([]v1.EnvVar, 0, len(order))
	for _, k := range order {
		out = append(out, v1.EnvVar{Name: k, Value: tmp[k]})
	}
	return out, nil
}

func effectiveUID(pod *v1.Pod, c *v1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.RunAsUser
	}
	return nil
}

// envValueFrom resolves one valueFrom; skip is true for a missing optional key.
func (w *podWorker) envValueFrom(ctx context.Context, pod *v1.Pod, c *v1.Container, vf *v1.EnvVarSource) (string, bool, error) {
	core := w.a.client.CoreV1()
	switch {
	case vf.FieldRef != nil:
		v, err := w.fieldValue(pod, vf.FieldRef.FieldPath)
		return v, false, err
	case vf.ResourceFieldRef != nil:
		v, err := podresource.ExtractResourceValueByContainerName(vf.ResourceFieldRef, pod, c.Name)
		return v, false, err
	case vf.ConfigMapKeyRef != nil:
		r := vf.ConfigMapKeyRef
		optional := r.Optional != nil && *r.Optional
		cm, err := core.ConfigMaps(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configMap %s: %w", r.Name, err)
		}
		if v, ok := cm.Data[r.Key]; ok {
			return v, false, nil
		}
		if optional {
			return "", true, nil
		}
		return "", false, fmt.Errorf("configMap %s has no key %q", r.Name, r.Key)
	case vf.SecretKeyRef != nil:
		r := vf.SecretKeyRef
		optional := r.Optional != nil && *r.Optional
		s, err := core.Secrets(pod.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %s: %w", r.Name, err)
		}
		if v, ok := s.Data[r.Key]; ok {
			return string(v), false, nil
		}
		if optional {
			return "", true, nil
		}
		return "", false, fmt.Errorf("secret %s has no key %q", r.Name, r.Key)
	}
	return "", false, fmt.Errorf("unsupported valueFrom (the test node agent knows fieldRef, resourceFieldRef, configMapKeyRef and secretKeyRef)")
}

// fieldValue is a downward-API field: metadata via the kubelet's own code, the rest here.
func (w *podWorker) fieldValue(pod *v1.Pod, path string) (string, error) {
	w.mu.Lock()
	ip := ""
	if w.ip.IsValid() {
		ip = w.ip.String()
	}
	w.mu.Unlock()
	switch path {
	case "status.podIP", "status.podIPs":
		return ip, nil
	case "status.hostIP", "status.hostIPs":
		return w.a.cfg.NodeIP, nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	}
	return fieldpath.ExtractFieldPathAsString(pod, path)
}

// mounts turns the container's volumeMounts into bind mounts of the prepared volumes.
func (w *podWorker) mounts(c *v1.Container, mapping func(string) string) ([]ExecMount, error) {
	w.mu.Lock()
	vols := w.volumes
	out := []ExecMount{{Source: w.etcHosts, Target: "/etc/hosts"}, {Source: w.resolvConf, Target: "/etc/resolv.conf"}}
	w.mu.Unlock()
	for _, m := range c.VolumeMounts {
		src, ok := vols[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: no volume of that name in the pod", m.Name)
		}
		sub := m.SubPath
		if m.SubPathExpr != "" {
			sub = expansion.Expand(m.SubPathExpr, mapping)
		}
		if sub != "" {
			if filepath.IsAbs(sub) || strings.Contains(sub, "..") {
				return nil, fmt.Errorf("volumeMount %s: subPath %q must be relative without '..'", m.Name, sub)
			}
			src = filepath.Join(src, sub)
			if _, err := os.Stat(src); os.IsNotExist(err) {
				if err := os.MkdirAll(src, 0o777); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, ExecMount{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return out, nil
}

// statusLocked is the container's status (w.mu held).
func (c *container) statusLocked() v1.ContainerStatus {
	started := c.started
	id := ""
	if c.state.Running != nil {
		id = c.containerID()
	} else if c.state.Terminated != nil {
		id = c.state.Terminated.ContainerID
	}
	imageID := "onemesh-testenv://" + NormalizeImage(c.spec.Image)
	return v1.ContainerStatus{
		Name: c.spec.Name, State: c.state, LastTerminationState: c.lastState, Ready: c.ready,
		RestartCount: c.restartCount, Image: c.spec.Image, ImageID: imageID, ContainerID: id, Started: &started,
	}
}
