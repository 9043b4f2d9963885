"""deploy/testing/postgres: the manifests, and the two scripts run for real on loopback.

The scripts are taken from the rendered ConfigMap (what the pods run): PostgreSQL 15 (Debian's,
/usr/lib/postgresql/15/bin) started by start-postgres.sh as uid 65534 on a free loopback port,
then pgbench.sh against it must pass; and pgbench.sh against a fake pgbench reporting a failed
transaction, or fewer transactions than asked, must fail.
"""

import os
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from support import image_maps, image_table, of_kind, render, render_text

PATH = "deploy/testing/postgres"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def scripts():
    cm = [c for c in of_kind(render(PATH), "ConfigMap") if c["metadata"]["name"].startswith("postgres-scripts")]
    assert len(cm) == 1, "one ConfigMap postgres-scripts-<hash>"
    return cm[0]["data"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_nobody():
    """Run as 65534 when we are root (postgres refuses root), else as ourselves."""
    return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if os.getuid() == 0 else []


class Manifests(unittest.TestCase):
    def setUp(self):
        self.objects = render(PATH)

    def test_namespace_meshed_and_no_mesh_settings(self):
        ns = of_kind(self.objects, "Namespace")
        self.assertEqual([n["metadata"]["name"] for n in ns], ["dbtest"])
        self.assertEqual(ns[0]["metadata"]["labels"]["onemesh.dev/mesh"], "enabled")
        text = render_text(PATH)
        for word in ["onemesh-proxy", "HTTP_PROXY", "ONEMESH_"]:
            self.assertNotIn(word, text)

    def test_opaque_service_and_policy(self):
        svc = of_kind(self.objects, "Service")[0]
        self.assertEqual(svc["spec"]["ports"], [{"name": "postgres", "port": 5432, "targetPort": "postgres", "appProtocol": "tcp"}])
        policy = of_kind(self.objects, "AuthorizationPolicy")[0]
        self.assertEqual(policy["spec"]["target"], {"workload": "postgres", "port": 5432})
        self.assertEqual(policy["spec"]["from"]["identities"], ["spiffe://cluster.local/ns/dbtest/sa/pgbench"])
        sts = of_kind(self.objects, "StatefulSet")[0]
        self.assertEqual(sts["spec"]["template"]["metadata"]["annotations"]["onemesh.dev/opaque-ports"], "5432")

    def test_server_and_job(self):
        sts = of_kind(self.objects, "StatefulSet")[0]
        self.assertEqual(sts["spec"]["replicas"], 1)
        self.assertEqual(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data")
        job = of_kind(self.objects, "Job")[0]
        self.assertEqual(job["spec"]["template"]["spec"]["restartPolicy"], "Never")
        env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        self.assertEqual(env["PGHOST"], "postgres.dbtest.svc.cluster.local")
        self.assertEqual((env["PGBENCH_CLIENTS"], env["PGBENCH_THREADS"], env["PGBENCH_TRANSACTIONS"]), ("4", "2", "500"))
        table = image_table()
        for o in (sts, job):
            spec = o["spec"]["template"]["spec"]
            self.assertNotEqual(spec["securityContext"]["runAsUser"], 0, "postgres refuses root")
            for c in spec["containers"]:
                self.assertTrue(image_maps(c["image"], table), f"{c['image']} is not in the test node's image table")
                self.assertEqual(c["command"][0], "/bin/sh")
                self.assertIs(c["securityContext"]["readOnlyRootFilesystem"], True)


class ScriptsRun(unittest.TestCase):
    def setUp(self):
        if not PG_BIN.joinpath("postgres").exists():
            self.fail(f"{PG_BIN}/postgres is missing: apt-get install postgresql-15 (scripts/install-test-deps does)")
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        d = Path(self.dir.name)
        os.chmod(d, 0o777)
        for name, text in scripts().items():
            (d / name).write_text(text)

    def test_pgbench_passes_against_a_real_server(self):
        d = Path(self.dir.name)
        port = free_port()
        env = {"PATH": "/usr/bin:/bin", "PGDATA": str(d / "data" / "pgdata"), "PGPORT": str(port)}
        (d / "data").mkdir()
        os.chmod(d / "data", 0o777)
        log = open(d / "server.log", "w")
        self.addCleanup(log.close)
        server = subprocess.Popen(
            as_nobody() + ["sh", str(d / "start-postgres.sh")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.addCleanup(lambda: (server.terminate(), server.wait(timeout=20)))
        bench_env = {"PATH": "/usr/bin:/bin", "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGBENCH_TRANSACTIONS": "100"}
        proc = subprocess.run(as_nobody() + ["sh", str(d / "pgbench.sh")], env=bench_env, capture_output=True, text=True, timeout=240)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr + (d / "server.log").read_text())
        self.assertIn("processed 400/400, failed 0", proc.stdout)
        # Restarted on its existing data directory (a pod restart): no second initdb.
        server.terminate()
        server.wait(timeout=20)
        server2 = subprocess.Popen(as_nobody() + ["sh", str(d / "start-postgres.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addCleanup(lambda: (server2.terminate(), server2.wait(timeout=20), server2.stdout.close()))
        first = server2.stdout.readline()
        self.assertIn("postgres on 0.0.0.0", first)

    def fake_bin(self, report):
        fake = Path(self.dir.name) / "fakebin"
        fake.mkdir()
        (fake / "pg_isready").write_text("#!/bin/sh\nexit 0\n")
        (fake / "pgbench").write_text("#!/bin/sh\ncase \"$*\" in *-i*) exit 0;; esac\ncat <<'OUT'\n" + report + "\nOUT\n")
        for f in fake.iterdir():
            f.chmod(0o755)
        return fake

    def run_fake(self, report):
        env = {"PATH": "/usr/bin:/bin", "PG_BIN": str(self.fake_bin(report)), "PGHOST": "127.0.0.1"}
        return subprocess.run(["sh", str(Path(self.dir.name) / "pgbench.sh")], env=env, capture_output=True, text=True, timeout=30)

    def test_pgbench_fails_on_a_failed_transaction(self):
        proc = self.run_fake(
            "number of transactions actually processed: 2000/2000\n"
            "number of failed transactions: 3 (0.150%)\ntps = 500.1 (without initial connection time)"
        )
        self.assertEqual(proc.returncode, 1, proc.stdout)
        self.assertIn("FAILED", proc.stderr)

    def test_pgbench_fails_when_transactions_are_missing(self):
        proc = self.run_fake("number of transactions actually processed: 1999/2000\nnumber of failed transactions: 0 (0.000%)")
        self.assertEqual(proc.returncode, 1, proc.stdout)

    def test_pgbench_fake_success_passes(self):
        # The same fake with a clean report passes: the two failures above are the parser's doing.
        proc = self.run_fake("number of transactions actually processed: 2000/2000\nnumber of failed transactions: 0 (0.000%)\ntps = 500.1 (x)")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
