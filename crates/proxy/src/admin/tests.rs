//! The app probes the admin server performs: HTTP healthy, failing, hanging, with the declared
//! headers and without the app's body; TCP open and closed; an unknown probe path.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::server::conn::http1;
use tokio::net::TcpListener;

use super::*;

/// An app on loopback: `/healthz` is 200 only with `X-Probe: 1`, `/fail` is 500 with a body that
/// must not reach the kubelet, `/redirect` is 302.
async fn app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let status = match req.uri().path() {
                        "/healthz" if req.headers().get("x-probe").is_some_and(|v| v == "1") => {
                            StatusCode::OK
                        }
                        "/healthz" => StatusCode::IM_A_TEAPOT,
                        "/redirect" => StatusCode::FOUND,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    let mut rsp = Response::new(body::full("app secret body"));
                    *rsp.status_mut() = status;
                    Ok::<_, Infallible>(rsp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn probes(json: serde_json::Value) -> AppProbes {
    AppProbes::parse(&json.to_string()).unwrap()
}

async fn ask(probes: &AppProbes, key: &str) -> (StatusCode, String) {
    let rsp = app_probe(probes, key).await;
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http_probes_pass_the_apps_verdict_but_not_its_body() {
    let port = app().await;
    let p = probes(serde_json::json!({
        "app/liveness": {"http": {"port": port, "path": "/healthz", "headers": [["X-Probe", "1"]]}, "timeoutSeconds": 1, "original": {}},
        "app/readiness": {"http": {"port": port, "path": "/healthz"}, "timeoutSeconds": 1},
        "app/startup": {"http": {"port": port, "path": "/fail"}, "timeoutSeconds": 1},
        "web/startup": {"http": {"port": port, "path": "/redirect"}, "timeoutSeconds": 1},
    }));
    let (status, body) = ask(&p, "app/liveness").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Without the declared header the app says 418: the headers are what made it pass.
    let (status, body) = ask(&p, "app/readiness").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("418"), "{body}");
    let (status, body) = ask(&p, "app/startup").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.contains("secret"), "the app's body leaked: {body}");
    assert_eq!(
        ask(&p, "web/startup").await.0,
        StatusCode::OK,
        "3xx is healthy"
    );
}

#[tokio::test]
async fn unknown_probe_paths_are_404() {
    let port = app().await;
    let p = probes(serde_json::json!({
        "app/liveness": {"http": {"port": port, "path": "/healthz"}, "timeoutSeconds": 1},
    }));
    for key in [
        "app/readiness",
        "other/liveness",
        "",
        "app/liveness/../x",
        "../../metrics",
    ] {
        assert_eq!(ask(&p, key).await.0, StatusCode::NOT_FOUND, "{key:?}");
    }
}

#[tokio::test]
async fn tcp_probes_connect() {
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed = closed_port().await;
    let p = probes(serde_json::json!({
        "db/readiness": {"tcp": {"port": open_port}, "timeoutSeconds": 1},
        "db/liveness": {"tcp": {"port": closed}, "timeoutSeconds": 1},
    }));
    assert_eq!(ask(&p, "db/readiness").await.0, StatusCode::OK);
    let (status, body) = ask(&p, "db/liveness").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("cannot connect"), "{body}");
    drop(open);
}

#[tokio::test]
async fn a_hanging_app_fails_within_the_probes_timeout() {
    // Accepts, never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let p = probes(serde_json::json!({
        "app/liveness": {"http": {"port": port, "path": "/"}, "timeoutSeconds": 1},
    }));
    let start = Instant::now();
    let (status, body) = ask(&p, "app/liveness").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no answer"), "{body}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    held.abort();
}
