"""Helpers of the deploy/ tests: rendering kustomizations, the image table, a NetworkPolicy evaluator.

The evaluator answers "may a connection from this pod to that pod and port happen?" from the
rendered NetworkPolicies alone, with the semantics of networking.k8s.io/v1 (a pod selected by no
policy of a direction is open in that direction; a selected pod admits what any of its policies'
rules admit; a connection needs both the source's egress and the destination's ingress). It knows
namespaceSelector, podSelector (matchLabels, matchExpressions), ipBlock (with except), ports with
protocol and endPort. Named ports are not supported (the manifests here use numbers) and raise.
"""

import functools
import ipaddress
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def kubectl_argv():
    """The kubectl to use, from $ONEMESH_KUBECTL (a command line, e.g. `scripts/k8s-testenv kubectl`)."""
    value = os.environ.get("ONEMESH_KUBECTL", "").strip()
    if not value:
        raise AssertionError(
            "ONEMESH_KUBECTL is not set: set it to a kubectl command line with kustomize, e.g. "
            "ONEMESH_KUBECTL='scripts/k8s-testenv kubectl' (the test cluster's own kubectl; its "
            "`kustomize` subcommand works without a cluster) or ONEMESH_KUBECTL=kubectl"
        )
    return shlex.split(value)


@functools.lru_cache(maxsize=None)
def render_text(path):
    """`kubectl kustomize <path>` (relative to the repository root), as text."""
    argv = kubectl_argv() + ["kustomize", str(DEPLOY.parent / path)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def render(path):
    """The objects `kubectl kustomize <path>` renders."""
    return [d for d in yaml.safe_load_all(render_text(path)) if d]


def of_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def pod_specs(objects):
    """(object, pod template spec) of every workload."""
    out = []
    for o in objects:
        kind = o.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            out.append((o, o["spec"]["template"]["spec"]))
        elif kind == "Job":
            out.append((o, o["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            out.append((o, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif kind == "Pod":
            out.append((o, o["spec"]))
    return out


def pod_labels(o):
    if o.get("kind") == "Pod":
        return o["metadata"].get("labels", {})
    if o.get("kind") == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return o["spec"]["template"]["metadata"].get("labels", {})


# ---------------------------------------------------------------------------------------------
# The test node agent's image table (scripts/k8s-testenv, write_images)


def image_table():
    """Image name -> program, from the JSON that `scripts/k8s-testenv up` writes."""
    text = (ROOT / "scripts" / "k8s-testenv").read_text()
    m = re.search(r"write_images\(\) \{.*?<<JSON\n(.*?)\nJSON\n", text, re.S)
    if not m:
        raise AssertionError("no image table (write_images ... <<JSON) in scripts/k8s-testenv")
    import json

    body = m.group(1).replace("$target", "/TARGET")
    return json.loads(body)


def image_key(image):
    """The table's matching rule (tools/k8s-testenv/README.md): no registry, tag, digest or
    `library/`; else the last path segment."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if parts and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def image_maps(image, table):
    key = image_key(image)
    return key in table or key.rsplit("/", 1)[-1] in table


# ---------------------------------------------------------------------------------------------
# NetworkPolicy evaluation


@dataclass
class Endpoint:
    """A pod (namespace + labels, and the namespace's labels) or an address outside any pod."""

    name: str
    namespace: str = None
    labels: dict = field(default_factory=dict)
    ns_labels: dict = field(default_factory=dict)
    ip: str = None

    def __post_init__(self):
        if self.namespace is not None:
            # The API server sets this label on every namespace.
            self.ns_labels = {"kubernetes.io/metadata.name": self.namespace, **self.ns_labels}


def selector_matches(selector, labels):
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op}")
    return True


def peer_matches(peer, endpoint, policy_ns):
    if "ipBlock" in peer:
        if endpoint.ip is None:
            return False
        ip = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        if ip not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(ip in ipaddress.ip_network(x) for x in block.get("except") or [])
    if endpoint.namespace is None:
        return False  # not a pod: only ipBlocks name it
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        if endpoint.namespace != policy_ns:
            return False
    elif not selector_matches(ns_sel, endpoint.ns_labels):
        return False
    return selector_matches(peer.get("podSelector"), endpoint.labels)


def port_matches(ports, port, protocol):
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if not isinstance(p["port"], int):
            raise ValueError(f"named port {p['port']!r}: the evaluator handles numbers only")
        end = p.get("endPort", p["port"])
        if p["port"] <= port <= end:
            return True
    return False


def policy_types(policy):
    spec = policy["spec"]
    if "policyTypes" in spec:
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if "egress" in spec else [])


def _direction_allows(policies, subject, other, port, protocol, direction):
    """Does `subject`'s side allow the connection (ingress: other -> subject; egress: subject -> other)?"""
    if subject.namespace is None:
        return True  # not a pod: no NetworkPolicy applies to it
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applicable = [
        p
        for p in policies
        if p["metadata"].get("namespace") == subject.namespace
        and direction in policy_types(p)
        and selector_matches(p["spec"].get("podSelector") or {}, subject.labels)
    ]
    if not applicable:
        return True
    for p in applicable:
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if not port_matches(rule.get("ports"), port, protocol):
                continue
            if not peers or any(peer_matches(x, other, p["metadata"]["namespace"]) for x in peers):
                return True
    return False


def allowed(policies, src, dst, port, protocol="TCP"):
    """May `src` open a connection to `dst`:`port`?"""
    return _direction_allows(policies, src, dst, port, protocol, "Egress") and _direction_allows(
        policies, dst, src, port, protocol, "Ingress"
    )
