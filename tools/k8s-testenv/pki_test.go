package main

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no CERTIFICATE block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// The serving certificate verifies for the names and addresses clients use, client certificates
// carry the identities RBAC sees, and a certificate from another CA does not verify.
func TestPKIChainsAndIdentities(t *testing.T) {
	dir := t.TempDir()
	if err := runPKI([]string{"--dir", dir, "--port", "6443"}); err != nil {
		t.Fatal(err)
	}
	pki := filepath.Join(dir, "pki")
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(pki, "ca.crt")))

	server := readCert(t, filepath.Join(pki, "apiserver.crt"))
	for _, name := range []string{"10.250.0.2", "127.0.0.1", "10.96.0.1", "localhost", "kubernetes.default.svc"} {
		opts := x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		if _, err := server.Verify(opts); err != nil {
			t.Errorf("serving certificate does not verify for %s: %v", name, err)
		}
	}
	if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: "10.96.0.2"}); err == nil {
		t.Error("serving certificate verified for 10.96.0.2, which it must not name")
	}

	clientOpts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	admin := readCert(t, filepath.Join(pki, "admin.crt"))
	if _, err := admin.Verify(clientOpts); err != nil {
		t.Errorf("admin certificate: %v", err)
	}
	if got := admin.Subject.Organization; len(got) != 1 || got[0] != "system:masters" {
		t.Errorf("admin certificate groups = %v, want [system:masters]", got)
	}
	kcm := readCert(t, filepath.Join(pki, "controller-manager.crt"))
	if kcm.Subject.CommonName != "system:kube-controller-manager" {
		t.Errorf("controller-manager certificate user = %q", kcm.Subject.CommonName)
	}
	if _, err := kcm.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client certificate verified for server auth")
	}
	if got := readCert(t, filepath.Join(pki, "kube-proxy.crt")).Subject.CommonName; got != "system:kube-proxy" {
		t.Errorf("kube-proxy certificate user = %q, want system:kube-proxy (RBAC's system:node-proxier binding)", got)
	}
	// The front proxy's client is signed by its own CA, not by the cluster CA.
	if _, err := readCert(t, filepath.Join(pki, "front-proxy-client.crt")).Verify(clientOpts); err == nil {
		t.Error("front-proxy client verified against the cluster CA")
	}

	// A second run makes a new CA: the first one's certificates do not verify against it.
	other := t.TempDir()
	if err := runPKI([]string{"--dir", other, "--port", "6443"}); err != nil {
		t.Fatal(err)
	}
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(readCert(t, filepath.Join(other, "pki", "ca.crt")))
	if _, err := admin.Verify(x509.VerifyOptions{Roots: otherRoots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("admin certificate verified against another run's CA")
	}
}

func TestServiceAccountKeysMatch(t *testing.T) {
	dir := t.TempDir()
	if err := runPKI([]string{"--dir", dir, "--port", "6443"}); err != nil {
		t.Fatal(err)
	}
	keyData, err := os.ReadFile(filepath.Join(dir, "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := pem.Decode(keyData)
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pubData, err := os.ReadFile(filepath.Join(dir, "pki", "sa.pub"))
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := pem.Decode(pubData)
	pub, err := x509.ParsePKIXPublicKey(pb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(pub.(*ecdsa.PublicKey)) {
		t.Error("sa.pub is not the public half of sa.key")
	}
}

func TestKubeconfigNamesServerAndUser(t *testing.T) {
	dir := t.TempDir()
	if err := runPKI([]string{"--dir", dir, "--port", "40123"}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "admin.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "server: https://127.0.0.1:40123") {
		t.Errorf("admin.kubeconfig without --address does not name 127.0.0.1:40123")
	}
	if err := runPKI([]string{"--dir", dir, "--address", "10.250.0.2", "--port", "6443"}); err != nil {
		t.Fatal(err)
	}
	data, err = os.ReadFile(filepath.Join(dir, "kube-proxy.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"server: https://10.250.0.2:6443", "certificate-authority-data: ", "client-key-data: ", "current-context: onemesh-testenv"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("kube-proxy.kubeconfig lacks %q", want)
		}
	}
	info, err := os.Stat(filepath.Join(dir, "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("sa.key mode = %v, want 0600", info.Mode().Perm())
	}
}

func TestPKIRejectsMissingFlags(t *testing.T) {
	if err := runPKI([]string{"--port", "6443"}); err == nil {
		t.Error("pki ran without --dir")
	}
}
