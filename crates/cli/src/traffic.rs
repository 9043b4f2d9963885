//! The traffic-management views: `onemesh routes` (each route as declared — match, split,
//! timeout, retry policy, circuit breaker, fault, rate limits — with the traffic callers sent on
//! it and its breaker's ejected endpoints) and `onemesh endpoints` (every caller's circuit-breaker
//! view of each endpoint). Declarations come from mesh.yaml, traffic from the control plane's
//! metrics window (`/api/v1/routes`), breaker states from every proxy's `/metrics`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use hyper::StatusCode;
use serde::Serialize;

use crate::Output;
use crate::commands::ASK_TIMEOUT;
use crate::layout::Layout;
use crate::table::{ms, pct, render};
use onemesh_window::api::RouteStats as RouteTraffic;

/// One row of `onemesh routes`: a route as declared, with its traffic over the window.
#[derive(Debug, Serialize)]
pub struct RouteRow {
    pub namespace: String,
    pub name: String,
    pub service: String,
    /// `METHOD,METHOD /prefix` (`*` for any).
    pub matches: String,
    /// Declared backends and weights (empty: the service itself).
    pub backends: Vec<(String, u32)>,
    pub timeout: Option<String>,
    /// Attempts in all and what is retried by, e.g. `2 on connect-failure,502,503,504,grpc:14`.
    pub retry: String,
    /// The circuit breaker in force (the route's own, else the service's), e.g.
    /// `route: 5 in a row`; `None`: none.
    pub breaker: Option<String>,
    /// Endpoints its breaker has ejected now, in any caller's proxy.
    pub ejected: usize,
    /// The fault injected, e.g. `abort 503 30%, delay 3s 50%`; `None`: none.
    pub fault: Option<String>,
    /// Rate limits on the workloads behind the route's service (and backends) that cover its
    /// requests, e.g. `card-limit: identity 20/s`.
    pub limits: Vec<String>,
    #[serde(flatten)]
    pub traffic: Option<RouteTraffic>,
}

/// `onemesh routes [service]`: every route of mesh.yaml (or of one service, `name.namespace`
/// or `namespace/name`), what it does, and the traffic callers sent on it.
pub async fn routes(
    dir: &Path,
    service: Option<String>,
    window: &str,
    out: Output,
) -> anyhow::Result<bool> {
    let layout = Layout::load(dir)?;
    let config = onemesh_control::config::load(&layout.config)
        .with_context(|| format!("reading {}", layout.config.display()))?;
    let traffic: Vec<RouteTraffic> = crate::observe::Api::locate(dir)?
        .get(&format!("/api/v1/routes?window={window}"))
        .await?;
    let (breakers, unreachable) = breaker_rows(&layout).await;
    let wanted = |ns: &str, svc: &str| {
        service
            .as_deref()
            .is_none_or(|s| s == format!("{svc}.{ns}") || s == format!("{ns}/{svc}") || s == svc)
    };
    let rows: Vec<RouteRow> = config
        .routes
        .iter()
        .filter(|r| wanted(&r.meta.namespace, &r.service))
        .map(|r| route_row(r, &config, &traffic, &breakers))
        .collect();
    if let Some(s) = &service {
        anyhow::ensure!(
            !rows.is_empty(),
            "no route of {s:?} in {}: routes are declared with `kind: Route` (docs/mesh-yaml.md)",
            layout.config.display()
        );
    }
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let backends = if r.backends.is_empty() {
                r.service.clone()
            } else {
                let total: u32 = r.backends.iter().map(|(_, w)| w).sum();
                r.backends
                    .iter()
                    .map(|(b, w)| format!("{b} {}%", u64::from(*w) * 100 / u64::from(total.max(1))))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let t = r.traffic.as_ref();
            let mut row = vec![
                format!("{}/{}", r.namespace, r.name),
                r.matches.clone(),
                backends,
                t.map_or("-".into(), |t| format!("{:.1}", t.rps)),
                pct(t.and_then(|t| t.success_rate)),
                ms(t.and_then(|t| t.p99_ms)),
                t.map_or("-".into(), |t| t.retries.to_string()),
                match (&r.breaker, r.ejected) {
                    (None, _) => "-".into(),
                    (Some(_), 0) => "closed".into(),
                    (Some(_), n) => format!("{n} ejected"),
                },
            ];
            if out == Output::Wide {
                row.extend([
                    r.timeout.clone().unwrap_or_else(|| "-".into()),
                    r.retry.clone(),
                    r.breaker.clone().unwrap_or_else(|| "-".into()),
                    r.fault.clone().unwrap_or_else(|| "-".into()),
                    if r.limits.is_empty() {
                        "-".into()
                    } else {
                        r.limits.join("; ")
                    },
                ]);
            }
            row
        })
        .collect();
    let mut header = vec![
        "ROUTE", "MATCH", "BACKENDS", "RPS", "SUCCESS", "P99", "RETRIES", "BREAKER",
    ];
    if out == Output::Wide {
        header.extend([
            "TIMEOUT",
            "RETRY",
            "CIRCUIT BREAKER",
            "FAULT",
            "RATE LIMITS",
        ]);
    }
    print!("{}", render(&header, &table));
    for w in &unreachable {
        eprintln!("{w}: proxy metrics unreachable, its breakers' ejections are not counted");
    }
    Ok(true)
}

fn route_row(
    r: &onemesh_control::config::Route,
    config: &onemesh_control::config::MeshConfig,
    traffic: &[RouteTraffic],
    breakers: &[EndpointRow],
) -> RouteRow {
    use onemesh_control::config::RetryOn;
    let ns = &r.meta.namespace;
    let own = r.rules.circuit_breaker.as_ref();
    let service_breaker = config
        .services
        .get(&(ns.clone(), r.service.clone()))
        .and_then(|s| s.circuit_breaker.as_ref());
    let breaker = match (own, service_breaker) {
        (Some(b), _) => Some(format!("route: {}", describe_breaker(b))),
        (None, Some(b)) => Some(format!("service: {}", describe_breaker(b))),
        (None, None) => None,
    };
    // ejected now: distinct endpoints of the route's service (and backends), in its breaker
    let services: Vec<String> = std::iter::once(&r.service)
        .chain(r.rules.backends.iter().map(|b| &b.service))
        .map(|s| format!("{s}.{ns}"))
        .collect();
    let breaker_route = if own.is_some() {
        r.meta.name.as_str()
    } else {
        ""
    };
    let mut ejected: Vec<&str> = breakers
        .iter()
        .filter(|e| e.state == "ejected" && e.route == breaker_route)
        .filter(|e| services.contains(&e.service))
        .map(|e| e.endpoint.as_str())
        .collect();
    ejected.sort_unstable();
    ejected.dedup();
    let methods = if r.matches.methods.is_empty() {
        "*".to_string()
    } else {
        r.matches.methods.join(",")
    };
    let prefix = r.matches.path_prefix.as_deref().unwrap_or("/");
    let retry = r.rules.retry.clone().unwrap_or_default();
    let on: Vec<String> = retry
        .on
        .iter()
        .map(|o| match o {
            RetryOn::ConnectFailure => "connect-failure".to_string(),
            RetryOn::Status(c) => c.to_string(),
            RetryOn::Grpc(c) => format!("grpc:{c}"),
        })
        .collect();
    RouteRow {
        namespace: r.meta.namespace.clone(),
        name: r.meta.name.clone(),
        service: r.service.clone(),
        matches: format!("{methods} {prefix}"),
        backends: r
            .rules
            .backends
            .iter()
            .map(|b| (b.service.clone(), b.weight))
            .collect(),
        timeout: r.rules.timeout.map(|t| format!("{t:?}")),
        retry: format!("{} on {}", retry.attempts, on.join(",")),
        breaker,
        ejected: ejected.len(),
        fault: r.rules.fault.as_ref().map(describe_fault),
        limits: limits_of(r, config),
        traffic: traffic
            .iter()
            .find(|t| t.namespace == r.meta.namespace && t.route == r.meta.name)
            .cloned(),
    }
}

/// A circuit breaker in a few words: `5 in a row, <90% of 20+ over 10s, eject 1s-60s`.
fn describe_breaker(b: &onemesh_control::config::CircuitBreaker) -> String {
    let mut rules = Vec::new();
    if b.consecutive_failures > 0 {
        rules.push(format!("{} in a row", b.consecutive_failures));
    }
    if let Some(s) = &b.success_rate {
        rules.push(format!(
            "<{}% of {}+ over {:?}",
            f64::from(s.min_permille) / 10.0,
            s.min_requests,
            s.window
        ));
    }
    rules.push(format!("eject {:?}-{:?}", b.base_ejection, b.max_ejection));
    rules.join(", ")
}

/// A route's fault in a few words: `abort 503 30%, delay 3s 50%, if x-fault=on`.
fn describe_fault(f: &onemesh_control::config::Fault) -> String {
    use onemesh_control::config::AbortStatus;
    let mut parts = Vec::new();
    if let Some(a) = &f.abort {
        let status = match a.status {
            AbortStatus::Http(s) => s.to_string(),
            AbortStatus::Grpc(c) => format!("grpc:{c}"),
        };
        parts.push(format!("abort {status} {}%", a.percent.as_f64()));
    }
    if let Some(d) = &f.delay {
        parts.push(format!("delay {:?} {}%", d.duration, d.percent.as_f64()));
    }
    if let Some(h) = &f.header {
        parts.push(match &h.value {
            Some(v) => format!("if {}={v}", h.name),
            None => format!("if {}", h.name),
        });
    }
    parts.join(", ")
}

/// The rate limits on the workloads behind the route's service and backends whose match can
/// cover the route's requests (same method, and one path prefix within the other).
fn limits_of(
    r: &onemesh_control::config::Route,
    config: &onemesh_control::config::MeshConfig,
) -> Vec<String> {
    let ns = &r.meta.namespace;
    let mut workloads = Vec::new();
    for svc in std::iter::once(&r.service).chain(r.rules.backends.iter().map(|b| &b.service)) {
        if let Some(s) = config.services.get(&(ns.clone(), svc.clone())) {
            workloads.extend(
                config
                    .selected(ns, &s.selector)
                    .map(|w| w.meta.name.clone()),
            );
        }
    }
    let overlaps = |m: &onemesh_control::config::HttpMatch| {
        let methods = m.methods.is_empty()
            || r.matches.methods.is_empty()
            || m.methods.iter().any(|x| r.matches.methods.contains(x));
        let (a, b) = (
            m.path_prefix.as_deref().unwrap_or("/"),
            r.matches.path_prefix.as_deref().unwrap_or("/"),
        );
        methods && (a.starts_with(b) || b.starts_with(a))
    };
    config
        .rate_limits
        .iter()
        .filter(|l| &l.meta.namespace == ns && workloads.contains(&l.target_workload))
        .filter(|l| overlaps(&l.matches))
        .map(|l| {
            let rate = |r: &onemesh_control::config::Rate| {
                format!("{}/s burst {}", r.requests_per_second, r.burst)
            };
            let mut parts = Vec::new();
            if let Some(t) = &l.limits.total {
                parts.push(format!("total {}", rate(t)));
            }
            if let Some(i) = &l.limits.identity {
                parts.push(format!("per caller {}", rate(i)));
            }
            if !l.limits.overrides.is_empty() {
                parts.push(format!("{} overrides", l.limits.overrides.len()));
            }
            format!("{}: {}", l.meta.name, parts.join(", "))
        })
        .collect()
}

/// One endpoint in one caller's circuit breaker (`onemesh endpoints`).
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    /// The calling workload, `namespace/name`.
    pub caller: String,
    /// `<service>.<namespace>`.
    pub service: String,
    /// The route whose breaker it is; empty: the service's breaker.
    pub route: String,
    /// The endpoint's inbound address.
    pub endpoint: String,
    /// The workload behind it, when `up` runs it.
    pub workload: String,
    /// `healthy`, `failing`, `ejected` or `probation`.
    pub state: String,
    /// Ejections so far.
    pub ejections: u64,
}

/// Every endpoint state of every caller's circuit breakers, read from each proxy's `/metrics`
/// (`breaker_endpoint_state`, `breaker_ejection_total`), and the workloads whose proxy could not
/// be read.
async fn breaker_rows(layout: &Layout) -> (Vec<EndpointRow>, Vec<String>) {
    let mut rows = Vec::new();
    let mut unreachable = Vec::new();
    for w in &layout.workloads {
        let text = match crate::http::get(&w.admin, "/metrics", ASK_TIMEOUT).await {
            Ok((status, body)) if status == StatusCode::OK => body,
            _ => {
                unreachable.push(w.key());
                continue;
            }
        };
        let Ok(samples) = onemesh_window::prom::parse(&text) else {
            unreachable.push(w.key());
            continue;
        };
        let key = |s: &onemesh_window::prom::Sample| {
            (
                s.label("dst_service").unwrap_or_default().into_owned(),
                s.label("route").unwrap_or_default().into_owned(),
                s.label("endpoint").unwrap_or_default().into_owned(),
            )
        };
        let ejections: HashMap<_, _> = samples
            .iter()
            .filter(|s| s.name == "breaker_ejection_total")
            .map(|s| (key(s), s.value as u64))
            .collect();
        for s in samples
            .iter()
            .filter(|s| s.name == "breaker_endpoint_state" && s.value >= 1.0)
        {
            let k = key(s);
            let workload = layout
                .workloads
                .iter()
                .find(|x| x.inbound == k.2)
                .map(|x| x.key())
                .unwrap_or_default();
            rows.push(EndpointRow {
                caller: w.key(),
                ejections: ejections.get(&k).copied().unwrap_or(0),
                service: k.0,
                route: k.1,
                endpoint: k.2,
                workload,
                state: s.label("state").unwrap_or_default().into_owned(),
            });
        }
    }
    (rows, unreachable)
}

/// The circuit breakers' endpoint states in every proxy (`breaker_endpoint_state` and
/// `breaker_ejection_total`, see docs/proxy.md), ejected ones first.
pub async fn endpoints(dir: &Path, service: Option<String>, out: Output) -> anyhow::Result<bool> {
    let layout = Layout::load(dir)?;
    let wanted = |s: &str| {
        service
            .as_deref()
            .is_none_or(|w| s == w || s.split('.').next() == Some(w))
    };
    let (mut rows, unreachable) = breaker_rows(&layout).await;
    rows.retain(|r| wanted(&r.service));
    let rank = |s: &str| match s {
        "ejected" => 0,
        "probation" => 1,
        "failing" => 2,
        _ => 3,
    };
    rows.sort_by(|a, b| {
        (rank(&a.state), &a.service, &a.caller, &a.route, &a.endpoint).cmp(&(
            rank(&b.state),
            &b.service,
            &b.caller,
            &b.route,
            &b.endpoint,
        ))
    });
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    if r.route.is_empty() {
                        "*".into()
                    } else {
                        r.route.clone()
                    },
                    r.endpoint.clone(),
                    r.workload.clone(),
                    r.state.to_uppercase(),
                    r.ejections.to_string(),
                    r.caller.clone(),
                ]
            })
            .collect();
        let header = [
            "SERVICE",
            "ROUTE",
            "ENDPOINT",
            "WORKLOAD",
            "STATE",
            "EJECTIONS",
            "CALLER",
        ];
        print!("{}", render(&header, &table));
        if rows.is_empty() {
            println!(
                "(no circuit breaker has seen a request yet: see docs/mesh-yaml.md, circuitBreaker)"
            );
        }
    }
    for w in &unreachable {
        eprintln!("{w}: proxy metrics unreachable, its breakers are not shown");
    }
    Ok(unreachable.is_empty())
}
