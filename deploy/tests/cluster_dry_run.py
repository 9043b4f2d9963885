"""Server-side dry-run of every kustomization of deploy/ against a running cluster: the API server
validates each object (schemas, CRDs, admission) without creating it. Not part of the offline
tests (its name does not start with test_): scripts/test runs it in its Kubernetes stage, with
$ONEMESH_KUBECTL and $KUBECONFIG of the test cluster:

    python3 -m unittest discover -s deploy/tests -p cluster_dry_run.py

A namespaced object can only be dry-run in a namespace that exists, so the test creates the
kustomizations' Namespaces for real first (labels as rendered) and deletes the ones it created at
the end (without waiting). It applies deploy/crds for real when the CRDs are missing (what
`onemesh install` applies first). Mutating webhooks (the injector) run during a dry-run too.
"""

import subprocess
import unittest

import yaml

from support import DEPLOY, kubectl_argv, render, render_text

KUSTOMIZATIONS = [
    "deploy/overlays/test-cluster",
    "deploy/overlays/production",
    "deploy/monitoring",
    "deploy/testing/postgres",
]


def kubectl(*args, stdin=None, check=True):
    argv = kubectl_argv() + list(args)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class ServerDryRun(unittest.TestCase):
    created = []

    @classmethod
    def setUpClass(cls):
        version = kubectl("version", "-o", "yaml", check=False)
        if version.returncode != 0 or "serverVersion" not in version.stdout:
            raise AssertionError(
                "no cluster answers: start the test cluster (scripts/k8s-testenv up) and set KUBECONFIG "
                f"(eval \"$(scripts/k8s-testenv env)\"); kubectl said:\n{version.stderr}"
            )
        crds = kubectl("get", "crd", "authorizationpolicies.onemesh.dev", "routes.onemesh.dev", check=False)
        if crds.returncode != 0:
            kubectl("apply", "--server-side", "-f", str(DEPLOY / "crds"))
            kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/authorizationpolicies.onemesh.dev", "crd/routes.onemesh.dev")
        namespaces = {}
        for path in KUSTOMIZATIONS:
            for o in render(path):
                if o["kind"] == "Namespace":
                    namespaces[o["metadata"]["name"]] = o
        for name, ns in sorted(namespaces.items()):
            if kubectl("get", "namespace", name, check=False).returncode != 0:
                cls.created.append(name)
            kubectl("apply", "--server-side", "--field-manager=onemesh-deploy-tests", "-f", "-", stdin=yaml.safe_dump(ns))

    @classmethod
    def tearDownClass(cls):
        if cls.created:
            kubectl("delete", "namespace", "--wait=false", *cls.created, check=False)

    def test_every_kustomization_passes_a_server_side_dry_run(self):
        for path in KUSTOMIZATIONS:
            with self.subTest(kustomization=path):
                objects = render(path)
                proc = kubectl(
                    "apply", "--server-side", "--dry-run=server", "--field-manager=onemesh-deploy-tests",
                    "-f", "-", stdin=render_text(path), check=False,
                )
                self.assertEqual(proc.returncode, 0, f"{path}:\n{proc.stdout}\n{proc.stderr}")
                lines = [l for l in proc.stdout.splitlines() if "(server dry run)" in l]
                self.assertEqual(len(lines), len(objects), f"{path}: every object is answered:\n{proc.stdout}")


if __name__ == "__main__":
    unittest.main()
