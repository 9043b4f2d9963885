//! Kill anything, lose nothing: the reference platform under `onemesh up` while customers pay
//! through the public entry and a random app or proxy process (pids from `onemesh status -o json`)
//! is SIGKILLed every few seconds. Each customer retries each step with the same
//! `Idempotency-Key` until it ends. Afterwards every workload is ready again, every order ended
//! PAID or FAILED as its kind requires, and the money invariants hold (nothing lost or doubled).
//!
//! The CI run lasts [`DEFAULT_CHAOS`]; `ONEMESH_CHAOS_SECONDS` makes it longer (`scripts/chaos`),
//! and `ONEMESH_CHAOS_KILL` chooses what is killed: a comma-separated list of `apps`, `proxies`,
//! `control` (default `all`: apps and proxies; `everything` adds the control plane).
//! It prints a summary: kills, orders, outcomes, retries and the time each killed workload took
//! to be ready again.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::platform::{self, Addrs, Kind, Outcome};
use support::{Up, alive};
use tokio::sync::Mutex;

/// How long processes are killed for in the CI run.
const DEFAULT_CHAOS: Duration = Duration::from_secs(50);
/// How long in the CI's isolated run (`up --isolate`: the same faults, a second, shorter run).
const ISOLATED_CHAOS: Duration = Duration::from_secs(20);
/// Customers paying at once.
const CUSTOMERS: usize = 4;
/// A killed workload must be ready again within this (generous: the target is about 2 s).
const READY_BOUND: Duration = Duration::from_secs(20);
/// How long a customer keeps retrying after the kills stop.
const SETTLE: Duration = Duration::from_secs(90);

fn chaos_duration() -> Duration {
    std::env::var("ONEMESH_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_CHAOS, Duration::from_secs)
}

/// Which kinds of process to kill (`app`, `proxy`, `control`), from `ONEMESH_CHAOS_KILL`: a
/// comma-separated list of `apps`, `proxies`, `control`, or `all` (apps and proxies, the default)
/// or `everything`.
fn victims() -> Vec<&'static str> {
    let spec = std::env::var("ONEMESH_CHAOS_KILL").unwrap_or_else(|_| "all".into());
    let mut kinds = Vec::new();
    for part in spec.split(',') {
        kinds.extend_from_slice(match part.trim() {
            "apps" => &["app"][..],
            "proxies" => &["proxy"],
            "control" => &["control"],
            "all" => &["app", "proxy"],
            "everything" => &["app", "proxy", "control"],
            other => panic!(
                "ONEMESH_CHAOS_KILL: {other:?} is not one of apps, proxies, control, all, everything"
            ),
        });
    }
    kinds.dedup();
    kinds
}

/// Whether the control plane accepts connections on all three of its ports again.
async fn control_ready(addrs: &[String], bound: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < bound {
        let mut all = true;
        for a in addrs {
            all &= tokio::net::TcpStream::connect(a).await.is_ok();
        }
        if all {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// One SIGKILL and how long its workload took to serve again.
#[derive(Debug)]
struct Kill {
    target: String,
    after: Option<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_random_kills_of_apps_and_proxies() {
    chaos(false, chaos_duration()).await;
}

/// The same under `onemesh up --isolate` (root): apps in their own network namespaces, the
/// invariants read inside them. Shorter unless `ONEMESH_CHAOS_SECONDS` says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_survive_random_kills_of_apps_and_proxies_isolated() {
    let chaos_for = match std::env::var("ONEMESH_CHAOS_SECONDS") {
        Ok(_) => chaos_duration(),
        Err(_) => ISOLATED_CHAOS,
    };
    chaos(true, chaos_for).await;
}

async fn chaos(isolate: bool, chaos: Duration) {
    platform::assert_platform_built();
    let kinds = victims();
    let up = Arc::new(Up::start_maybe_isolated(
        if isolate { "chaos-iso" } else { "chaos" },
        &platform::platform_mesh(),
        isolate,
    ));
    let addrs = platform::addrs(&up);
    let entry = platform::entry(&up);
    let started = Instant::now();
    let chaos_end = started + chaos;
    let deadline = chaos_end + SETTLE;

    // Customers: each places and pays orders one after another until the kills stop.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("chaos{}", std::process::id());
    let mut customers = Vec::new();
    for _ in 0..CUSTOMERS {
        let (entry, outcomes, next, run) =
            (entry.clone(), outcomes.clone(), next.clone(), run.clone());
        customers.push(tokio::spawn(async move {
            while Instant::now() < chaos_end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let o = platform::customer_order(
                    &entry,
                    &format!("{run}-{n}"),
                    Kind::pick(n),
                    deadline,
                )
                .await;
                outcomes.lock().await.push(o);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    // The killer: a random app or proxy every 1.5-3.5 s; each kill's time to ready is measured
    // on the side.
    let mut measures = Vec::new();
    let mut kills_by: BTreeMap<String, u32> = BTreeMap::new();
    let candidates: Vec<(Addrs, &str)> = kinds
        .iter()
        .flat_map(|k| {
            let of: &[Addrs] = if *k == "control" { &addrs[..1] } else { &addrs };
            of.iter().map(move |a| (a.clone(), *k))
        })
        .collect();
    let mut last_kill = Instant::now();
    loop {
        let pause = Duration::from_millis(fastrand::u64(1500..3500));
        if Instant::now() + pause >= chaos_end {
            break;
        }
        tokio::time::sleep(pause).await;
        // Every process equally likely: each workload's app and proxy, and the control plane.
        let (a, which) = candidates[fastrand::usize(..candidates.len())].clone();
        let (pid, target, control) = if which == "control" {
            let c = tokio::task::block_in_place(|| up.status())["control"].clone();
            let ports = ["identity", "destination", "policy"]
                .map(|k| c[k].as_str().unwrap().to_string())
                .to_vec();
            (
                c["pid"].as_i64(),
                "onemesh/control".to_string(),
                Some(ports),
            )
        } else {
            let w = tokio::task::block_in_place(|| up.workload(&a.key));
            let pid = w[format!("{which}_pid")].as_i64();
            (pid, format!("{} {which}", a.key), None)
        };
        let Some(pid) = pid else {
            // Still restarting from an earlier kill: pick again next time.
            continue;
        };
        let at = Instant::now();
        last_kill = at;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap_or_else(|e| panic!("kill {target} (pid {pid}): {e}"));
        *kills_by.entry(target.clone()).or_default() += 1;
        println!(
            "{:>5.1}s kill -9 {target} (pid {pid})",
            started.elapsed().as_secs_f64()
        );
        measures.push(tokio::spawn(async move {
            // Gone first (reaped by `up`), then ready again.
            while alive(pid as i32) && at.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let after = match control {
                Some(ports) => control_ready(&ports, READY_BOUND).await,
                None => platform::time_to_ready(&a, READY_BOUND).await,
            }
            .map(|_| at.elapsed());
            match after {
                Some(d) => println!(
                    "        {target} ready again {:.2} s after its kill",
                    d.as_secs_f64()
                ),
                None => println!("        {target} NOT ready {READY_BOUND:?} after its kill"),
            }
            Kill { target, after }
        }));
    }
    let mut kills = Vec::new();
    for m in measures {
        kills.push(m.await.unwrap());
    }

    // Every workload ready again.
    for a in &addrs {
        assert!(
            platform::time_to_ready(a, READY_BOUND).await.is_some(),
            "{} is not ready {READY_BOUND:?} after the last kill\n--- its log:\n{}",
            a.key,
            platform::log_tail(&up, &a.key, 40)
        );
    }
    let all_ready = last_kill.elapsed();

    // Every customer's order ends.
    for c in customers {
        c.await.unwrap();
    }
    let outcomes = outcomes.lock().await.clone();
    let mut by_outcome: BTreeMap<String, u32> = BTreeMap::new();
    for o in &outcomes {
        let label = match &o.failure_code {
            Some(code) => format!("{} {code}", o.status),
            None => o.status.clone(),
        };
        *by_outcome.entry(label).or_default() += 1;
    }
    let retries: u64 = outcomes.iter().map(|o| o.retries).sum();
    let max_ready = kills.iter().filter_map(|k| k.after).max();
    let mut times: Vec<f64> = kills
        .iter()
        .filter_map(|k| k.after.map(|d| d.as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    println!("--- chaos summary ---");
    println!(
        "chaos: {:.0} s; kills: {} ({kills_by:?})",
        chaos.as_secs_f64(),
        kills.len()
    );
    println!(
        "orders: {} ({:.1}/s); outcomes: {by_outcome:?}; customer retries: {retries}",
        outcomes.len(),
        outcomes.len() as f64 / chaos.as_secs_f64()
    );
    println!(
        "time from kill -9 to ready: median {:.2} s, max {:.2} s (bound {READY_BOUND:?}); every workload ready {:.2} s after the last kill",
        times.get(times.len() / 2).copied().unwrap_or(0.0),
        max_ready.map_or(f64::NAN, |d| d.as_secs_f64()),
        all_ready.as_secs_f64()
    );

    // One kill every 2.5 s on average: at least half of that must have happened.
    let expected_kills = (chaos.as_secs() / 5) as usize;
    assert!(
        kills.len() >= expected_kills,
        "only {} kills in {chaos:?}",
        kills.len()
    );
    for k in &kills {
        assert!(
            k.after.is_some(),
            "{} was not ready within {READY_BOUND:?} of its kill\n--- its log:\n{}",
            k.target,
            platform::log_tail(&up, k.target.split(' ').next().unwrap_or(""), 40)
        );
    }
    // One order a second at least (50 in the default run).
    let min_orders = chaos.as_secs().max(10) as usize;
    assert!(
        outcomes.len() >= min_orders,
        "only {} orders",
        outcomes.len()
    );
    // The supervisor counted a restart for every kill of an app or a proxy (the layout is
    // refreshed every second).
    let workload_kills = kills
        .iter()
        .filter(|k| !k.target.starts_with("onemesh/"))
        .count() as i64;
    let counted = Instant::now();
    loop {
        let restarts: i64 = up.status()["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["restarts"].as_i64().unwrap())
            .sum();
        if restarts >= workload_kills {
            break;
        }
        assert!(
            counted.elapsed() < Duration::from_secs(5),
            "{restarts} restarts for {workload_kills} kills of apps and proxies"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let checked = platform::check_invariants(&up, &outcomes).await;
    println!("invariants hold: {checked:?}");
    if let Ok(up) = Arc::try_unwrap(up) {
        up.stop_and_clean();
    }
}
