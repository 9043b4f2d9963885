// The agent: flags, the Node and its Lease, the scheduler, the volume provisioner and the pod
// workers' bookkeeping. See doc.go.
package nodeagent

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-base/version"
)

// Config is the agent's command line.
type Config struct {
	Kubeconfig string
	WorkDir    string
	NodeName   string
	NodeIP     string
	PodCIDR    string
	ImagesPath string
	// DNSAddr is where the cluster DNS listens (UDP and TCP); its IP is the pods' nameserver.
	DNSAddr string
	// Exe is this binary (for `container-exec`).
	Exe string
}

// Agent is one node.
type Agent struct {
	cfg      Config
	client   kubernetes.Interface
	recorder record.EventRecorder
	ipam     *ipam

	services corelisters.ServiceLister
	nodes    corelisters.NodeLister
	pvcs     corelisters.PersistentVolumeClaimLister
	pvs      corelisters.PersistentVolumeLister
	dns      *dnsResolver

	mu      sync.Mutex
	workers map[types.UID]*podWorker
}

// Run is `testenv node-agent FLAGS`: it runs until SIGTERM/SIGINT and leaves the pods running
// (as a kubelet does); `scripts/k8s-testenv down` removes them.
func Run(args []string) error {
	var cfg Config
	fs := flag.NewFlagSet("node-agent", flag.ContinueOnError)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig with rights to nodes, pods, bindings, volumes and tokens")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "work directory: pod logs and volumes go to DIR/pods, volumes to DIR/volumes")
	fs.StringVar(&cfg.NodeName, "node-name", "onemesh-node-1", "the Node's name")
	fs.StringVar(&cfg.NodeIP, "node-ip", "10.250.0.2", "the node's InternalIP")
	fs.StringVar(&cfg.PodCIDR, "pod-cidr", "10.244.0.0/24", "the node's PodCIDR")
	fs.StringVar(&cfg.ImagesPath, "images", os.Getenv("ONEMESH_K8S_IMAGES"), "the image table (JSON), read at each container start")
	fs.StringVar(&cfg.DNSAddr, "dns-addr", "", "where the cluster DNS listens, UDP and TCP (default NODE-IP:53); pods' resolv.conf names its IP")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.DNSAddr == "" {
		cfg.DNSAddr = net.JoinHostPort(cfg.NodeIP, "53")
	}
	if cfg.Kubeconfig == "" || cfg.WorkDir == "" || cfg.ImagesPath == "" {
		return fmt.Errorf("--kubeconfig, --work-dir and --images are required (scripts/k8s-testenv up passes them)")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this binary: %w", err)
	}
	cfg.Exe = exe
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", cfg.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = 100, 200
	rc.UserAgent = "onemesh-testenv-node-agent"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ip, err := newIPAM(cfg.PodCIDR)
	if err != nil {
		return err
	}
	a := &Agent{cfg: cfg, client: client, ipam: ip, workers: map[types.UID]*podWorker{}}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	return a.run(ctx)
}

func (a *Agent) run(ctx context.Context) error {
	log.SetFlags(log.Ldate | log.Ltime | log.Lmicroseconds)
	bc := record.NewBroadcaster(record.WithContext(ctx))
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	defer bc.Shutdown()
	a.recorder = bc.NewRecorder(scheme.Scheme, v1.EventSource{Component: "onemesh-testenv-node-agent", Host: a.cfg.NodeName})

	// Pods of an earlier agent: their processes are unknown to this one. Kill them and remove
	// their namespaces; the pods that should still run are started again below (their IPs kept).
	for _, uid := range leftoverPodNetns() {
		log.Printf("removing the leftover pod network namespace %s and its processes", podNetnsName(uid))
		teardownPodNetwork(uid)
	}
	if err := a.registerNode(ctx); err != nil {
		return err
	}
	a.reserveKnownIPs(ctx)
	go a.heartbeat(ctx)
	if err := a.ensureStorageClass(ctx); err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactory(a.client, 10*time.Minute)
	a.services = factory.Core().V1().Services().Lister()
	a.nodes = factory.Core().V1().Nodes().Lister()
	a.pvcs = factory.Core().V1().PersistentVolumeClaims().Lister()
	a.pvs = factory.Core().V1().PersistentVolumes().Lister()
	pvcInformer := factory.Core().V1().PersistentVolumeClaims().Informer()
	pvInformer := factory.Core().V1().PersistentVolumes().Informer()
	a.dns = &dnsResolver{services: a.services, slices: factory.Discovery().V1().EndpointSlices().Lister()}

	mine := informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	unscheduled := informers.NewSharedInformerFactoryWithOptions(a.client, 10*time.Minute,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", "").String()
		}))

	schedQueue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer schedQueue.ShutDown()
	unscheduledInformer := unscheduled.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			schedQueue.Add(key)
		}
	}
	if _, err := unscheduledInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, n any) { enqueue(n) },
	}); err != nil {
		return err
	}

	provQueue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer provQueue.ShutDown()
	enqueuePVC := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			provQueue.Add("pvc/" + key)
		}
	}
	enqueuePV := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			provQueue.Add("pv/" + key)
		}
	}
	if _, err := pvcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueuePVC, UpdateFunc: func(_, n any) { enqueuePVC(n) },
	}); err != nil {
		return err
	}
	if _, err := pvInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueuePV, UpdateFunc: func(_, n any) { enqueuePV(n) },
	}); err != nil {
		return err
	}

	podInformer := mine.Core().V1().Pods().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.podChanged(ctx, obj) },
		UpdateFunc: func(_, n any) { a.podChanged(ctx, n) },
		DeleteFunc: func(obj any) { a.podDeleted(obj) },
	}); err != nil {
		return err
	}

	factory.Start(ctx.Done())
	mine.Start(ctx.Done())
	unscheduled.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	mine.WaitForCacheSync(ctx.Done())
	unscheduled.WaitForCacheSync(ctx.Done())
	if err := a.dns.serveDNS(ctx, a.cfg.DNSAddr); err != nil {
		return err
	}
	log.Printf("node %s registered (InternalIP %s, PodCIDR %s); cluster DNS on %s; scheduling and running pods; image table %s",
		a.cfg.NodeName, a.cfg.NodeIP, a.cfg.PodCIDR, a.cfg.DNSAddr, a.cfg.ImagesPath)

	go a.runQueue(ctx, schedQueue, a.schedule)
	go a.runQueue(ctx, provQueue, a.provision)
	<-ctx.Done()
	log.Printf("stopping; pods keep running (scripts/k8s-testenv down removes them)")
	return nil
}

func (a *Agent) runQueue(ctx context.Context, q workqueue.TypedRateLimitingInterface[string], f func(context.Context, string) error) {
	for {
		key, shutdown := q.Get()
		if shutdown {
			return
		}
		if err := f(ctx, key); err != nil {
			log.Printf("%s: %v (retrying)", key, err)
			q.AddRateLimited(key)
		} else {
			q.Forget(key)
		}
		q.Done(key)
	}
}

// reserveKnownIPs gives the pods this node already runs their addresses back before any worker
// starts, so that a new pod cannot take the IP of one that an earlier agent ran.
func (a *Agent) reserveKnownIPs(ctx context.Context) {
	pods, err := a.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String(),
	})
	if err != nil {
		log.Printf("listing this node's pods to keep their IPs: %v", err)
		return
	}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			continue
		}
		if _, err := a.ipam.allocate(string(p.UID), p.Status.PodIP); err != nil {
			log.Printf("pod %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
}

// ---- the Node ----

func (a *Agent) nodeStatus() v1.NodeStatus {
	now := metav1.Now()
	var mem uint64
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		mem = uint64(si.Totalram) * uint64(si.Unit)
	}
	capacity := v1.ResourceList{
		v1.ResourceCPU:              *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		v1.ResourceMemory:           *resource.NewQuantity(int64(mem), resource.BinarySI),
		v1.ResourcePods:             *resource.NewQuantity(110, resource.DecimalSI),
		v1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	cond := func(t v1.NodeConditionType, s v1.ConditionStatus, reason, msg string) v1.NodeCondition {
		return v1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return v1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       v1.NodeRunning,
		Conditions: []v1.NodeCondition{
			cond(v1.NodeReady, v1.ConditionTrue, "KubeletReady", "onemesh test node agent is posting ready status"),
			cond(v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", "test node"),
			cond(v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", "test node"),
			cond(v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", "test node"),
		},
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: a.cfg.NodeIP},
			{Type: v1.NodeHostName, Address: a.cfg.NodeName},
		},
		NodeInfo: v1.NodeSystemInfo{
			KubeletVersion:          version.Get().GitVersion,
			KubeProxyVersion:        version.Get().GitVersion,
			OperatingSystem:         "linux",
			Architecture:            runtime.GOARCH,
			OSImage:                 "onemesh test node (processes, no containers)",
			ContainerRuntimeVersion: "onemesh-testenv://0",
		},
	}
}

func (a *Agent) registerNode(ctx context.Context) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: map[string]string{
			"kubernetes.io/hostname": a.cfg.NodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH,
		}},
		Spec: v1.NodeSpec{PodCIDR: a.cfg.PodCIDR, PodCIDRs: []string{a.cfg.PodCIDR}},
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("registering node %s: %w", a.cfg.NodeName, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return a.updateNodeStatus(ctx)
}

func (a *Agent) updateNodeStatus(ctx context.Context) error {
	n, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", a.cfg.NodeName, err)
	}
	n.Status = a.nodeStatus()
	if _, err := a.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating node %s's status: %w", a.cfg.NodeName, err)
	}
	return nil
}

// heartbeat renews the node's Lease every 10 s and its status every 30 s.
func (a *Agent) heartbeat(ctx context.Context) {
	leases := a.client.CoordinationV1().Leases("kube-node-lease")
	holder, duration := a.cfg.NodeName, int32(40)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			var owner []metav1.OwnerReference
			if n, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{}); err == nil {
				owner = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
			}
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, OwnerReferences: owner},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &duration, RenewTime: &now},
			}, metav1.CreateOptions{})
			if err != nil && ctx.Err() == nil {
				log.Printf("creating the node lease: %v", err)
			}
		case err == nil:
			l.Spec.RenewTime = &now
			l.Spec.HolderIdentity = &holder
			l.Spec.LeaseDurationSeconds = &duration
			if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
				log.Printf("renewing the node lease: %v", err)
			}
		default:
			if ctx.Err() == nil {
				log.Printf("reading the node lease: %v", err)
			}
		}
		if i%3 == 2 {
			if err := a.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
				log.Printf("%v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// ---- the scheduler ----

func nodeReady(n *v1.Node) bool {
	if n.Spec.Unschedulable {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// pickNode returns a Ready, schedulable node matching the pod's nodeSelector, or "".
func pickNode(pod *v1.Pod, nodes []*v1.Node) string {
	best := ""
	for _, n := range nodes {
		if !nodeReady(n) {
			continue
		}
		ok := true
		for k, v := range pod.Spec.NodeSelector {
			if n.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok && (best == "" || n.Name < best) {
			best = n.Name
		}
	}
	return best
}

func (a *Agent) schedule(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := a.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		return nil
	}
	if s := pod.Spec.SchedulerName; s != "" && s != v1.DefaultSchedulerName {
		return nil
	}
	nodes, err := a.nodes.List(labels.Everything())
	if err != nil {
		return err
	}
	target := pickNode(pod, nodes)
	if target == "" {
		a.recorder.Eventf(pod, v1.EventTypeWarning, "FailedScheduling", "no Ready node matches this pod (test scheduler: readiness and nodeSelector only)")
		return fmt.Errorf("no Ready node for pod %s", key)
	}
	err = a.client.CoreV1().Pods(ns).Bind(ctx, &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: pod.UID},
		Target:     v1.ObjectReference{Kind: "Node", Name: target},
	}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("binding to %s: %w", target, err)
	}
	a.recorder.Eventf(pod, v1.EventTypeNormal, "Scheduled", "Successfully assigned %s/%s to %s", ns, name, target)
	return nil
}

// ---- pod workers ----

func (a *Agent) podChanged(ctx context.Context, obj any) {
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	w, exists := a.workers[pod.UID]
	if !exists {
		w = newPodWorker(a, pod)
		a.workers[pod.UID] = w
		a.mu.Unlock()
		go w.run(ctx)
		return
	}
	a.mu.Unlock()
	w.update(pod)
}

func (a *Agent) podDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	w := a.workers[pod.UID]
	a.mu.Unlock()
	if w != nil {
		w.gone()
	}
}

func (a *Agent) forget(uid types.UID) {
	a.mu.Lock()
	delete(a.workers, uid)
	a.mu.Unlock()
}

func (a *Agent) podDir(pod *v1.Pod) string {
	return filepath.Join(a.cfg.WorkDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID))
}
