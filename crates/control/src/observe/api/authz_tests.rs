//! `/api/v1/authz/explain` and `/api/v1/authz/diff` end to end on the API: a fake proxy on
//! loopback behind real mTLS answers explain (and one proving another workload's id is not
//! believed); diff reads window samples fed like scrapes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use onemesh_identity::{CredentialStore, SpiffeId, WorkloadKey};
use onemesh_window::{Target, Window, WindowSettings};
use tokio::sync::watch;

use super::super::{Hosts, Shared, Token};
use super::handle;
use crate::authz::tests::MESH;
use crate::pki::{CaSettings, CaState, own_credentials};
use crate::state::{Instance, MeshState};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn tmp() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-authz-api-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Fixture {
    shared: Shared,
    ca: CaState,
}

fn fixture(instances: &[Instance]) -> Fixture {
    let dir = tmp();
    let ca = CaState::open(&dir, "cluster.local", CaSettings::default()).unwrap();
    let credentials = own_credentials(&ca.current(), Duration::from_secs(3600)).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = crate::config::parse(Path::new("mesh.yaml"), MESH).unwrap();
    let (_tx, state) = watch::channel(Arc::new(MeshState::local(&config, instances)));
    let retention = Duration::from_secs(3600);
    let addr: SocketAddr = "127.0.0.1:8084".parse().unwrap();
    let shared = Shared {
        window: Arc::new(Mutex::new(
            Window::new(WindowSettings {
                resolution: Duration::from_secs(10),
                retention,
                max_series: 1000,
            })
            .unwrap(),
        )),
        state,
        credentials,
        token: Token::load(&token_file).unwrap(),
        hosts: Hosts::new(addr, &[]).unwrap(),
        addr,
        trust_domain: "cluster.local".into(),
        retention,
    };
    Fixture { shared, ca }
}

/// Credentials for `id` from the fixture's CA (what a proxy of that workload holds).
fn proxy_credentials(ca: &CaState, id: &str) -> CredentialStore {
    let id: SpiffeId = id.parse().unwrap();
    let snapshot = ca.current();
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_der(&id).unwrap();
    let issued = snapshot
        .issuer
        .sign_csr(&csr, Duration::from_secs(3600), |asked| asked == &id)
        .unwrap();
    CredentialStore::new(id, key, issued, snapshot.bundle.clone()).unwrap()
}

/// A fake control-only admin listener: mTLS with `creds`, answers `answer` to
/// `POST /authz/explain` from the control plane only, and records each body it received.
async fn fake_proxy(
    creds: CredentialStore,
    answer: serde_json::Value,
) -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tokio_rustls::TlsAcceptor::from(creds.server_config(&[b"http/1.1"]));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let peer = onemesh_identity::peer_id(tls.get_ref().1);
            let (answer, log) = (answer.clone(), log.clone());
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (answer, log, peer) = (answer.clone(), log.clone(), peer.clone());
                async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let control = peer == crate::pki::control_id("cluster.local").ok();
                    let (status, out) = if !control {
                        (
                            StatusCode::FORBIDDEN,
                            serde_json::json!({"error": "control plane only"}),
                        )
                    } else if path != "/authz/explain" {
                        (StatusCode::NOT_FOUND, serde_json::json!({"error": path}))
                    } else {
                        log.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        (StatusCode::OK, answer)
                    };
                    let mut r = hyper::Response::new(Full::new(Bytes::from(out.to_string())));
                    *r.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn card_instance(control_admin: SocketAddr) -> Instance {
    Instance {
        namespace: "card".into(),
        workload: "card".into(),
        inbound: "127.0.0.1:14143".parse().unwrap(),
        admin: None,
        control_admin: Some(control_admin),
        ports: BTreeMap::from([(8080, 41234), (9000, 41235)]),
    }
}

fn deny_answer() -> serde_json::Value {
    serde_json::json!({
        "decision": "deny", "policy": "card-allow-pg,card-allow-bank", "default": false,
        "port": {"declared": true, "refusal": null}, "path": {"ok": true, "error": null},
        "default_mode": "enforce",
        "policies": [
            {"name": "card-allow-pg", "mode": "enforce", "covers_port": true, "admits_caller": false, "matches_request": true, "route": 0},
            {"name": "card-allow-bank", "mode": "enforce", "covers_port": true, "admits_caller": false, "matches_request": true, "route": null},
        ],
    })
}

fn authed(req: hyper::http::request::Builder) -> hyper::http::request::Builder {
    req.header(header::HOST, "127.0.0.1:8084")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

async fn get(s: &Shared, uri: &str) -> (StatusCode, serde_json::Value) {
    let req = authed(Request::get(uri))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = handle(s, req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn post(s: &Shared, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let req = authed(Request::post(uri))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = handle(s, req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn explain_asks_the_proxy_at_the_real_port_and_answers_with_the_declared_one_and_a_fix() {
    let f0 = fixture(&[]);
    let creds = proxy_credentials(&f0.ca, "spiffe://cluster.local/ns/card/sa/card");
    let (addr, seen) = fake_proxy(creds, deny_answer()).await;
    // the same CA directory is reopened with the instance in place
    let mut f = fixture(&[card_instance(addr)]);
    f.shared.credentials = f0.shared.credentials.clone();
    let (status, body) = get(
        &f.shared,
        "/api/v1/authz/explain?from=appcard%2Fappcard&to=card/card&port=8080&method=POST&path=/v1/pay",
    )
    .await;
    // appcard is no workload of this mesh: 404 names it
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("appcard/appcard"));
    let (status, body) = get(
        &f.shared,
        "/api/v1/authz/explain?from=spiffe://cluster.local/ns/appcard/sa/appcard&to=card/card:8080&method=POST&path=/v1/pay",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let asked = seen.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![
            serde_json::json!({"caller": "spiffe://cluster.local/ns/appcard/sa/appcard", "port": 41234, "method": "POST", "path": "/v1/pay"})
        ]
    );
    assert_eq!(
        body["to"],
        serde_json::json!({"namespace": "card", "workload": "card", "port": 8080})
    );
    assert_eq!(body["from"]["namespace"], "appcard");
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["policy"], "card-allow-pg,card-allow-bank");
    assert_eq!(body["rule"], serde_json::Value::Null);
    assert_eq!(body["policies"].as_array().unwrap().len(), 2);
    assert!(
        body["instance"]
            .as_str()
            .unwrap()
            .contains(&addr.to_string())
    );
    let yaml = body["suggestion"]["yaml"].as_str().unwrap();
    assert!(yaml.contains("name: allow-appcard-appcard-card"), "{yaml}");
    assert!(yaml.contains("pathPrefix: \"/v1/pay\""), "{yaml}");
    // a workload caller is sent as its identity
    let (status, _) = get(&f.shared, "/api/v1/authz/explain?from=pg/pg&to=card/card").await;
    assert_eq!(status, StatusCode::OK);
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["caller"], "spiffe://cluster.local/ns/pg/sa/pg");
    assert_eq!(last["port"], 41234, "the first declared port by default");
    assert_eq!(last["method"], serde_json::Value::Null);
}

#[tokio::test]
async fn an_allowed_call_names_its_rule_and_has_no_suggestion() {
    let f0 = fixture(&[]);
    let creds = proxy_credentials(&f0.ca, "spiffe://cluster.local/ns/card/sa/card");
    let mut answer = deny_answer();
    answer["decision"] = "allow".into();
    answer["policy"] = "card-allow-pg".into();
    let (addr, _) = fake_proxy(creds, answer).await;
    let mut f = fixture(&[card_instance(addr)]);
    f.shared.credentials = f0.shared.credentials.clone();
    let (status, body) = get(
        &f.shared,
        "/api/v1/authz/explain?from=pg/pg&to=card/card&method=POST&path=/v1/pay",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rule"],
        serde_json::json!({"policy": "card-allow-pg", "route": 0})
    );
    assert_eq!(body["suggestion"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_listener_proving_another_workloads_identity_is_not_believed() {
    let f0 = fixture(&[]);
    // a compromised bank workload squats on the address card's instance registered
    let forged = proxy_credentials(&f0.ca, "spiffe://cluster.local/ns/bank/sa/bank");
    let mut answer = deny_answer();
    answer["decision"] = "allow".into();
    let (addr, seen) = fake_proxy(forged, answer).await;
    let mut f = fixture(&[card_instance(addr)]);
    f.shared.credentials = f0.shared.credentials.clone();
    let (status, body) = get(&f.shared, "/api/v1/authz/explain?from=pg/pg&to=card/card").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("no instance of card/card answered"),
        "{error}"
    );
    assert!(error.contains("mTLS handshake"), "{error}");
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent to it");
}

#[tokio::test]
async fn explain_errors_say_what_to_do() {
    let f = fixture(&[]);
    for (uri, status, want) in [
        (
            "/api/v1/authz/explain?to=card/card",
            StatusCode::BAD_REQUEST,
            "name the caller",
        ),
        (
            "/api/v1/authz/explain?from=pg/pg",
            StatusCode::BAD_REQUEST,
            "name the target",
        ),
        (
            "/api/v1/authz/explain?from=pg/pg&to=card/card&method=POST",
            StatusCode::BAD_REQUEST,
            "both method and path",
        ),
        (
            "/api/v1/authz/explain?from=pg/pg&to=card/card&method=post&path=/",
            StatusCode::BAD_REQUEST,
            "not an http method",
        ),
        (
            "/api/v1/authz/explain?from=spiffe://x&to=card/card",
            StatusCode::BAD_REQUEST,
            "from=",
        ),
        (
            "/api/v1/authz/explain?from=pg/pg&to=card/card&port=0",
            StatusCode::BAD_REQUEST,
            "1-65535",
        ),
        (
            "/api/v1/authz/explain?from=pg/pg&to=card/vault",
            StatusCode::NOT_FOUND,
            "no workload card/vault",
        ),
        (
            "/api/v1/authz/explain?from=pg/pg&to=card/card",
            StatusCode::BAD_GATEWAY,
            "no running instance",
        ),
    ] {
        let (got, body) = get(&f.shared, uri).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(want),
            "{uri}: {body}"
        );
    }
    // and nothing without the token
    let req = Request::get("/api/v1/authz/explain?from=pg/pg&to=card/card")
        .header(header::HOST, "127.0.0.1:8084")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        handle(&f.shared, req).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let req = Request::post("/api/v1/authz/diff")
        .header(header::HOST, "127.0.0.1:8084")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        handle(&f.shared, req).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// Feeds the window two scrapes of pg's outbound counters: `requests` calls to card between them.
fn feed_pg_to_card(s: &Shared, requests: u64) {
    let pg = Target {
        namespace: "pg".into(),
        workload: "pg".into(),
        identity: "spiffe://cluster.local/ns/pg/sa/pg".into(),
        instance: "127.0.0.1:14191".into(),
    };
    let text = |n: u64| {
        format!(
            "# TYPE request_total counter\nrequest_total{{direction=\"outbound\",namespace=\"pg\",workload=\"pg\",\
             dst_namespace=\"card\",dst_workload=\"card\",server_id=\"spiffe://cluster.local/ns/card/sa/card\",\
             tls=\"true\",route=\"default\"}} {n}\n"
        )
    };
    let mut w = s.window();
    w.set_targets(std::slice::from_ref(&pg));
    let now = SystemTime::now();
    w.ingest(&pg, now - Duration::from_secs(20), &text(1000))
        .unwrap();
    w.ingest(&pg, now - Duration::from_secs(10), &text(1000 + requests))
        .unwrap();
}

#[tokio::test]
async fn diff_reports_a_removed_allowance_with_its_live_rate() {
    let f = fixture(&[]);
    feed_pg_to_card(&f.shared, 744);
    // pg loses POST /v1: card-allow-pg now only admits appcard
    let body = "apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: card-allow-pg, namespace: card}
spec:
  target: {workload: card, port: 8080}
  routes: [{methods: [POST], pathPrefix: /v1}, {pathPrefix: /health/}]
  from: {identities: [spiffe://cluster.local/ns/appcard/sa/appcard]}
";
    let (status, answer) = post(&f.shared, "/api/v1/authz/diff?window=1m", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let changes = answer["changes"].as_array().unwrap();
    let pg: Vec<_> = changes
        .iter()
        .filter(|c| c["from"]["workload"] == "pg" && c["to"]["workload"] == "card")
        .collect();
    assert_eq!(pg.len(), 2, "{answer}");
    let v1 = pg
        .iter()
        .find(|c| c["route"]["path_prefix"] == "/v1")
        .unwrap();
    assert_eq!(v1["to"]["port"], 8080);
    assert_eq!(
        v1["before"],
        serde_json::json!({"decision": "allow", "policy": "card-allow-pg"})
    );
    assert_eq!(v1["after"]["decision"], "deny");
    assert_eq!(v1["after"]["policy"], "card-allow-pg,card-allow-bank");
    assert_eq!(v1["requests"], 744);
    assert!(v1["rps"].as_f64().unwrap() > 0.0, "{v1}");
    assert_eq!(v1["from"]["id"], "spiffe://cluster.local/ns/pg/sa/pg");
    assert_eq!(answer["live_denials"], 2);
}

#[tokio::test]
async fn diff_of_an_added_allowance_has_no_live_denial() {
    let f = fixture(&[]);
    feed_pg_to_card(&f.shared, 100);
    let body = "apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: card-allow-appcard, namespace: card}
spec:
  target: {workload: card, port: 8080}
  from: {identities: [spiffe://cluster.local/ns/pg/sa/pg]}
";
    let (status, answer) = post(&f.shared, "/api/v1/authz/diff?file=new.yaml", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["live_denials"], 0, "{answer}");
    let changes = answer["changes"].as_array().unwrap();
    assert!(!changes.is_empty());
    for c in changes {
        assert_eq!(c["after"]["decision"], "allow", "{c}");
        assert_eq!(c["from"]["workload"], "pg", "{c}");
    }
}

#[tokio::test]
async fn an_invalid_diff_body_is_a_400_naming_file_and_line() {
    let f = fixture(&[]);
    for (body, want) in [
        (
            "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: vault}\nspec:\n  from: {namespaces: [pg]}\n",
            "new.yaml:3: metadata.namespace: unknown namespace \"vault\"",
        ),
        (
            "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: card}\nspec:\n  mode: strict\n  from: {namespaces: [pg]}\n",
            "new.yaml:5: spec.mode: \"strict\" is not a policy mode",
        ),
        ("kind: [unclosed\n", "new.yaml:"),
        ("# nothing\n", "holds no document"),
    ] {
        let (status, answer) = post(&f.shared, "/api/v1/authz/diff?file=new.yaml", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(want), "{body}: {error}");
    }
}
