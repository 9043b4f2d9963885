//! Simulated proxies for the memory measurement (`tests/memory.rs`, `examples/window_memory.rs`):
//! `/metrics` texts as the proxy writes them (`crates/proxy/src/metrics.rs`: the same names, label
//! order, `# HELP`/`# TYPE` lines, 23 latency buckets with `_sum`/`_count`, and metrics the window
//! ignores), with counters that grow every round.
//!
//! Each proxy is its own workload (the worst case for the number of aggregated series), in one of
//! `proxies / 10` namespaces; it calls 2-4 other workloads over one or two of the destination's
//! routes, serves whoever calls it (per caller: requests, responses, latency, TCP, an allow
//! counter), and refuses one caller now and then under its one policy. About 200 series per text.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onemesh_window::{LATENCY_BOUNDS, Target};

pub const T0: u64 = 1_764_800_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Requests of one label set (an inbound caller, or an outbound destination and route).
struct Flow {
    /// The edge's labels (without braces): tcp metrics.
    labels: String,
    /// With the route: HTTP metrics.
    full: String,
    inbound: bool,
    /// Mean requests per round.
    rate: u64,
    /// The bucket most requests land in.
    base: usize,
    requests: u64,
    success: u64,
    failure: u64,
    /// Non-cumulative.
    buckets: [u64; 24],
    sum: f64,
    read: u64,
    write: u64,
    opens: u64,
    /// Inbound only: the caller's id, the policy's allow and deny counters.
    allowed: u64,
    denied: u64,
    /// Outbound only: retries.
    retried: u64,
    dst_ns_route: String,
}

struct Proxy {
    flows: Vec<Flow>,
}

pub struct Sim {
    pub targets: Vec<Target>,
    proxies: Vec<Proxy>,
    rng: Rng,
    pub round: u64,
}

fn identity(ns: &str, wl: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{wl}")
}

impl Sim {
    pub fn new(n: usize) -> Sim {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let name = |i: usize| (format!("org-{}", i / 10), format!("svc-{i}"));
        let targets: Vec<Target> = (0..n)
            .map(|i| {
                let (ns, wl) = name(i);
                Target {
                    identity: identity(&ns, &wl),
                    namespace: ns,
                    workload: wl,
                    instance: format!("10.{}.{}.{}:4191", i / 65536, (i / 256) % 256, i % 256),
                }
            })
            .collect();
        // Who calls whom.
        let mut calls: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, out) in calls.iter_mut().enumerate() {
            for k in 0..(2 + i % 3) {
                let dst = (i * 31 + k * 97 + 7) % n;
                if dst != i && !out.contains(&dst) {
                    out.push(dst);
                }
            }
        }
        let mut callers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, out) in calls.iter().enumerate() {
            for &d in out {
                callers[d].push(i);
            }
        }
        let mut proxies = Vec::with_capacity(n);
        for i in 0..n {
            let (ns, wl) = name(i);
            let mut flows = Vec::new();
            for &c in &callers[i] {
                let (cns, cwl) = name(c);
                flows.push(Flow::new(
                    format!(
                        "direction=\"inbound\",namespace=\"{ns}\",workload=\"{wl}\",\
                         dst_namespace=\"{ns}\",dst_workload=\"{wl}\",client_id=\"{}\",\
                         tls=\"true\"",
                        identity(&cns, &cwl)
                    ),
                    true,
                    String::new(),
                    &mut rng,
                ));
            }
            for &d in &calls[i] {
                let (dns, dwl) = name(d);
                let routes = if d % 2 == 0 { 2 } else { 1 };
                for r in ["read", "write"].iter().take(routes) {
                    let route = format!("{dwl}-{r}");
                    flows.push(Flow::new(
                        format!(
                            "direction=\"outbound\",namespace=\"{ns}\",workload=\"{wl}\",\
                             dst_namespace=\"{dns}\",dst_workload=\"{dwl}\",server_id=\"{}\",\
                             tls=\"true\",route=\"{route}\"",
                            identity(&dns, &dwl)
                        ),
                        false,
                        format!("dst_namespace=\"{dns}\",route=\"{route}\""),
                        &mut rng,
                    ));
                }
            }
            proxies.push(Proxy { flows });
        }
        Sim {
            targets,
            proxies,
            rng,
            round: 0,
        }
    }

    /// Moves every counter one round (10 s) on.
    pub fn advance(&mut self) {
        self.round += 1;
        for p in &mut self.proxies {
            for f in &mut p.flows {
                f.step(&mut self.rng);
            }
        }
    }

    /// When proxy `i` is scraped in the current round (spread over the first 2 s of the step).
    pub fn time(&self, i: usize) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_secs(T0 + self.round * 10)
            + Duration::from_millis((i as u64 * 7) % 2000)
    }

    /// Proxy `i`'s `/metrics` text now, written into `out`.
    pub fn text(&self, i: usize, out: &mut String) {
        out.clear();
        let p = &self.proxies[i];
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        };
        family(out, "request_total", "counter", "HTTP requests received");
        for f in &p.flows {
            let _ = writeln!(out, "request_total{{{}}} {}", f.full, f.requests);
        }
        family(
            out,
            "response_total",
            "counter",
            "HTTP responses sent, by classification and status code",
        );
        for f in &p.flows {
            let _ = writeln!(
                out,
                "response_total{{{},classification=\"success\",status_code=\"200\"}} {}",
                f.full, f.success
            );
            if f.failure > 0 {
                let _ = writeln!(
                    out,
                    "response_total{{{},classification=\"failure\",status_code=\"503\"}} {}",
                    f.full, f.failure
                );
            }
        }
        family(
            out,
            "response_latency_seconds",
            "histogram",
            "Time from request to response headers, in seconds",
        );
        for f in &p.flows {
            let _ = writeln!(out, "response_latency_seconds_sum{{{}}} {}", f.full, f.sum);
            let _ = writeln!(
                out,
                "response_latency_seconds_count{{{}}} {}",
                f.full, f.requests
            );
            let mut cum = 0;
            for (b, n) in f.buckets.iter().enumerate() {
                cum += n;
                let le = LATENCY_BOUNDS
                    .get(b)
                    .map_or("+Inf".to_string(), |b| format!("{b:?}"));
                let _ = writeln!(
                    out,
                    "response_latency_seconds_bucket{{{},le=\"{le}\"}} {cum}",
                    f.full
                );
            }
        }
        let inbound = p.flows.iter().filter(|f| f.inbound);
        for (name, help) in [
            ("tcp_open_total", "TCP connections opened"),
            ("tcp_close_total", "TCP connections closed"),
            ("tcp_read_bytes_total", "Bytes read from the accepted side"),
            (
                "tcp_write_bytes_total",
                "Bytes written to the accepted side",
            ),
        ] {
            family(out, name, "counter", help);
            for f in inbound.clone() {
                let v = match name {
                    "tcp_open_total" => f.opens,
                    "tcp_close_total" => f.opens.saturating_sub(2),
                    "tcp_read_bytes_total" => f.read,
                    _ => f.write,
                };
                let _ = writeln!(out, "{name}{{{}}} {v}", f.labels);
            }
        }
        family(
            out,
            "tcp_open_connections",
            "gauge",
            "TCP connections currently open",
        );
        for f in inbound.clone() {
            let _ = writeln!(
                out,
                "tcp_open_connections{{{}}} {}",
                f.labels,
                f.opens.min(2)
            );
        }
        family(
            out,
            "authz_allow_total",
            "counter",
            "Inbound requests allowed by policy",
        );
        for f in inbound.clone() {
            let _ = writeln!(
                out,
                "authz_allow_total{{{},policy=\"allow-callers\",kind=\"http\"}} {}",
                f.labels, f.allowed
            );
        }
        family(
            out,
            "authz_deny_total",
            "counter",
            "Inbound requests denied by policy",
        );
        for f in inbound.clone().filter(|f| f.denied > 0) {
            let _ = writeln!(
                out,
                "authz_deny_total{{{},policy=\"allow-callers\",kind=\"http\"}} {}",
                f.labels, f.denied
            );
        }
        family(
            out,
            "retry_total",
            "counter",
            "Outbound retry decisions by route",
        );
        for f in p.flows.iter().filter(|f| !f.inbound) {
            let _ = writeln!(
                out,
                "retry_total{{direction=\"outbound\",{},reason=\"retried\"}} {}",
                f.dst_ns_route, f.retried
            );
        }
        // Metrics the window does not read.
        family(
            out,
            "detect_total",
            "counter",
            "Protocol detection outcomes",
        );
        for reason in ["http1", "http2", "opaque"] {
            let _ = writeln!(
                out,
                "detect_total{{direction=\"inbound\",reason=\"{reason}\"}} {}",
                self.round * 3
            );
        }
        family(
            out,
            "proxy_error_total",
            "counter",
            "Errors answered by the proxy",
        );
        let _ = writeln!(
            out,
            "proxy_error_total{{direction=\"outbound\",reason=\"unavailable\"}} {}",
            self.round / 7
        );
        family(
            out,
            "identity_cert_expiration_timestamp_seconds",
            "gauge",
            "Unix time at which the current leaf certificate expires",
        );
        let _ = writeln!(
            out,
            "identity_cert_expiration_timestamp_seconds {}.0",
            T0 + 86_400
        );
    }
}

impl Flow {
    fn new(labels: String, inbound: bool, dst_ns_route: String, rng: &mut Rng) -> Flow {
        let full = if inbound {
            format!("{labels},route=\"default\"")
        } else {
            labels.clone()
        };
        Flow {
            labels,
            full,
            inbound,
            rate: 5 + rng.below(200),
            base: rng.below(11) as usize,
            requests: 0,
            success: 0,
            failure: 0,
            buckets: [0; 24],
            sum: 0.0,
            read: 0,
            write: 0,
            opens: 0,
            allowed: 0,
            denied: 0,
            retried: 0,
            dst_ns_route,
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        let r = self.rate / 2 + rng.below(self.rate + 1);
        let failed = if rng.below(10) == 0 { rng.below(3) } else { 0 }.min(r);
        self.requests += r;
        self.success += r - failed;
        self.failure += failed;
        let near = r * 3 / 10;
        let far = r / 10;
        self.buckets[self.base] += r - near - far;
        self.buckets[self.base + 1] += near;
        self.buckets[self.base + 2] += far;
        self.sum += r as f64 * LATENCY_BOUNDS[self.base];
        self.read += r * (300 + rng.below(200));
        self.write += r * (800 + rng.below(400));
        self.opens += rng.below(2);
        self.allowed += r;
        if rng.below(20) == 0 {
            self.denied += 1;
        }
        if rng.below(5) == 0 {
            self.retried += 1;
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub proxies: usize,
    pub rounds: u64,
    /// Live heap bytes held by the window at the end (counted by the global allocator).
    pub heap_bytes: usize,
    /// The same with glibc malloc's per-block overhead (8-byte header, 16-byte rounding).
    pub malloc_bytes: usize,
    /// The most live heap bytes during the run, minus the simulation's own.
    pub peak_bytes: usize,
    pub estimate: onemesh_window::Memory,
    pub stats: onemesh_window::Stats,
    pub ingest: Duration,
    pub scrapes: u64,
    pub text_bytes: usize,
    pub samples: usize,
    pub overview_60s: Duration,
    pub overview_1h: Duration,
    pub routes_1h: Duration,
    pub authz_1h: Duration,
    pub series_1h: Duration,
}

impl Report {
    pub fn print(&self) {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        println!(
            "{} proxies, {} rounds ({} scrapes), text {} bytes / {} samples per proxy",
            self.proxies, self.rounds, self.scrapes, self.text_bytes, self.samples
        );
        println!(
            "heap held by the window: {:.1} MiB ({} bytes; peak {:.1} MiB); estimate {:.1} MiB",
            mib(self.heap_bytes),
            self.heap_bytes,
            mib(self.peak_bytes),
            mib(self.estimate.total_bytes)
        );
        println!(
            "with malloc's block overhead: {:.1} MiB; estimate parts: series {:.1} MiB (records {:.1} MiB), targets {:.1} MiB",
            mib(self.malloc_bytes),
            mib(self.estimate.series_bytes),
            mib(self.estimate.records_bytes),
            mib(self.estimate.targets_bytes)
        );
        println!(
            "per proxy: {:.0} bytes; {} aggregated series: {:.0} bytes per series (records {:.1} MiB)",
            self.heap_bytes as f64 / self.proxies as f64,
            self.stats.series,
            self.heap_bytes as f64 / self.stats.series.max(1) as f64,
            mib(self.estimate.records_bytes)
        );
        println!(
            "ingest: {:.1} µs per proxy scrape",
            self.ingest.as_secs_f64() * 1e6 / self.scrapes.max(1) as f64
        );
        println!(
            "queries: overview 60s {:?}, overview 1h {:?}, routes 1h {:?}, authz 1h {:?}, series 1h {:?}",
            self.overview_60s, self.overview_1h, self.routes_1h, self.authz_1h, self.series_1h
        );
    }
}

/// Runs `proxies` simulated proxies for `rounds` scrape rounds into a window with `settings`;
/// `live()` and `peak()` read the global allocator's counters (`reset_peak()` sets the peak to
/// the current live bytes).
pub fn measure(
    proxies: usize,
    rounds: u64,
    settings: onemesh_window::WindowSettings,
    live: fn() -> usize,
    live_malloc: fn() -> usize,
    peak: fn() -> usize,
    reset_peak: fn(),
) -> Report {
    use std::time::Instant;
    let mut sim = Sim::new(proxies);
    let mut text = String::with_capacity(1 << 20);
    sim.text(0, &mut text);
    let (text_bytes, samples) = (
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count(),
    );
    let before = live();
    let before_malloc = live_malloc();
    reset_peak();
    let mut window = onemesh_window::Window::new(settings).expect("valid settings");
    window.set_targets(&sim.targets);
    let mut ingest = Duration::ZERO;
    let mut scrapes = 0;
    for _ in 0..rounds {
        sim.advance();
        for i in 0..proxies {
            sim.text(i, &mut text);
            let at = sim.time(i);
            let started = Instant::now();
            let got = window.ingest(&sim.targets[i], at, &text);
            ingest += started.elapsed();
            assert!(got.is_ok(), "{got:?}");
            scrapes += 1;
        }
    }
    let heap_bytes = live() - before;
    let malloc_bytes = live_malloc() - before_malloc;
    let peak_bytes = peak() - before;
    let now = sim.time(proxies) + Duration::from_secs(1);
    let hour = Duration::from_secs(3600);
    let time = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        f();
        started.elapsed()
    };
    let overview_60s = time(&mut || {
        std::hint::black_box(window.overview(now, Duration::from_secs(60)));
    });
    let overview_1h = time(&mut || {
        std::hint::black_box(window.overview(now, hour));
    });
    let routes_1h = time(&mut || {
        std::hint::black_box(window.routes(now, hour));
    });
    let authz_1h = time(&mut || {
        std::hint::black_box(window.authz(now, hour));
    });
    let t = &sim.targets[0];
    let series_1h = time(&mut || {
        std::hint::black_box(window.series(&t.namespace, &t.workload, now, hour));
    });
    Report {
        proxies,
        rounds,
        heap_bytes,
        malloc_bytes,
        peak_bytes,
        estimate: window.memory(),
        stats: window.stats(),
        ingest,
        scrapes,
        text_bytes,
        samples,
        overview_60s,
        overview_1h,
        routes_1h,
        authz_1h,
        series_1h,
    }
}
