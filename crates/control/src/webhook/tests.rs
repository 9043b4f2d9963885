//! The webhook over real TLS on loopback: a valid review gets the injector's JSON patch, garbage
//! and forged reviews get 400, an oversize body 413, a bad pod a denial; the certificate
//! verifies with the anchors for the Service's names only and follows an issuer change.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use onemesh_identity::TrustAnchor;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::*;

struct Ca {
    anchor: TrustAnchor,
    tx: watch::Sender<Arc<CaSnapshot>>,
}

fn snapshot(anchor: &TrustAnchor) -> Arc<CaSnapshot> {
    let issuer = anchor.issue_issuer(Duration::from_secs(3600)).unwrap();
    Arc::new(CaSnapshot::new(Arc::new(issuer), anchor.bundle()).unwrap())
}

async fn webhook() -> (Webhook, Ca) {
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(7200)).unwrap();
    let (tx, rx) = watch::channel(snapshot(&anchor));
    let settings = WebhookSettings::new("127.0.0.1:0".parse().unwrap(), InjectConfig::default());
    let hook = start(settings, rx).await.unwrap();
    (hook, Ca { anchor, tx })
}

fn client_config(anchor: &TrustAnchor) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor.cert_der().clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection as the API server makes it (verifying the name against the anchors).
async fn connect(
    addr: SocketAddr,
    anchor: &TrustAnchor,
    name: &str,
) -> std::io::Result<http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(client_config(anchor))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await?;
    let (send, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

async fn post(
    send: &mut http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "onemesh-control.onemesh.svc")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body)
}

const NAME: &str = "onemesh-control.onemesh.svc";

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-5d9c-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "5d9c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c", "uid": "rs", "controller": true}],
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "web", "image": "web", "readinessProbe": {"tcpSocket": {"port": 8080}}}],
        },
    })
}

fn review_of(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_valid_review_gets_the_injectors_patch() {
    let (hook, ca) = webhook().await;
    let mut send = connect(hook.addr, &ca.anchor, NAME).await.unwrap();
    let (status, body) = post(&mut send, "POST", "/inject", review_of(pod())).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let admitted: Pod = serde_json::from_value(pod()).unwrap();
    let (_, expected) = inject::patch(&admitted, &InjectConfig::default()).unwrap();
    assert_eq!(ops, expected);
    let paths: Vec<&str> = ops.iter().map(|op| op["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations",
            "/spec/initContainers",
            "/spec/containers",
            "/spec/volumes"
        ]
    );
    assert_eq!(hook.counts.injected.load(Ordering::Relaxed), 1);

    // The same pod, injected already (reinvocation): allowed, no patch.
    let mut injected = pod();
    injected["metadata"]["annotations"] = json!({"onemesh.dev/injected": "0.1.0"});
    let (_, body) = post(&mut send, "POST", "/inject", review_of(injected)).await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
}

#[tokio::test]
async fn garbage_and_forged_reviews_get_400() {
    let (hook, ca) = webhook().await;
    let mut send = connect(hook.addr, &ca.anchor, NAME).await.unwrap();
    let mut wrong_version: Value = serde_json::from_slice(&review_of(pod())).unwrap();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_uid: Value = serde_json::from_slice(&review_of(pod())).unwrap();
    no_uid["request"]["uid"] = json!("");
    let mut no_request: Value = serde_json::from_slice(&review_of(pod())).unwrap();
    no_request.as_object_mut().unwrap().remove("request");
    let bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        Vec::new(),
        vec![0xff; 64],
        b"[]".to_vec(),
        serde_json::to_vec(&wrong_version).unwrap(),
        serde_json::to_vec(&no_uid).unwrap(),
        serde_json::to_vec(&no_request).unwrap(),
        // A pod whose spec is not a PodSpec.
        review_of(json!({"metadata": {"name": "x"}, "spec": {"containers": 5}})),
    ];
    for body in bodies {
        let (status, text) = post(&mut send, "POST", "/inject", body.clone()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{:?}: {}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&text)
        );
        assert!(String::from_utf8_lossy(&text).contains("AdmissionReview"));
    }
    assert_eq!(hook.counts.malformed.load(Ordering::Relaxed), 8);
    let (status, _) = post(&mut send, "GET", "/inject", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = post(&mut send, "POST", "/mutate", review_of(pod())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_oversize_body_gets_413() {
    let (hook, ca) = webhook().await;
    let mut send = connect(hook.addr, &ca.anchor, NAME).await.unwrap();
    let big = vec![b' '; MAX_BODY + 1];
    let (status, _) = post(&mut send, "POST", "/inject", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_pod_that_cannot_be_injected_is_denied_with_the_reason() {
    let (hook, ca) = webhook().await;
    let mut send = connect(hook.addr, &ca.anchor, NAME).await.unwrap();
    let mut bad = pod();
    bad["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 2102});
    let (status, body) = post(&mut send, "POST", "/inject", review_of(bad)).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("uid 2102") && message.contains("bypass"),
        "{message}"
    );
    assert_eq!(hook.counts.denied.load(Ordering::Relaxed), 1);

    // A hand-written proxy: allowed, unchanged, with a warning the user sees.
    let mut hand = pod();
    hand["spec"]["initContainers"] = json!([{"name": "onemesh-proxy", "image": "mine"}]);
    let (_, body) = post(&mut send, "POST", "/inject", review_of(hand)).await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("by hand")
    );
}

#[tokio::test]
async fn the_certificate_is_for_the_services_names_under_the_anchors() {
    let (hook, ca) = webhook().await;
    for name in [NAME, "onemesh-control.onemesh.svc.cluster.local"] {
        assert!(connect(hook.addr, &ca.anchor, name).await.is_ok(), "{name}");
    }
    // Another name, or another mesh's anchors: the handshake fails.
    assert!(
        connect(hook.addr, &ca.anchor, "evil.onemesh.svc")
            .await
            .is_err()
    );
    let other = TrustAnchor::generate("cluster.local", Duration::from_secs(7200)).unwrap();
    assert!(connect(hook.addr, &other, NAME).await.is_err());
}

#[tokio::test]
async fn a_new_issuer_gives_a_new_certificate_without_a_restart() {
    let (hook, ca) = webhook().await;
    let before = hook.current_certificate();
    // An anchor rotation's end state: only the new anchor is trusted.
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(7200)).unwrap();
    ca.tx.send_replace(snapshot(&anchor));
    let deadline = Instant::now() + Duration::from_secs(5);
    while hook.current_certificate() == before {
        assert!(Instant::now() < deadline, "no new certificate within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut send = connect(hook.addr, &anchor, NAME).await.unwrap();
    let (status, _) = post(&mut send, "POST", "/inject", review_of(pod())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(connect(hook.addr, &ca.anchor, NAME).await.is_err());
}

#[tokio::test]
async fn the_certificate_is_renewed_before_it_expires() {
    let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(7200)).unwrap();
    let (_tx, rx) = watch::channel(snapshot(&anchor));
    let mut settings =
        WebhookSettings::new("127.0.0.1:0".parse().unwrap(), InjectConfig::default());
    settings.cert_lifetime = Duration::from_secs(2);
    let hook = start(settings, rx).await.unwrap();
    let first = hook.current_certificate();
    // 70 % of 2 s (from a not-before 0.2 s back): renewed within about 1.2 s.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_ne!(hook.current_certificate(), first);
}

#[tokio::test]
async fn admission_latency() {
    let (hook, ca) = webhook().await;
    let mut send = connect(hook.addr, &ca.anchor, NAME).await.unwrap();
    let body = review_of(pod());
    let mut took = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let (status, _) = post(&mut send, "POST", "/inject", body.clone()).await;
        took.push(start.elapsed());
        assert_eq!(status, StatusCode::OK);
    }
    took.sort();
    let (p50, p99) = (took[100], took[198]);
    eprintln!("admission review round trip over kept-alive TLS: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(200), "p99 {p99:?}");
}
