//! The operators' view of the mesh, served by the control plane itself: no Prometheus, no
//! Grafana, and the same in local and Kubernetes mode.
//!
//! - [`scrape`]: every resolution step (default 10 s) the control plane GETs `/metrics` from every
//!   proxy its store knows and feeds the answers to a [`onemesh_window::Window`]: a bounded,
//!   in-memory history (default 1 h) of golden metrics per workload, edge, route and
//!   authorization policy.
//! - [`api`]: the dashboard/API listener (default `127.0.0.1:8084`; `0.0.0.0:8084` in a pod,
//!   reached by `kubectl port-forward` or `onemesh dashboard`): the JSON API that `onemesh stat`,
//!   `edges`, `routes`, `top` and `tap` read, and the dashboard's page.
//! - [`tap`]: live request metadata relayed from the proxies' control-only admin listeners.
//!
//! Only operators get an answer: every API call needs the token ([`token`]), and the listener
//! answers only requests addressed to its own names ([`hosts`], a guard against DNS rebinding).
//! Workloads never hold the token.
//!
//! Several replicas (Kubernetes): each scrapes every proxy and keeps its own window, so any
//! replica answers, and answers the same up to a scrape's timing; a restarted replica starts with
//! an empty window (the history is not persisted: it is a view, not a record).

pub mod api;
pub mod assets;
pub mod hosts;
pub mod scrape;
pub mod tap;
pub mod token;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use onemesh_identity::CredentialStore;
use onemesh_window::{Window, WindowSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::MeshState;

pub use hosts::{BadHost, Hosts};
pub use token::{TOKEN_FILE, Token, TokenError};

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the observer needs.
#[derive(Clone, Debug)]
pub struct ObserveSettings {
    /// The dashboard/API listener.
    pub listen: SocketAddr,
    /// Extra names (`NAME` or `NAME:PORT`) the listener answers to.
    pub hosts: Vec<String>,
    pub token: Token,
    /// Resolution (= scrape interval), retention and series cap of the window.
    pub window: WindowSettings,
    pub trust_domain: String,
}

/// What every request handler shares.
pub struct Shared {
    window: Arc<Mutex<Window>>,
    state: watch::Receiver<Arc<MeshState>>,
    credentials: CredentialStore,
    token: Token,
    hosts: Hosts,
    addr: SocketAddr,
    trust_domain: String,
    retention: Duration,
}

impl Shared {
    fn window(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running observer. Dropping it stops it.
pub struct Observe {
    /// Where the dashboard/API listens.
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Observe {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why the observer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "cannot listen for the dashboard on {addr}: {source}; pick a free address (--listen-dashboard)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Host(#[from] BadHost),
    #[error(transparent)]
    Window(#[from] onemesh_window::SettingsError),
}

/// Starts scraping and serving.
pub async fn start(
    settings: ObserveSettings,
    state: watch::Receiver<Arc<MeshState>>,
    credentials: CredentialStore,
) -> Result<Observe, ObserveError> {
    let bind_error = |source| ObserveError::Bind {
        addr: settings.listen,
        source,
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let hosts = Hosts::new(addr, &settings.hosts)?;
    let window = Arc::new(Mutex::new(Window::new(settings.window.clone())?));
    let shared = Arc::new(Shared {
        window: window.clone(),
        state: state.clone(),
        credentials,
        token: settings.token,
        hosts,
        addr,
        trust_domain: settings.trust_domain.clone(),
        retention: settings.window.retention,
    });
    let tasks = vec![
        tokio::spawn(scrape::run(
            window,
            state,
            settings.trust_domain,
            settings.window.resolution,
        )),
        tokio::spawn(serve(listener, shared)),
    ];
    Ok(Observe { addr, tasks })
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(api::handle(&shared, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "dashboard connection ended");
            }
        });
    }
}
