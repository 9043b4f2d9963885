package nodeagent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

func svc(ns, name, ip string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1.ServiceSpec{ClusterIP: ip, Ports: ports}}
}

// testAgent is an agent on a fake API server; the Services are in its lister.
func testAgent(t *testing.T, services []*v1.Service, objs ...runtime.Object) (*Agent, *fake.Clientset) {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range services {
		if err := idx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	client := fake.NewSimpleClientset(objs...)
	a := &Agent{
		cfg:      Config{WorkDir: t.TempDir(), NodeName: "node-a", NodeIP: "10.250.0.2", DNSAddr: "10.250.0.2:53"},
		client:   client,
		recorder: record.NewFakeRecorder(100),
		services: corelisters.NewServiceLister(idx),
	}
	return a, client
}

func testPod(spec v1.PodSpec) *v1.Pod {
	spec.NodeName = "node-a"
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "web-1", UID: "uid-1"}, Spec: spec}
}

func envMap(env []v1.EnvVar) map[string]string {
	m := map[string]string{}
	for _, e := range env {
		m[e.Name] = e.Value
	}
	return m
}

func TestEnvAsTheKubeletBuildsIt(t *testing.T) {
	optional := true
	a, _ := testAgent(t,
		[]*v1.Service{
			svc("default", "kubernetes", "10.96.0.1", v1.ServicePort{Name: "https", Port: 443}),
			svc("team", "api-server", "10.96.7.7", v1.ServicePort{Name: "grpc", Port: 9000}),
			svc("other", "elsewhere", "10.96.8.8", v1.ServicePort{Port: 80}),
		},
		&v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "cfg"}, Data: map[string]string{"level": "debug", "a": "1"}},
		&v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "sec"}, Data: map[string][]byte{"token": []byte("s3")}},
	)
	c := v1.Container{
		Name:    "app",
		EnvFrom: []v1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &v1.ConfigMapEnvSource{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}}}},
		Env: []v1.EnvVar{
			{Name: "LEVEL", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}, Key: "level"}}},
			{Name: "TOKEN", ValueFrom: &v1.EnvVarSource{SecretKeyRef: &v1.SecretKeySelector{LocalObjectReference: v1.LocalObjectReference{Name: "sec"}, Key: "token"}}},
			{Name: "MISSING", ValueFrom: &v1.EnvVarSource{SecretKeyRef: &v1.SecretKeySelector{LocalObjectReference: v1.LocalObjectReference{Name: "nope"}, Key: "k", Optional: &optional}}},
			{Name: "POD_IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "NODE", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "SA", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
			{Name: "POD", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "URL", Value: "http://$(API_SERVER_SERVICE_HOST):$(API_SERVER_SERVICE_PORT_GRPC)/$(LEVEL)/$$(LEVEL)"},
		},
	}
	pod := testPod(v1.PodSpec{ServiceAccountName: "mesh", Containers: []v1.Container{c}})
	w := newPodWorker(a, pod)
	w.ip = netip.MustParseAddr("10.244.0.9")
	env, err := w.buildEnv(context.Background(), pod, &c)
	if err != nil {
		t.Fatal(err)
	}
	m := envMap(env)
	for k, want := range map[string]string{
		"CFG_level": "debug", "LEVEL": "debug", "TOKEN": "s3", "POD_IP": "10.244.0.9", "NODE": "node-a", "SA": "mesh",
		"POD": "web-1", "URL": "http://10.96.7.7:9000/debug/$(LEVEL)",
		"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "API_SERVER_SERVICE_HOST": "10.96.7.7",
		"API_SERVER_PORT_9000_TCP_ADDR": "10.96.7.7", "HOSTNAME": "web-1", "HOME": "/root",
	} {
		if m[k] != want {
			t.Errorf("%s = %q, want %q", k, m[k], want)
		}
	}
	for _, k := range []string{"MISSING", "ELSEWHERE_SERVICE_HOST"} {
		if _, ok := m[k]; ok {
			t.Errorf("%s is set; it must not be", k)
		}
	}

	// enableServiceLinks: false leaves only the kubernetes Service's variables.
	off := false
	pod.Spec.EnableServiceLinks = &off
	env, err = w.buildEnv(context.Background(), pod, &v1.Container{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	m = envMap(env)
	if _, ok := m["API_SERVER_SERVICE_HOST"]; ok || m["KUBERNETES_SERVICE_HOST"] != "10.96.0.1" {
		t.Errorf("enableServiceLinks=false: %v", m)
	}

	// A required key that does not exist is an error that names it.
	bad := v1.Container{Name: "bad", Env: []v1.EnvVar{{Name: "X", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}, Key: "absent"}}}}}
	if _, err := w.buildEnv(context.Background(), pod, &bad); err == nil || !strings.Contains(err.Error(), "absent") {
		t.Errorf("missing key: %v", err)
	}
}

func TestSecurityContextToSetpriv(t *testing.T) {
	uid, gid, fs, no := int64(1337), int64(1338), int64(2000), false
	pod := testPod(v1.PodSpec{SecurityContext: &v1.PodSecurityContext{RunAsUser: &uid, FSGroup: &fs}})
	c := v1.Container{SecurityContext: &v1.SecurityContext{RunAsGroup: &gid, AllowPrivilegeEscalation: &no,
		Capabilities: &v1.Capabilities{Add: []v1.Capability{"NET_ADMIN", "CAP_NET_RAW"}}}}
	var spec ExecSpec
	if err := applySecurity(&spec, pod, &c); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(setprivArgs(&spec), " ")
	want := "/usr/bin/setpriv --reuid=1337 --regid=1338 --groups=2000 --inh-caps=+net_admin,+net_raw --ambient-caps=+net_admin,+net_raw --no-new-privs --"
	if got != want {
		t.Errorf("setpriv args:\n got %s\nwant %s", got, want)
	}
	// Root stays root, with its capabilities, without setpriv.
	root := int64(0)
	var rootSpec ExecSpec
	if err := applySecurity(&rootSpec, testPod(v1.PodSpec{SecurityContext: &v1.PodSecurityContext{RunAsUser: &root}}), &v1.Container{}); err != nil {
		t.Fatal(err)
	}
	if rootSpec.UID != nil || rootSpec.GID != nil || rootSpec.NoNewPrivs {
		t.Errorf("root: %+v", rootSpec)
	}
	// runAsNonRoot without a user would run as root: refused, as the kubelet refuses a root image.
	yes := true
	nonRoot := testPod(v1.PodSpec{SecurityContext: &v1.PodSecurityContext{RunAsNonRoot: &yes}})
	if err := applySecurity(&ExecSpec{}, nonRoot, &v1.Container{Name: "app"}); err == nil || !strings.Contains(err.Error(), "runAsUser") {
		t.Errorf("runAsNonRoot without runAsUser: %v", err)
	}
	if err := applySecurity(&ExecSpec{}, nonRoot, &v1.Container{Name: "app", SecurityContext: &v1.SecurityContext{RunAsUser: &uid}}); err != nil {
		t.Errorf("runAsNonRoot with runAsUser 1337: %v", err)
	}
}

func TestRestartDecisions(t *testing.T) {
	a, _ := testAgent(t, nil)
	always := v1.ContainerRestartPolicyAlways
	for _, tc := range []struct {
		policy  v1.RestartPolicy
		kind    ctrKind
		code    int32
		restart bool
	}{
		{v1.RestartPolicyAlways, kindApp, 0, true},
		{v1.RestartPolicyOnFailure, kindApp, 0, false},
		{v1.RestartPolicyOnFailure, kindApp, 2, true},
		{v1.RestartPolicyNever, kindApp, 2, false},
		{v1.RestartPolicyNever, kindSidecar, 0, true},
		{v1.RestartPolicyNever, kindInit, 1, false},
		{v1.RestartPolicyOnFailure, kindInit, 1, true},
		{v1.RestartPolicyAlways, kindInit, 0, false},
	} {
		pod := testPod(v1.PodSpec{RestartPolicy: tc.policy,
			InitContainers: []v1.Container{{Name: "side", RestartPolicy: &always}, {Name: "init"}},
			Containers:     []v1.Container{{Name: "app"}}})
		w := newPodWorker(a, pod)
		name := map[ctrKind]string{kindApp: "app", kindSidecar: "side", kindInit: "init"}[tc.kind]
		if got := w.ctrs[name].shouldRestart(tc.code); got != tc.restart {
			t.Errorf("policy %s, %s exiting %d: restart = %v, want %v", tc.policy, name, tc.code, got, tc.restart)
		}
	}
	// A terminating pod restarts nothing.
	pod := testPod(v1.PodSpec{RestartPolicy: v1.RestartPolicyAlways, Containers: []v1.Container{{Name: "app"}}})
	now := metav1.Now()
	pod.DeletionTimestamp = &now
	if newPodWorker(a, pod).ctrs["app"].shouldRestart(1) {
		t.Error("a container of a terminating pod would be restarted")
	}
}

func TestStatusPhaseAndConditions(t *testing.T) {
	a, _ := testAgent(t, nil)
	always := v1.ContainerRestartPolicyAlways
	pod := testPod(v1.PodSpec{
		InitContainers: []v1.Container{{Name: "init"}, {Name: "proxy", RestartPolicy: &always}},
		Containers:     []v1.Container{{Name: "app"}},
	})
	pod.Status.ContainerStatuses = []v1.ContainerStatus{{Name: "app", RestartCount: 3, State: v1.ContainerState{Running: &v1.ContainerStateRunning{}}}}
	w := newPodWorker(a, pod)
	if rc := w.ctrs["app"].restartCount; rc != 4 {
		t.Errorf("a container that ran under an earlier agent restarts with count %d, want 4", rc)
	}
	status := func() (v1.PodPhase, map[v1.PodConditionType]v1.ConditionStatus) {
		w.mu.Lock()
		defer w.mu.Unlock()
		st := w.statusLocked()
		conds := map[v1.PodConditionType]v1.ConditionStatus{}
		for _, c := range st["conditions"].([]v1.PodCondition) {
			conds[c.Type] = c.Status
		}
		return st["phase"].(v1.PodPhase), conds
	}
	if ph, c := status(); ph != v1.PodPending || c[v1.PodInitialized] != v1.ConditionFalse || c[v1.PodReady] != v1.ConditionFalse || c[v1.PodScheduled] != v1.ConditionTrue {
		t.Errorf("fresh pod: %s %v", ph, c)
	}
	w.mu.Lock()
	w.initDone = true
	w.ctrs["app"].everStarted, w.ctrs["app"].ready = true, true
	w.mu.Unlock()
	// The sidecar is not ready: neither is the pod.
	if ph, c := status(); ph != v1.PodRunning || c[v1.PodInitialized] != v1.ConditionTrue || c[v1.PodReady] != v1.ConditionFalse {
		t.Errorf("sidecar not ready: %s %v", ph, c)
	}
	w.mu.Lock()
	w.ctrs["proxy"].ready = true
	w.mu.Unlock()
	if ph, c := status(); ph != v1.PodRunning || c[v1.PodReady] != v1.ConditionTrue || c[v1.ContainersReady] != v1.ConditionTrue {
		t.Errorf("all ready: %s %v", ph, c)
	}
	w.mu.Lock()
	w.phase = v1.PodSucceeded
	w.mu.Unlock()
	if ph, c := status(); ph != v1.PodSucceeded || c[v1.PodReady] != v1.ConditionFalse {
		t.Errorf("succeeded: %s %v", ph, c)
	}
}

func TestVolumesOnDisk(t *testing.T) {
	mode := int32(0o400)
	a, client := testAgent(t, nil,
		&v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "cfg"}, Data: map[string]string{"a": "A", "b": "B"}},
		&v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": "CA"}},
		&v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "sec"}, Data: map[string][]byte{"key": []byte("K")}},
	)
	var requests atomic.Int32
	var lastReq atomic.Pointer[authenticationv1.TokenRequest]
	client.PrependReactor("create", "serviceaccounts", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "token" {
			return false, nil, nil
		}
		req := action.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest)
		lastReq.Store(req)
		n := requests.Add(1)
		return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{Token: fmt.Sprintf("token-%d", n)}}, nil
	})
	short := int64(1) // the API server would refuse so short a life; the fake does not
	pod := testPod(v1.PodSpec{
		ServiceAccountName: "mesh",
		Volumes: []v1.Volume{
			{Name: "cfg", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{
				LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}, Items: []v1.KeyToPath{{Key: "a", Path: "sub/a.txt"}}}}},
			{Name: "sec", VolumeSource: v1.VolumeSource{Secret: &v1.SecretVolumeSource{SecretName: "sec", DefaultMode: &mode}}},
			{Name: "scratch", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
			{Name: "access", VolumeSource: v1.VolumeSource{Projected: &v1.ProjectedVolumeSource{Sources: []v1.VolumeProjection{
				{ServiceAccountToken: &v1.ServiceAccountTokenProjection{Path: "token", Audience: "onemesh", ExpirationSeconds: &short}},
				{ConfigMap: &v1.ConfigMapProjection{LocalObjectReference: v1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []v1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &v1.DownwardAPIProjection{Items: []v1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
			}}}},
		},
	})
	w := newPodWorker(a, pod)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	vols, err := w.prepareVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read(filepath.Join(vols["cfg"], "sub/a.txt")); got != "A" {
		t.Errorf("configMap item = %q", got)
	}
	if _, err := os.Stat(filepath.Join(vols["cfg"], "b")); err == nil {
		t.Error("configMap key b written although items list only a")
	}
	if st, _ := os.Stat(filepath.Join(vols["sec"], "key")); st == nil || st.Mode().Perm() != 0o400 {
		t.Errorf("secret key mode: %v", st)
	}
	if st, _ := os.Stat(vols["scratch"]); st == nil || st.Mode().Perm() != 0o777 {
		t.Errorf("emptyDir mode: %v", st)
	}
	if got := read(filepath.Join(vols["access"], "ca.crt")) + read(filepath.Join(vols["access"], "namespace")); got != "CAteam" {
		t.Errorf("projected ca.crt+namespace = %q", got)
	}
	if got := read(filepath.Join(vols["access"], "token")); got != "token-1" {
		t.Errorf("token = %q", got)
	}
	req := lastReq.Load()
	if req == nil || req.Spec.BoundObjectRef == nil || req.Spec.BoundObjectRef.UID != "uid-1" || req.Spec.BoundObjectRef.Kind != "Pod" ||
		len(req.Spec.Audiences) != 1 || req.Spec.Audiences[0] != "onemesh" || *req.Spec.ExpirationSeconds != 1 {
		t.Errorf("token request not bound to the pod with the audience and life asked for: %+v", req)
	}
	// Not before 80 % of its life...
	time.Sleep(400 * time.Millisecond)
	if n := requests.Load(); n != 1 {
		t.Errorf("%d token requests within 0.4 s of a 1 s life, want 1", n)
	}
	// ...but then a new token replaces the file.
	deadline := time.Now().Add(5 * time.Second)
	for read(filepath.Join(vols["access"], "token")) == "token-1" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := read(filepath.Join(vols["access"], "token")); got == "token-1" {
		t.Error("the token was not refreshed within 5 s of a 1 s life")
	}
	cancel()
	time.Sleep(20 * time.Millisecond) // let the refresher see the cancellation before the directory goes

	// An unsupported volume type is refused with a message that lists the supported ones.
	pod2 := testPod(v1.PodSpec{Volumes: []v1.Volume{{Name: "nfs", VolumeSource: v1.VolumeSource{NFS: &v1.NFSVolumeSource{Server: "x", Path: "/"}}}}})
	if _, err := newPodWorker(a, pod2).prepareVolumes(ctx); err == nil || !strings.Contains(err.Error(), "emptyDir") {
		t.Errorf("nfs volume: %v", err)
	}
	// A missing ConfigMap that is not optional waits (an error); an optional one is skipped.
	optional := true
	pod3 := testPod(v1.PodSpec{Volumes: []v1.Volume{{Name: "c", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{
		LocalObjectReference: v1.LocalObjectReference{Name: "absent"}}}}}})
	if _, err := newPodWorker(a, pod3).prepareVolumes(ctx); err == nil {
		t.Error("a missing ConfigMap was not reported")
	}
	pod3.Spec.Volumes[0].ConfigMap.Optional = &optional
	if _, err := newPodWorker(a, pod3).prepareVolumes(ctx); err != nil {
		t.Errorf("a missing optional ConfigMap: %v", err)
	}
}

func TestEtcFilesNameThePodAndTheClusterDNS(t *testing.T) {
	a, _ := testAgent(t, nil)
	pod := testPod(v1.PodSpec{HostAliases: []v1.HostAlias{{IP: "10.96.1.1", Hostnames: []string{"control.mesh"}}}})
	w := newPodWorker(a, pod)
	w.ip = netip.MustParseAddr("10.244.0.4")
	hosts, resolv, err := w.writeEtcFiles(pod)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := os.ReadFile(hosts)
	r, _ := os.ReadFile(resolv)
	if !strings.Contains(string(h), "10.244.0.4\tweb-1\n") || !strings.Contains(string(h), "10.96.1.1\tcontrol.mesh") {
		t.Errorf("hosts:\n%s", h)
	}
	want := "nameserver 10.250.0.2\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if !strings.HasSuffix(string(r), want) || strings.Count(string(r), "nameserver") != 1 {
		t.Errorf("resolv.conf:\n%s\nwant it to end with\n%s", r, want)
	}
	// dnsPolicy None: only dnsConfig; dnsConfig appends to ClusterFirst and overrides its options.
	two := "2"
	pod.Spec.DNSPolicy = v1.DNSNone
	pod.Spec.DNSConfig = &v1.PodDNSConfig{Nameservers: []string{"10.96.0.53"}, Searches: []string{"mesh.local"},
		Options: []v1.PodDNSConfigOption{{Name: "ndots", Value: &two}}}
	if got := resolvConf(pod, "10.250.0.2"); strings.Contains(got, "10.250.0.2") || !strings.Contains(got, "nameserver 10.96.0.53\nsearch mesh.local\noptions ndots:2\n") {
		t.Errorf("dnsPolicy None:\n%s", got)
	}
	pod.Spec.DNSPolicy = v1.DNSClusterFirst
	if got := resolvConf(pod, "10.250.0.2"); !strings.Contains(got, "nameserver 10.250.0.2\nnameserver 10.96.0.53\nsearch team.svc.cluster.local svc.cluster.local cluster.local mesh.local\noptions ndots:2\n") {
		t.Errorf("ClusterFirst with dnsConfig:\n%s", got)
	}
}

func TestProbes(t *testing.T) {
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if fail.Load() || r.URL.Path != "/ready" || r.Header.Get("X-Probe") != "yes" {
			rw.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	_, portStr, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)

	a, _ := testAgent(t, nil)
	spec := v1.Container{Name: "app", Ports: []v1.ContainerPort{{Name: "admin", ContainerPort: int32(port)}}}
	w := newPodWorker(a, testPod(v1.PodSpec{Containers: []v1.Container{spec}}))
	w.ip = netip.MustParseAddr("127.0.0.1")
	c := w.ctrs["app"]
	probe := &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "ready", Port: intstr.FromString("admin"),
		HTTPHeaders: []v1.HTTPHeader{{Name: "X-Probe", Value: "yes"}}}}}
	if err := c.probeOnce(context.Background(), probe); err != nil {
		t.Errorf("HTTP probe by port name: %v", err)
	}
	fail.Store(true)
	if err := c.probeOnce(context.Background(), probe); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("HTTP probe of a 503: %v", err)
	}
	probe.HTTPGet.Port = intstr.FromString("nope")
	if err := c.probeOnce(context.Background(), probe); err == nil {
		t.Error("a probe on an unknown port name passed")
	}
	tcp := &v1.Probe{ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}}}
	if err := c.probeOnce(context.Background(), tcp); err != nil {
		t.Errorf("TCP probe: %v", err)
	}
	srv.Close()
	if err := c.probeOnce(context.Background(), tcp); err == nil {
		t.Error("TCP probe of a closed port passed")
	}
}

func TestSchedulerPicksAReadyMatchingNode(t *testing.T) {
	ready := func(name string, ok bool, labels map[string]string) *v1.Node {
		s := v1.ConditionFalse
		if ok {
			s = v1.ConditionTrue
		}
		return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Status: v1.NodeStatus{Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: s}}}}
	}
	cordoned := ready("c", true, nil)
	cordoned.Spec.Unschedulable = true
	nodes := []*v1.Node{ready("a", false, nil), cordoned, ready("z", true, map[string]string{"disk": "ssd"}), ready("m", true, nil)}
	if got := pickNode(&v1.Pod{}, nodes); got != "m" {
		t.Errorf("picked %q, want m (a is not Ready, c is cordoned)", got)
	}
	if got := pickNode(&v1.Pod{Spec: v1.PodSpec{NodeSelector: map[string]string{"disk": "ssd"}}}, nodes); got != "z" {
		t.Errorf("with nodeSelector picked %q, want z", got)
	}
	if got := pickNode(&v1.Pod{}, nodes[:2]); got != "" {
		t.Errorf("picked %q among nodes none of which is Ready and schedulable", got)
	}
}

// fsGroup as the kubelet applies it: a 0440 Secret readable by the group, an emptyDir writable by
// it with setgid, the token 0640, all group-owned by fsGroup (chown needs root).
func TestVolumesFSGroupOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another group needs root")
	}
	mode := int32(0o440)
	a, client := testAgent(t, nil,
		&v1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "sec"}, Data: map[string][]byte{"key": []byte("K")}})
	client.PrependReactor("create", "serviceaccounts", func(action k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{Token: "t"}}, nil
	})
	fsGroup, u1, u2 := int64(4242), int64(1000), int64(2102)
	defMode := int32(0o644) // what the API server defaults
	pod := testPod(v1.PodSpec{
		SecurityContext: &v1.PodSecurityContext{FSGroup: &fsGroup},
		Containers: []v1.Container{
			{Name: "app", SecurityContext: &v1.SecurityContext{RunAsUser: &u1}},
			{Name: "proxy", SecurityContext: &v1.SecurityContext{RunAsUser: &u2}},
		},
		Volumes: []v1.Volume{
			{Name: "sec", VolumeSource: v1.VolumeSource{Secret: &v1.SecretVolumeSource{SecretName: "sec", DefaultMode: &mode}}},
			{Name: "scratch", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
			{Name: "tok", VolumeSource: v1.VolumeSource{Projected: &v1.ProjectedVolumeSource{DefaultMode: &defMode, Sources: []v1.VolumeProjection{
				{ServiceAccountToken: &v1.ServiceAccountTokenProjection{Path: "token", Audience: "onemesh"}}}}}},
		},
	})
	w := newPodWorker(a, pod)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	vols, err := w.prepareVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check := func(p string, want os.FileMode) {
		t.Helper()
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if gid := st.Sys().(*syscall.Stat_t).Gid; gid != uint32(fsGroup) {
			t.Errorf("%s: group %d, want %d", p, gid, fsGroup)
		}
		if got := st.Mode() & (os.ModePerm | os.ModeSetgid); got != want {
			t.Errorf("%s: mode %v, want %v", p, got, want)
		}
	}
	check(filepath.Join(vols["sec"], "key"), 0o440)
	check(vols["sec"], os.ModeSetgid|0o755)
	check(vols["scratch"], os.ModeSetgid|0o777)
	check(filepath.Join(vols["tok"], "token"), 0o640)
}
