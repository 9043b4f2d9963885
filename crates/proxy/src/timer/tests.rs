//! Unit tests of the per-connection header timer, on tokio's paused clock.

use std::future::poll_fn;
use std::time::Duration;

use super::*;

/// Polls `sleep` once: whether it has fired.
async fn fired(sleep: &mut Pin<Box<dyn Sleep>>) -> bool {
    poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx).is_ready())).await
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn a_head_times_out_at_its_deadline_not_before() {
    let timer = HeadTimer::default();
    let mut sleep = timer.sleep(100 * MS);
    assert!(!fired(&mut sleep).await);
    tokio::time::advance(99 * MS).await;
    assert!(!fired(&mut sleep).await);
    tokio::time::advance(2 * MS).await;
    assert!(fired(&mut sleep).await);
}

#[tokio::test(start_paused = true)]
async fn each_head_gets_its_own_deadline_from_the_one_armed_sleep() {
    let timer = HeadTimer::default();
    // The first head arrives 10 ms in: its sleep goes, the connection's stays armed at 100 ms.
    let mut first = timer.sleep(100 * MS);
    assert!(!fired(&mut first).await);
    tokio::time::advance(10 * MS).await;
    drop(first);
    // The second head's deadline is 110 ms: the armed sleep fires at 100 and is moved on.
    let mut second = timer.sleep(100 * MS);
    assert!(!fired(&mut second).await);
    tokio::time::advance(95 * MS).await;
    assert!(
        !fired(&mut second).await,
        "100 ms is the first head's deadline, not this one's"
    );
    tokio::time::advance(10 * MS).await;
    assert!(
        fired(&mut second).await,
        "115 ms is past the second head's 110 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_later_head_gets_its_full_timeout_from_the_armed_sleep() {
    // The next head comes before the armed sleep's deadline (it fires while that head waits),
    // and after it (it fired with no head waiting).
    for gap in [50 * MS, 150 * MS] {
        let timer = HeadTimer::default();
        let mut first = timer.sleep(100 * MS);
        assert!(!fired(&mut first).await);
        drop(first);
        tokio::time::advance(gap).await;
        let next = timer.sleep(100 * MS);
        let started = tokio::time::Instant::now();
        // Awaited, not polled by hand: only the armed tokio sleep's wake-ups get it to its end.
        next.await;
        assert_eq!(
            started.elapsed(),
            100 * MS,
            "next head {gap:?} after the first"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_shorter_timeout_brings_the_armed_sleep_forward() {
    let timer = HeadTimer::default();
    let mut long = timer.sleep(1000 * MS);
    assert!(!fired(&mut long).await);
    drop(long);
    let short = timer.sleep(20 * MS);
    let started = tokio::time::Instant::now();
    short.await;
    assert_eq!(started.elapsed(), 20 * MS);
}
