"""deploy/monitoring: Prometheus's configuration and pod, the rules (promtool check + unit tests),
and the dashboards (valid JSON; every query uses only recorded names or metrics that exist).

Metric names that "exist" are the ones docs/proxy.md documents for every proxy (its metrics
table), their histogram/counter series, and Prometheus's own `up`; the rules' inputs are checked
against the same list, so a renamed proxy metric fails here before a dashboard goes blank.
"""

import json
import re
import shutil
import subprocess
import unittest

from pathlib import Path

import yaml

from support import DEPLOY, ROOT, image_maps, image_table, of_kind, render

MON = DEPLOY / "monitoring"
RULE_FILES = sorted((MON / "rules").glob("*.yaml"))
RULE_TESTS = sorted((MON / "rules" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((MON / "dashboards").glob("*.json"))

PROMQL_WORDS = {
    # functions, aggregations, keywords: never metric names
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "time",
    "vector", "by", "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
    "bool", "abs", "clamp_min", "clamp_max", "label_values", "offset", "topk", "bottomk", "absent",
    "scalar", "sort", "sort_desc", "inf", "nan", "humanizePercentage", "humanizeDuration",
}


def promtool():
    path = shutil.which("promtool")
    if not path:
        raise AssertionError("promtool is not installed: apt-get install prometheus (scripts/install-test-deps does)")
    return path


def promtool_with_kubernetes():
    """promtool of deploy/monitoring/build-prometheus (Debian's has no Kubernetes discovery and
    rejects kubernetes_sd_configs), or $ONEMESH_PROMTOOL_K8S."""
    import os

    path = os.environ.get("ONEMESH_PROMTOOL_K8S") or str(
        Path(os.environ.get("ONEMESH_PROMETHEUS_DIR") or "/var/cache/onemesh/prometheus-2.42.0")
        / "promtool"
    )
    if not Path(path).is_file():
        raise AssertionError(
            f"{path} is missing: run deploy/monitoring/build-prometheus (Prometheus 2.42 with Kubernetes "
            "discovery; Debian's promtool rejects kubernetes_sd_configs), or set ONEMESH_PROMTOOL_K8S"
        )
    return path


def documented_metrics():
    """Metric names of docs/proxy.md's metrics table, plus their series and `up`."""
    text = (ROOT / "docs" / "proxy.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", first_cell))
    series = set()
    for n in names:
        series.add(n)
        if n.endswith("_seconds") and "latency" in n:
            series.update({n + "_bucket", n + "_sum", n + "_count"})
    return series | {"up"}


def metric_names(expr):
    """Metric names a PromQL expression reads (strings, label matchers, groupings, ranges and
    function names removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    s = re.sub(r"(?<![A-Za-z0-9_:])\d+(\.\d+)?([eE][+-]?\d+)?(?![A-Za-z0-9_:])", "", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        if word in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def rules():
    out = []
    for f in RULE_FILES:
        for g in yaml.safe_load(f.read_text())["groups"]:
            out.extend(g["rules"])
    return out


def dashboard_exprs(dashboard):
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            yield panel, target.get("expr", "")
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and q:
            m = re.match(r"label_values\((.*),\s*\w+\)$", q)
            yield {"title": "variable " + var["name"]}, m.group(1) if m else q


class Rules(unittest.TestCase):
    def test_promtool_check_rules(self):
        proc = subprocess.run([promtool(), "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_promtool_test_rules(self):
        self.assertTrue(RULE_TESTS, "no rule unit tests in deploy/monitoring/rules/tests")
        proc = subprocess.run([promtool(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_names_and_inputs(self):
        recorded = set()
        known = documented_metrics()
        for r in rules():
            if "record" in r:
                self.assertRegex(r["record"], r"^onemesh:(workload|edge):[a-z0-9_]+(:[a-z0-9_]+)?$")
                recorded.add(r["record"])
        for r in rules():
            unknown = metric_names(r["expr"]) - known - recorded
            self.assertFalse(unknown, f"rule {r.get('record') or r.get('alert')} reads {unknown}: no proxy metric or rule has that name")
        for must in [
            "onemesh:workload:request_rate:1m", "onemesh:workload:success_rate:1m",
            "onemesh:workload:latency_p50_seconds:1m", "onemesh:workload:latency_p95_seconds:1m",
            "onemesh:workload:latency_p99_seconds:1m", "onemesh:workload:tcp_read_bytes_rate:1m",
            "onemesh:edge:request_rate:1m", "onemesh:edge:success_rate:1m",
            "onemesh:edge:latency_p99_seconds:1m", "onemesh:edge:tcp_write_bytes_rate:1m",
        ]:
            self.assertIn(must, recorded)
        alerts = {r["alert"] for r in rules() if "alert" in r}
        self.assertTrue({"OnemeshWorkloadErrorBudgetBurnFast", "OnemeshProxyCertificateExpiring", "OnemeshProxyDown"} <= alerts)

    def test_metric_name_parser(self):
        # The parser the two tests above rely on: a name inside a matcher or a grouping is not a
        # metric, a function is not, and a real metric is found.
        self.assertEqual(metric_names('sum by (namespace, le) (rate(foo_bucket{a="x y"}[1m])) / bar'), {"foo_bucket", "bar"})
        self.assertEqual(metric_names("histogram_quantile(0.5, onemesh:edge:x:1m) * 1e3"), {"onemesh:edge:x:1m"})


class Dashboards(unittest.TestCase):
    def test_dashboards_are_json_with_known_queries(self):
        self.assertGreaterEqual(len(DASHBOARDS), 2)
        recorded = {r["record"] for r in rules() if "record" in r}
        known = documented_metrics() | recorded
        for path in DASHBOARDS:
            with self.subTest(dashboard=path.name):
                dashboard = json.loads(path.read_text())
                self.assertTrue(dashboard.get("uid") and dashboard.get("title"))
                self.assertTrue(dashboard["panels"])
                ids = [p["id"] for p in dashboard["panels"]]
                self.assertEqual(len(ids), len(set(ids)), "panel ids must be unique")
                queries = 0
                for panel, expr in dashboard_exprs(dashboard):
                    self.assertTrue(expr, f"panel {panel.get('title')} has no query")
                    names = metric_names(expr)
                    self.assertTrue(names, f"panel {panel.get('title')}: {expr!r} reads no metric")
                    self.assertFalse(names - known, f"panel {panel.get('title')}: {expr!r} reads {names - known}")
                    queries += 1
                self.assertGreater(queries, 5)

    def test_dashboards_ship_in_a_configmap(self):
        objects = render("deploy/monitoring")
        maps = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].startswith("grafana-dashboards")]
        self.assertEqual(len(maps), 1)
        self.assertEqual(maps[0]["metadata"]["labels"].get("grafana_dashboard"), "1")
        self.assertEqual(sorted(maps[0]["data"]), sorted(p.name for p in DASHBOARDS))
        for name, text in maps[0]["data"].items():
            json.loads(text)


class PrometheusPod(unittest.TestCase):
    def setUp(self):
        self.objects = render("deploy/monitoring")
        self.config = yaml.safe_load((MON / "prometheus.yml").read_text())

    def test_everything_in_monitoring_and_unmeshed(self):
        for o in self.objects:
            if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Namespace"):
                continue
            self.assertEqual(o["metadata"]["namespace"], "monitoring", o["metadata"]["name"])
        ns = of_kind(self.objects, "Namespace")[0]
        self.assertNotIn("onemesh.dev/mesh", ns["metadata"].get("labels", {}))

    def test_rbac_reads_pods_only(self):
        role = of_kind(self.objects, "ClusterRole")[0]
        self.assertEqual(role["rules"], [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
        binding = of_kind(self.objects, "ClusterRoleBinding")[0]
        self.assertEqual(binding["subjects"], [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}])

    def test_deployment(self):
        deploy = of_kind(self.objects, "Deployment")[0]
        spec = deploy["spec"]["template"]["spec"]
        c = spec["containers"][0]
        self.assertTrue(image_maps(c["image"], image_table()), f"{c['image']} is not in the test node's image table")
        args = c["args"]
        self.assertIn("--web.listen-address=0.0.0.0:9090", args)
        tsdb = next(a.split("=", 1)[1] for a in args if a.startswith("--storage.tsdb.path="))
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.assertIn("emptyDir", volumes[mounts[tsdb]])
        config = next(a.split("=", 1)[1] for a in args if a.startswith("--config.file="))
        self.assertEqual(config.rsplit("/", 1)[0], next(p for p, n in mounts.items() if n == "config"))
        rules_dir = next(p for p, n in mounts.items() if n == "rules")
        self.assertEqual(self.config["rule_files"], [rules_dir + "/*.yaml"])
        self.assertIs(c["securityContext"]["readOnlyRootFilesystem"], True)
        self.assertNotEqual(spec["securityContext"]["runAsUser"], 0)
        svc = of_kind(self.objects, "Service")[0]
        self.assertEqual(svc["spec"]["ports"][0]["port"], 9090)
        cm = [m for m in of_kind(self.objects, "ConfigMap") if m["metadata"]["name"].startswith("prometheus-rules")][0]
        self.assertEqual(sorted(cm["data"]), sorted(p.name for p in RULE_FILES))

    def test_promtool_check_config(self):
        # With the rules where the pod mounts them, as the ConfigMap renders them.
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            cm = [m for m in of_kind(self.objects, "ConfigMap") if m["metadata"]["name"].startswith("prometheus-rules")][0]
            for name, text in cm["data"].items():
                Path(d, name).write_text(text)
            config = dict(self.config, rule_files=[f"{d}/*.yaml"])
            Path(d, "prometheus.yml").write_text(yaml.safe_dump(config))
            proc = subprocess.run([promtool_with_kubernetes(), "check", "config", f"{d}/prometheus.yml"], capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            self.assertIn("SUCCESS: 2 rule files found", proc.stdout)

    def test_scrape_config(self):
        self.assertEqual(self.config["global"]["scrape_interval"], "5s")
        job = next(j for j in self.config["scrape_configs"] if j["job_name"] == "onemesh-proxy")
        self.assertEqual(job["kubernetes_sd_configs"], [{"role": "pod"}])
        self.assertIs(job["honor_labels"], True)

    def test_relabeling_keeps_proxies_and_names_workloads(self):
        job = next(j for j in self.config["scrape_configs"] if j["job_name"] == "onemesh-proxy")

        def target(container, port, kind, controller, pod, phase="Running"):
            return {
                "__address__": "10.244.0.9:4191",
                "__meta_kubernetes_namespace": "shop",
                "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_node_name": "onemesh-node-1",
                "__meta_kubernetes_pod_phase": phase,
                "__meta_kubernetes_pod_container_name": container,
                "__meta_kubernetes_pod_container_port_name": port,
                "__meta_kubernetes_pod_controller_kind": kind,
                "__meta_kubernetes_pod_controller_name": controller,
            }

        run = lambda t: relabel(job["relabel_configs"], t)
        got = run(target("onemesh-proxy", "mesh-admin", "ReplicaSet", "customers-7d9f8c6b5", "customers-7d9f8c6b5-x2x9q"))
        self.assertEqual((got["namespace"], got["workload"], got["pod"]), ("shop", "customers", "customers-7d9f8c6b5-x2x9q"))
        got = run(target("onemesh-proxy", "mesh-admin", "StatefulSet", "bank", "bank-0"))
        self.assertEqual(got["workload"], "bank")
        got = run(target("onemesh-proxy", "mesh-admin", "", "", "lonely"))
        self.assertEqual(got["workload"], "lonely")
        self.assertIsNone(run(target("onemesh-proxy", "mesh-inbound", "StatefulSet", "bank", "bank-0")))
        self.assertIsNone(run(target("bank", "http", "StatefulSet", "bank", "bank-0")))
        self.assertIsNone(run(target("onemesh-proxy", "mesh-admin", "Job", "pgbench", "pgbench-abc", phase="Succeeded")))


def relabel(configs, labels):
    """Prometheus's relabeling (keep, drop, replace) on one target; None when dropped."""
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        regex = re.compile(c.get("regex", "(.*)"))
        m = regex.fullmatch(value)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            replacement = c.get("replacement", "$1")
            out = re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))) or "", replacement)
            labels[c["target_label"]] = out
    return labels


if __name__ == "__main__":
    unittest.main()
