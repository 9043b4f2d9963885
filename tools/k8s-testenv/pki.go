// The test cluster's PKI and kubeconfigs, made with Go's crypto into a work directory: a CA, the
// API server's serving certificate (for the node address 10.250.0.2, 127.0.0.1, the first address
// of the Service range and the kubernetes.default names), client certificates for an admin (group
// system:masters), the controller manager (user system:kube-controller-manager) and kube-proxy
// (user system:kube-proxy; both bound by RBAC's bootstrap policy), the node agent (group
// system:masters: it binds pods, provisions volumes and requests tokens for any ServiceAccount), a
// front-proxy CA and client (for aggregated APIs), and the ServiceAccount token signing key pair.
// Keys are ECDSA P-256. Nothing here is for production: the keys sit unencrypted in the work
// directory of a throwaway cluster.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// serviceIP is the first address of the Service range (10.96.0.0/16) that the API server gives to
// the `kubernetes` Service; it is in the serving certificate so that pods can verify it there.
var serviceIP = net.IPv4(10, 96, 0, 1)

// nodeIP is the node network namespace's address on its veth to the root namespace; the API server
// advertises it and the kubeconfigs point at it (scripts/k8s-testenv sets the network up).
var nodeIP = net.IPv4(10, 250, 0, 2)

type keyPair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func runPKI(args []string) error {
	fs := flag.NewFlagSet("pki", flag.ContinueOnError)
	dir := fs.String("dir", "", "work directory to write into (created if missing)")
	port := fs.Int("port", 0, "the API server's secure port (for the kubeconfigs)")
	address := fs.String("address", "127.0.0.1", "the API server's address in the kubeconfigs (must be in the serving certificate)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *port == 0 {
		return fmt.Errorf("--dir and --port are required (scripts/k8s-testenv up passes them)")
	}
	pkiDir := filepath.Join(*dir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", pkiDir, err)
	}

	ca, err := newCert("onemesh-testenv-ca", nil, nil, true, nil, nil)
	if err != nil {
		return err
	}
	server, err := newCert("kube-apiserver", nil, &serverSANs, false, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	if err != nil {
		return err
	}
	clientUsage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	admin, err := newCert("onemesh-testenv-admin", []string{"system:masters"}, nil, false, ca, clientUsage)
	if err != nil {
		return err
	}
	kcm, err := newCert("system:kube-controller-manager", nil, nil, false, ca, clientUsage)
	if err != nil {
		return err
	}
	proxy, err := newCert("system:kube-proxy", nil, nil, false, ca, clientUsage)
	if err != nil {
		return err
	}
	agent, err := newCert("onemesh-testenv-node-agent", []string{"system:masters"}, nil, false, ca, clientUsage)
	if err != nil {
		return err
	}
	// The front proxy's CA and client: the API server signs requests it proxies to aggregated API
	// servers with it, and components read its CA from kube-system/extension-apiserver-authentication.
	frontCA, err := newCert("onemesh-testenv-front-proxy-ca", nil, nil, true, nil, nil)
	if err != nil {
		return err
	}
	frontClient, err := newCert("front-proxy-client", nil, nil, false, frontCA, clientUsage)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating the service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the service-account public key: %w", err)
	}

	files := map[string][]byte{}
	for name, kp := range map[string]*keyPair{
		"ca": ca, "apiserver": server, "admin": admin, "controller-manager": kcm,
		"kube-proxy": proxy, "node-agent": agent,
		"front-proxy-ca": frontCA, "front-proxy-client": frontClient,
	} {
		keyPEM, err := keyPEM(kp.key)
		if err != nil {
			return err
		}
		files[name+".crt"] = certPEM(kp.der)
		files[name+".key"] = keyPEM
	}
	saPEM, err := keyPEM(saKey)
	if err != nil {
		return err
	}
	files["sa.key"] = saPEM
	files["sa.pub"] = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub})
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(pkiDir, name), data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}

	serverURL := fmt.Sprintf("https://%s", net.JoinHostPort(*address, fmt.Sprint(*port)))
	for name, kp := range map[string]*keyPair{"admin": admin, "controller-manager": kcm, "kube-proxy": proxy, "node-agent": agent} {
		keyPEM, err := keyPEM(kp.key)
		if err != nil {
			return err
		}
		path := filepath.Join(*dir, name+".kubeconfig")
		if err := os.WriteFile(path, kubeconfig(serverURL, name, files["ca.crt"], certPEM(kp.der), keyPEM), 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
	}
	return nil
}

type sans struct {
	dns []string
	ips []net.IP
}

var serverSANs = sans{
	dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	ips: []net.IP{net.IPv4(127, 0, 0, 1), serviceIP, nodeIP},
}

func newCert(cn string, orgs []string, alt *sans, isCA bool, parent *keyPair, usage []x509.ExtKeyUsage) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a key for %s: %w", cn, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, fmt.Errorf("drawing a serial for %s: %w", cn, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	if alt != nil {
		tmpl.DNSNames = alt.dns
		tmpl.IPAddresses = alt.ips
	}
	signer, issuer := key, tmpl
	if parent != nil {
		signer, issuer = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate for %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate for %s: %w", cn, err)
	}
	return &keyPair{cert: cert, der: der, key: key}, nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding a private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func kubeconfig(server, user string, ca, cert, key []byte) []byte {
	b64 := base64.StdEncoding.EncodeToString
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: onemesh-testenv
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: onemesh-testenv
  context:
    cluster: onemesh-testenv
    user: %s
current-context: onemesh-testenv
`, server, b64(ca), user, b64(cert), b64(key), user))
}
