// Cluster DNS for the test node: a small authoritative server for `cluster.local`, answering from
// the agent's Service and EndpointSlice informers, as CoreDNS's kubernetes plugin does for:
//
//	<svc>.<ns>.svc.cluster.local            A: the ClusterIP; headless: the ready endpoints' addresses
//	<host>.<svc>.<ns>.svc.cluster.local     A: the endpoint of a headless Service with that hostname
//	<a>-<b>-<c>-<d>.<ns>.pod.cluster.local  A: a.b.c.d
//	<svc>.<ns>.svc.cluster.local (ExternalName)  CNAME: the external name (not followed)
//
// A name that exists but has no record of the asked type gets an empty answer (NOERROR); any other
// name, inside the zone or not, NXDOMAIN. Nothing is forwarded: pods cannot resolve names outside
// the cluster, as nothing they do may leave the machine. UDP and TCP on the node's IP, port 53.
package nodeagent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
)

// ClusterDomain is the cluster's DNS domain.
const ClusterDomain = "cluster.local"

const dnsTTL = 5 // seconds: Services change during tests

// dnsResolver answers names of the cluster domain from listers.
type dnsResolver struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
}

// dnsAnswer is what a name resolves to: addresses, or a CNAME target.
type dnsAnswer struct {
	exists bool
	addrs  []netip.Addr
	cname  string
}

// lookup resolves a lower-case name without its trailing dot.
func (r *dnsResolver) lookup(name string) dnsAnswer {
	rest, ok := strings.CutSuffix(name, "."+ClusterDomain)
	if !ok {
		return dnsAnswer{}
	}
	if pod, ok := strings.CutSuffix(rest, ".pod"); ok {
		// <a-b-c-d>.<ns>.pod
		parts := strings.Split(pod, ".")
		if len(parts) != 2 {
			return dnsAnswer{}
		}
		ip, err := netip.ParseAddr(strings.ReplaceAll(parts[0], "-", "."))
		if err != nil || !ip.Is4() {
			return dnsAnswer{}
		}
		return dnsAnswer{exists: true, addrs: []netip.Addr{ip}}
	}
	svcPart, ok := strings.CutSuffix(rest, ".svc")
	if !ok {
		return dnsAnswer{}
	}
	parts := strings.Split(svcPart, ".")
	switch len(parts) {
	case 2:
		return r.service(parts[1], parts[0])
	case 3:
		return r.endpointHost(parts[2], parts[1], parts[0])
	}
	return dnsAnswer{}
}

func (r *dnsResolver) service(ns, name string) dnsAnswer {
	svc, err := r.services.Services(ns).Get(name)
	if err != nil {
		return dnsAnswer{}
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return dnsAnswer{exists: true, cname: strings.TrimSuffix(svc.Spec.ExternalName, ".")}
	}
	if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != v1.ClusterIPNone {
		out := dnsAnswer{exists: true}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, s := range ips {
			if ip, err := netip.ParseAddr(s); err == nil {
				out.addrs = append(out.addrs, ip)
			}
		}
		return out
	}
	out := dnsAnswer{exists: true}
	for _, ep := range r.endpoints(svc) {
		out.addrs = append(out.addrs, ep.addrs...)
	}
	return out
}

type dnsEndpoint struct {
	hostname string
	addrs    []netip.Addr
}

// endpoints are a headless Service's ready endpoints (all of them with publishNotReadyAddresses).
func (r *dnsResolver) endpoints(svc *v1.Service) []dnsEndpoint {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	slices, err := r.slices.EndpointSlices(svc.Namespace).List(sel)
	if err != nil {
		return nil
	}
	seen := map[netip.Addr]bool{}
	var out []dnsEndpoint
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			if !ready && !svc.Spec.PublishNotReadyAddresses {
				continue
			}
			e := dnsEndpoint{}
			if ep.Hostname != nil {
				e.hostname = strings.ToLower(*ep.Hostname)
			}
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil && !seen[ip] {
					seen[ip] = true
					e.addrs = append(e.addrs, ip)
				}
			}
			if len(e.addrs) > 0 {
				out = append(out, e)
			}
		}
	}
	return out
}

func (r *dnsResolver) endpointHost(ns, svcName, host string) dnsAnswer {
	svc, err := r.services.Services(ns).Get(svcName)
	if err != nil || svc.Spec.ClusterIP != v1.ClusterIPNone {
		return dnsAnswer{}
	}
	for _, ep := range r.endpoints(svc) {
		if ep.hostname == host {
			return dnsAnswer{exists: true, addrs: ep.addrs}
		}
	}
	return dnsAnswer{}
}

// answer builds the response to one query message; nil if the query cannot be parsed at all.
// maxLen limits the response (UDP without EDNS: 512): a longer one is sent truncated (TC), so
// the client asks again over TCP.
func (r *dnsResolver) answer(query []byte, maxLen int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, Authoritative: true, RecursionDesired: h.RecursionDesired}
	q, err := p.Question()
	if err != nil || h.OpCode != 0 {
		resp.RCode = dnsmessage.RCodeFormatError
		if h.OpCode != 0 {
			resp.RCode = dnsmessage.RCodeNotImplemented
		}
		return buildDNS(resp, nil, nil)
	}
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	a := r.lookup(name)
	if !a.exists {
		resp.RCode = dnsmessage.RCodeNameError
		return buildDNS(resp, &q, nil)
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: dnsTTL}
	var rrs []dnsmessage.Resource
	switch {
	case a.cname != "":
		if q.Type == dnsmessage.TypeCNAME || q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeAAAA || q.Type == dnsmessage.TypeALL {
			target, err := dnsmessage.NewName(a.cname + ".")
			if err == nil {
				h := rh
				h.Type = dnsmessage.TypeCNAME
				rrs = append(rrs, dnsmessage.Resource{Header: h, Body: &dnsmessage.CNAMEResource{CNAME: target}})
			}
		}
	default:
		for _, ip := range a.addrs {
			h := rh
			switch {
			case ip.Is4() && (q.Type == dnsmessage.TypeA || q.Type == dnsmessage.TypeALL):
				h.Type = dnsmessage.TypeA
				rrs = append(rrs, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: ip.As4()}})
			case ip.Is6() && (q.Type == dnsmessage.TypeAAAA || q.Type == dnsmessage.TypeALL):
				h.Type = dnsmessage.TypeAAAA
				rrs = append(rrs, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: ip.As16()}})
			}
		}
	}
	out := buildDNS(resp, &q, rrs)
	if out != nil && maxLen > 0 && len(out) > maxLen {
		resp.Truncated = true
		out = buildDNS(resp, &q, nil)
	}
	return out
}

func buildDNS(h dnsmessage.Header, q *dnsmessage.Question, rrs []dnsmessage.Resource) []byte {
	msg := dnsmessage.Message{Header: h, Answers: rrs}
	if q != nil {
		msg.Questions = []dnsmessage.Question{*q}
	}
	out, err := msg.Pack()
	if err != nil {
		return nil
	}
	return out
}

// serveDNS answers on addr (UDP and TCP) until ctx ends.
func (r *dnsResolver) serveDNS(ctx context.Context, addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("cluster DNS on udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("cluster DNS on tcp %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		pc.Close()
		ln.Close()
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
					log.Printf("cluster DNS: udp: %v", err)
				}
				if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
					return
				}
				continue
			}
			if out := r.answer(buf[:n], 512); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
					return
				}
				continue
			}
			go r.serveTCP(c)
		}
	}()
	return nil
}

func (r *dnsResolver) serveTCP(c net.Conn) {
	defer c.Close()
	var lenBuf [2]byte
	for {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		q := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		out := r.answer(q, 0)
		if out == nil {
			return
		}
		msg := make([]byte, 2+len(out))
		binary.BigEndian.PutUint16(msg, uint16(len(out)))
		copy(msg[2:], out)
		if _, err := c.Write(msg); err != nil {
			return
		}
	}
}
