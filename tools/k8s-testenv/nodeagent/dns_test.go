package nodeagent

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

func testResolver(t *testing.T) *dnsResolver {
	t.Helper()
	svcs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	sl := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	yes, no := true, false
	host := "db-0"
	for _, o := range []*v1.Service{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes"}, Spec: v1.ServiceSpec{ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.1"}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "db"}, Spec: v1.ServiceSpec{ClusterIP: v1.ClusterIPNone}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "ext"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.org"}},
	} {
		if err := svcs.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "db-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.7"}, Hostname: &host, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
			{Addresses: []string{"10.244.0.8"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
		},
	}
	if err := sl.Add(slice); err != nil {
		t.Fatal(err)
	}
	return &dnsResolver{services: corelisters.NewServiceLister(svcs), slices: discoverylisters.NewEndpointSliceLister(sl)}
}

func TestDNSLookup(t *testing.T) {
	r := testResolver(t)
	cases := []struct {
		name   string
		exists bool
		addrs  []string
		cname  string
	}{
		{"kubernetes.default.svc.cluster.local", true, []string{"10.96.0.1"}, ""},
		{"db.team.svc.cluster.local", true, []string{"10.244.0.7"}, ""}, // the not-ready endpoint is left out
		{"db-0.db.team.svc.cluster.local", true, []string{"10.244.0.7"}, ""},
		{"db-1.db.team.svc.cluster.local", false, nil, ""},
		{"ext.team.svc.cluster.local", true, nil, "example.org"},
		{"10-244-0-9.team.pod.cluster.local", true, []string{"10.244.0.9"}, ""},
		{"kubernetes.default.default.svc.cluster.local", false, nil, ""}, // a search-path miss
		{"nope.default.svc.cluster.local", false, nil, ""},
		{"example.com", false, nil, ""},
		{"kubernetes.default.svc.cluster.local.evil.com", false, nil, ""},
	}
	for _, c := range cases {
		got := r.lookup(c.name)
		if got.exists != c.exists || got.cname != c.cname || len(got.addrs) != len(c.addrs) {
			t.Errorf("%s: got %+v", c.name, got)
			continue
		}
		for i, a := range c.addrs {
			if got.addrs[i] != netip.MustParseAddr(a) {
				t.Errorf("%s: address %d is %s, want %s", c.name, i, got.addrs[i], a)
			}
		}
	}
}

func query(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	msg := dnsmessage.Message{Header: dnsmessage.Header{ID: 77, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}}}
	b, err := msg.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDNSAnswers(t *testing.T) {
	r := testResolver(t)
	parse := func(b []byte) dnsmessage.Message {
		var m dnsmessage.Message
		if err := m.Unpack(b); err != nil {
			t.Fatalf("unpacking the answer: %v", err)
		}
		return m
	}
	m := parse(r.answer(query(t, "Kubernetes.Default.svc.cluster.local.", dnsmessage.TypeA), 512))
	if m.ID != 77 || !m.Response || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
		t.Fatalf("A: %+v", m)
	}
	if a, ok := m.Answers[0].Body.(*dnsmessage.AResource); !ok || a.A != [4]byte{10, 96, 0, 1} {
		t.Errorf("A answer: %+v", m.Answers[0])
	}
	// An existing name without AAAA: NOERROR and no answers (glibc asks A and AAAA together).
	m = parse(r.answer(query(t, "kubernetes.default.svc.cluster.local.", dnsmessage.TypeAAAA), 512))
	if m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Errorf("AAAA: %+v", m)
	}
	m = parse(r.answer(query(t, "www.example.com.", dnsmessage.TypeA), 512))
	if m.RCode != dnsmessage.RCodeNameError || len(m.Answers) != 0 {
		t.Errorf("outside the zone: %+v", m)
	}
	if r.answer([]byte{1, 2, 3}, 512) != nil {
		t.Error("garbage got an answer")
	}
}

func TestDNSServerOverUDPAndTCP(t *testing.T) {
	r := testResolver(t)
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.LocalAddr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := r.serveDNS(ctx, addr); err != nil {
		t.Skipf("port %s taken between the probe and the listen: %v", addr, err)
	}
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	for _, network := range []string{"udp", "tcp"} {
		res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		ips, err := res.LookupHost(lctx, "db-0.db.team.svc.cluster.local")
		lcancel()
		if err != nil || len(ips) != 1 || ips[0] != "10.244.0.7" {
			t.Errorf("%s: %v %v", network, ips, err)
		}
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	_, err = res.LookupHost(lctx, "nope.team.svc.cluster.local")
	var de *net.DNSError
	if err == nil || !asDNSError(err, &de) || !de.IsNotFound {
		t.Errorf("a missing Service: %v", err)
	}
}

func asDNSError(err error, out **net.DNSError) bool {
	de, ok := err.(*net.DNSError)
	if ok {
		*out = de
	}
	return ok
}
