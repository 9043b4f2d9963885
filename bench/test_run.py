"""Unit tests of the harness's pure parts (oha JSON → run fields, /proc parsing, targets, tables).

Run: python3 -m unittest bench/test_run.py   (standard library only; the smoke run covers the rest)
"""

import importlib.machinery
import importlib.util
import os
import unittest
from pathlib import Path

_LOADER = importlib.machinery.SourceFileLoader("bench_run", str(Path(__file__).with_name("run")))
_SPEC = importlib.util.spec_from_loader("bench_run", _LOADER)
run = importlib.util.module_from_spec(_SPEC)
_LOADER.exec_module(run)

OHA_OUT = {
    "summary": {"successRate": 0.99, "total": 10.0, "slowest": 0.0123, "fastest": 0.0001,
                "average": 0.0002, "requestsPerSec": 1999.7},
    "latencyPercentiles": {"p10": 0.0001, "p50": 0.00021, "p90": 0.0003, "p99": 0.0009,
                           "p99.9": 0.004, "p99.99": 0.01},
    "statusCodeDistribution": {"200": 19990, "503": 4},
    "errorDistribution": {"connection closed": 3},
}


def make_run(path, rate, p50, p99, rss_idle=None, rss_load=None, cpu=None, body=1024):
    return {"path": path, "rate": rate, "body_bytes": body, "p50_ms": p50, "p90_ms": p50,
            "p99_ms": p99, "p999_ms": p99, "max_ms": p99, "requests": 100, "errors": 0,
            "rps": 100.0, "rss_idle_kib": rss_idle, "rss_load_kib": rss_load,
            "cpu_s_per_10k": cpu}


class SummarizeOha(unittest.TestCase):
    def test_seconds_become_milliseconds_and_errors_count_statuses_and_transport(self):
        s = run.summarize_oha(OHA_OUT)
        self.assertEqual(s["p50_ms"], 0.21)
        self.assertEqual(s["p999_ms"], 4.0)
        self.assertEqual(s["max_ms"], 12.3)
        self.assertEqual(s["requests"], 19990 + 4 + 3)
        self.assertEqual(s["errors"], 4 + 3)
        self.assertEqual(s["rps"], 1999.7)

    def test_missing_sections_give_none_and_zero(self):
        s = run.summarize_oha({})
        self.assertIsNone(s["p99_ms"])
        self.assertEqual((s["requests"], s["errors"]), (0, 0))


class ProcReadings(unittest.TestCase):
    def test_own_process_has_rss_and_cpu(self):
        self.assertGreater(run.rss_kib(os.getpid()), 0)
        sum(i * i for i in range(200_000))  # burn a little CPU so utime is non-zero
        self.assertGreater(run.cpu_seconds(os.getpid()), 0.0)

    def test_a_missing_process_reads_as_zero(self):
        self.assertEqual(run.rss_kib(2**22 + 12345), 0)
        self.assertEqual(run.cpu_seconds(2**22 + 12345), 0.0)


class Targets(unittest.TestCase):
    def test_each_target_is_checked_at_2000_rps(self):
        runs = [make_run("direct", 2000, 0.10, 0.20),
                make_run("onemesh", 2000, 0.35, 0.50, rss_idle=6000, rss_load=16000, cpu=0.5),
                make_run("nginx-mtls", 2000, 0.20, 0.60, rss_idle=9000, rss_load=9500, cpu=0.7)]
        checks = {t: ok for t, _, ok in run.target_checks(runs)}
        self.assertTrue(checks["onemesh p99 ≤ nginx-mtls p99 at 2000 rps"])
        self.assertTrue(checks["onemesh added p50 over direct < 0.3 ms at 2000 rps"])
        self.assertFalse(checks["one proxy's RSS under 2000 rps < 15 MiB"])
        self.assertTrue(checks["one proxy's idle RSS < 8 MiB"])
        self.assertTrue(checks["onemesh CPU per 10k requests ≤ nginx-mtls's at 2000 rps"])

    def test_added_latency_over_the_limit_fails(self):
        runs = [make_run("direct", 200, 0.10, 0.20), make_run("onemesh", 200, 0.45, 0.5)]
        checks = {t: ok for t, _, ok in run.target_checks(runs)}
        self.assertFalse(checks["onemesh added p50 over direct < 0.3 ms at 200 rps"])


class Markdown(unittest.TestCase):
    def test_table_has_a_row_per_run_and_dashes_for_direct_proxy_fields(self):
        report = {"date": "2026-11-25T15:00:00Z",
                  "machine": {"cores": 2, "cpu_model": "Test CPU", "kernel": "6.1"},
                  "runs": [make_run("direct", 20, 0.1, 0.2),
                           make_run("onemesh", 20, 0.3, 0.4, 5000, 6000, 0.4)]}
        md = run.markdown(report, "3 s per run")
        rows = [line for line in md.splitlines() if line.startswith("| direct |")
                or line.startswith("| onemesh |")]
        self.assertEqual(len(rows), 2)
        self.assertIn("Test CPU", md)
        self.assertTrue(rows[0].endswith("| – | – | – |"))


class Args(unittest.TestCase):
    def test_smoke_defaults(self):
        a = run.parse_args(["--smoke"])
        self.assertEqual((a.rates, a.bodies, a.duration, a.release), ([200], [1024], 3, False))
        self.assertEqual(a.rounds, 1)

    def test_full_defaults(self):
        a = run.parse_args([])
        self.assertEqual(a.rates, [20, 200, 2000, "max"])
        self.assertEqual(a.bodies, [1024, 65536])
        self.assertTrue(a.release)
        self.assertEqual(a.rounds, 3)



class CombineRounds(unittest.TestCase):
    def test_one_round_is_itself(self):
        r = make_run("onemesh", 2000, 0.4, 1.0, rss_idle=7000, rss_load=8000, cpu=0.7)
        self.assertEqual(run.combine_rounds([r]), r)

    def test_medians_worst_max_peak_memory_and_sums(self):
        rounds = [make_run("onemesh", 2000, p50, p99, rss_idle=7000, rss_load=load, cpu=cpu)
                  for p50, p99, load, cpu in ((0.4, 1.0, 8000, 0.7), (0.5, 9.0, 8500, 0.9),
                                              (0.3, 1.2, 8100, 0.8))]
        c = run.combine_rounds(rounds)
        self.assertEqual(c["p50_ms"], 0.4)
        self.assertEqual(c["p99_ms"], 1.2, "one noisy round does not decide the tail")
        self.assertEqual(c["max_ms"], 9.0, "max is the worst request of any round")
        self.assertEqual(c["cpu_s_per_10k"], 0.8)
        self.assertEqual(c["rss_load_kib"], 8500)
        self.assertEqual(c["rss_idle_kib"], 7000)
        self.assertEqual(c["requests"], 300)
        self.assertEqual(c["errors"], 0)

    def test_direct_runs_keep_empty_proxy_fields(self):
        rounds = [make_run("direct", 20, 0.1, 0.2), make_run("direct", 20, 0.3, 0.4)]
        c = run.combine_rounds(rounds)
        self.assertIsNone(c["cpu_s_per_10k"])
        self.assertIsNone(c["rss_load_kib"])
        self.assertEqual(c["p50_ms"], 0.2)


_HOT_LOADER = importlib.machinery.SourceFileLoader(
    "bench_hot_symbols", str(Path(__file__).with_name("hot-symbols")))
_HOT_SPEC = importlib.util.spec_from_loader("bench_hot_symbols", _HOT_LOADER)
hot = importlib.util.module_from_spec(_HOT_SPEC)
_HOT_LOADER.exec_module(hot)

CALLGRIND_OUT = """\
version: 1
cmd: /repo/target/release/onemesh-proxy
ob=/usr/lib/x86_64-linux-gnu/libc.so.6
fn=malloc
ob=/repo/target/release/onemesh-proxy
fn=_ZN5tokio7runtime4park17hE
cfn=_ZN5hyper5parse17hE
fn=_ZN5hyper5parse17hE
fn=_ZN5hyper5parse17hE'2
fn=(below main)
fn=0x000000000014a870
fn=_ZN5tokio7runtime4park17hE
ob=/usr/lib/x86_64-linux-gnu/libm.so.6
fn=exp
"""


class HotSymbols(unittest.TestCase):
    def test_lists_each_function_of_the_binary_once_in_first_seen_order(self):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"callgrind-test-{os.getpid()}"
        path.write_text(CALLGRIND_OUT)
        try:
            names = hot.executed_functions(path, "onemesh-proxy")
        finally:
            path.unlink()
        self.assertEqual(names, ["_ZN5tokio7runtime4park17hE", "_ZN5hyper5parse17hE"],
                         "other objects, recursion marks and pseudo-functions are left out")

    def test_layout_counts_listed_names_at_the_start_of_the_code(self):
        listed = Path(os.environ.get("TMPDIR", "/tmp")) / f"hot-symbols-test-{os.getpid()}"
        listed.write_text("a\nstale\nb\n")
        real = run.code_symbols
        try:
            run.code_symbols = lambda _path: ["a", "b", "c", "d"]
            self.assertEqual(run.hot_symbols_layout(Path("/x"), listed),
                             "2 of 3 hot functions placed together")
            run.code_symbols = lambda _path: ["c", "a", "d", "b"]
            self.assertEqual(run.hot_symbols_layout(Path("/x"), listed),
                             "1 of 3 hot functions placed together",
                             "a listed function far into the code is not placed")
        finally:
            run.code_symbols = real
            listed.unlink()
        self.assertIsNone(run.hot_symbols_layout(Path("/x"), listed), "no list, no claim")

    def test_layout_is_unknown_when_nm_cannot_read_the_binary(self):
        self.assertIsNone(run.code_symbols(Path("/nonexistent/onemesh-proxy")))
        self.assertTrue(run.hot_symbols_layout(Path("/nonexistent/onemesh-proxy"))
                        .startswith("unknown"))

if __name__ == "__main__":
    unittest.main()
