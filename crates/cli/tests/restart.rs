//! `kill -9` of one proxy ([`ROUNDS`] times in a row) under steady payment traffic, on the
//! reference platform under `onemesh up`: the proxy is ready again (its admin `/ready` answers
//! 200) within [`READY_BOUND`] (the target is 2 s; the measured time is printed) and payments
//! through it resume — once with the control plane answering, and once with the control plane
//! frozen (SIGSTOP: its sockets accept but nothing answers), so the proxy must come back from
//! what it kept in its state directory. The customers retry with their idempotency keys throughout; afterwards every order
//! ended as it should and the money invariants hold.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::platform::{self, Kind, Outcome};
use support::{Up, alive};

/// A killed proxy must answer `/ready` 200 within this.
const READY_BOUND: Duration = Duration::from_secs(10);
/// A payment started after the proxy is ready must be PAID within this.
const RESUME_BOUND: Duration = Duration::from_secs(15);
/// The proxy killed: pg's sits in the middle of the chain (order → pg inbound, pg → appcard/card
/// outbound), so every payment crosses it twice.
const VICTIM: &str = "pg/pg";

/// The proxy is killed this many times, a second apart (each restart is measured): a window in
/// which a restarted proxy misbehaves is more likely to meet a request.
const ROUNDS: u32 = 3;

/// The two tests each run a whole platform: one at a time on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Customers paying at once, each one order after another, until stopped.
const CUSTOMERS: usize = 4;

/// Steady payment traffic: [`CUSTOMERS`] customers until stopped; their outcomes.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

fn steady_traffic(entry: String, run: &str) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicU64::new(0));
    let tasks = (0..CUSTOMERS)
        .map(|_| {
            let (stop, n, entry, run) = (stop.clone(), n.clone(), entry.clone(), run.to_string());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    out.push(
                        platform::customer_order(
                            &entry,
                            &format!("{run}-{i}"),
                            Kind::pick(i),
                            deadline,
                        )
                        .await,
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                out
            })
        })
        .collect();
    Traffic { stop, tasks }
}

impl Traffic {
    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

/// SIGCONTs the control plane when dropped, so that a failed assertion never leaves it frozen.
struct Frozen(i32);

impl Frozen {
    fn freeze(pid: i32) -> Frozen {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// SIGKILLs the victim's proxy; returns the time until its `/ready` answers 200 again.
async fn kill_proxy_and_time_ready(up: &Up) -> Duration {
    let w = up.workload(VICTIM);
    let pid = w["proxy_pid"].as_i64().expect("the proxy runs") as i32;
    let admin = w["admin"].as_str().unwrap().to_string();
    let at = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    while alive(pid) && at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        if let Ok((200, _)) =
            platform::call(&admin, "GET", "/ready", None, &[], Duration::from_secs(1)).await
        {
            return at.elapsed();
        }
        assert!(
            at.elapsed() < READY_BOUND,
            "{VICTIM}'s proxy was not ready {READY_BOUND:?} after kill -9\n--- its log:\n{}",
            platform::log_tail(up, &format!("{VICTIM} proxy"), 40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time until a fresh payment (app card: through every hop) is PAID, and its outcome.
async fn time_to_a_payment(up: &Up, tag: &str) -> (Duration, Outcome) {
    let t0 = Instant::now();
    let o = platform::customer_order(
        &platform::entry(up),
        tag,
        Kind::AppcardCheck,
        t0 + RESUME_BOUND,
    )
    .await;
    assert_eq!(
        o.status,
        "PAID",
        "payments did not resume: {o:?}\n--- log:\n{}",
        platform::log_tail(up, VICTIM, 40)
    );
    (t0.elapsed(), o)
}

async fn kill_one_proxy(control_frozen: bool) {
    platform::assert_platform_built();
    let tag = if control_frozen {
        "restart-frozen"
    } else {
        "restart"
    };
    let up = Up::start(tag, &platform::platform_mesh());
    let traffic = steady_traffic(platform::entry(&up), tag);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let frozen = control_frozen.then(|| {
        let pid = up.status()["control"]["pid"]
            .as_i64()
            .expect("the control plane runs") as i32;
        Frozen::freeze(pid)
    });
    let mut singles = Vec::new();
    for round in 1..=ROUNDS {
        let ready = kill_proxy_and_time_ready(&up).await;
        let (resumed, paid) = time_to_a_payment(&up, &format!("{tag}-after-{round}")).await;
        singles.push(paid);
        println!(
            "control plane {}, kill {round}/{ROUNDS}: {VICTIM}'s proxy ready {:.2} s after kill -9 (target 2 s, bound {READY_BOUND:?}); a payment then took {:.2} s",
            if control_frozen {
                "frozen (SIGSTOP)"
            } else {
                "up"
            },
            ready.as_secs_f64(),
            resumed.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Traffic keeps flowing for a while with the restarted proxy (and the control plane still
    // frozen), then the control plane thaws and everything still works.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(frozen);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, thawed) = time_to_a_payment(&up, &format!("{tag}-thawed")).await;
    singles.push(thawed);

    let mut outcomes = traffic.finish().await;
    for o in &outcomes {
        assert!(o.status == "PAID" || o.status == "FAILED", "{o:?}");
    }
    let retries: u64 = outcomes.iter().map(|o| o.retries).sum();
    println!(
        "{} orders during the run, {retries} retries",
        outcomes.len()
    );
    outcomes.extend(singles);
    platform::check_invariants(&up, &outcomes).await;
    up.stop_and_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_is_ready_again_and_payments_resume() {
    let _one = SERIAL.lock().await;
    kill_one_proxy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_comes_back_while_the_control_plane_cannot_answer() {
    let _one = SERIAL.lock().await;
    kill_one_proxy(true).await;
}
