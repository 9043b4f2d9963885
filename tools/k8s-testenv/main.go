// Command testenv is onemesh's Kubernetes test cluster, built from Go modules: one binary that
// runs as each part of the cluster, one process per part (they keep process-wide state such as
// feature gates and signal handlers, so they are never run in one process):
//
//	testenv pki --dir DIR --port N      write the CA, serving and client certificates,
//	                                    service-account keys and kubeconfigs into DIR
//	testenv etcd --dir DIR --port N --peer-port N
//	                                    an embedded etcd on 127.0.0.1 (no fsync: tests only)
//	testenv kube-apiserver FLAGS...     the real kube-apiserver (k8s.io/kubernetes/cmd/kube-apiserver/app)
//	testenv kube-controller-manager FLAGS...
//	                                    the real kube-controller-manager
//	testenv kube-proxy FLAGS...         the real kube-proxy (k8s.io/kubernetes/cmd/kube-proxy/app)
//	testenv kubectl ARGS...             kubectl of the same Kubernetes release (k8s.io/kubectl/pkg/cmd)
//	testenv node-agent FLAGS...         the test node agent: kubelet and scheduler for tests (nodeagent/)
//	testenv container-exec SPEC.json    start one container's process (the node agent runs it)
//	testenv ports N                     print N free TCP ports on 127.0.0.1, one a line
//	testenv version                     print the Kubernetes version this binary was built from
//
// scripts/k8s-testenv builds it once per machine and starts the parts with the right flags;
// people and tests use that script, not this binary directly. Everything runs in the network
// namespace onemesh-k8s that the script creates.
package main

import (
	"fmt"
	"os"

	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kubeproxy "k8s.io/kubernetes/cmd/kube-proxy/app"

	"onemesh.dev/tools/k8s-testenv/nodeagent"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/version"
)

const usage = `usage: testenv COMMAND [ARGS...]

commands:
  pki --dir DIR --port N        write certificates, keys and kubeconfigs for an API server on 127.0.0.1:N
  etcd --dir DIR --port N --peer-port N
                                run an embedded etcd on 127.0.0.1 (no fsync: for tests only)
  kube-apiserver FLAGS...       run kube-apiserver (its own --help lists FLAGS)
  kube-controller-manager FLAGS...
                                run kube-controller-manager (its own --help lists FLAGS)
  kube-proxy FLAGS...           run kube-proxy (its own --help lists FLAGS)
  kubectl ARGS...               kubectl of the same release (scripts/k8s-testenv kubectl sets KUBECONFIG)
  node-agent FLAGS...           run the test node agent (kubelet and scheduler for tests)
  container-exec SPEC.json      start one container's process (used by node-agent)
  ports N                       print N free TCP ports on 127.0.0.1
  version                       print the Kubernetes version built in

Use scripts/k8s-testenv (up|down|env|build) rather than this binary directly.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "kube-apiserver":
		c := apiserver.NewAPIServerCommand()
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kube-controller-manager":
		c := controllermanager.NewControllerManagerCommand()
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kube-proxy":
		c := kubeproxy.NewProxyCommand()
		c.SetArgs(args)
		os.Exit(cli.Run(c))
	case "kubectl":
		// kubectl reads os.Args itself (plugins, its flags): make them what a kubectl binary sees.
		os.Args = append([]string{"kubectl"}, args...)
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	case "node-agent":
		err = nodeagent.Run(args)
	case "container-exec":
		err = nodeagent.RunContainerExec(args)
	case "pki":
		err = runPKI(args)
	case "etcd":
		err = runEtcd(args)
	case "ports":
		err = runPorts(args)
	case "version":
		fmt.Println(version.Get().GitVersion)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "testenv: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv %s: %v\n", cmd, err)
		os.Exit(1)
	}
}
