// Package nodeagent is the test cluster's node: a small kubelet and scheduler FOR TESTS ONLY.
//
// It registers one Node (PodCIDR, InternalIP, Ready, capacity, a Lease heartbeat), binds every
// unscheduled pod to a Ready node (the scheduler's job, by readiness only), provisions directory
// PersistentVolumes for claims of the StorageClass `standard`, and runs each pod bound to its
// node as plain processes: a network namespace per pod (Calico style: eth0 with a /32 from the
// PodCIDR, a link-local gateway, a host-side veth with proxy ARP), one private mount namespace
// per container with its volumes bind-mounted, runAsUser/runAsGroup and added capabilities
// through setpriv, init containers and native sidecars, HTTP/TCP/exec probes, restarts, graceful
// termination and the pod status. Images are not pulled: a JSON table maps an image name to a
// program on this machine (see ImageTable).
//
// It isolates nothing beyond networking and mounts (no cgroups, no PID or user namespace, no
// seccomp): a pod's processes run as root or the given uid on this machine. It exists so that
// onemesh's tests run what a pod spec says; never use it to run anything untrusted. See
// tools/k8s-testenv/README.md for the fields it honours and those it ignores.
package nodeagent
