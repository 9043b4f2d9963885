//! The tap relay: an operator's `GET /api/v1/tap?workload=<ns>/<name>&…` becomes one `GET /tap`
//! to the control-only admin listener of every instance of that workload, and their NDJSON lines
//! are merged into the operator's answer.
//!
//! Each proxy is reached over mTLS: the control plane presents its own leaf (the only id a
//! proxy's control-only listener accepts) and checks that the proxy proves the workload's id. The
//! filters are parsed and re-encoded here (never forwarded as the operator wrote them), and the
//! proxies mask what they send before it leaves them: no body, no card number, no secret header
//! ever reaches the control plane. The relay ends each proxy's stream when the operator goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use onemesh_identity::{CredentialStore, SpiffeId};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::state::MeshState;

/// The longest one event line may be (the proxy caps its fields well below).
const MAX_LINE: usize = 64 << 10;
/// How long to wait for a proxy's tap to start answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines buffered towards the operator; more are dropped and counted.
const BUFFER: usize = 1024;
/// The most events per second an operator may ask of each proxy.
pub const MAX_RPS: u32 = 1000;

/// What to tap, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapQuery {
    pub namespace: String,
    pub workload: String,
    /// `inbound` or `outbound`; `None`: both.
    pub direction: Option<&'static str>,
    pub to: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    pub max_rps: Option<u32>,
}

/// A tap that cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    #[error("name the workload to tap: workload=<namespace>/<name>")]
    NoWorkload,
    #[error("{0}")]
    BadQuery(String),
    #[error("no workload {0} in the mesh: see /api/v1/overview for the workloads")]
    UnknownWorkload(String),
    #[error("workload {0} has no running instance with a control-only admin listener to tap")]
    NothingToTap(String),
}

impl TapQuery {
    /// Parses the operator's query string.
    pub fn parse(query: &str) -> Result<TapQuery, TapError> {
        let mut q = TapQuery::default();
        let bad = |what: String| Err(TapError::BadQuery(what));
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "workload" => {
                    let Some((ns, name)) = value.split_once('/') else {
                        return bad(format!(
                            "workload={value:?}: write <namespace>/<name>, e.g. card/card"
                        ));
                    };
                    if !is_name(ns) || !is_name(name) {
                        return bad(format!(
                            "workload={value:?}: namespace and name are DNS labels (a-z, 0-9, -)"
                        ));
                    }
                    (q.namespace, q.workload) = (ns.to_string(), name.to_string());
                }
                "direction" => {
                    q.direction = Some(match &*value {
                        "inbound" => "inbound",
                        "outbound" => "outbound",
                        "" => continue,
                        _ => return bad(format!("direction={value:?}: use inbound or outbound")),
                    })
                }
                "to" if !value.is_empty() => {
                    if !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-./:".contains(&b))
                    {
                        return bad(format!(
                            "to={value:?}: give <namespace>/<workload> or a service name"
                        ));
                    }
                    q.to = Some(value.into_owned());
                }
                "path" if !value.is_empty() => {
                    if !value.starts_with('/') || value.len() > 1024 {
                        return bad(format!(
                            "path={value:?}: give a path prefix starting with / (at most 1024 bytes)"
                        ));
                    }
                    q.path = Some(value.into_owned());
                }
                "method" if !value.is_empty() => {
                    if value.len() > 32 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
                        return bad(format!("method={value:?}: give an HTTP method, e.g. POST"));
                    }
                    q.method = Some(value.into_owned());
                }
                "max_rps" if !value.is_empty() => match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_RPS).contains(&n) => q.max_rps = Some(n),
                    _ => {
                        return bad(format!(
                            "max_rps={value:?}: give events per second per proxy, 1 to {MAX_RPS}"
                        ));
                    }
                },
                "to" | "path" | "method" | "max_rps" => {}
                other => {
                    return bad(format!(
                        "unknown parameter {other:?}: use workload, direction, to, path, method, max_rps"
                    ));
                }
            }
        }
        if q.workload.is_empty() {
            return Err(TapError::NoWorkload);
        }
        Ok(q)
    }

    /// The proxy's `/tap` request target, re-encoded from the checked values.
    pub fn proxy_target(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        if let Some(d) = self.direction {
            out.append_pair("direction", d);
        }
        for (k, v) in [
            ("to", &self.to),
            ("path", &self.path),
            ("method", &self.method),
        ] {
            if let Some(v) = v {
                out.append_pair(k, v);
            }
        }
        if let Some(n) = self.max_rps {
            out.append_pair("max_rps", &n.to_string());
        }
        let query = out.finish();
        if query.is_empty() {
            "/tap".to_string()
        } else {
            format!("/tap?{query}")
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Starts tapping every instance of the workload; lines (each ending in `\n`) arrive on the
/// receiver until it is dropped.
pub fn start(
    state: &MeshState,
    trust_domain: &str,
    credentials: &CredentialStore,
    query: &TapQuery,
) -> Result<mpsc::Receiver<Bytes>, TapError> {
    let key = (query.namespace.clone(), query.workload.clone());
    let shown = format!("{}/{}", query.namespace, query.workload);
    let workload = state
        .mesh
        .workloads
        .get(&key)
        .ok_or_else(|| TapError::UnknownWorkload(shown.clone()))?;
    let id: SpiffeId = format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        workload.namespace, workload.service_account
    )
    .parse()
    .map_err(|_| TapError::UnknownWorkload(shown.clone()))?;
    let addrs: Vec<SocketAddr> = workload
        .instances
        .iter()
        .filter_map(|i| i.control_admin)
        .collect();
    if addrs.is_empty() {
        return Err(TapError::NothingToTap(shown));
    }
    let tls = credentials.client_config(&id, &[b"http/1.1"]);
    let (lines, rx) = mpsc::channel(BUFFER);
    let target = query.proxy_target();
    for addr in addrs {
        tokio::spawn(relay_one(addr, tls.clone(), target.clone(), lines.clone()));
    }
    Ok(rx)
}

/// An HTTP/1.1 connection to a proxy's control-only admin listener at `addr`, over mTLS with the
/// control plane's client certificate; `tls` checks that the proxy proves the expected workload
/// id (tap and `authz explain` both ask proxies this way).
pub(crate) async fn connect_control_admin<B>(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    // The proxy's leaf carries its SPIFFE id, which the verifier checks; the name is unused.
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("mTLS handshake (is it the workload's proxy?): {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One proxy's stream into `lines`; its failure becomes an `{"error": …}` line.
async fn relay_one(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    target: String,
    lines: mpsc::Sender<Bytes>,
) {
    if let Err(error) = stream_one(addr, tls, &target, &lines).await {
        let line = serde_json::json!({ "error": format!("tap of {addr}: {error}") });
        let _ = lines.send(Bytes::from(format!("{line}\n"))).await;
    }
}

async fn stream_one(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    target: &str,
    lines: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let connect = async {
        let mut sender = connect_control_admin::<Empty<Bytes>>(addr, tls).await?;
        let req = hyper::Request::get(target)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))
    };
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))??;
    let status = resp.status();
    let mut body = resp.into_body();
    if status != hyper::StatusCode::OK {
        let text = error_text(&mut body).await;
        return Err(format!("the proxy answered {status}: {}", text.trim()));
    }
    let mut pending = BytesMut::new();
    let mut dropped = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("stream ended: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = pending.split_to(end + 1).freeze();
            match lines.try_send(line) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
            if dropped > 0 && lines.capacity() > BUFFER / 2 {
                let note = Bytes::from(format!("{{\"dropped\": {dropped}}}\n"));
                if lines.try_send(note).is_ok() {
                    dropped = 0;
                }
            }
        }
        if pending.len() > MAX_LINE {
            return Err(format!("a line longer than {MAX_LINE} bytes"));
        }
    }
    if lines.is_closed() {
        return Ok(());
    }
    Err("the proxy ended the stream".to_string())
}

/// The first 1 KiB of an error answer, as text.
async fn error_text(body: &mut hyper::body::Incoming) -> String {
    let mut out = Vec::new();
    while out.len() < 1024 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    out.truncate(1024);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_checked_and_re_encoded() {
        let q = TapQuery::parse("workload=card/card&path=%2Fv1%2Fa%26b&method=POST&max_rps=50")
            .unwrap();
        assert_eq!(
            (q.namespace.as_str(), q.workload.as_str()),
            ("card", "card")
        );
        assert_eq!(
            q.proxy_target(),
            "/tap?path=%2Fv1%2Fa%26b&method=POST&max_rps=50"
        );
    }

    #[test]
    fn forged_queries_are_refused_with_what_to_write() {
        for bad in [
            "",
            "workload=card",
            "workload=../etc/passwd",
            "workload=card/card&direction=sideways",
            "workload=card/card&method=post%0d%0aX-Injected:1",
            "workload=card/card&path=no-slash",
            "workload=card/card&max_rps=100000",
            "workload=card/card&to=a%20b",
            "workload=card/card&body=1",
        ] {
            let e = TapQuery::parse(bad).unwrap_err();
            assert!(!e.to_string().is_empty(), "{bad}");
        }
    }
}
