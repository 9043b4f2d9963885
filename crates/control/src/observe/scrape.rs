//! The scraper: every resolution step, GET `/metrics` from the admin listener of every proxy the
//! store knows (an instance's `admin` address: `onemesh up`'s endpoints.json in local mode, the
//! pod's IP and port 4191 in Kubernetes mode) and feed the answers to the window.
//!
//! Scrapes run concurrently (at most [`CONCURRENCY`] at once), each bounded in time (half the
//! interval, at most [`MAX_TIMEOUT`]) and in size ([`MAX_BODY`]): a slow or hostile proxy costs
//! one slot for a bounded time and never grows the control plane's memory. A failed scrape is
//! recorded as such (the target shows `up: false` and the error); the window's history stays.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use onemesh_window::{Target, Window};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::state::MeshState;

/// Scrapes in flight at once.
pub const CONCURRENCY: usize = 64;
/// The longest a scrape may take.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `/metrics` answer read (a proxy's is ~20-60 KiB).
pub const MAX_BODY: usize = 4 << 20;

/// Every proxy the mesh state knows, as the window's targets.
pub fn targets(state: &MeshState, trust_domain: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for w in state.mesh.workloads.values() {
        let identity = format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            w.namespace, w.service_account
        );
        for i in &w.instances {
            if let Some(admin) = i.admin {
                out.push(Target {
                    namespace: w.namespace.clone(),
                    workload: w.name.clone(),
                    identity: identity.clone(),
                    instance: admin.to_string(),
                });
            }
        }
    }
    out
}

/// Scrapes forever (until the task is aborted).
pub async fn run(
    window: Arc<Mutex<Window>>,
    state: watch::Receiver<Arc<MeshState>>,
    trust_domain: String,
    interval: Duration,
) {
    let timeout = (interval / 2).min(MAX_TIMEOUT);
    loop {
        tokio::time::sleep(until_next_round(SystemTime::now(), interval)).await;
        let targets = targets(&state.borrow(), &trust_domain);
        window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_targets(&targets);
        futures_util::stream::iter(targets)
            .for_each_concurrent(CONCURRENCY, |target| {
                let window = window.clone();
                async move {
                    let answer = tokio::time::timeout(timeout, fetch(&target.instance)).await;
                    let at = SystemTime::now();
                    let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
                    let failed = match answer {
                        Ok(Ok(text)) => match window.ingest(&target, at, &text) {
                            Ok(_) => None,
                            Err(e) => Some(format!("unreadable /metrics: {e}")),
                        },
                        Ok(Err(e)) => Some(e),
                        Err(_) => Some(format!("no answer within {timeout:?}")),
                    };
                    if let Some(error) = failed {
                        tracing::debug!(target = %target.instance, %error, "scrape failed");
                        window.scrape_failed(&target, at, error);
                    }
                }
            })
            .await;
    }
}

/// How long until the next round: rounds start a tenth of a step (at most 1 s) after a step
/// boundary of the window (`unix time / interval`), so that one round's scrapes land in one step.
pub fn until_next_round(now: SystemTime, interval: Duration) -> Duration {
    let step = interval.as_millis().max(1);
    let offset = (step / 10).min(1000);
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let next = (now_ms - offset).div_ceil(step) * step + offset;
    let wait = next.saturating_sub(now_ms).max(1);
    Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// GET `http://{addr}/metrics`, its body as text.
async fn fetch(addr: &str) -> Result<String, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != hyper::StatusCode::OK {
        return Err(format!("/metrics answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer (at most {MAX_BODY} bytes): {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_start_just_after_a_step_boundary() {
        let t = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let ten = Duration::from_secs(10);
        assert_eq!(
            until_next_round(t(1_000_000), ten),
            Duration::from_millis(1000)
        );
        assert_eq!(
            until_next_round(t(1_000_999), ten),
            Duration::from_millis(1)
        );
        // At a round's time: now (1 ms).
        assert_eq!(
            until_next_round(t(1_001_000), ten),
            Duration::from_millis(1)
        );
        assert_eq!(
            until_next_round(t(1_001_001), ten),
            Duration::from_millis(9_999)
        );
        assert_eq!(
            until_next_round(t(1_005_500), ten),
            Duration::from_millis(5_500)
        );
        let one = Duration::from_secs(1);
        assert_eq!(until_next_round(t(5_000), one), Duration::from_millis(100));
        assert_eq!(until_next_round(t(5_101), one), Duration::from_millis(999));
    }
}
