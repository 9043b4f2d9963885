//! The request stack in memory: requests that fail before an endpoint is chosen are answered and
//! counted in `response_total` like any other (no network: discovery is a test double).

use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::discover::{BoxFuture, DiscoverError};

/// Discovery that cannot answer.
struct Unavailable;

impl Discover for Unavailable {
    fn resolve(&self, _: &Target) -> BoxFuture<Result<Resolution, DiscoverError>> {
        Box::pin(async {
            Err(DiscoverError::Unavailable(
                "the control plane is down".into(),
            ))
        })
    }
}

fn outbound(discover: Arc<dyn Discover>) -> (Outbound, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (_, credentials) = tokio::sync::watch::channel(None);
    let second = Duration::from_secs(1);
    let settings = OutboundSettings {
        tap: crate::tap::Hub::off(),
        detect_timeout: second,
        detect_first_byte: second,
        limits: HttpLimits {
            header_read_timeout: second,
            max_header_bytes: 65536,
        },
        connect_timeout: second,
        opaque_ports: BTreeSet::new(),
        namespace: "pg".into(),
        workload: "pg".into(),
        http1_transport: Http1Transport::Http1,
        stream_idle_timeout: second,
    };
    let mesh = MeshClient::new(credentials, second, metrics.clone());
    let outbound = Outbound::new(
        settings,
        discover,
        mesh,
        PlainClients::new(second),
        metrics.clone(),
    )
    .expect("the OS has a random number generator");
    (outbound, metrics)
}

fn get(host: Option<&str>) -> Request<Body> {
    let mut req = Request::new(body::empty());
    if let Some(host) = host {
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::from_str(host).expect("a valid host"),
        );
    }
    req
}

/// The one `response_total` sample of the outbound, and `request_total`'s sum.
fn counted(metrics: &Metrics) -> (String, f64) {
    let text = metrics.encode();
    let responses: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("response_total{"))
        .collect();
    assert_eq!(responses.len(), 1, "{text}");
    let requests = text
        .lines()
        .filter(|l| l.starts_with("request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (responses[0].to_string(), requests)
}

#[tokio::test]
async fn discovery_unavailable_is_answered_and_counted() {
    let (outbound, metrics) = outbound(Arc::new(Unavailable));
    let rsp = outbound.proxy(get(Some("bank.bank")), None).await;
    assert_eq!(rsp.status(), 503);
    assert_eq!(rsp.headers()["onemesh-error"], "discovery_unavailable");
    let (response, requests) = counted(&metrics);
    assert_eq!(requests, 1.0);
    assert!(response.contains("direction=\"outbound\""), "{response}");
    assert!(response.contains("dst_workload=\"\""), "{response}");
    assert!(response.contains("tls=\"no_identity\""), "{response}");
    assert!(response.contains("route=\"default\""), "{response}");
    assert!(
        response.ends_with("classification=\"failure\",status_code=\"503\"} 1"),
        "{response}"
    );
    assert!(
        metrics.encode().contains(
            "proxy_error_total{direction=\"outbound\",reason=\"discovery_unavailable\"} 1"
        )
    );
}

#[tokio::test]
async fn a_request_naming_no_host_is_answered_and_counted() {
    let (outbound, metrics) = outbound(Arc::new(Unavailable));
    let rsp = outbound.proxy(get(None), None).await;
    assert_eq!(rsp.status(), 400);
    assert_eq!(rsp.headers()["onemesh-error"], "malformed");
    let (response, requests) = counted(&metrics);
    assert_eq!(requests, 1.0);
    // the proxy answered: a failure, as any proxy error
    assert!(
        response.ends_with("classification=\"failure\",status_code=\"400\"} 1"),
        "{response}"
    );
}
