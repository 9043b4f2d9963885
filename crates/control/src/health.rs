//! The control plane's health endpoint for the kubelet's probes (plain HTTP, no secrets):
//! `GET /live` answers 200 while the process serves at all; `GET /ready` answers 200 once the
//! store has its first complete view of the mesh and the servers are up, else 503 with the reason.
//!
//! It listens on its own address (`--listen-health`, e.g. `0.0.0.0:9990` in a pod) so that a
//! probe never needs a client certificate and never competes with proxies for a connection slot.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

/// Whether the control plane is ready, and if not, why.
pub type Readiness = watch::Receiver<Result<(), String>>;

/// Serves `/live` and `/ready` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, ready: Readiness) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer(req.uri().path(), &ready.borrow());
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "health connection ended");
            }
        });
    }
}

/// Binds `addr` and serves there (see [`serve`]).
pub async fn bind(addr: SocketAddr, ready: Readiness) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, ready));
    Ok(local)
}

fn answer(path: &str, ready: &Result<(), String>) -> Response<Full<Bytes>> {
    let (status, body) = match (path, ready) {
        ("/live", _) => (StatusCode::OK, "live\n".to_string()),
        ("/ready", Ok(())) => (StatusCode::OK, "ready\n".to_string()),
        ("/ready", Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /live or /ready\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_says_why_not() {
        assert_eq!(answer("/live", &Err("x".into())).status(), StatusCode::OK);
        assert_eq!(answer("/ready", &Ok(())).status(), StatusCode::OK);
        let not = answer(
            "/ready",
            &Err("the Kubernetes store has not listed pods yet".into()),
        );
        assert_eq!(not.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer("/metrics", &Ok(())).status(), StatusCode::NOT_FOUND);
    }
}
