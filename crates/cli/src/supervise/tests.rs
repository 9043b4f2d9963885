//! The supervisor: its restart policy in isolation, and real short-lived processes.

use super::*;

#[test]
fn compact_shortens_tracing_json() {
    let line =
        r#"{"timestamp":"x","level":"INFO","fields":{"message":"paid","order":7},"target":"t"}"#;
    assert_eq!(compact(line), "INFO paid order=7");
    assert_eq!(compact("plain text"), "plain text");
    // An access log line is not tracing's: it passes whole.
    let access = r#"{"time_unix":1.5,"method":"GET","path":"/menu","status":200}"#;
    assert_eq!(compact(access), access);
}

#[tokio::test]
async fn a_dead_process_is_restarted_and_stopped_on_shutdown() {
    let (tx, rx) = watch::channel(false);
    let h = start(
        Spec {
            label: "t".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "exit 3".into()],
            env: vec![],
            netns: None,
        },
        rx,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.restarts.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "process was not restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.stopped())
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_a_running_process() {
    let (tx, rx) = watch::channel(false);
    let h = start(
        Spec {
            label: "t".into(),
            program: "/bin/sleep".into(),
            args: vec!["60".into()],
            env: vec![],
            netns: None,
        },
        rx,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.pid().is_none() {
        assert!(Instant::now() < deadline, "process did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = h.pid().unwrap();
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.stopped())
        .await
        .unwrap();
    // The process is gone (kill(pid, 0) fails once it has been reaped).
    assert!(kill(Pid::from_raw(pid as i32), None).is_err());
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn quick_deaths_double_the_delay_up_to_a_low_cap() {
    let mut b = Backoff::default();
    let delays: Vec<u64> = (0..8)
        .map(|_| b.after_exit(ms(50)).as_millis() as u64)
        .collect();
    assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
}

#[test]
fn a_stable_run_resets_the_delay() {
    let mut b = Backoff::default();
    for _ in 0..10 {
        b.after_exit(Duration::ZERO);
    }
    assert_eq!(b.after_exit(STABLE_RUN - ms(1)), MAX_BACKOFF);
    assert_eq!(b.after_exit(STABLE_RUN), MIN_BACKOFF);
    assert_eq!(b.after_exit(ms(10)), MIN_BACKOFF * 2);
}

#[test]
fn a_process_killed_again_and_again_is_never_down_for_long() {
    // Killed every second, whatever its delay was: the delay stays at or under the cap, and the
    // total time down over a minute of kills stays a fraction of it.
    let mut b = Backoff::default();
    let mut down = Duration::ZERO;
    for _ in 0..60 {
        let d = b.after_exit(Duration::from_secs(1));
        assert!(d <= MAX_BACKOFF, "{d:?}");
        down += d;
    }
    assert!(down <= MAX_BACKOFF * 60, "{down:?}");
    // Killed every few seconds (the chaos test's pace): every restart is the quick one.
    let mut b = Backoff::default();
    for _ in 0..20 {
        assert_eq!(b.after_exit(STABLE_RUN + ms(500)), MIN_BACKOFF);
    }
}

#[tokio::test]
async fn a_process_killed_repeatedly_comes_back_within_the_cap() {
    let (tx, rx) = watch::channel(false);
    let h = start(
        Spec {
            label: "t".into(),
            program: "/bin/sleep".into(),
            args: vec!["60".into()],
            env: vec![],
            netns: None,
        },
        rx,
    );
    let mut worst = Duration::ZERO;
    let mut last = None;
    for _ in 0..7 {
        // Wait for a new pid, then kill it at once (a quick death every time).
        let t0 = Instant::now();
        let pid = loop {
            match h.pid() {
                Some(p) if Some(p) != last => break p,
                _ => {}
            }
            assert!(
                t0.elapsed() < MAX_BACKOFF + Duration::from_secs(3),
                "not restarted within {:?}",
                MAX_BACKOFF + Duration::from_secs(3)
            );
            tokio::time::sleep(ms(10)).await;
        };
        if last.is_some() {
            worst = worst.max(t0.elapsed());
        }
        last = Some(pid);
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
    println!("worst time from SIGKILL to a new process: {worst:?}");
    assert!(worst <= MAX_BACKOFF + Duration::from_secs(1), "{worst:?}");
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.stopped())
        .await
        .unwrap();
}
