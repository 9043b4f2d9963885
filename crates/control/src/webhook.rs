//! Kubernetes mode: the mutating admission webhook that injects the proxy ([`crate::inject`]).
//!
//! An HTTPS server (`--listen-webhook`, `0.0.0.0:8443` in a pod) answering `admission.k8s.io/v1`
//! `AdmissionReview` POSTs at `/inject`. The API server calls it for Pod CREATE in the
//! namespaces and pods the `MutatingWebhookConfiguration` `onemesh-proxy-injector` selects; the
//! answer is a JSON Patch (`patchType: JSONPatch`), a plain `allowed` (already injected, or
//! skipped with a warning the user sees), or a denial saying what to change (a bad annotation, an
//! app running as the proxy's uid).
//!
//! TLS: the certificate is for `<service>.<namespace>.svc` (and `.svc.cluster.local`), signed
//! by the control plane's own issuer, so the webhook configuration's `caBundle` is the mesh's
//! trust anchors. It carries no SPIFFE id: no proxy accepts it as a mesh identity. It is
//! re-issued at 70 % of its life and whenever the issuer changes, and swapped without a restart
//! (a [`ResolvesServerCert`] that new handshakes read). TLS 1.3 and 1.2 (the API server's Go
//! client speaks both), ring only.
//!
//! What it accepts: a body of at most [`MAX_BODY`] (413 otherwise), a well-formed review of a
//! Pod (400 with the reason otherwise); it never panics on input. Client certificates are not
//! asked for: what it returns is computed from the pod the caller sends, so a caller other than
//! the API server learns only what `onemesh inject` prints. Connections are bounded
//! ([`MAX_CONNECTIONS`]) and must send their request head within [`HEADER_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::inject::{self, InjectConfig, Outcome};
use crate::pki::CaSnapshot;

/// The largest review accepted (a Pod is a few KiB; the API server's own limit is 3 MiB).
pub const MAX_BODY: usize = 4 << 20;
/// Open connections at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The TLS handshake and the request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The serving certificate's lifetime (re-issued at 70 %).
pub const CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The path the webhook configuration names.
pub const PATH: &str = "/inject";

/// Where and as what the webhook serves.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    /// The control plane's Service name and namespace: the certificate's DNS names.
    pub service: String,
    pub namespace: String,
    pub cluster_domain: String,
    pub cert_lifetime: Duration,
    pub inject: InjectConfig,
}

impl WebhookSettings {
    /// Serves on `addr` with `inject`'s names.
    pub fn new(addr: SocketAddr, inject: InjectConfig) -> Self {
        WebhookSettings {
            addr,
            service: inject.control_service.clone(),
            namespace: inject.control_namespace.clone(),
            cluster_domain: inject.cluster_domain.clone(),
            cert_lifetime: CERT_LIFETIME,
            inject,
        }
    }

    /// The names the serving certificate carries.
    pub fn dns_names(&self) -> Vec<String> {
        let svc = format!("{}.{}.svc", self.service, self.namespace);
        vec![svc.clone(), format!("{svc}.{}", self.cluster_domain)]
    }
}

/// Why the webhook cannot start or make its certificate.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen for admission reviews on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot make the webhook's serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the webhook's serving certificate is unusable: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the issuer has expired: the webhook cannot get a certificate; rotate the issuer")]
    IssuerExpired,
    #[error("the issuer's chain is not PEM certificates: {0}")]
    Chain(#[from] crate::pki::cert::CertError),
}

/// Counters of what the webhook answered (also logged one line per review).
#[derive(Debug, Default)]
pub struct Counts {
    pub injected: AtomicU64,
    pub already_injected: AtomicU64,
    pub skipped: AtomicU64,
    pub denied: AtomicU64,
    pub malformed: AtomicU64,
}

/// A running webhook.
pub struct Webhook {
    /// The address really bound (port 0 in tests).
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    cert: Arc<CertSlot>,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhook {
    /// The leaf currently served.
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        self.cert.current().cert[0].clone()
    }

    /// Stops accepting and renewing.
    pub fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The certificate new handshakes get.
#[derive(Debug)]
struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    fn current(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut g) => *g = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Signs a serving certificate for `names` with the current issuer; returns it with its validity.
fn issue(
    ca: &CaSnapshot,
    names: &[String],
    lifetime: Duration,
) -> Result<(CertifiedKey, SystemTime, SystemTime), WebhookError> {
    use rcgen::{
        CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let now = SystemTime::now();
    let lifetime = ca
        .leaf_lifetime(lifetime, now)
        .ok_or(WebhookError::IssuerExpired)?;
    let chain = crate::pki::cert::pem_certs(&ca.issuer.chain_pem())?;
    let issuer_key = KeyPair::from_pem(&ca.issuer.key_pem())?;
    let Some(issuer_cert) = chain.first() else {
        return Err(WebhookError::IssuerExpired);
    };
    let issuer = rcgen::Issuer::from_ca_cert_der(issuer_cert, issuer_key)?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    // A minute of clock skew (less for very short test lifetimes).
    let not_before = now - (lifetime / 10).min(Duration::from_secs(60));
    let not_after = now + lifetime;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let leaf = params.signed_by(&key, &issuer)?;
    let mut certs = vec![leaf.der().clone()];
    certs.extend(chain);
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&private)?;
    Ok((CertifiedKey::new(certs, signer), not_before, not_after))
}

/// Binds `settings.addr` and serves until [`Webhook::stop`] (or drop); the certificate follows
/// `ca`.
pub async fn start(
    settings: WebhookSettings,
    mut ca: watch::Receiver<Arc<CaSnapshot>>,
) -> Result<Webhook, WebhookError> {
    let names = settings.dns_names();
    let snapshot = ca.borrow_and_update().clone();
    let (first, mut not_before, mut not_after) = issue(&snapshot, &names, settings.cert_lifetime)?;
    let slot = Arc::new(CertSlot(RwLock::new(Arc::new(first))));
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(settings.addr)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: settings.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebhookError::Bind {
        addr: settings.addr,
        source,
    })?;
    let counts = Arc::new(Counts::default());

    // Re-issue at 70 % of the certificate's life, or at once when the issuer changes.
    let renew_slot = slot.clone();
    let lifetime = settings.cert_lifetime;
    let renew_names = names.clone();
    let renewal = tokio::spawn(async move {
        loop {
            let life = not_after.duration_since(not_before).unwrap_or_default();
            let due = not_before + life.mul_f64(0.7);
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(Duration::from_millis(100));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = ca.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let snapshot = ca.borrow_and_update().clone();
            match issue(&snapshot, &renew_names, lifetime) {
                Ok((key, nb, na)) => {
                    renew_slot.set(Arc::new(key));
                    (not_before, not_after) = (nb, na);
                    info!("renewed the injection webhook's serving certificate");
                }
                Err(e) => {
                    warn!(error = %e, "cannot renew the injection webhook's certificate; retrying in 5 s");
                    not_before = SystemTime::now();
                    not_after = not_before + Duration::from_secs(5);
                }
            }
        }
    });

    let inject = Arc::new(settings.inject);
    let serve_counts = counts.clone();
    let server = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let inject = inject.clone();
            let counts = serve_counts.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "webhook TLS handshake timed out");
                        return;
                    }
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let inject = inject.clone();
                    let counts = counts.clone();
                    async move { Ok::<_, Infallible>(handle(req, &inject, &counts).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    debug!(%peer, error = %e, "webhook connection ended");
                }
            });
        }
    });
    info!(%addr, "injection webhook listening");
    Ok(Webhook {
        addr,
        counts,
        cert: slot,
        tasks: vec![renewal, server],
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

async fn handle(
    req: Request<Incoming>,
    inject: &InjectConfig,
    counts: &Counts,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: admission reviews go to {PATH}\n"),
        );
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} takes POST of an admission.k8s.io/v1 AdmissionReview\n"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            counts.malformed.fetch_add(1, Ordering::Relaxed);
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the review is larger than {MAX_BODY} bytes\n"),
            );
        }
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the review: {e}\n"),
            );
        }
    };
    let started = Instant::now();
    match review(&body, inject) {
        Ok((json, summary)) => {
            match &summary.outcome {
                Ok(Outcome::Injected) => counts.injected.fetch_add(1, Ordering::Relaxed),
                Ok(Outcome::AlreadyInjected) => {
                    counts.already_injected.fetch_add(1, Ordering::Relaxed)
                }
                Ok(Outcome::Skipped(_)) => counts.skipped.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.denied.fetch_add(1, Ordering::Relaxed),
            };
            info!(
                namespace = %summary.namespace,
                pod = %summary.name,
                outcome = %summary.describe(),
                micros = started.elapsed().as_micros() as u64,
                "admission review"
            );
            let mut rsp = Response::new(Full::new(Bytes::from(json)));
            rsp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        Err(why) => {
            counts.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(%why, "malformed admission review");
            text(
                StatusCode::BAD_REQUEST,
                format!("not an admission.k8s.io/v1 AdmissionReview of a Pod: {why}\n"),
            )
        }
    }
}

/// The review, as much of it as the webhook reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<ReviewRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// What one review decided, for the log.
struct Summary {
    namespace: String,
    name: String,
    outcome: Result<Outcome, String>,
}

impl Summary {
    fn describe(&self) -> String {
        match &self.outcome {
            Ok(Outcome::Injected) => "injected".to_string(),
            Ok(Outcome::AlreadyInjected) => "already injected".to_string(),
            Ok(Outcome::Skipped(why)) => format!("skipped: {why}"),
            Err(why) => format!("denied: {why}"),
        }
    }
}

/// Answers one review: the response JSON, or why the review is malformed.
fn review(body: &[u8], config: &InjectConfig) -> Result<(String, Summary), String> {
    let review: Review = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(format!(
            "apiVersion {:?} kind {:?}: the webhook speaks admission.k8s.io/v1 AdmissionReview (set admissionReviewVersions: [v1])",
            review.api_version, review.kind
        ));
    }
    let request = review.request.ok_or("the review has no request")?;
    if request.uid.is_empty() {
        return Err("the request has no uid".to_string());
    }
    let namespace = request.namespace.clone().unwrap_or_default();
    let mut response = json!({"uid": request.uid, "allowed": true});
    let (name, outcome) = if request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == "CREATE"
    {
        let object = request.object.ok_or("the request has no object")?;
        let pod: Pod =
            serde_json::from_value(object).map_err(|e| format!("the object is not a Pod: {e}"))?;
        let name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_default();
        let outcome = match inject::patch(&pod, config) {
            Ok((Outcome::Injected, ops)) => {
                let patch = serde_json::to_vec(&ops).map_err(|e| e.to_string())?;
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
                Ok(Outcome::Injected)
            }
            Ok((Outcome::Skipped(why), _)) => {
                response["warnings"] = json!([format!("onemesh: proxy not injected: {why}")]);
                Ok(Outcome::Skipped(why))
            }
            Ok((other, _)) => Ok(other),
            Err(e) => {
                let message = format!("onemesh cannot inject the proxy: {e}");
                response["allowed"] = json!(false);
                response["status"] =
                    json!({"code": 400, "reason": "BadRequest", "message": message});
                Err(e.to_string())
            }
        };
        (name, outcome)
    } else {
        // Anything else the configuration sends: allowed, unchanged.
        (
            String::new(),
            Ok(Outcome::Skipped(format!(
                "not a Pod CREATE ({} {})",
                request.operation, request.kind.kind
            ))),
        )
    };
    let answer = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    Ok((
        answer.to_string(),
        Summary {
            namespace,
            name,
            outcome,
        },
    ))
}

#[cfg(test)]
mod tests;
