// Volumes: each is a directory under the pod's work directory (emptyDir, configMap, secret,
// projected, downwardAPI) or a directory of this machine (persistentVolumeClaim -> the bound
// PersistentVolume's hostPath or local path; hostPath), bind-mounted into the containers.
// ConfigMaps and Secrets are written once at pod start; projected ServiceAccount tokens are
// requested with the TokenRequest API (bound to the pod) and rewritten atomically at 80 % of their
// life. Also the StorageClass `standard` and its provisioner (a directory per claim).
package nodeagent

import (
	"context"
	"fmt"
	"io/fs"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// ProvisionerName is the StorageClass `standard`'s provisioner: the node agent.
const ProvisionerName = "onemesh.dev/testenv-node-agent"

// StorageClassName is the class the agent creates (the default class) and provisions for.
const StorageClassName = "standard"

// fileOwner: files of configMap/secret/projected volumes belong to the pod's single runAsUser
// (when all its containers share one) and to its fsGroup, as the kubelet does for tokens.
func fileOwner(pod *v1.Pod) (uid, gid int) {
	uid, gid = -1, -1
	if pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil {
		gid = int(*pod.Spec.SecurityContext.FSGroup)
	}
	var common *int64
	all := append(append([]v1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
	for i := range all {
		u := effectiveUID(pod, &all[i])
		if u == nil {
			return uid, gid
		}
		if common != nil && *common != *u {
			return uid, gid
		}
		common = u
	}
	if common != nil {
		uid = int(*common)
	}
	return uid, gid
}

// writeAtomic writes a file through a temporary file and a rename in the same directory.
func writeAtomic(path string, data []byte, mode os.FileMode, uid, gid int) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if gid >= 0 {
		mode |= 0o440 // the kubelet's fsGroup ownership of a read-only volume: group read
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		return err
	}
	if uid >= 0 || gid >= 0 {
		if err := os.Chown(tmp.Name(), uid, gid); err != nil {
			return err
		}
	}
	return os.Rename(tmp.Name(), path)
}

func modeOf(item *int32, def *int32, fallback int32) os.FileMode {
	switch {
	case item != nil:
		return os.FileMode(*item)
	case def != nil:
		return os.FileMode(*def)
	default:
		return os.FileMode(fallback)
	}
}

func safeRel(p string) error {
	if p == "" || filepath.IsAbs(p) || strings.Contains(p, "..") {
		return fmt.Errorf("path %q must be relative without '..'", p)
	}
	return nil
}

// writeKeys writes a ConfigMap's or Secret's keys (all, or the listed items) into dir.
func writeKeys(dir string, data map[string][]byte, items []v1.KeyToPath, defMode *int32, optional bool, what string, uid, gid int) error {
	if len(items) == 0 {
		for k, v := range data {
			if err := writeAtomic(filepath.Join(dir, k), v, modeOf(nil, defMode, 0o644), uid, gid); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		if err := safeRel(it.Path); err != nil {
			return fmt.Errorf("%s item %s: %w", what, it.Key, err)
		}
		if err := writeAtomic(filepath.Join(dir, it.Path), v, modeOf(it.Mode, defMode, 0o644), uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func (w *podWorker) configMapData(ctx context.Context, ns, name string) (map[string][]byte, error) {
	cm, err := w.a.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for k, v := range cm.Data {
		out[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		out[k] = v
	}
	return out, nil
}

func (w *podWorker) secretData(ctx context.Context, ns, name string) (map[string][]byte, error) {
	s, err := w.a.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return s.Data, nil
}

// prepareVolumes makes every volume of the pod and returns where each is on this machine.
func (w *podWorker) prepareVolumes(ctx context.Context) (map[string]string, error) {
	pod := w.podCopy()
	uid, gid := fileOwner(pod)
	out := map[string]string{}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		dir := filepath.Join(w.dir, "volumes", v.Name)
		mkdir := func(mode os.FileMode) error {
			if err := os.MkdirAll(dir, mode); err != nil {
				return err
			}
			return os.Chmod(dir, mode)
		}
		var err error
		switch {
		case v.EmptyDir != nil:
			err = mkdir(0o777)
		case v.ConfigMap != nil:
			s := v.ConfigMap
			optional := s.Optional != nil && *s.Optional
			if err = mkdir(0o755); err == nil {
				var data map[string][]byte
				data, err = w.configMapData(ctx, pod.Namespace, s.Name)
				if apierrors.IsNotFound(err) && optional {
					err = nil
				} else if err == nil {
					err = writeKeys(dir, data, s.Items, s.DefaultMode, optional, "configMap "+s.Name, uid, gid)
				}
			}
		case v.Secret != nil:
			s := v.Secret
			optional := s.Optional != nil && *s.Optional
			if err = mkdir(0o755); err == nil {
				var data map[string][]byte
				data, err = w.secretData(ctx, pod.Namespace, s.SecretName)
				if apierrors.IsNotFound(err) && optional {
					err = nil
				} else if err == nil {
					err = writeKeys(dir, data, s.Items, s.DefaultMode, optional, "secret "+s.SecretName, uid, gid)
				}
			}
		case v.Projected != nil:
			if err = mkdir(0o755); err == nil {
				err = w.writeProjected(ctx, pod, dir, v.Projected, uid, gid)
			}
		case v.DownwardAPI != nil:
			if err = mkdir(0o755); err == nil {
				err = w.writeDownward(pod, dir, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode, uid, gid)
			}
		case v.PersistentVolumeClaim != nil:
			dir, err = w.claimPath(ctx, pod.Namespace, v.PersistentVolumeClaim.ClaimName)
		case v.HostPath != nil:
			dir = v.HostPath.Path
			if t := v.HostPath.Type; t != nil && *t == v1.HostPathDirectoryOrCreate {
				err = os.MkdirAll(dir, 0o755)
			} else if t != nil && *t == v1.HostPathFileOrCreate {
				var f *os.File
				if f, err = os.OpenFile(dir, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
					f.Close()
				}
			}
		default:
			err = fmt.Errorf("the test node agent does not support this volume type (emptyDir, configMap, secret, projected, downwardAPI, persistentVolumeClaim and hostPath only)")
		}
		if err == nil && gid >= 0 {
			err = setVolumeOwnership(pod, v, dir, gid)
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		out[v.Name] = dir
	}
	return out, nil
}

// setVolumeOwnership is the kubelet's fsGroup ownership (pkg/volume's SetVolumeOwnership): every
// file and directory of the volume gets group fsGroup, group read (read-only volumes: configMap,
// secret, projected, downwardAPI) or read-write (emptyDir, persistentVolumeClaim), directories
// also group search and setgid so new files inherit the group. hostPath volumes are left alone, as
// by the kubelet. fsGroupChangePolicy OnRootMismatch skips the walk when the root already fits.
func setVolumeOwnership(pod *v1.Pod, v *v1.Volume, dir string, gid int) error {
	readOnly := false
	switch {
	case v.ConfigMap != nil, v.Secret != nil, v.Projected != nil, v.DownwardAPI != nil:
		readOnly = true
	case v.EmptyDir != nil:
	case v.PersistentVolumeClaim != nil:
		readOnly = v.PersistentVolumeClaim.ReadOnly
	default:
		return nil
	}
	mask := os.FileMode(0o660)
	if readOnly {
		mask = 0o440
	}
	if p := pod.Spec.SecurityContext.FSGroupChangePolicy; p != nil && *p == v1.FSGroupChangeOnRootMismatch {
		if st, err := os.Stat(dir); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Gid) == gid &&
				st.Mode()&os.ModeSetgid != 0 && st.Mode().Perm()&(mask|0o110) == mask|0o110 {
				return nil
			}
		}
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&os.ModeSymlink != 0 {
			return nil
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		st, err := os.Lstat(path)
		if err != nil {
			return err
		}
		mode := st.Mode().Perm() | mask
		if st.IsDir() {
			mode |= os.ModeSetgid | 0o110
		} else {
			mode |= st.Mode() & (os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
		}
		if st.IsDir() {
			mode |= st.Mode() & os.ModeSticky
		}
		return os.Chmod(path, mode)
	})
}

func (w *podWorker) writeDownward(pod *v1.Pod, dir string, items []v1.DownwardAPIVolumeFile, defMode *int32, uid, gid int) error {
	for _, it := range items {
		if err := safeRel(it.Path); err != nil {
			return err
		}
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = w.fieldValue(pod, it.FieldRef.FieldPath)
		default:
			err = fmt.Errorf("downwardAPI item %s: only fieldRef is supported by the test node agent", it.Path)
		}
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, it.Path), []byte(val), modeOf(it.Mode, defMode, 0o644), uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func (w *podWorker) writeProjected(ctx context.Context, pod *v1.Pod, dir string, p *v1.ProjectedVolumeSource, uid, gid int) error {
	for _, src := range p.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			if err := w.writeToken(ctx, pod, dir, src.ServiceAccountToken, p.DefaultMode, uid, gid); err != nil {
				return err
			}
		case src.ConfigMap != nil:
			s := src.ConfigMap
			optional := s.Optional != nil && *s.Optional
			data, err := w.configMapData(ctx, pod.Namespace, s.Name)
			if apierrors.IsNotFound(err) && optional {
				continue
			}
			if err != nil {
				return fmt.Errorf("configMap %s: %w", s.Name, err)
			}
			if err := writeKeys(dir, data, s.Items, p.DefaultMode, optional, "configMap "+s.Name, uid, gid); err != nil {
				return err
			}
		case src.Secret != nil:
			s := src.Secret
			optional := s.Optional != nil && *s.Optional
			data, err := w.secretData(ctx, pod.Namespace, s.Name)
			if apierrors.IsNotFound(err) && optional {
				continue
			}
			if err != nil {
				return fmt.Errorf("secret %s: %w", s.Name, err)
			}
			if err := writeKeys(dir, data, s.Items, p.DefaultMode, optional, "secret "+s.Name, uid, gid); err != nil {
				return err
			}
		case src.DownwardAPI != nil:
			if err := w.writeDownward(pod, dir, src.DownwardAPI.Items, p.DefaultMode, uid, gid); err != nil {
				return err
			}
		default:
			return fmt.Errorf("projected source not supported by the test node agent (serviceAccountToken, configMap, secret, downwardAPI only)")
		}
	}
	return nil
}

// writeToken requests a token bound to the pod, writes it and keeps refreshing it while the pod
// lives (at 80 % of the requested life, as the kubelet).
func (w *podWorker) writeToken(ctx context.Context, pod *v1.Pod, dir string, s *v1.ServiceAccountTokenProjection, defMode *int32, uid, gid int) error {
	if err := safeRel(s.Path); err != nil {
		return err
	}
	life := int64(3600)
	if s.ExpirationSeconds != nil {
		life = *s.ExpirationSeconds
	}
	var audiences []string
	if s.Audience != "" {
		audiences = []string{s.Audience}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	mode := modeOf(nil, defMode, 0o644)
	if uid >= 0 || gid >= 0 {
		// The kubelet's choice when it can give the token to the pod's user or fsGroup: 0600,
		// and fsGroup ownership adds group read (0640).
		mode = 0o600
	}
	path := filepath.Join(dir, s.Path)
	request := func() error {
		tr, err := w.a.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{
				Audiences: audiences, ExpirationSeconds: &life,
				BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("requesting a token for ServiceAccount %s: %w", sa, err)
		}
		return writeAtomic(path, []byte(tr.Status.Token), mode, uid, gid)
	}
	if err := request(); err != nil {
		return err
	}
	go func() {
		refresh := time.Duration(float64(life) * 0.8 * float64(time.Second))
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.terminateCh:
				return
			case <-time.After(refresh):
			}
			if err := request(); err != nil {
				if ctx.Err() != nil {
					return
				}
				w.logf("refreshing %s: %v (retrying in 5 s)", path, err)
				refresh = 5 * time.Second
				continue
			}
			refresh = time.Duration(float64(life) * 0.8 * float64(time.Second))
		}
	}()
	return nil
}

// claimPath finds the directory behind a bound claim.
func (w *podWorker) claimPath(ctx context.Context, ns, name string) (string, error) {
	pvc, err := w.a.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("claim %s: %w", name, err)
	}
	if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
		return "", fmt.Errorf("claim %s is not bound yet (phase %s)", name, pvc.Status.Phase)
	}
	pv, err := w.a.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("volume %s of claim %s: %w", pvc.Spec.VolumeName, name, err)
	}
	var dir string
	switch {
	case pv.Spec.HostPath != nil:
		dir = pv.Spec.HostPath.Path
	case pv.Spec.Local != nil:
		dir = pv.Spec.Local.Path
	default:
		return "", fmt.Errorf("volume %s of claim %s is neither hostPath nor local: the test node agent cannot mount it", pv.Name, name)
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return "", err
	}
	return dir, nil
}

// ---- the StorageClass and its provisioner ----

func (a *Agent) ensureStorageClass(ctx context.Context) error {
	immediate := storagev1.VolumeBindingImmediate
	del := v1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: StorageClassName, Annotations: map[string]string{
			"storageclass.kubernetes.io/is-default-class": "true",
		}},
		Provisioner:       ProvisionerName,
		VolumeBindingMode: &immediate,
		ReclaimPolicy:     &del,
	}
	_, err := a.client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the StorageClass %s: %w", StorageClassName, err)
	}
	return nil
}

func (a *Agent) volumeDir(name string) string {
	return filepath.Join(a.cfg.WorkDir, "volumes", name)
}

// provision handles "pvc/<ns>/<name>" (make a volume for a pending claim of our class) and
// "pv/<name>" (delete a released volume of ours and its directory).
func (a *Agent) provision(ctx context.Context, key string) error {
	kind, rest, _ := strings.Cut(key, "/")
	switch kind {
	case "pvc":
		ns, name, err := cache.SplitMetaNamespaceKey(rest)
		if err != nil {
			return nil
		}
		pvc, err := a.pvcs.PersistentVolumeClaims(ns).Get(name)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if pvc.Status.Phase != v1.ClaimPending || pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil {
			return nil
		}
		if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != StorageClassName {
			return nil
		}
		pvName := "pvc-" + string(pvc.UID)
		if _, err := a.pvs.Get(pvName); err == nil {
			return nil
		}
		dir := a.volumeDir(pvName)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			return err
		}
		size := pvc.Spec.Resources.Requests[v1.ResourceStorage]
		if size.IsZero() {
			size.Set(1 << 30)
		}
		modes := pvc.Spec.AccessModes
		if len(modes) == 0 {
			modes = []v1.PersistentVolumeAccessMode{v1.ReadWriteOnce}
		}
		dirType := v1.HostPathDirectoryOrCreate
		pv := &v1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: map[string]string{
				"pv.kubernetes.io/provisioned-by": ProvisionerName,
			}},
			Spec: v1.PersistentVolumeSpec{
				Capacity:                      v1.ResourceList{v1.ResourceStorage: size},
				AccessModes:                   modes,
				PersistentVolumeReclaimPolicy: v1.PersistentVolumeReclaimDelete,
				StorageClassName:              StorageClassName,
				VolumeMode:                    pvc.Spec.VolumeMode,
				ClaimRef: &v1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
					Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
				PersistentVolumeSource: v1.PersistentVolumeSource{HostPath: &v1.HostPathVolumeSource{Path: dir, Type: &dirType}},
			},
		}
		if _, err := a.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating PersistentVolume %s: %w", pvName, err)
		}
		log.Printf("provisioned PersistentVolume %s (%s) for claim %s/%s", pvName, dir, ns, name)
	case "pv":
		pv, err := a.pvs.Get(rest)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != ProvisionerName || pv.Status.Phase != v1.VolumeReleased ||
			pv.Spec.PersistentVolumeReclaimPolicy != v1.PersistentVolumeReclaimDelete || pv.DeletionTimestamp != nil {
			return nil
		}
		if pv.Spec.HostPath != nil && strings.HasPrefix(pv.Spec.HostPath.Path, a.volumeDir("")) {
			if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
				return err
			}
		}
		if err := a.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		log.Printf("deleted released PersistentVolume %s", pv.Name)
	}
	return nil
}

// writeEtcFiles writes the pod's /etc/hosts (its own name -> its IP, hostAliases) and
// /etc/resolv.conf as the kubelet does for its dnsPolicy (see resolvConf).
func (w *podWorker) writeEtcFiles(pod *v1.Pod) (hosts, resolv string, err error) {
	dir := filepath.Join(w.dir, "etc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	w.mu.Lock()
	ip := w.ip.String()
	w.mu.Unlock()
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file (onemesh test node agent).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if pod.Spec.Subdomain != "" {
		fqdn := fmt.Sprintf("%s.%s.%s.svc.%s", podHostname(pod), pod.Spec.Subdomain, pod.Namespace, ClusterDomain)
		fmt.Fprintf(&b, "%s\t%s\t%s\n", ip, fqdn, podHostname(pod))
	} else {
		fmt.Fprintf(&b, "%s\t%s\n", ip, podHostname(pod))
	}
	for _, a := range pod.Spec.HostAliases {
		fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
	}
	hosts = filepath.Join(dir, "hosts")
	if err := writeAtomic(hosts, []byte(b.String()), 0o644, -1, -1); err != nil {
		return "", "", err
	}
	dnsIP := w.a.cfg.DNSAddr
	if h, _, err := net.SplitHostPort(dnsIP); err == nil {
		dnsIP = h
	}
	resolv = filepath.Join(dir, "resolv.conf")
	if err := writeAtomic(resolv, []byte(resolvConf(pod, dnsIP)), 0o644, -1, -1); err != nil {
		return "", "", err
	}
	return hosts, resolv, nil
}

// resolvConf is the pod's /etc/resolv.conf, as the kubelet makes it: with dnsPolicy ClusterFirst
// (the default) or ClusterFirstWithHostNet the cluster DNS and the search path
// `<ns>.svc.cluster.local svc.cluster.local cluster.local` with `ndots:5`; with Default the node's
// resolver, which here is the cluster DNS too (the node has no other: nothing is forwarded); with
// None only dnsConfig. dnsConfig's nameservers and searches are appended, its options override.
func resolvConf(pod *v1.Pod, dnsIP string) string {
	var servers, searches []string
	type opt struct{ name, value string }
	var opts []opt
	setOpt := func(name, value string) {
		for i := range opts {
			if opts[i].name == name {
				opts[i].value = value
				return
			}
		}
		opts = append(opts, opt{name, value})
	}
	switch pod.Spec.DNSPolicy {
	case v1.DNSNone:
	case v1.DNSDefault:
		servers = []string{dnsIP}
	default:
		servers = []string{dnsIP}
		searches = []string{pod.Namespace + ".svc." + ClusterDomain, "svc." + ClusterDomain, ClusterDomain}
		setOpt("ndots", "5")
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		servers = append(servers, dc.Nameservers...)
		for _, s := range dc.Searches {
			if !slices.Contains(searches, s) {
				searches = append(searches, s)
			}
		}
		for _, o := range dc.Options {
			v := ""
			if o.Value != nil {
				v = *o.Value
			}
			setOpt(o.Name, v)
		}
	}
	if len(servers) > 3 {
		servers = servers[:3]
	}
	var b strings.Builder
	b.WriteString("# onemesh test node agent: the cluster DNS (cluster.local only, nothing forwarded)\n")
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(searches, " "))
	}
	if len(opts) > 0 {
		parts := make([]string, 0, len(opts))
		for _, o := range opts {
			if o.value != "" {
				parts = append(parts, o.name+":"+o.value)
			} else {
				parts = append(parts, o.name)
			}
		}
		fmt.Fprintf(&b, "options %s\n", strings.Join(parts, " "))
	}
	return b.String()
}

// podHostname is the pod's hostname: spec.hostname, else its name (cut to 63 bytes).
func podHostname(pod *v1.Pod) string {
	h := pod.Spec.Hostname
	if h == "" {
		h = pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}
