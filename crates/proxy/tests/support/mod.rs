//! Test support: a test PKI made by the test, small apps (HTTP/1, HTTP/2, gRPC, WebSocket, a
//! server-speaks-first TCP service), and a builder that starts proxies in-process on port 0 with
//! static configuration files written to a temporary directory.
//!
//! Typical use: `let pki = Pki::new(); let server = ProxyBuilder::new(&pki, "bank").start().await;`
//! then a client proxy whose static config points at `server.inbound_addr`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use onemesh_identity::{CredentialStore, Issuer, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey};
use onemesh_proxy::config as env;
use onemesh_proxy::{Config, Proxy, Sources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every network wait in tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-proxy-test-{}-{tag}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test PKI: one trust anchor and one issuer, written to files.
pub struct Pki {
    /// The root.
    pub anchor: TrustAnchor,
    /// The issuer.
    pub issuer: Issuer,
    /// Where the PEM files are.
    pub dir: PathBuf,
}

impl Pki {
    /// Generates a PKI for `cluster.local`.
    pub fn new() -> Self {
        Self::for_domain("cluster.local")
    }

    /// Generates a PKI for a trust domain.
    pub fn for_domain(domain: &str) -> Self {
        let anchor = TrustAnchor::generate(domain, Duration::from_secs(86400)).unwrap();
        let issuer = anchor.issue_issuer(Duration::from_secs(86400)).unwrap();
        let dir = temp_dir("pki");
        std::fs::write(dir.join("anchors.pem"), anchor.bundle().to_pem()).unwrap();
        std::fs::write(dir.join("issuer.pem"), issuer.chain_pem()).unwrap();
        std::fs::write(dir.join("issuer.key"), issuer.key_pem()).unwrap();
        Self {
            anchor,
            issuer,
            dir,
        }
    }

    /// The trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.anchor.bundle()
    }

    /// Credentials for `id`, valid now for a day.
    pub fn credentials(&self, id: &SpiffeId) -> CredentialStore {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_der(id).unwrap();
        let issued = self
            .issuer
            .sign_csr(&csr, Duration::from_secs(86400), |_| true)
            .unwrap();
        CredentialStore::new(id.clone(), key, issued, self.bundle()).unwrap()
    }
}

/// The id `spiffe://cluster.local/ns/<name>/sa/<name>`.
pub fn id(name: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", name, name).unwrap()
}

/// Builds an in-process proxy.
pub struct ProxyBuilder<'a> {
    pki: &'a Pki,
    name: String,
    static_config: serde_json::Value,
    env: HashMap<&'static str, String>,
}

impl<'a> ProxyBuilder<'a> {
    /// A proxy for workload `name` in namespace `name`.
    pub fn new(pki: &'a Pki, name: &str) -> Self {
        Self {
            pki,
            name: name.to_string(),
            static_config: serde_json::json!({}),
            env: HashMap::new(),
        }
    }

    /// Sets the static config JSON.
    pub fn static_config(mut self, v: serde_json::Value) -> Self {
        self.static_config = v;
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.env.insert(name, value.into());
        self
    }

    /// The full variable map (for spawning the binary too).
    pub fn variables(&self) -> HashMap<&'static str, String> {
        let dir = temp_dir(&self.name);
        let cfg = dir.join("static.json");
        std::fs::write(&cfg, self.static_config.to_string()).unwrap();
        let mut vars: HashMap<&'static str, String> = HashMap::from([
            (env::ENV_OUTBOUND_ADDR, "127.0.0.1:0".to_string()),
            (env::ENV_INBOUND_ADDR, "127.0.0.1:0".to_string()),
            (env::ENV_ADMIN_ADDR, "127.0.0.1:0".to_string()),
            (env::ENV_IDENTITY, id(&self.name).to_string()),
            (
                env::ENV_TRUST_ANCHORS,
                self.pki.dir.join("anchors.pem").display().to_string(),
            ),
            (env::ENV_STATIC_CONFIG, cfg.display().to_string()),
            (
                env::ENV_IDENTITY_ISSUER_CERT,
                self.pki.dir.join("issuer.pem").display().to_string(),
            ),
            (
                env::ENV_IDENTITY_ISSUER_KEY,
                self.pki.dir.join("issuer.key").display().to_string(),
            ),
            (env::ENV_DETECT_TIMEOUT, "300ms".to_string()),
        ]);
        for (k, v) in &self.env {
            vars.insert(k, v.clone());
        }
        vars
    }

    /// Starts the proxy and waits for its certificate.
    pub async fn start(self) -> Proxy {
        let vars = self.variables();
        let config = Config::from_source(&vars).unwrap();
        let sources = Sources::from_static_config(&config).unwrap();
        let proxy = onemesh_proxy::build(config, sources).await.unwrap();
        assert!(
            proxy.wait_ready(TIMEOUT).await,
            "proxy {} got no certificate",
            self.name
        );
        proxy
    }
}

/// One endpoint entry of a static config.
pub fn endpoint(proxy: &Proxy, target_port: u16, name: &str, protocol: &str) -> serde_json::Value {
    serde_json::json!({
        "addr": proxy.inbound_addr.to_string(),
        "target_port": target_port,
        "identity": id(name).to_string(),
        "workload": name,
        "namespace": name,
        "protocol": protocol,
    })
}

/// A static config's `inbound`: the declared `ports` (the only ones the inbound forwards to),
/// and an authorization allowing `callers` on every port.
pub fn allow(callers: &[&str], ports: &[u16]) -> serde_json::Value {
    serde_json::json!({
        "ports": ports,
        "authorizations": [ {
            "name": "allow-test",
            "identities": callers.iter().map(|c| id(c).to_string()).collect::<Vec<_>>(),
        } ],
    })
}

// ---------------------------------------------------------------------------------------------
// Apps

/// The body type of the test apps and clients.
pub type AppBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn text(s: impl Into<Bytes>) -> AppBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// The HTTP app's handler:
/// - `/echo`: streams the request body back (with its trailers, declared as the request's were);
/// - `/download?n=BYTES`: streams `n` bytes in 64 KiB chunks;
/// - `/slow/<ms>`: answers after that many milliseconds;
/// - `/status/<code>`: answers that status;
/// - `/header/<name>`: answers the request's values of that header, comma-separated (or `none`);
/// - anything else: `version=<v> client=<onemesh-client-id or none> path=<path>`.
async fn app(req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/echo" {
        // HTTP/1 sends trailers only when they are declared in a `Trailer` header.
        let declared = req.headers().get("trailer").cloned();
        let mut rsp = Response::new(req.into_body().boxed());
        if let Some(d) = declared {
            rsp.headers_mut().insert("trailer", d);
        }
        return Ok(rsp);
    }
    if path == "/download" {
        let n: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let chunks = (0..n.div_ceil(65536)).map(move |i| {
            let len = (n - i * 65536).min(65536);
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'x'; len])))
        });
        let stream = futures_util::stream::iter(chunks);
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(text(format!("slept {ms}"))));
    }
    if let Some(name) = path.strip_prefix("/header/") {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let answer = if values.is_empty() {
            "none".to_string()
        } else {
            values.join(",")
        };
        return Ok(Response::new(text(answer)));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut rsp = Response::new(text("status"));
        *rsp.status_mut() = code.parse().unwrap_or(http::StatusCode::OK);
        return Ok(rsp);
    }
    let client = req
        .headers()
        .get("onemesh-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    Ok(Response::new(text(format!(
        "version={:?} client={client} path={path}",
        req.version()
    ))))
}

/// Starts the HTTP/1.1 app; returns its port.
pub async fn http1_app() -> u16 {
    counted_http1_app().await.0
}

/// [`http1_app`], with a count of the connections it accepted.
pub async fn counted_http1_app() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(app))
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, accepted)
}

/// Starts the HTTP/2 (prior knowledge) app; returns its port.
pub async fn h2_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(app))
                    .await;
            });
        }
    });
    port
}

/// Starts a WebSocket echo app; returns its port.
pub async fn ws_app() -> u16 {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Starts a server-speaks-first TCP app: sends `HELLO\n`, then echoes; returns its port.
pub async fn banner_app() -> u16 {
    counted_banner_app().await.0
}

/// [`banner_app`], with a count of the connections it accepted.
pub async fn counted_banner_app() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if tcp.write_all(b"HELLO\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// Starts a tonic app serving the standard gRPC health service; returns its port.
pub async fn grpc_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bank", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        // Keep the reporter alive (it feeds the Watch stream).
        let _reporter = reporter;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    port
}

// ---------------------------------------------------------------------------------------------
// Clients

/// An HTTP/1.1 client connection to the proxy's outbound port.
pub async fn http1_client(
    outbound: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<AppBody> {
    let tcp = TcpStream::connect(outbound).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// Sends a GET with `Host: host` and returns (status, headers, body).
pub async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<AppBody>,
    host: &str,
    path: &str,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    get_with(sender, host, path, &[]).await
}

/// [`get`] with more request headers.
pub async fn get_with(
    sender: &mut hyper::client::conn::http1::SendRequest<AppBody>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::get(path).header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(text("")).unwrap();
    tokio::time::timeout(TIMEOUT, sender.ready())
        .await
        .unwrap()
        .unwrap();
    let rsp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = rsp.into_parts();
    let body = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Fetches the admin `/metrics` text.
pub async fn metrics(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

/// Polls the admin `/ready` until it answers 200 (panics after [`TIMEOUT`]).
pub async fn wait_ready(admin: SocketAddr) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Ok(tcp) = TcpStream::connect(admin).await {
            drop(tcp);
            let (status, body) = admin_get(admin, "/ready").await;
            if status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "admin server never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs an admin path: (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let tcp = TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, AppBody>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "admin")
        .body(text(""))
        .unwrap();
    sender.ready().await.unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Sums the samples of `name` whose labels contain every `key="value"` in `labels`.
pub fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match head.split_once('{') {
                Some((m, r)) => (m, r),
                None => (head, ""),
            };
            if metric != name {
                return None;
            }
            if !labels.iter().all(|want| rest.contains(want)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Shared handle to a value (tests keep proxies alive with it).
pub type Shared<T> = Arc<T>;

// ---------------------------------------------------------------------------------------------
// Raw mTLS clients (for refusal tests)

/// A server verifier that accepts any certificate (only to reach the server's own checks).
#[derive(Debug)]
pub struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("tls 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client config that presents no certificate.
pub fn no_cert_client_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Dials `addr` with `config`, writes an HTTP/1 transport header for `target_port` and one GET.
/// Returns everything read back until EOF or error (empty when refused during TLS).
pub async fn raw_mtls_get(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    target_port: u16,
) -> Result<String, std::io::Error> {
    raw_mtls(
        config,
        addr,
        onemesh_proxy::transport_header::Protocol::Http1,
        target_port,
        b"GET /raw HTTP/1.1\r\nHost: web.bank\r\nConnection: close\r\n\r\n",
    )
    .await
}

/// Dials `addr` with `config`, writes a hand-made transport header (`protocol`, `target_port`)
/// and then `bytes`, as a peer holding a valid leaf could. Returns everything read back until
/// EOF or error (empty when refused during TLS or closed without an answer).
pub async fn raw_mtls(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    protocol: onemesh_proxy::transport_header::Protocol,
    target_port: u16,
    bytes: &[u8],
) -> Result<String, std::io::Error> {
    use onemesh_proxy::transport_header::TransportHeader;
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("bank.bank.sa.cluster.local")
        .unwrap()
        .to_owned();
    let mut tls = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))??;
    let header = TransportHeader {
        protocol,
        target_port,
        authority: "web.bank:80".into(),
    };
    tls.write_all(&header.encode().unwrap()).await?;
    tls.write_all(bytes).await?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))?;
    let text = String::from_utf8_lossy(&out).to_string();
    match read {
        Ok(_) => Ok(text),
        Err(e) if text.is_empty() => Err(e),
        Err(_) => Ok(text),
    }
}
