//! Unit tests of the quiet-spell detection, in virtual time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::drain::Controller;

async fn ticks(n: u32) {
    for _ in 0..n {
        tokio::time::sleep(IDLE_CHECK).await;
    }
}

#[tokio::test(start_paused = true)]
async fn shrinks_once_per_quiet_spell_and_never_while_busy() {
    let drain = Controller::new();
    let shrinks = Arc::new(AtomicUsize::new(0));
    let kept = Arc::new(AtomicUsize::new(usize::MAX));
    let (s, k) = (shrinks.clone(), kept.clone());
    let prunes = Arc::new(AtomicUsize::new(0));
    let p = prunes.clone();
    let task = tokio::spawn(trim_when_idle(
        drain.handle(),
        move |keep| {
            s.fetch_add(1, Ordering::SeqCst);
            k.store(keep, Ordering::SeqCst);
        },
        move || {
            p.fetch_add(1, Ordering::SeqCst);
            0
        },
    ));

    // Busy: activity in every half interval, for 20 intervals.
    for _ in 0..40 {
        note_activity();
        tokio::time::sleep(IDLE_CHECK / 2).await;
    }
    assert_eq!(
        shrinks.load(Ordering::SeqCst),
        0,
        "shrank while requests flowed"
    );

    // Quiet: one shrink, keeping KEEP_IDLE_WHEN_QUIET, however long the quiet lasts.
    ticks(10).await;
    assert_eq!(shrinks.load(Ordering::SeqCst), 1);
    assert_eq!(kept.load(Ordering::SeqCst), KEEP_IDLE_WHEN_QUIET);

    // The next burst and quiet spell: one more.
    note_activity();
    ticks(10).await;
    assert_eq!(shrinks.load(Ordering::SeqCst), 2);
    // Pruning ran every PRUNE_EVERY checks all along, busy or quiet (20 + 10 + 10 checks).
    assert_eq!(prunes.load(Ordering::SeqCst), 40 / PRUNE_EVERY as usize);

    drop(drain);
    tokio::time::timeout(IDLE_CHECK * 4, task)
        .await
        .expect("the task stops once the drain controller is gone")
        .expect("the task did not panic");
}

#[tokio::test(start_paused = true)]
async fn closing_stale_connections_starts_a_new_quiet_spell() {
    let drain = Controller::new();
    let shrinks = Arc::new(AtomicUsize::new(0));
    let s = shrinks.clone();
    let task = tokio::spawn(trim_when_idle(
        drain.handle(),
        move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        },
        || 3,
    ));
    // Quiet throughout, but every prune closes connections: each is followed by a shrink and
    // a trim of what they held.
    ticks(PRUNE_EVERY * 3 + 4).await;
    assert_eq!(shrinks.load(Ordering::SeqCst), 3);
    drop(drain);
    let _ = tokio::time::timeout(IDLE_CHECK * 4, task).await;
}
