//! The timeout stage on virtual time.

use std::time::Duration;

use super::*;

fn ok() -> Result<Response<Body>, ProxyError> {
    Ok(Response::new(crate::body::empty()))
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_ends_in_a_timeout_at_the_deadline() {
    let start = tokio::time::Instant::now();
    let slow = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        ok()
    };
    let result = within(Some(Duration::from_millis(200)), slow).await;
    assert!(matches!(result, Err(ProxyError::Timeout(t)) if t == Duration::from_millis(200)));
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn an_answer_in_time_or_without_a_deadline_passes() {
    let quick = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok()
    };
    assert!(within(Some(Duration::from_secs(1)), quick).await.is_ok());
    let slow = async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        ok()
    };
    assert!(within(None, slow).await.is_ok());
}
