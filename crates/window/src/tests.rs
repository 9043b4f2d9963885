//! The window's behaviour from known scrapes: deltas, resets, baselines, window boundaries,
//! percentiles, edges, routes, authorization, series points, forgetting, the series cap, and
//! hostile texts.

use super::*;
use crate::api::TlsState;

const T0: u64 = 1_764_800_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn id(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}

fn target(ns: &str, wl: &str, n: u8) -> Target {
    Target {
        namespace: ns.into(),
        workload: wl.into(),
        identity: id(ns, wl),
        instance: format!("10.0.0.{n}:4191"),
    }
}

fn window() -> Window {
    Window::new(WindowSettings {
        resolution: Duration::from_secs(10),
        retention: Duration::from_secs(600),
        max_series: 1000,
    })
    .unwrap()
}

const MIN: Duration = Duration::from_secs(60);

/// Inbound labels of `card` called by `pg`.
fn inbound(extra: &str) -> String {
    format!(
        "direction=\"inbound\",namespace=\"card\",workload=\"card\",dst_namespace=\"card\",\
         dst_workload=\"card\",client_id=\"{}\",tls=\"true\",route=\"default\"{extra}",
        id("pg", "pg")
    )
}

/// Outbound labels of `pg` calling `dst`.
fn outbound(dst: &str, route: &str, extra: &str) -> String {
    format!(
        "direction=\"outbound\",namespace=\"pg\",workload=\"pg\",dst_namespace=\"{dst}\",\
         dst_workload=\"{dst}\",server_id=\"{}\",tls=\"true\",route=\"{route}\"{extra}",
        id(dst, dst)
    )
}

/// An inbound text with `requests` requests, all successful, latency cumulative buckets.
fn served(requests: u64, buckets: &[(&str, u64)]) -> String {
    let mut text = format!(
        "# TYPE request_total counter\nrequest_total{{{}}} {requests}\n\
         response_total{{{}}} {requests}\n",
        inbound(""),
        inbound(",classification=\"success\",status_code=\"200\"")
    );
    for (le, n) in buckets {
        text += &format!(
            "response_latency_seconds_bucket{{{}}} {n}\n",
            inbound(&format!(",le=\"{le}\""))
        );
    }
    text
}

fn one(w: &Window, ns: &str, wl: &str, now: u64, window: Duration) -> api::WorkloadStats {
    w.overview(at(now), window)
        .workloads
        .into_iter()
        .find(|r| r.namespace == ns && r.workload == wl)
        .unwrap()
}

#[test]
fn first_scrape_is_a_baseline_then_counters_become_deltas() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    let first = w.ingest(&card, at(0), &served(100, &[])).unwrap();
    assert!(first.baseline);
    assert_eq!(first.used, 0);
    let o = w.overview(at(1), MIN);
    assert_eq!(o.window_s, 0.0);
    assert_eq!(o.workloads[0].requests, 0);
    assert_eq!(o.workloads[0].rps, 0.0);
    assert_eq!(o.workloads[0].success_rate, None);

    let second = w.ingest(&card, at(10), &served(130, &[])).unwrap();
    assert!(!second.baseline);
    assert_eq!(second.used, 2);
    let r = one(&w, "card", "card", 11, MIN);
    assert_eq!(r.requests, 30);
    assert_eq!(w.overview(at(11), MIN).window_s, 10.0);
    assert!((r.rps - 3.0).abs() < 1e-9);
    assert_eq!(r.success_rate, Some(1.0));
    assert_eq!(r.instances, 1);
    assert_eq!(r.meshed, 1);
    assert_eq!(r.identity.as_deref(), Some(id("card", "card").as_str()));
}

#[test]
fn a_proxy_that_started_while_the_window_watched_counts_its_first_scrape_from_zero() {
    let mut w = window();
    w.set_started(at(0));
    let (card, pg) = (target("card", "card", 1), target("pg", "pg", 2));
    w.set_targets(&[card.clone(), pg.clone()]);
    // card started 5 s after the window: its first 100 requests all count.
    let started = |secs: u64| format!("process_start_time_seconds {}\n", T0 + secs);
    let first = w
        .ingest(&card, at(10), &(started(5) + &served(100, &[])))
        .unwrap();
    assert!(!first.baseline);
    assert_eq!(one(&w, "card", "card", 11, MIN).requests, 100);
    // A proxy that ran before the window (a restarted control plane): only a baseline, also
    // without a start time, and with a start time that is not a number.
    for text in [
        started(0).replace(&(T0).to_string(), &(T0 - 60).to_string()) + &served(50, &[]),
        served(50, &[]),
        "process_start_time_seconds NaN\n".to_string() + &served(50, &[]),
    ] {
        let mut w = window();
        w.set_started(at(0));
        w.set_targets(std::slice::from_ref(&pg));
        assert!(w.ingest(&pg, at(10), &text).unwrap().baseline, "{text}");
    }
}

#[test]
fn a_counter_that_went_down_is_a_restart() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(500, &[])).unwrap();
    w.ingest(&card, at(10), &served(7, &[])).unwrap();
    w.ingest(&card, at(20), &served(9, &[])).unwrap();
    assert_eq!(one(&w, "card", "card", 21, MIN).requests, 9);
}

#[test]
fn a_series_appearing_after_the_baseline_counts_from_zero() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(
        &card,
        at(0),
        "tcp_open_connections{direction=\"inbound\"} 0\n",
    )
    .unwrap();
    w.ingest(&card, at(10), &served(4, &[])).unwrap();
    assert_eq!(one(&w, "card", "card", 11, MIN).requests, 4);
}

#[test]
fn the_window_counts_whole_steps_ending_at_the_newest_data() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    for i in 0..8u64 {
        w.ingest(&card, at(i * 10 + 2), &served(i * 10, &[]))
            .unwrap();
    }
    // Rounds at steps 0..=7: deltas in steps 1..=7, 10 requests each.
    let now = 75;
    let r = one(&w, "card", "card", now, Duration::from_secs(30));
    assert_eq!(r.requests, 30);
    assert!((r.rps - 1.0).abs() < 1e-9);
    let o = w.overview(at(now), Duration::from_secs(3600));
    assert_eq!(o.window_s, 70.0, "capped by the data, not the retention");
    assert_eq!(o.workloads[0].requests, 70);
    // Just after the step-8 boundary, before the round of step 8: still anchored at step 7.
    let r = one(&w, "card", "card", 80, Duration::from_secs(30));
    assert_eq!(r.requests, 30);
    // Scraping stopped: the window slides on and the numbers age out.
    assert_eq!(
        one(&w, "card", "card", 105, Duration::from_secs(30)).requests,
        10
    );
    assert_eq!(
        one(&w, "card", "card", 125, Duration::from_secs(30)).requests,
        0
    );
}

#[test]
fn a_late_scrape_counts_in_the_open_step() {
    let mut w = window();
    let a = target("card", "card", 1);
    let b = target("card", "card", 2);
    w.set_targets(&[a.clone(), b.clone()]);
    w.ingest(&a, at(0), &served(0, &[])).unwrap();
    w.ingest(&b, at(0), &served(0, &[])).unwrap();
    w.ingest(&a, at(21), &served(5, &[])).unwrap();
    // b's scrape was timed in step 1 but arrives after a's in step 2.
    w.ingest(&b, at(19), &served(6, &[])).unwrap();
    let s = w
        .series("card", "card", at(22), Duration::from_secs(30))
        .unwrap();
    assert_eq!(s.rps, vec![None, None, Some(1.1)]);
    assert_eq!(one(&w, "card", "card", 22, MIN).requests, 11);
    assert_eq!(one(&w, "card", "card", 22, MIN).instances, 2);
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn percentiles_interpolate_like_histogram_quantile() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    let zero: Vec<(&str, u64)> = vec![("0.001", 0), ("0.005", 0), ("0.01", 0), ("+Inf", 0)];
    w.ingest(&card, at(0), &served(0, &zero)).unwrap();
    // 50 requests ≤ 1 ms, 50 in (5, 10] ms.
    let hist = vec![("0.001", 50), ("0.005", 50), ("0.01", 100), ("+Inf", 100)];
    w.ingest(&card, at(10), &served(100, &hist)).unwrap();
    let r = one(&w, "card", "card", 11, MIN);
    // rank 50 of 100: the top of the first bucket, 1 ms.
    assert!(close(r.p50_ms, 1.0), "{:?}", r.p50_ms);
    // rank 95: 45 of the 50 in (5, 10]: 5 + 5 × 45/50 = 9.5 ms; rank 99: 9.9 ms.
    assert!(close(r.p95_ms, 9.5), "{:?}", r.p95_ms);
    assert!(close(r.p99_ms, 9.9), "{:?}", r.p99_ms);

    // Everything slower than the last bound: the answer is that bound, 30 s.
    let slow = vec![("0.001", 50), ("0.005", 50), ("0.01", 100), ("+Inf", 110)];
    w.ingest(&card, at(20), &served(110, &slow)).unwrap();
    let s = w
        .series("card", "card", at(21), Duration::from_secs(10))
        .unwrap();
    assert_eq!(s.p50_ms, vec![Some(30_000.0)]);
}

#[test]
fn quantile_edge_cases() {
    let mut b = [0u64; slot::BUCKETS];
    assert_eq!(slot::quantile(&b, 0.5), None);
    b[0] = 4;
    // Lowest bucket: interpolated from 0.
    assert!((slot::quantile(&b, 0.5).unwrap() - 0.0005).abs() < 1e-12);
    b[10] = 4; // (0.05, 0.1]
    assert!((slot::quantile(&b, 0.75).unwrap() - 0.075).abs() < 1e-12);
    assert!((slot::quantile(&b, 1.0).unwrap() - 0.1).abs() < 1e-12);
}

#[test]
fn edges_come_from_the_callers_outbound_and_the_destinations_denials() {
    let mut w = window();
    let pg = target("pg", "pg", 1);
    let card = target("card", "card", 2);
    let order = target("order", "order", 3);
    w.set_targets(&[pg.clone(), card.clone(), order.clone()]);
    let pg_text = |n: u64| {
        format!(
            "request_total{{{}}} {n}\nresponse_total{{{}}} {n}\n\
             response_latency_seconds_bucket{{{}}} {n}\n",
            outbound("card", "default", ""),
            outbound(
                "card",
                "default",
                ",classification=\"success\",status_code=\"200\""
            ),
            outbound("card", "default", ",le=\"0.002\""),
        )
    };
    let deny = |caller: &str, n: u64| {
        format!(
            "authz_deny_total{{direction=\"inbound\",namespace=\"card\",workload=\"card\",\
             dst_namespace=\"card\",dst_workload=\"card\",client_id=\"{caller}\",tls=\"true\",\
             policy=\"card-policy\",kind=\"http\"}} {n}\n"
        )
    };
    let evil = id("evil", "x");
    let card_text = |n: u64| deny(&id("order", "order"), n) + &deny(&evil, n);
    w.ingest(&pg, at(0), &pg_text(0)).unwrap();
    w.ingest(&card, at(0), &card_text(0)).unwrap();
    w.ingest(&pg, at(10), &pg_text(20)).unwrap();
    w.ingest(&card, at(10), &card_text(3)).unwrap();

    let o = w.overview(at(11), MIN);
    assert_eq!(o.edges.len(), 3, "{:#?}", o.edges);
    let e = o
        .edges
        .iter()
        .find(|e| e.src_namespace.as_deref() == Some("pg"))
        .unwrap();
    assert_eq!(e.src_workload.as_deref(), Some("pg"));
    assert_eq!(
        (e.dst_namespace.as_str(), e.dst_workload.as_str()),
        ("card", "card")
    );
    assert_eq!(e.src_id.as_deref(), Some(id("pg", "pg").as_str()));
    assert_eq!(e.dst_id.as_deref(), Some(id("card", "card").as_str()));
    assert_eq!(e.tls, TlsState::Mtls);
    assert_eq!(e.requests, 20);
    assert!((e.rps - 2.0).abs() < 1e-9);
    assert_eq!(e.success_rate, Some(1.0));
    assert!(close(e.p50_ms, 1.5));
    assert_eq!(e.denied, 0);

    // A denial-only edge from a known identity: mapped to its workload.
    let e = o
        .edges
        .iter()
        .find(|e| e.src_workload.as_deref() == Some("order"))
        .unwrap();
    assert_eq!(e.src_namespace.as_deref(), Some("order"));
    assert_eq!((e.requests, e.denied), (0, 3));
    assert_eq!(e.success_rate, None);
    assert_eq!(e.p99_ms, None);
    assert_eq!(e.src_id.as_deref(), Some(id("order", "order").as_str()));

    // An identity no target has: its namespace from the id, no workload.
    let e = o
        .edges
        .iter()
        .find(|e| e.src_id.as_deref() == Some(evil.as_str()))
        .unwrap();
    assert_eq!(e.src_namespace.as_deref(), Some("evil"));
    assert_eq!(e.src_workload, None);
    assert_eq!(e.denied, 3);

    let card_row = o.workloads.iter().find(|r| r.workload == "card").unwrap();
    assert_eq!(card_row.denied, 6);
}

#[test]
fn an_edges_bytes_come_from_the_callees_inbound_once() {
    let mut w = window();
    let pg = target("pg", "pg", 1);
    let card = target("card", "card", 2);
    w.set_targets(&[pg.clone(), card.clone()]);
    // pg's proxy counts an opaque stream to card (its app's side); card's inbound counts every
    // byte of the connections from pg's proxy (that stream's and the HTTP requests' alike), and
    // bytes from a caller no target has.
    let tcp = |labels: &str, read: u64, write: u64| {
        format!(
            "tcp_read_bytes_total{{{labels}}} {read}\ntcp_write_bytes_total{{{labels}}} {write}\n"
        )
    };
    let pg_text = |n: u64| tcp(&outbound("card", "", ""), 100 * n, 10 * n);
    let stranger = inbound("").replace(&id("pg", "pg"), &id("other", "x"));
    let card_text = |n: u64| tcp(&inbound(""), 300 * n, 30 * n) + &tcp(&stranger, 7 * n, n);
    w.ingest(&pg, at(0), &pg_text(0)).unwrap();
    w.ingest(&card, at(0), &card_text(0)).unwrap();
    w.ingest(&pg, at(10), &pg_text(1)).unwrap();
    w.ingest(&card, at(10), &card_text(1)).unwrap();

    let o = w.overview(at(11), MIN);
    assert_eq!(o.edges.len(), 1, "{:#?}", o.edges);
    let e = &o.edges[0];
    assert_eq!(e.src_workload.as_deref(), Some("pg"));
    assert_eq!(e.dst_workload, "card");
    assert_eq!(e.tls, TlsState::Mtls);
    assert_eq!(e.requests, 0);
    assert!(close(Some(e.tcp_read_bytes_per_s), 30.0), "{e:?}");
    assert!(close(Some(e.tcp_write_bytes_per_s), 3.0), "{e:?}");
    // The workload's row: everything its inbound read, the stranger's bytes too.
    let row = o.workloads.iter().find(|r| r.workload == "card").unwrap();
    assert!(close(Some(row.tcp_read_bytes_per_s), 30.7), "{row:?}");
}

#[test]
fn edge_tls_state_is_mixed_when_both_were_seen() {
    let mut w = window();
    let pg = target("pg", "pg", 1);
    w.set_targets(std::slice::from_ref(&pg));
    let text = |n: u64| {
        format!(
            "request_total{{{}}} {n}\nrequest_total{{{}}} {n}\n",
            outbound("card", "default", ""),
            outbound("card", "default", "").replace("tls=\"true\"", "tls=\"no_identity\"")
        )
    };
    w.ingest(&pg, at(0), &text(0)).unwrap();
    w.ingest(&pg, at(10), &text(1)).unwrap();
    let o = w.overview(at(11), MIN);
    assert_eq!(o.edges[0].tls, TlsState::Mixed);
    assert_eq!(o.edges[0].requests, 2);
}

#[test]
fn routes_are_counted_by_backend_with_retries() {
    let mut w = window();
    let pg = target("pg", "pg", 1);
    w.set_targets(std::slice::from_ref(&pg));
    let text = |v1: u64, v2: u64, retried: u64, refused: u64| {
        let l = |dst: &str, extra: &str| {
            format!(
                "direction=\"outbound\",namespace=\"pg\",workload=\"pg\",dst_namespace=\"card\",\
                 dst_workload=\"{dst}\",tls=\"true\",route=\"split\"{extra}"
            )
        };
        format!(
            "request_total{{{}}} {v1}\nrequest_total{{{}}} {v2}\n\
             response_total{{{}}} {v1}\nresponse_total{{{}}} {v2}\n\
             retry_total{{direction=\"outbound\",dst_namespace=\"card\",route=\"split\",reason=\"retried\"}} {retried}\n\
             retry_total{{direction=\"outbound\",dst_namespace=\"card\",route=\"split\",reason=\"budget_exhausted\"}} {refused}\n",
            l("card-v1", ""),
            l("card-v2", ""),
            l("card-v1", ",classification=\"success\",status_code=\"200\""),
            l("card-v2", ",classification=\"failure\",status_code=\"503\""),
        )
    };
    w.ingest(&pg, at(0), &text(0, 0, 0, 0)).unwrap();
    w.ingest(&pg, at(10), &text(70, 30, 4, 1)).unwrap();
    let routes = w.routes(at(11), MIN);
    assert_eq!(routes.len(), 1);
    let r = &routes[0];
    assert_eq!((r.namespace.as_str(), r.route.as_str()), ("card", "split"));
    assert_eq!(r.requests, 100);
    assert!(close(r.success_rate, 0.7));
    assert_eq!((r.retries, r.retries_refused), (4, 1));
    assert_eq!(r.by_backend.get("card/card-v1"), Some(&70));
    assert_eq!(r.by_backend.get("card/card-v2"), Some(&30));
    assert_eq!(r.p50_ms, None);
}

/// Found by the `metrics_text` fuzz target: two callers' counters that each fit in a u64 made
/// the policy's sum overflow (a panic in a debug build, a wrapped count in release).
#[test]
fn huge_counters_saturate_in_sums_instead_of_wrapping() {
    let mut w = window();
    let card = target("card", "card", 1);
    let card2 = target("card", "card", 2);
    w.set_targets(&[card.clone(), card2.clone()]);
    let line = |metric: &str, caller: &str, n: &str| {
        format!(
            "{metric}{{direction=\"inbound\",namespace=\"card\",workload=\"card\",\
             dst_namespace=\"card\",dst_workload=\"card\",client_id=\"{caller}\",tls=\"true\",\
             policy=\"card-policy\",kind=\"http\",route=\"r\"}} {n}\n"
        )
    };
    let text = |n: &str| {
        [
            line("authz_allow_total", &id("pg", "pg"), n),
            line("authz_allow_total", &id("order", "order"), n),
            line("authz_deny_total", &id("pg", "pg"), n),
            line("authz_deny_total", &id("order", "order"), n),
            line("authz_would_deny_total", &id("pg", "pg"), n),
            line("authz_would_deny_total", &id("order", "order"), n),
            line("request_total", &id("pg", "pg"), n),
            format!("tcp_open_connections{{direction=\"inbound\",namespace=\"card\",workload=\"card\"}} {n}\n"),
        ]
        .concat()
    };
    for t in [&card, &card2] {
        w.ingest(t, at(0), &text("0")).unwrap();
        w.ingest(t, at(10), &text("1e19")).unwrap();
    }
    let rows = w.authz(at(11), MIN);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        (r.allowed, r.denied, r.would_deny),
        (u64::MAX, u64::MAX, u64::MAX)
    );
    let o = w.overview(at(11), MIN);
    let row = o.workloads.iter().find(|r| r.workload == "card").unwrap();
    assert_eq!(row.requests, u64::MAX);
    assert_eq!(row.tcp_open_connections, u64::MAX);
}

#[test]
fn authorization_decisions_per_policy_and_caller() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    let line = |metric: &str, caller: Option<&str>, n: u64| {
        let client = caller.map_or(String::new(), |c| format!("client_id=\"{c}\","));
        format!(
            "{metric}{{direction=\"inbound\",namespace=\"card\",workload=\"card\",\
             dst_namespace=\"card\",dst_workload=\"card\",{client}tls=\"true\",\
             policy=\"card-policy\",kind=\"http\"}} {n}\n"
        )
    };
    let pg = id("pg", "pg");
    let order = id("order", "order");
    let appcard = id("appcard", "appcard");
    let text = |n: u64| {
        line("authz_allow_total", Some(&pg), 5 * n)
            + &line("authz_deny_total", Some(&order), n)
            + &line("authz_deny_total", None, 2 * n)
            + &line("authz_would_deny_total", Some(&appcard), 3 * n)
    };
    w.ingest(&card, at(0), &text(0)).unwrap();
    w.ingest(&card, at(10), &text(2)).unwrap();
    let rows = w.authz(at(11), MIN);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.namespace.as_str(), r.workload.as_str(), r.policy.as_str()),
        ("card", "card", "card-policy")
    );
    assert_eq!((r.allowed, r.denied, r.would_deny), (10, 6, 6));
    assert_eq!(
        r.callers,
        vec![
            api::AuthzCaller {
                id: None,
                allowed: 0,
                denied: 4,
                would_deny: 0,
            },
            api::AuthzCaller {
                id: Some(appcard.clone()),
                allowed: 0,
                denied: 0,
                would_deny: 6,
            },
            api::AuthzCaller {
                id: Some(order.clone()),
                allowed: 0,
                denied: 2,
                would_deny: 0,
            },
            api::AuthzCaller {
                id: Some(pg.clone()),
                allowed: 10,
                denied: 0,
                would_deny: 0,
            },
        ]
    );
    // The unmeshed caller's denial is an edge with no source.
    let o = w.overview(at(11), MIN);
    let e = o.edges.iter().find(|e| e.src_id.is_none()).unwrap();
    assert_eq!((e.src_namespace.as_deref(), e.denied), (None, 4));
    // Audit-mode denials count on the workload, apart from real ones.
    let card_row = o.workloads.iter().find(|w| w.workload == "card").unwrap();
    assert_eq!((card_row.denied, card_row.would_deny), (6, 6));
}

#[test]
fn series_points_are_null_without_data_or_requests() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    let hist = |n| vec![("0.001", n), ("+Inf", n)];
    w.ingest(&card, at(0), &served(0, &hist(0))).unwrap();
    w.ingest(&card, at(10), &served(10, &hist(10))).unwrap();
    w.ingest(&card, at(20), &served(10, &hist(10))).unwrap();
    w.ingest(&card, at(30), &served(30, &hist(30))).unwrap();
    let s = w
        .series("card", "card", at(31), Duration::from_secs(50))
        .unwrap();
    assert_eq!(s.step_s, 10.0);
    let t0 = T0 as f64;
    assert_eq!(s.t, vec![t0 - 10.0, t0, t0 + 10.0, t0 + 20.0, t0 + 30.0]);
    assert_eq!(s.rps, vec![None, None, Some(1.0), Some(0.0), Some(2.0)]);
    assert_eq!(s.success_rate, vec![None, None, Some(1.0), None, Some(1.0)]);
    assert_eq!(s.p99_ms[3], None);
    assert!(close(s.p50_ms[4], 0.5));
    assert_eq!(s.denied_per_s[4], Some(0.0));
    assert!(w.series("nope", "nope", at(31), MIN).is_none());
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["rps"][0].is_null());
}

#[test]
fn a_forgotten_target_starts_from_a_baseline_and_its_history_stays() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(100, &[])).unwrap();
    w.ingest(&card, at(10), &served(110, &[])).unwrap();
    w.set_targets(&[]);
    assert!(matches!(
        w.ingest(&card, at(20), &served(120, &[])),
        Err(IngestError::UnknownTarget { .. })
    ));
    let o = w.overview(at(21), MIN);
    assert_eq!((o.targets.known, o.targets.up), (0, 0));
    assert_eq!(o.workloads.len(), 1, "history stays");
    assert_eq!(o.workloads[0].requests, 10);
    assert_eq!(o.workloads[0].instances, 0);
    w.set_targets(std::slice::from_ref(&card));
    let again = w.ingest(&card, at(30), &served(1000, &[])).unwrap();
    assert!(again.baseline, "raw state was dropped");
    assert_eq!(one(&w, "card", "card", 31, MIN).requests, 10);
    assert!(w.memory().targets_bytes > 0);
}

#[test]
fn a_target_whose_identity_changed_starts_again() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(100, &[])).unwrap();
    let mut moved = card.clone();
    moved.workload = "card-v2".into();
    w.set_targets(std::slice::from_ref(&moved));
    assert!(
        w.ingest(&moved, at(10), &served(150, &[]))
            .unwrap()
            .baseline
    );
}

#[test]
fn new_series_beyond_the_cap_are_refused_and_counted() {
    let mut w = Window::new(WindowSettings {
        max_series: 2,
        ..WindowSettings::default()
    })
    .unwrap();
    let pg = target("pg", "pg", 1);
    w.set_targets(std::slice::from_ref(&pg));
    let text = |n: u64| {
        ["a", "b", "c"]
            .iter()
            .map(|d| format!("request_total{{{}}} {n}\n", outbound(d, "", "")))
            .collect::<String>()
    };
    w.ingest(&pg, at(0), &text(0)).unwrap();
    let got = w.ingest(&pg, at(10), &text(1)).unwrap();
    assert_eq!(got.dropped_series, 1);
    assert_eq!(got.used, 3);
    let stats = w.stats();
    assert_eq!((stats.series, stats.dropped_series_total), (2, 1));
    assert_eq!(w.overview(at(11), MIN).edges.len(), 2);
}

#[test]
fn series_age_out_and_their_strings_are_released() {
    let mut w = window(); // 600 s retention
    let pg = target("pg", "pg", 1);
    w.set_targets(std::slice::from_ref(&pg));
    let text = |d: &str, n: u64| format!("request_total{{{}}} {n}\n", outbound(d, "r", ""));
    w.ingest(&pg, at(0), &text("old", 0)).unwrap();
    w.ingest(&pg, at(10), &text("old", 5)).unwrap();
    assert_eq!(w.stats().series, 2); // edge, route
    let strings = w.stats().interned_strings;
    assert!(strings >= 5);
    // Traffic moves to another destination; the old series age out after the retention.
    for i in 2..80u64 {
        w.ingest(&pg, at(i * 10), &text("new", i)).unwrap();
    }
    assert_eq!(w.stats().series, 2);
    assert_eq!(w.stats().interned_strings, strings);
    let o = w.overview(at(791), Duration::from_secs(600));
    assert_eq!(o.edges.len(), 1);
    assert_eq!(o.edges[0].dst_workload, "new");
}

#[test]
fn a_bad_line_rejects_the_whole_scrape_with_its_line_number() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(100, &[])).unwrap();
    let bad = served(150, &[]) + "request_total{direction=\"inbound\" 3\n";
    let err = w.ingest(&card, at(10), &bad).unwrap_err();
    let IngestError::Parse(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.line, 4);
    let t = &w.targets()[0];
    assert!(!t.up);
    assert!(
        t.error.as_deref().unwrap().contains("metrics line 4"),
        "{t:?}"
    );
    assert_eq!(t.last_scrape_unix, Some((T0 + 10) as f64));
    // Nothing of the bad scrape was taken: the next good one counts from 100.
    w.ingest(&card, at(20), &served(160, &[])).unwrap();
    assert_eq!(one(&w, "card", "card", 21, MIN).requests, 60);
    assert!(w.targets()[0].up);
    assert_eq!(w.targets()[0].error, None);
}

#[test]
fn a_failed_scrape_marks_the_target_down_and_keeps_its_state() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(100, &[])).unwrap();
    w.scrape_failed(&card, at(10), "connection refused".into());
    let o = w.overview(at(11), MIN);
    assert_eq!((o.targets.known, o.targets.up), (1, 0));
    assert_eq!(o.workloads[0].meshed, 0);
    assert_eq!(w.targets()[0].error.as_deref(), Some("connection refused"));
    w.ingest(&card, at(20), &served(120, &[])).unwrap();
    assert_eq!(one(&w, "card", "card", 21, MIN).requests, 20);
}

#[test]
fn hostile_texts_cost_bounded_work() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    // 10 MB: refused before reading a byte of it.
    let huge = "x 1\n".repeat(10 << 18);
    let started = std::time::Instant::now();
    let err = w.ingest(&card, at(0), &huge).unwrap_err();
    assert!(matches!(err, IngestError::TooLarge { bytes, .. } if bytes == huge.len()));
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(err.to_string().contains("4194304"), "{err}");

    // NaN, infinite, negative counters, unknown buckets, giant label values: skipped.
    let giant = "a".repeat(MAX_LABEL_BYTES + 1);
    let text = |n: u64| {
        served(n, &[("0.001", n), ("0.0015", n)])
            + "request_total{direction=\"inbound\",route=\"nan\"} NaN\n"
            + "request_total{direction=\"inbound\",route=\"inf\"} +Inf\n"
            + "request_total{direction=\"inbound\",route=\"neg\"} -5\n"
            + &format!(
                "request_total{{direction=\"outbound\",dst_namespace=\"{giant}\",dst_workload=\"x\"}} {n}\n"
            )
    };
    w.ingest(&card, at(0), &text(0)).unwrap();
    let got = w.ingest(&card, at(10), &text(8)).unwrap();
    assert_eq!(got.skipped, 5);
    assert_eq!(got.used, 3);
    assert_eq!(one(&w, "card", "card", 11, MIN).requests, 8);
    assert_eq!(w.stats().series, 1);
    assert!(w.overview(at(11), MIN).edges.is_empty());
}

#[test]
fn settings_are_checked() {
    let bad = |resolution, retention| {
        Window::new(WindowSettings {
            resolution: Duration::from_millis(resolution),
            retention: Duration::from_millis(retention),
            max_series: 10,
        })
        .err()
    };
    assert!(matches!(
        bad(500, 60_000),
        Some(SettingsError::ResolutionTooSmall(_))
    ));
    assert!(matches!(
        bad(10_000, 15_000),
        Some(SettingsError::BadRetention { .. })
    ));
    assert!(matches!(
        bad(10_000, 0),
        Some(SettingsError::BadRetention { .. })
    ));
    assert!(bad(10_000, 3_600_000).is_none());
}

#[test]
fn the_overview_has_the_contracts_json_shape() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(0, &[])).unwrap();
    w.ingest(&card, at(10), &served(10, &[])).unwrap();
    let o = w.overview(at(11), MIN);
    let json = serde_json::to_value(&o).unwrap();
    for key in [
        "now_unix",
        "window_s",
        "resolution_s",
        "retention_s",
        "targets",
        "workloads",
        "edges",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
    assert_eq!(json["targets"], serde_json::json!({"known": 1, "up": 1}));
    let row = &json["workloads"][0];
    for key in [
        "namespace",
        "workload",
        "identity",
        "instances",
        "meshed",
        "requests",
        "rps",
        "success_rate",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "denied",
        "tcp_open_connections",
        "tcp_read_bytes_per_s",
        "tcp_write_bytes_per_s",
    ] {
        assert!(row.get(key).is_some(), "{key}");
    }
    assert!(row["p50_ms"].is_null());
    let back: api::Overview = serde_json::from_value(json).unwrap();
    assert_eq!(back, o);
    assert_eq!(
        serde_json::to_value(TlsState::Mixed).unwrap(),
        serde_json::json!("mixed")
    );
    let targets = serde_json::to_value(w.targets()).unwrap();
    assert_eq!(targets[0]["instance"], "10.0.0.1:4191");
    assert_eq!(targets[0]["error"], serde_json::Value::Null);
}

#[test]
fn inbound_open_connections_are_the_last_scrape_summed_over_up_instances() {
    let mut w = window();
    let a = target("card", "card", 1);
    let b = target("card", "card", 2);
    w.set_targets(&[a.clone(), b.clone()]);
    let text = |n: u64| {
        format!(
            "tcp_open_connections{{{}}} {n}\ntcp_open_connections{{direction=\"outbound\"}} 99\n",
            inbound("")
        )
    };
    w.ingest(&a, at(0), &text(3)).unwrap();
    w.ingest(&b, at(0), &text(4)).unwrap();
    assert_eq!(one(&w, "card", "card", 1, MIN).tcp_open_connections, 7);
    w.scrape_failed(&b, at(10), "timeout".into());
    assert_eq!(one(&w, "card", "card", 11, MIN).tcp_open_connections, 3);
}

#[test]
fn step_records_round_trip_and_skip_empty_fields() {
    let mut acc = slot::Acc::default();
    acc.add(slot::Field::Requests, 300);
    acc.add(slot::Field::TcpRead, 1 << 40);
    acc.add_bucket(3, 2);
    acc.add_bucket(4, 3);
    acc.flags |= slot::MTLS;
    let mut buf = Vec::new();
    acc.encode(7, &mut buf);
    slot::Acc::default().encode(8, &mut buf); // empty: no record
    // offset, mask (2), requests (2), read (6), lo and span (1), buckets 3..=4 (2)
    assert_eq!(buf.len(), 1 + 2 + 2 + 6 + 1 + 2);
    let mut out = vec![slot::Totals::default(); 9];
    slot::add_records(&buf, &mut out, |offset| Some(offset as usize));
    let seen: Vec<(u8, slot::Totals)> = out
        .into_iter()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(i, t)| (i as u8, t))
        .collect();
    assert_eq!(seen.len(), 1);
    let (offset, t) = &seen[0];
    assert_eq!(*offset, 7);
    assert_eq!(t.get(slot::Field::Requests), 300);
    assert_eq!(t.get(slot::Field::TcpRead), 1 << 40);
    assert_eq!(t.buckets[3], 2);
    assert_eq!(t.buckets[4], 3);
    assert_eq!(t.buckets[slot::BUCKETS - 1], 0);
    assert_eq!(t.flags, slot::MTLS);
}

#[test]
fn each_histogram_is_differenced_on_its_own() {
    let mut w = window();
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    // Two callers' histograms, every bucket written as the proxy does.
    let text = |fast: u64, slow: u64| {
        let mut t = String::new();
        for (caller, n, at) in [("pg", fast, 0usize), ("order", slow, 10usize)] {
            let labels = inbound("").replace(&id("pg", "pg"), &id(caller, caller));
            for (i, le) in LATENCY_BOUNDS.iter().enumerate() {
                let cum = if i >= at { n } else { 0 };
                t += &format!("response_latency_seconds_bucket{{{labels},le=\"{le:?}\"}} {cum}\n");
            }
            t += &format!("response_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {n}\n");
            t += &format!("response_latency_seconds_count{{{labels}}} {n}\n");
        }
        t
    };
    w.ingest(&card, at(0), &text(0, 0)).unwrap();
    let got = w.ingest(&card, at(10), &text(30, 10)).unwrap();
    // One bucket added per histogram, not the 24 cumulative ones.
    assert_eq!(got.used, 2);
    let s = w
        .series("card", "card", at(11), Duration::from_secs(10))
        .unwrap();
    // 30 in (0, 1 ms], 10 in (50, 100 ms]: p50 = rank 20 → 2/3 ms; p99 = rank 39.6 → 98 ms.
    assert!(close(s.p50_ms[0], 2.0 / 3.0), "{:?}", s.p50_ms);
    assert!(
        close(s.p99_ms[0], 50.0 + 50.0 * 9.6 / 10.0),
        "{:?}",
        s.p99_ms
    );
}

#[test]
fn the_window_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Window>();
}

#[test]
fn history_ages_out_while_every_scrape_fails() {
    let mut w = window(); // 600 s retention
    let card = target("card", "card", 1);
    w.set_targets(std::slice::from_ref(&card));
    w.ingest(&card, at(0), &served(0, &[])).unwrap();
    w.ingest(&card, at(10), &served(5, &[])).unwrap();
    assert_eq!(w.stats().series, 1);
    for i in 2..80u64 {
        w.scrape_failed(&card, at(i * 10), "connection refused".into());
    }
    assert_eq!(w.stats().series, 0);
    assert_eq!(w.stats().interned_strings, 0);
    let o = w.overview(at(791), Duration::from_secs(600));
    assert_eq!(o.workloads[0].requests, 0);
    assert_eq!((o.targets.known, o.targets.up), (1, 0));
}

#[test]
fn a_target_with_a_huge_number_of_series_stays_bounded() {
    let mut w = Window::new(WindowSettings {
        max_series: 100,
        ..WindowSettings::default()
    })
    .unwrap();
    let pg = target("pg", "pg", 1);
    w.set_targets(std::slice::from_ref(&pg));
    let text = |n: u64| {
        (0..50_000)
            .map(|i| {
                format!(
                    "request_total{{direction=\"outbound\",dst_namespace=\"n\",dst_workload=\"w{i}\"}} {n}\n"
                )
            })
            .collect::<String>()
    };
    let first = text(1);
    assert!(first.len() < MAX_TEXT_BYTES);
    w.ingest(&pg, at(0), &first).unwrap();
    let got = w.ingest(&pg, at(10), &text(2)).unwrap();
    assert_eq!(got.samples, 50_000);
    assert_eq!(got.skipped, 50_000 - MAX_SERIES_PER_TARGET);
    assert_eq!(w.stats().series, 100);
    assert!(got.dropped_series > 0);
    let m = w.memory();
    // The kept raw values (20,000 × 16 B) and small scratch buffers, not the text's size.
    assert!(m.targets_bytes < 700_000, "{m:?}");
    assert!(m.total_bytes < 1_000_000, "{m:?}");
}
