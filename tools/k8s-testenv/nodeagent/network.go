// Pod networking, Calico style without a bridge: each pod gets a network namespace
// onemesh-pod-<uid> whose eth0 holds the pod IP as a /32 with a default route through the
// link-local gateway 169.254.1.1 (a permanent neighbour entry for it names the host side's MAC);
// the host side of the veth (in the node's namespace) has proxy ARP on and a /32 route to the pod.
// The agent runs in the node's network namespace; everything is done with the `ip` command.
package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PodNetnsPrefix starts the name of every pod network namespace (under /run/netns).
const PodNetnsPrefix = "onemesh-pod-"

// gateway is the pods' default gateway: link-local, answered by the host side of their veth.
const gateway = "169.254.1.1"

func podNetnsName(uid string) string { return PodNetnsPrefix + uid }

// hostIfName is the host side of a pod's veth: "omp" and 8 hex digits of the pod UID's hash
// (interface names are at most 15 bytes).
func hostIfName(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return "omp" + hex.EncodeToString(sum[:4])
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupPodNetwork creates the pod's namespace and veth and gives it ip.
func setupPodNetwork(uid string, ip netip.Addr) error {
	ns, hostIf := podNetnsName(uid), hostIfName(uid)
	// A leftover of an earlier run of this pod: start clean.
	teardownPodNetwork(uid)
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "link", "set", hostIf, "up"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", hostIf, "proxy_arp"), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling proxy ARP on %s: %w", hostIf, err)
	}
	mac, err := linkMAC(hostIf)
	if err != nil {
		return err
	}
	steps = [][]string{
		{"ip", "route", "replace", ip.String() + "/32", "dev", hostIf, "scope", "link"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", ip.String() + "/32", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", gateway, "dev", "eth0", "scope", "link"},
		{"ip", "-n", ns, "route", "add", "default", "via", gateway, "dev", "eth0"},
		{"ip", "-n", ns, "neigh", "replace", gateway, "lladdr", mac, "dev", "eth0", "nud", "permanent"},
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func linkMAC(name string) (string, error) {
	out, err := exec.Command("ip", "-o", "link", "show", name).Output()
	if err != nil {
		return "", fmt.Errorf("ip link show %s: %w", name, err)
	}
	fields := strings.Fields(string(out))
	for i, f := range fields {
		if f == "link/ether" && i+1 < len(fields) {
			return fields[i+1], nil
		}
	}
	return "", fmt.Errorf("no MAC address for %s in %q", name, out)
}

// netnsPids lists the processes in a named network namespace.
func netnsPids(ns string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// killNetnsProcs SIGKILLs everything left in a pod's namespace (processes the agent started).
func killNetnsProcs(ns string) {
	for i := 0; i < 20; i++ {
		pids := netnsPids(ns)
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// teardownPodNetwork kills what is left in the pod's namespace and deletes it and its veth.
func teardownPodNetwork(uid string) {
	ns := podNetnsName(uid)
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
		killNetnsProcs(ns)
		_ = run("ip", "netns", "del", ns)
	}
	_ = run("ip", "link", "del", hostIfName(uid))
}

// leftoverPodNetns lists pod namespaces present on the machine (from an earlier agent).
func leftoverPodNetns() []string {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), PodNetnsPrefix) {
			out = append(out, strings.TrimPrefix(e.Name(), PodNetnsPrefix))
		}
	}
	return out
}

// ipam hands out pod IPs from the node's PodCIDR (network and broadcast addresses and the first
// host address excluded).
type ipam struct {
	mu     sync.Mutex
	prefix netip.Prefix
	used   map[netip.Addr]string // -> pod UID
}

func newIPAM(cidr string) (*ipam, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() || p.Bits() > 29 {
		return nil, fmt.Errorf("pod CIDR %q must be an IPv4 prefix of /29 or larger", cidr)
	}
	return &ipam{prefix: p.Masked(), used: map[netip.Addr]string{}}, nil
}

// allocate gives uid the address it asks for when free and in range, else the lowest free one.
func (a *ipam) allocate(uid string, want string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, owner := range a.used {
		if owner == uid {
			return ip, nil
		}
	}
	if w, err := netip.ParseAddr(want); err == nil && a.usable(w) {
		if _, taken := a.used[w]; !taken {
			a.used[w] = uid
			return w, nil
		}
	}
	for ip := a.prefix.Addr().Next().Next(); a.usable(ip); ip = ip.Next() {
		if _, taken := a.used[ip]; !taken {
			a.used[ip] = uid
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free pod IP left in %s", a.prefix)
}

func (a *ipam) usable(ip netip.Addr) bool {
	if !a.prefix.Contains(ip) {
		return false
	}
	first := a.prefix.Addr().Next() // .1 is kept free (a gateway in other setups)
	b := ip.As4()
	last := a.prefix.Addr().As4()
	hostBits := 32 - a.prefix.Bits()
	bcast := uint32(last[0])<<24 | uint32(last[1])<<16 | uint32(last[2])<<8 | uint32(last[3]) | (1<<hostBits - 1)
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return ip != a.prefix.Addr() && ip != first && v != bcast
}

func (a *ipam) release(uid string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ip, owner := range a.used {
		if owner == uid {
			delete(a.used, ip)
		}
	}
}
