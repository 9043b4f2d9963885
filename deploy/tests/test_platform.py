"""The platform's kustomizations (deploy/base, deploy/overlays/*): what they render, offline.

Runs `kubectl kustomize` ($ONEMESH_KUBECTL; unset = failure, never a skip) and checks the objects:
nothing of the mesh written in them, StatefulSets with claims, restrictive pods, the payment
chain's policies as in mesh.yaml (local mode), the images, and which namespace may reach
which port under the NetworkPolicies (evaluated here: no cluster enforces them in tests).
"""

import copy
import re
import unittest

import yaml

from support import (
    DEPLOY,
    Endpoint,
    allowed,
    image_maps,
    image_table,
    of_kind,
    pod_labels,
    pod_specs,
    render,
    render_text,
)

ORGS = ["order", "pg", "appcard", "card", "bank"]
OVERLAYS = ["deploy/overlays/test-cluster", "deploy/overlays/production"]
# Calls down the chain (platform/README.md) and the upstream variable each caller reads.
UPSTREAMS = {
    "order": {"PG_URL": "http://pg.pg.svc.cluster.local"},
    "pg": {"APPCARD_URL": "http://appcard.appcard.svc.cluster.local", "CARD_URL": "http://card.card.svc.cluster.local"},
    "appcard": {"CARD_URL": "http://card.card.svc.cluster.local"},
    "card": {"BANK_URL": "http://bank.bank.svc.cluster.local"},
    "bank": {},
}


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env") or []}


class Rendering(unittest.TestCase):
    def test_every_kustomization_renders(self):
        for path in ["deploy/base"] + OVERLAYS:
            with self.subTest(path=path):
                objects = render(path)
                self.assertGreater(len(objects), 40, f"{path} rendered only {len(objects)} objects")

    def test_no_mesh_setting_in_any_manifest(self):
        # The injector adds the proxy and the capture: no manifest of the platform names them.
        for path in ["deploy/base"] + OVERLAYS:
            text = render_text(path)
            for word in ["onemesh-proxy", "HTTP_PROXY", "http_proxy", "ONEMESH_", "4140", "NO_PROXY"]:
                with self.subTest(path=path, word=word):
                    self.assertNotIn(word, text, f"{path} renders {word!r}: the mesh must add itself")

    def test_namespaces_are_meshed(self):
        for path in OVERLAYS:
            namespaces = {n["metadata"]["name"]: n for n in of_kind(render(path), "Namespace")}
            self.assertEqual(sorted(namespaces), sorted(ORGS), path)
            for name, ns in namespaces.items():
                self.assertEqual(ns["metadata"]["labels"].get("onemesh.dev/mesh"), "enabled", f"{path}: {name}")


class Workloads(unittest.TestCase):
    def test_statefulsets_have_their_database_on_a_claim(self):
        for path in OVERLAYS:
            sets = {s["metadata"]["namespace"]: s for s in of_kind(render(path), "StatefulSet")}
            self.assertEqual(sorted(sets), sorted(ORGS), path)
            for org, s in sets.items():
                with self.subTest(path=path, org=org):
                    spec = s["spec"]
                    self.assertEqual(spec["replicas"], 1, "SQLite has one writer")
                    templates = spec.get("volumeClaimTemplates") or []
                    self.assertEqual([t["metadata"]["name"] for t in templates], ["data"])
                    self.assertEqual(templates[0]["spec"]["accessModes"], ["ReadWriteOnce"])
                    app = spec["template"]["spec"]["containers"][0]
                    self.assertIn({"name": "data", "mountPath": "/data"}, app["volumeMounts"])
                    env = env_of(app)
                    self.assertEqual(env["DATA_DIR"], "/data/db")
                    self.assertEqual(env["LISTEN"], "0.0.0.0:8080")
                    for k, v in UPSTREAMS[org].items():
                        self.assertEqual(env.get(k), v, f"{org} must call the next organization by its Service name")
                    self.assertEqual(app["args"], [org])
                    self.assertEqual(app["ports"], [{"name": "http", "containerPort": 8080}])
                    for probe in ("readinessProbe", "livenessProbe"):
                        self.assertEqual(app[probe]["httpGet"], {"path": "/healthz", "port": "http"})
                    self.assertIn("requests", app["resources"])
                    self.assertIn("memory", app["resources"]["limits"])

    def test_storage_class_per_overlay(self):
        test = of_kind(render("deploy/overlays/test-cluster"), "StatefulSet")
        self.assertTrue(all(s["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "standard" for s in test))
        prod = of_kind(render("deploy/overlays/production"), "StatefulSet")
        # Production uses the cluster's default class.
        self.assertTrue(all("storageClassName" not in s["spec"]["volumeClaimTemplates"][0]["spec"] for s in prod))

    def test_pods_are_restricted(self):
        for path in OVERLAYS:
            for o, spec in pod_specs(render(path)):
                name = f"{path}: {o['kind']} {o['metadata']['namespace']}/{o['metadata']['name']}"
                with self.subTest(workload=name):
                    self.assertIs(spec.get("automountServiceAccountToken"), False, name)
                    self.assertEqual(spec["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
                    for c in spec["containers"]:
                        sc = c["securityContext"]
                        self.assertEqual(sc["runAsUser"], 1000)
                        self.assertIs(sc["runAsNonRoot"], True)
                        self.assertIs(sc["readOnlyRootFilesystem"], True)
                        self.assertIs(sc["allowPrivilegeEscalation"], False)
                        self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
                    if o["kind"] == "StatefulSet":
                        self.assertEqual(spec["securityContext"]["fsGroup"], 1000)

    def test_services_lead_to_the_app_port(self):
        for path in OVERLAYS:
            for svc in of_kind(render(path), "Service"):
                self.assertEqual(svc["spec"]["ports"], [{"name": "http", "port": 80, "targetPort": "http"}])

    def test_images(self):
        table = image_table()
        test = render("deploy/overlays/test-cluster")
        prod = render("deploy/overlays/production")
        for o, spec in pod_specs(test):
            for c in spec["containers"]:
                self.assertEqual(c["image"], "onemesh/platform:v0.1.0")
                self.assertTrue(image_maps(c["image"], table), f"{c['image']} is not in the test node's image table")
        for o, spec in pod_specs(prod):
            for c in spec["containers"]:
                registry, _, rest = c["image"].partition("/")
                self.assertIn(".", registry, f"{c['image']}: production images name their registry")
                self.assertRegex(rest, r"^onemesh/platform:v\d+\.\d+\.\d+$")

    def test_customers_only_in_the_test_overlay(self):
        test = [d["metadata"]["name"] for d in of_kind(render("deploy/overlays/test-cluster"), "Deployment")]
        self.assertEqual(test, ["customers"])
        customers = of_kind(render("deploy/overlays/test-cluster"), "Deployment")[0]
        args = customers["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertIn("http://order.order.svc.cluster.local", args)
        self.assertEqual(of_kind(render("deploy/overlays/production"), "Deployment"), [])

    def test_production_anti_affinity_selects_the_platform_pods(self):
        sets = of_kind(render("deploy/overlays/production"), "StatefulSet")
        for s in sets:
            term = s["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            selector = term["labelSelector"]["matchLabels"]
            # It must match the other organizations' pods, or it spreads nothing.
            others = [o for o in sets if o is not s]
            self.assertTrue(all(all(pod_labels(o).get(k) == v for k, v in selector.items()) for o in others), selector)
            self.assertEqual(term["topologyKey"], "kubernetes.io/hostname")

    def test_production_disruption_budgets(self):
        objects = render("deploy/overlays/production")
        pdbs = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in of_kind(objects, "PodDisruptionBudget")}
        for s in of_kind(objects, "StatefulSet"):
            key = (s["metadata"]["namespace"], s["metadata"]["name"])
            self.assertIn(key, pdbs, f"no PodDisruptionBudget for StatefulSet {key}")
            self.assertEqual(pdbs[key]["spec"]["selector"]["matchLabels"], s["spec"]["selector"]["matchLabels"])
            self.assertEqual(pdbs[key]["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow")


class MeshPolicy(unittest.TestCase):
    """The payment chain's AuthorizationPolicies and Routes are local mode's (mesh.yaml): one
    policy whichever way the platform runs."""

    def _by_key(self, objects, kind):
        out = {}
        for o in of_kind(objects, kind):
            out[(o["metadata"]["namespace"], o["metadata"]["name"])] = o["spec"]
        return out

    def test_same_policies_and_routes_as_mesh_yaml(self):
        reference = [d for d in yaml.safe_load_all((DEPLOY.parent / "mesh.yaml").read_text()) if d]
        for path in OVERLAYS:
            objects = render(path)
            for kind in ("AuthorizationPolicy", "Route"):
                with self.subTest(path=path, kind=kind):
                    self.assertEqual(self._by_key(objects, kind), self._by_key(reference, kind))


# ---------------------------------------------------------------------------------------------
# NetworkPolicies


def control_plane_pod_labels():
    """The control plane's pod labels, from the template `onemesh install` fills in."""
    text = re.sub(r"\{\{[A-Z0-9_]+\}\}", "x", (DEPLOY / "install" / "control-plane.yaml").read_text())
    control = [o for o in yaml.safe_load_all(text) if o and o["kind"] == "StatefulSet"]
    assert len(control) == 1 and control[0]["metadata"]["namespace"] == "onemesh"
    return control[0]["spec"]["template"]["metadata"]["labels"]


def endpoints(objects):
    """One endpoint per workload of the render, plus the world around it."""
    out = []
    for o, _ in pod_specs(objects):
        out.append(Endpoint(f"{o['metadata']['namespace']}/{o['metadata']['name']}", o["metadata"]["namespace"], pod_labels(o)))
    out += [
        Endpoint("monitoring/prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        Endpoint("onemesh/control", "onemesh", control_plane_pod_labels()),
        Endpoint("onemesh/other", "onemesh", {"app": "other"}),
        Endpoint("default/client", "default", {"app": "client"}),
        Endpoint("dbtest/pgbench", "dbtest", {"app.kubernetes.io/name": "pgbench"}, {"onemesh.dev/mesh": "enabled"}),
        Endpoint("kube-system/coredns", "kube-system", {"k8s-app": "kube-dns"}),
        Endpoint("node-dns", ip="10.250.0.2"),
        Endpoint("internet", ip="93.184.216.34"),
    ]
    return out


class NetworkPolicies(unittest.TestCase):
    def matrix(self, path, objects=None):
        objects = objects if objects is not None else render(path)
        policies = of_kind(objects, "NetworkPolicy")
        eps = endpoints(objects)
        platform = [e for e in eps if e.namespace in ORGS]
        others = [e for e in eps if e.namespace not in ORGS]
        return policies, eps, platform, others

    def test_every_platform_namespace_denies_by_default(self):
        for path in OVERLAYS:
            policies = of_kind(render(path), "NetworkPolicy")
            for org in ORGS:
                deny = [p for p in policies if p["metadata"]["namespace"] == org and p["metadata"]["name"] == "default-deny"]
                self.assertEqual(len(deny), 1, f"{path}: {org} has no default-deny")
                self.assertEqual(deny[0]["spec"], {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})

    def test_reachability_matrix(self):
        for path in OVERLAYS:
            policies, eps, platform, others = self.matrix(path)
            self.assertEqual(len(platform), 6 if path.endswith("test-cluster") else 5)
            for src in platform + others:
                for dst in platform:
                    for port in (4143, 4190, 4191, 8080, 80, 22):
                        control = src.name == "onemesh/control"
                        if port == 4143:
                            expected = src.namespace in ORGS
                        elif port == 4191:
                            expected = src.namespace == "monitoring" or control
                        elif port == 4190:
                            expected = control
                        else:
                            expected = False
                        with self.subTest(path=path, src=src.name, dst=dst.name, port=port):
                            self.assertEqual(allowed(policies, src, dst, port), expected)

    def test_platform_egress(self):
        for path in OVERLAYS:
            policies, eps, platform, others = self.matrix(path)
            by_name = {e.name: e for e in eps}
            test_cluster = path.endswith("test-cluster")
            for src in platform:
                cases = [
                    ("onemesh/control", 8080, "TCP", True),
                    ("onemesh/control", 8086, "TCP", True),
                    ("onemesh/control", 8090, "TCP", True),
                    ("onemesh/control", 9990, "TCP", False),  # its health port: kubelet's, not ours
                    ("onemesh/other", 8080, "TCP", False),
                    ("monitoring/prometheus", 9090, "TCP", False),
                    ("default/client", 4143, "TCP", False),
                    # dbtest is meshed but not the platform: not a destination of it
                    ("dbtest/pgbench", 4143, "TCP", False),
                    ("internet", 443, "TCP", False),
                    ("node-dns", 53, "UDP", test_cluster),
                    ("node-dns", 53, "TCP", test_cluster),
                    ("kube-system/coredns", 53, "UDP", not test_cluster),
                    ("kube-system/coredns", 53, "TCP", not test_cluster),
                    ("kube-system/coredns", 8080, "TCP", False),
                ]
                for dst, port, proto, expected in cases:
                    with self.subTest(path=path, src=src.name, dst=dst, port=port, proto=proto):
                        self.assertEqual(allowed(policies, src, by_name[dst], port, proto), expected)

    def test_the_matrix_catches_a_missing_deny(self):
        # The evaluator is only worth its matrix if a broken policy set changes the answer: without
        # default-deny (and with an allow-all ingress rule added), the app port becomes reachable.
        objects = copy.deepcopy(render("deploy/overlays/test-cluster"))
        policies, eps, platform, _ = self.matrix("deploy/overlays/test-cluster", objects)
        bank = next(e for e in platform if e.namespace == "bank")
        pg = next(e for e in platform if e.namespace == "pg")
        self.assertFalse(allowed(policies, pg, bank, 8080))
        for p in policies:
            if p["metadata"]["namespace"] == "bank" and p["metadata"]["name"] == "allow-mesh-inbound":
                p["spec"]["ingress"][0]["ports"] = []
            if p["metadata"]["namespace"] == "pg" and p["metadata"]["name"] == "allow-mesh-egress":
                p["spec"]["egress"][0]["ports"].append({"protocol": "TCP", "port": 8080})
        self.assertTrue(allowed(policies, pg, bank, 8080))
        # and an unmeshed namespace through a namespaceSelector that matches everything
        client = next(e for e in eps if e.name == "default/client")
        self.assertFalse(allowed(policies, client, bank, 4143))
        for p in policies:
            if p["metadata"]["namespace"] == "bank" and p["metadata"]["name"] == "allow-mesh-inbound":
                p["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]
        self.assertTrue(allowed(policies, client, bank, 4143))


if __name__ == "__main__":
    unittest.main()
