package nodeagent

import (
	"net/netip"
	"testing"
)

func TestIPAMHandsOutDistinctAddressesAndHonoursTheWish(t *testing.T) {
	a, err := newIPAM("10.244.0.0/29") // .2 to .6 usable (.0 network, .1 kept, .7 broadcast)
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Addr]bool{}
	wish, err := a.allocate("p-wish", "10.244.0.5")
	if err != nil || wish.String() != "10.244.0.5" {
		t.Fatalf("wish: %v %v", wish, err)
	}
	got[wish] = true
	for _, uid := range []string{"a", "b", "c", "d"} {
		ip, err := a.allocate(uid, "10.9.9.9") // out of range: ignored
		if err != nil {
			t.Fatalf("%s: %v", uid, err)
		}
		if got[ip] || ip.String() == "10.244.0.1" || ip.String() == "10.244.0.7" || ip.String() == "10.244.0.0" {
			t.Fatalf("%s got %s (taken or reserved)", uid, ip)
		}
		got[ip] = true
	}
	if _, err := a.allocate("e", ""); err == nil {
		t.Fatal("a sixth address came out of a /29")
	}
	// The same pod asking again keeps its address.
	if ip, _ := a.allocate("a", ""); !got[ip] {
		t.Errorf("pod a got a new address %s", ip)
	}
	a.release("p-wish")
	if ip, err := a.allocate("e", "10.244.0.5"); err != nil || ip != wish {
		t.Errorf("after release: %v %v", ip, err)
	}
	if _, err := newIPAM("10.244.0.0/30"); err == nil {
		t.Error("a /30 PodCIDR was accepted")
	}
}

func TestHostInterfaceNamesFitAndDiffer(t *testing.T) {
	a, b := hostIfName("0b8c2a3e-1111-2222-3333-444455556666"), hostIfName("0b8c2a3e-1111-2222-3333-444455556667")
	if len(a) > 15 || a == b {
		t.Errorf("host interface names %q %q: too long or equal", a, b)
	}
}
