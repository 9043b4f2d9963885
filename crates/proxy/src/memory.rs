//! Giving freed heap back to the operating system once the proxy goes quiet.
//!
//! glibc's allocator keeps memory freed by closed connections (read and write buffers, TLS and
//! HTTP/2 state) in its free lists instead of returning it, so a sidecar that once served a burst
//! holds on to that memory while idle. The connection-accepting loops note each accept and close
//! here ([`note_activity`]); [`trim_when_idle`] looks every [`IDLE_CHECK`] and, once a whole check
//! interval has passed without any, asks the allocator to release its free pages
//! (`malloc_trim`), once per quiet spell. It never trims while connections come and go, so a busy
//! proxy does not pay page faults to get the same memory back.
//!
//! Only glibc needs this; elsewhere the task does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::drain::Drain;

/// How often the idle check runs: the proxy trims between one and two of these after the last
/// connection opened or closed.
pub const IDLE_CHECK: Duration = Duration::from_millis(250);

static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Records that a connection was accepted or closed.
pub fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// Runs until drained: releases free heap after each quiet spell.
pub async fn trim_when_idle(drain: Drain) {
    let mut seen = ACTIVITY.load(Ordering::Relaxed);
    let mut trimmed = true;
    let mut tick = tokio::time::interval(IDLE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.signaled() => return,
        }
        let now = ACTIVITY.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            trimmed = false;
        } else if !trimmed {
            release_free_heap();
            trimmed = true;
        }
    }
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
