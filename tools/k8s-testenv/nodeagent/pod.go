// One pod's life on the node: network, volumes, init containers (run to completion, or native
// sidecars kept running), app containers with restarts and probes, termination and status.
package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

type ctrKind int

const (
	kindInit    ctrKind = iota // a regular init container: runs to completion
	kindSidecar                // an init container with restartPolicy Always
	kindApp
)

type podWorker struct {
	a        *Agent
	uid      types.UID
	ns, name string
	dir      string

	mu        sync.Mutex
	pod       *v1.Pod // latest seen
	ip        netip.Addr
	startTime metav1.Time
	phase     v1.PodPhase
	reason    string
	message   string
	initDone  bool
	ctrs      map[string]*container
	order     []*container // init containers (incl. sidecars) in order, then app containers
	condTimes map[v1.PodConditionType]condMark
	volumes   map[string]string // volume name -> directory or file on this machine
	// The pod's /etc/hosts and /etc/resolv.conf, bind-mounted into every container.
	etcHosts, resolvConf string
	takenUp              time.Time // when this agent first saw the pod
	readyLogged          bool

	terminateOnce sync.Once
	terminateCh   chan struct{} // closed when the pod gets a deletionTimestamp
	goneOnce      sync.Once
	goneCh        chan struct{} // closed when the pod is gone from the API
	dirty         chan struct{}
}

type condMark struct {
	status v1.ConditionStatus
	at     metav1.Time
}

func newPodWorker(a *Agent, pod *v1.Pod) *podWorker {
	w := &podWorker{
		a: a, uid: pod.UID, ns: pod.Namespace, name: pod.Name, dir: a.podDir(pod), pod: pod.DeepCopy(),
		ctrs: map[string]*container{}, condTimes: map[v1.PodConditionType]condMark{},
		terminateCh: make(chan struct{}), goneCh: make(chan struct{}), dirty: make(chan struct{}, 1),
		phase: v1.PodPending, takenUp: time.Now(),
	}
	if pod.Status.StartTime != nil {
		w.startTime = *pod.Status.StartTime
	} else {
		w.startTime = metav1.Now()
	}
	prev := map[string]v1.ContainerStatus{}
	for _, s := range append(append([]v1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		prev[s.Name] = s
	}
	add := func(spec v1.Container, kind ctrKind) {
		c := newContainer(w, spec, kind)
		if p, ok := prev[spec.Name]; ok {
			c.restartCount = p.RestartCount
			if p.State.Running != nil || p.State.Terminated != nil {
				c.restartCount++ // it ran under an earlier agent: this start is a restart
			}
		}
		w.ctrs[spec.Name] = c
		w.order = append(w.order, c)
	}
	for _, ic := range pod.Spec.InitContainers {
		if ic.RestartPolicy != nil && *ic.RestartPolicy == v1.ContainerRestartPolicyAlways {
			add(ic, kindSidecar)
		} else {
			add(ic, kindInit)
		}
	}
	for _, c := range pod.Spec.Containers {
		add(c, kindApp)
	}
	if pod.DeletionTimestamp != nil {
		close(w.terminateCh)
		w.terminateOnce.Do(func() {})
	}
	return w
}

func (w *podWorker) key() string {
	return w.ns + "/" + w.name
}

// update takes a newer version of the pod from the informer.
func (w *podWorker) update(pod *v1.Pod) {
	w.mu.Lock()
	w.pod = pod.DeepCopy()
	w.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		w.terminateOnce.Do(func() { close(w.terminateCh) })
	}
}

// gone: the pod was deleted from the API (force-deleted, or our own final delete).
func (w *podWorker) gone() {
	w.goneOnce.Do(func() { close(w.goneCh) })
	w.terminateOnce.Do(func() { close(w.terminateCh) })
}

func (w *podWorker) terminating() bool {
	select {
	case <-w.terminateCh:
		return true
	default:
		return false
	}
}

func (w *podWorker) markDirty() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

func (w *podWorker) podCopy() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod.DeepCopy()
}

func (w *podWorker) logf(format string, args ...any) {
	log.Printf("pod %s: %s", w.key(), fmt.Sprintf(format, args...))
}

func (w *podWorker) event(typ, reason, format string, args ...any) {
	w.a.recorder.Eventf(w.podCopy(), typ, reason, format, args...)
}

// sleep waits d or until the pod terminates; false when it terminates.
func (w *podWorker) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.terminateCh:
		return false
	}
}

func (w *podWorker) run(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	statusDone := make(chan struct{})
	go func() { w.statusLoop(ctx); close(statusDone) }()

	pod := w.podCopy()
	if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		// Finished before (under an earlier agent): nothing runs; wait for the deletion.
		w.mu.Lock()
		w.phase = pod.Status.Phase
		w.mu.Unlock()
		w.awaitDeletion(ctx, cancel, statusDone)
		return
	}
	if !w.terminating() && w.start(ctx) {
		w.supervise(ctx)
	}
	w.awaitDeletion(ctx, cancel, statusDone)
}

// start sets up the network and volumes, runs the init containers and starts the app
// containers; false when the pod ended (failed init, or termination) before its apps started.
func (w *podWorker) start(ctx context.Context) bool {
	pod := w.podCopy()
	w.logf("starting (uid %s); logs in %s", pod.UID, w.dir)
	w.markDirty()
	for {
		ip, err := w.a.ipam.allocate(string(w.uid), pod.Status.PodIP)
		if err == nil {
			err = setupPodNetwork(string(w.uid), ip)
		}
		if err == nil {
			w.mu.Lock()
			w.ip = ip
			w.mu.Unlock()
			w.markDirty()
			break
		}
		w.logf("network: %v", err)
		w.event(v1.EventTypeWarning, "FailedCreatePodSandBox", "network setup failed: %v", err)
		if !w.sleep(2 * time.Second) {
			return false
		}
	}
	for {
		vols, err := w.prepareVolumes(ctx)
		if err == nil {
			var hosts, resolv string
			if hosts, resolv, err = w.writeEtcFiles(pod); err == nil {
				w.mu.Lock()
				w.volumes = vols
				w.etcHosts, w.resolvConf = hosts, resolv
				w.mu.Unlock()
				break
			}
		}
		w.setWaitingAll("ContainerCreating", err.Error())
		w.logf("volumes: %v (retrying)", err)
		w.event(v1.EventTypeWarning, "FailedMount", "%v", err)
		if !w.sleep(2 * time.Second) {
			return false
		}
	}
	for _, c := range w.order {
		if c.kind == kindApp {
			break
		}
		c.launch(ctx)
		switch c.kind {
		case kindSidecar:
			select {
			case <-c.startedCh:
			case <-w.terminateCh:
				return false
			}
		case kindInit:
			select {
			case <-c.done:
			case <-w.terminateCh:
				return false
			}
			if code := c.finalExit(); code != 0 {
				w.logf("init container %s failed with exit code %d and restartPolicy Never: the pod fails", c.spec.Name, code)
				w.finish(v1.PodFailed, "InitContainerFailed", fmt.Sprintf("init container %s exited with %d", c.spec.Name, code))
				return false
			}
		}
	}
	w.mu.Lock()
	w.initDone = true
	w.mu.Unlock()
	w.markDirty()
	for _, c := range w.order {
		if c.kind == kindApp {
			c.launch(ctx)
		}
	}
	return true
}

// supervise waits for termination, or for the app containers to finish (restartPolicy Never or
// OnFailure): then the sidecars are stopped and the pod ends Succeeded or Failed.
func (w *podWorker) supervise(ctx context.Context) {
	var apps []*container
	for _, c := range w.order {
		if c.kind == kindApp {
			apps = append(apps, c)
		}
	}
	allDone := make(chan struct{})
	go func() {
		for _, c := range apps {
			<-c.done
		}
		close(allDone)
	}()
	select {
	case <-w.terminateCh:
	case <-allDone:
		if w.terminating() {
			return
		}
		phase := v1.PodSucceeded
		for _, c := range apps {
			if c.finalExit() != 0 {
				phase = v1.PodFailed
			}
		}
		w.finish(phase, "", "")
	}
}

// finish ends a pod that completed or failed on its own: sidecars and anything still running
// are stopped (the pod's grace period), the network removed, the phase set.
func (w *podWorker) finish(phase v1.PodPhase, reason, message string) {
	w.stopAll(w.gracePeriod())
	w.teardownNetwork()
	w.mu.Lock()
	w.phase, w.reason, w.message = phase, reason, message
	w.mu.Unlock()
	w.logf("finished: %s", phase)
	w.markDirty()
}

func (w *podWorker) gracePeriod() time.Duration {
	pod := w.podCopy()
	g := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		g = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.DeletionGracePeriodSeconds != nil {
		g = *pod.DeletionGracePeriodSeconds
	}
	select {
	case <-w.goneCh:
		g = 0
	default:
	}
	return time.Duration(g) * time.Second
}

// stopAll: SIGTERM to the app containers, wait; then the sidecars in reverse order, each waited
// for; regular init containers at once; SIGKILL for everything at the end of the grace period.
func (w *podWorker) stopAll(grace time.Duration) {
	deadline := time.Now().Add(grace)
	var apps, sidecars, inits []*container
	for _, c := range w.order {
		switch c.kind {
		case kindApp:
			apps = append(apps, c)
		case kindSidecar:
			sidecars = append(sidecars, c)
		default:
			inits = append(inits, c)
		}
	}
	for _, c := range append(apps, inits...) {
		c.stop(deadline)
	}
	for _, c := range append(apps, inits...) {
		c.wait()
	}
	for i := len(sidecars) - 1; i >= 0; i-- {
		sidecars[i].stop(deadline)
		sidecars[i].wait()
	}
}

func (w *podWorker) teardownNetwork() {
	teardownPodNetwork(string(w.uid))
	w.a.ipam.release(string(w.uid))
}

// awaitDeletion: after the pod ran (or not), wait for its deletion; then stop what runs, delete
// the pod object with grace 0, remove its files and forget it.
func (w *podWorker) awaitDeletion(ctx context.Context, cancel context.CancelFunc, statusDone chan struct{}) {
	select {
	case <-w.terminateCh:
	case <-ctx.Done():
		return
	}
	grace := w.gracePeriod()
	w.logf("terminating (grace %s)", grace)
	w.stopAll(grace)
	w.teardownNetwork()
	w.markDirty()
	pod := w.podCopy()
	select {
	case <-w.goneCh:
	default:
		zero := int64(0)
		uid := w.uid
		err := w.a.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			w.logf("deleting the pod object: %v", err)
		}
	}
	cancel()
	<-statusDone
	// The logs stay (for the test that wants to read them after the pod is gone); the rest goes.
	for _, sub := range []string{"volumes", "run", "etc"} {
		if err := os.RemoveAll(filepath.Join(w.dir, sub)); err != nil {
			w.logf("removing %s: %v", filepath.Join(w.dir, sub), err)
		}
	}
	w.a.forget(w.uid)
	w.logf("removed")
}

func (w *podWorker) setWaitingAll(reason, message string) {
	w.mu.Lock()
	for _, c := range w.order {
		if c.state.Running == nil && c.state.Terminated == nil {
			c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: message}}
		}
	}
	w.mu.Unlock()
	w.markDirty()
}

// ---- status ----

func (w *podWorker) statusLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.dirty:
		}
		for attempt := 0; ; attempt++ {
			err := w.patchStatus(ctx)
			if err == nil || apierrors.IsNotFound(err) || ctx.Err() != nil {
				break
			}
			if attempt%10 == 0 {
				w.logf("patching status: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		// Coalesce bursts of changes.
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (w *podWorker) patchStatus(ctx context.Context) error {
	w.mu.Lock()
	st := w.statusLocked()
	ns, name := w.pod.Namespace, w.pod.Name
	w.mu.Unlock()
	body, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": w.uid},
		"status":   st,
	})
	if err != nil {
		return err
	}
	_, err = w.a.client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{}, "status")
	return err
}

func (w *podWorker) cond(t v1.PodConditionType, ok bool, reason string) v1.PodCondition {
	s := v1.ConditionFalse
	if ok {
		s = v1.ConditionTrue
	}
	m, seen := w.condTimes[t]
	if !seen || m.status != s {
		m = condMark{status: s, at: metav1.Now()}
		w.condTimes[t] = m
	}
	c := v1.PodCondition{Type: t, Status: s, LastTransitionTime: m.at}
	if !ok {
		c.Reason = reason
	}
	return c
}

// statusLocked builds the pod's status from the containers' states (w.mu held).
func (w *podWorker) statusLocked() map[string]any {
	terminal := w.phase == v1.PodSucceeded || w.phase == v1.PodFailed
	var inits, apps []v1.ContainerStatus
	initialized, ready, anyAppStarted := w.initDone, true, false
	for _, c := range w.order {
		cs := c.statusLocked()
		switch c.kind {
		case kindApp:
			apps = append(apps, cs)
			if !cs.Ready {
				ready = false
			}
			if c.everStarted {
				anyAppStarted = true
			}
		case kindSidecar:
			inits = append(inits, cs)
			if !cs.Ready {
				ready = false
			}
		default:
			inits = append(inits, cs)
		}
	}
	phase := w.phase
	if !terminal {
		phase = v1.PodPending
		if w.initDone && anyAppStarted {
			phase = v1.PodRunning
		}
	}
	if ready && !terminal && !w.readyLogged {
		w.readyLogged = true
		w.logf("Ready %d ms after the agent took it up", time.Since(w.takenUp).Milliseconds())
	}
	notReady := "ContainersNotReady"
	if terminal {
		ready, notReady = false, "PodCompleted"
	}
	conds := []v1.PodCondition{
		w.cond(v1.PodScheduled, true, ""),
		w.cond(v1.PodInitialized, initialized, "ContainersNotInitialized"),
		w.cond(v1.ContainersReady, ready, notReady),
		w.cond(v1.PodReady, ready, notReady),
	}
	hostIP := w.a.cfg.NodeIP
	st := map[string]any{
		"phase":                 phase,
		"hostIP":                hostIP,
		"hostIPs":               []v1.HostIP{{IP: hostIP}},
		"startTime":             w.startTime,
		"conditions":            conds,
		"initContainerStatuses": inits,
		"containerStatuses":     apps,
		"reason":                w.reason,
		"message":               w.message,
	}
	if inits == nil {
		st["initContainerStatuses"] = nil
	}
	if w.ip.IsValid() {
		st["podIP"] = w.ip.String()
		st["podIPs"] = []v1.PodIP{{IP: w.ip.String()}}
	}
	return st
}
