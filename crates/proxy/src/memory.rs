//! Giving memory back once the proxy goes quiet.
//!
//! glibc's allocator keeps memory freed by closed connections (read and write buffers, TLS and
//! HTTP/2 state) in its free lists instead of returning it, and the connection pools keep as
//! many idle connections as the last burst needed. The accept loops (each accept and close) and
//! both directions (each request) note activity here ([`note_activity`]);
//! [`trim_when_idle`] looks every [`IDLE_CHECK`] and, once a whole check interval has passed
//! without any, shrinks the pools (to the app: [`KEEP_IDLE_WHEN_QUIET`] connections per port; to
//! each other proxy: [`KEEP_MESH_IDLE_WHEN_QUIET`]), then, one interval later (when the closed
//! connections have freed their buffers), asks the allocator to release its free pages
//! (`malloc_trim`); once per quiet spell. It never does so while requests flow, so a busy proxy
//! pays no page faults or reconnects to get the same resources back.
//!
//! An idle pooled connection holds about 35-40 KiB on each side (hyper's read and write buffers
//! and request channel, the TLS state, the connection's task), so 50 left over from a burst cost
//! about 2 MiB. The pools to other proxies keep more than the pools to the app because
//! re-dialling one costs a TLS handshake: 16 cover the concurrency of steady traffic (2,000
//! requests/s in bench/ rarely needed more), so a burst after a pause seldom waits for a
//! handshake; the rest live until their idle timeout ([`crate::pool::IDLE_TIMEOUT`]) only while
//! traffic flows.
//!
//! Only glibc needs the trim; elsewhere that part does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::drain::Drain;

/// How often the idle check runs: the pools shrink between one and two of these after the last
/// request, accept or close, and the heap is trimmed one interval later.
pub const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Idle connections are pruned every this many checks (5 s).
pub const PRUNE_EVERY: u32 = 20;
/// Idle pooled connections to the application kept per port through a quiet spell: enough that
/// ordinary traffic after a pause needs few new connections (a plain connect is cheap).
pub const KEEP_IDLE_WHEN_QUIET: usize = 8;
/// Idle pooled mTLS connections to another proxy kept per endpoint through a quiet spell.
pub const KEEP_MESH_IDLE_WHEN_QUIET: usize = 16;

static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Records that a request was sent, or a connection accepted or closed.
pub fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// Runs until drained: one check interval into each quiet spell calls `shrink_pools` (with
/// [`KEEP_IDLE_WHEN_QUIET`], the app pools' share; the caller shrinks the mesh pools to
/// [`KEEP_MESH_IDLE_WHEN_QUIET`] in the same call); one more, once the closed connections have
/// let go of their buffers, releases free heap.
///
/// Every [`PRUNE_EVERY`] checks, busy or not, it also calls `prune_pools` (close connections the
/// peer closed or that outlived their idle timeout); closing any counts as activity, so the
/// memory they held is given back in the quiet spell that follows.
pub async fn trim_when_idle(
    drain: Drain,
    shrink_pools: impl Fn(usize) + Send + 'static,
    prune_pools: impl Fn() -> usize + Send + 'static,
) {
    let mut seen = ACTIVITY.load(Ordering::Relaxed);
    let mut stage = Stage::Trimmed;
    let mut tick = tokio::time::interval(IDLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checks: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.signaled() => return,
        }
        checks = checks.wrapping_add(1);
        if checks.is_multiple_of(PRUNE_EVERY) && prune_pools() > 0 {
            note_activity();
        }
        let now = ACTIVITY.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            stage = Stage::Busy;
            continue;
        }
        stage = match stage {
            Stage::Busy => {
                shrink_pools(KEEP_IDLE_WHEN_QUIET);
                Stage::Shrunk
            }
            Stage::Shrunk => {
                release_free_heap();
                Stage::Trimmed
            }
            Stage::Trimmed => Stage::Trimmed,
        };
    }
}

/// Where the idle task is in a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Activity was seen in the last interval.
    Busy,
    /// Quiet for one interval: the pools were shrunk.
    Shrunk,
    /// Quiet for two: the heap was trimmed; nothing more until the next activity.
    Trimmed,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

#[cfg(test)]
mod tests;
