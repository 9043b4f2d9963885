//! Starting the control plane: the CA, its own identity, three TLS listeners, the services.
//!
//! [`start`] binds the three addresses (port 0 is fine: [`Control`] reports the real ones), makes
//! or loads the CA in the state directory, issues the control plane's own certificate and serves
//! Identity (with the operator's Admin service) on the first listener, Destination on the second
//! and Policy on the third; it resumes a rotation the state directory shows under way and rotates
//! the issuer by itself when due (see [`crate::pki`]). TLS is
//! terminated by our own accept loop (tokio-rustls, a handshake timeout, one task per handshake so
//! a slow client stalls nobody) feeding tonic's `serve_with_incoming_shutdown`; that keeps the
//! rustls configuration ours (TLS 1.3 only, ring, hot-swapped certificate, a client certificate
//! verified when presented). The accept loop enforces the connection caps of [`crate::limits`]
//! (a connection beyond one is closed before any TLS work) and records the verified client id in
//! [`PeerInfo`], which every handler checks (`services::authenticated`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use onemesh_api::admin::admin_server::AdminServer;
use onemesh_api::audit::audit_server::AuditServer;
use onemesh_api::destination::destination_server::DestinationServer;
use onemesh_api::identity::identity_server::IdentityServer;
use onemesh_api::policy::policy_server::PolicyServer;
use onemesh_identity::{
    CredentialStore, DEFAULT_LEAF_LIFETIME, HandshakeFailure, SpiffeId, TrustBundle, peer_id,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router};

use crate::audit::{AuditError, AuditLog, AuditService, AuditSettings};
use crate::limits::{self, ConnectionLimits, Gate, GateStats};
use crate::persist::PersistError;
use crate::pki::rotation::Rotator;
use crate::pki::{self, CaSettings, CaSnapshot, CaState, PkiError};
use crate::services::admin::AdminService;
use crate::services::destination::DestinationService;
use crate::services::identity::{IdentityService, IdentityState};
use crate::services::policy::PolicyService;
use crate::services::trust::{Registry, TrustService};
use crate::store::Store;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Control::shutdown`] waits for the servers to stop before aborting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the control plane needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub identity_addr: SocketAddr,
    pub destination_addr: SocketAddr,
    pub policy_addr: SocketAddr,
    /// Where the CA lives (and the local store's state files).
    pub state_dir: PathBuf,
    pub trust_domain: String,
    /// Lifetime of the leaves it signs (proxies' and its own).
    pub leaf_lifetime: Duration,
    /// The connection caps of each listener.
    pub connection_limits: ConnectionLimits,
    /// Anchor and issuer lifetimes, rotation timing.
    pub ca: CaSettings,
    /// With several replicas (Kubernetes mode): whether this one leads; the issuer rotates by
    /// itself only while it does. `None`: a single control plane, always leading.
    pub leader: Option<watch::Receiver<bool>>,
    /// The decision log (`Audit.Append`): its directory, file size, sealing and retention.
    pub audit: AuditSettings,
}

impl Settings {
    /// Default ports (8080, 8086, 8090 on 127.0.0.1), `cluster.local`, 24 h leaves.
    pub fn new(state_dir: PathBuf) -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Settings {
            identity_addr: local(8080),
            destination_addr: local(8086),
            policy_addr: local(8090),
            trust_domain: onemesh_identity::DEFAULT_TRUST_DOMAIN.to_string(),
            leaf_lifetime: DEFAULT_LEAF_LIFETIME,
            connection_limits: ConnectionLimits::default(),
            ca: CaSettings::default(),
            leader: None,
            audit: AuditSettings::new(state_dir.join("audit")),
            state_dir,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({what}): {source}; pick a free address")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    State(#[from] PersistError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// A running control plane. Dropping it aborts its tasks; [`Control::shutdown`] stops it gently.
pub struct Control {
    pub identity_addr: SocketAddr,
    pub destination_addr: SocketAddr,
    pub policy_addr: SocketAddr,
    /// The id its certificate carries (clients check it).
    pub id: SpiffeId,
    /// The trust anchors its certificate chained to at start (see [`Control::ca`] for now).
    pub bundle: TrustBundle,
    /// Its own credentials (renewed in place): the client certificate of its calls to proxies'
    /// control-only admin listeners (tap).
    pub credentials: CredentialStore,
    /// The decision log's writer (sealed and stopped by [`Control::shutdown`]).
    audit: AuditLog,
    ca: Arc<CaState>,
    rotator: Arc<Rotator>,
    shutdown: watch::Sender<bool>,
    /// The connection caps of each listener, and what each holds.
    gates: [(&'static str, Arc<Gate>); 3],
    /// The servers: they stop on the shutdown signal.
    tasks: Vec<JoinHandle<()>>,
    /// The renewal of its own certificate: it sleeps until the next renewal and never looks at
    /// the shutdown signal, so it is aborted rather than waited for.
    renewal: JoinHandle<()>,
}

impl Control {
    /// What each listener (`identity`, `destination`, `policy`) holds now and has refused.
    pub fn connection_stats(&self) -> Vec<(&'static str, GateStats)> {
        self.gates
            .iter()
            .map(|(what, gate)| (*what, gate.stats()))
            .collect()
    }

    /// Ends every watch stream, stops accepting, and waits (up to [`SHUTDOWN_GRACE`]) for the
    /// servers to finish.
    pub async fn shutdown(mut self) {
        self.renewal.abort();
        self.rotator.stop();
        self.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        // After the servers: no append can come in after the last checkpoint.
        self.audit.stop().await;
    }
}

impl Control {
    /// The CA now: bundle, issuer, fingerprint.
    pub fn ca(&self) -> Arc<CaSnapshot> {
        self.ca.current()
    }

    /// Every CA change (an issuer or anchor rotation), starting with the current one.
    pub fn subscribe_ca(&self) -> watch::Receiver<Arc<CaSnapshot>> {
        self.ca.subscribe()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.renewal.abort();
        self.rotator.stop();
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, ServerError> {
    l.local_addr()
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Starts the control plane over `store`.
pub async fn start(settings: &Settings, store: Arc<dyn Store>) -> Result<Control, ServerError> {
    let identity_listener = bind("identity", settings.identity_addr).await?;
    let destination_listener = bind("destination", settings.destination_addr).await?;
    let policy_listener = bind("policy", settings.policy_addr).await?;
    let identity_addr = local_addr("identity", &identity_listener, settings.identity_addr)?;
    let destination_addr = local_addr(
        "destination",
        &destination_listener,
        settings.destination_addr,
    )?;
    let policy_addr = local_addr("policy", &policy_listener, settings.policy_addr)?;

    let (state_dir, trust_domain) = (settings.state_dir.clone(), settings.trust_domain.clone());
    let ca_settings = settings.ca.clone();
    let (ca, operator, identity_state) = tokio::task::spawn_blocking(move || {
        let ca = CaState::open(&state_dir, &trust_domain, ca_settings)?;
        let operator = pki::OperatorCredentials::create(&state_dir, &trust_domain)?;
        let identity_state = IdentityState::load(&state_dir)?;
        Ok::<_, ServerError>((Arc::new(ca), Arc::new(operator), identity_state))
    })
    .await
    .map_err(|e| PkiError::Io {
        action: "load",
        path: settings.state_dir.clone(),
        source: io::Error::other(e),
    })??;
    let snapshot = ca.current();
    let credentials = pki::own_credentials(&snapshot, settings.leaf_lifetime)?;
    operator.write(&snapshot, settings.leaf_lifetime)?;
    let tls = pki::server_config(&credentials);
    let id = credentials.id().clone();
    let bundle = snapshot.bundle.clone();

    let (shutdown, shutdown_rx) = watch::channel(false);
    let registry = Registry::new();
    let rotator = Rotator::new(ca.clone(), registry.clone());
    let trust = TrustService::new(
        registry.clone(),
        ca.subscribe(),
        settings.ca.renew_within,
        shutdown_rx.clone(),
    );
    let revocations = identity_state.revocations.clone();
    let identity = IdentityServer::new(IdentityService::new(
        ca.subscribe(),
        trust,
        store.clone(),
        settings.leaf_lifetime,
        identity_state,
    ));
    let admin = AdminServer::new(AdminService::new(
        pki::operator_id(&settings.trust_domain)?,
        rotator.clone(),
        registry,
        ca.subscribe(),
        revocations,
    ));
    let destination = DestinationServer::new(DestinationService::new(
        store.clone(),
        &settings.trust_domain,
        shutdown_rx.clone(),
    ));
    let audit = {
        let (audit_settings, credentials) = (settings.audit.clone(), credentials.clone());
        tokio::task::spawn_blocking(move || AuditLog::start(&audit_settings, credentials))
            .await
            .map_err(|e| PkiError::Io {
                action: "open the decision log in",
                path: settings.audit.dir.clone(),
                source: io::Error::other(e),
            })??
    };
    let audit_service = AuditServer::new(AuditService::new(store.clone(), audit.clone()));
    let policy = PolicyServer::new(PolicyService::new(store, shutdown_rx.clone()));

    let builder = limits::grpc_server;
    let gate = |what| (what, Gate::new(what, settings.connection_limits));
    let gates = [gate("identity"), gate("destination"), gate("policy")];
    let renewal = pki::spawn_renewal(
        ca.subscribe(),
        credentials.clone(),
        operator,
        settings.leaf_lifetime,
    );
    if let Some(progress) = rotator.resume() {
        // Nobody watches a resumed rotation's progress but the logs.
        drop(progress);
    }
    rotator.spawn_auto(settings.leader.clone());
    let tasks = vec![
        tokio::spawn(serve(
            "identity",
            identity_listener,
            gates[0].1.clone(),
            limits::UNAUTHENTICATED_LIFETIME_IDENTITY,
            tls.clone(),
            builder().add_service(identity).add_service(admin),
            shutdown_rx.clone(),
        )),
        tokio::spawn(serve(
            "destination",
            destination_listener,
            gates[1].1.clone(),
            limits::UNAUTHENTICATED_LIFETIME,
            tls.clone(),
            builder().add_service(destination),
            shutdown_rx.clone(),
        )),
        tokio::spawn(serve(
            "policy",
            policy_listener,
            gates[2].1.clone(),
            limits::UNAUTHENTICATED_LIFETIME,
            tls,
            builder().add_service(policy).add_service(audit_service),
            shutdown_rx,
        )),
    ];
    Ok(Control {
        identity_addr,
        destination_addr,
        policy_addr,
        id,
        bundle,
        credentials,
        audit,
        ca,
        rotator,
        shutdown,
        gates,
        tasks,
        renewal,
    })
}

/// Accepts TCP connections within the `gate`'s caps (closing the others at once), finishes each
/// TLS handshake in its own task, and hands the established streams to tonic until shutdown. A
/// connection whose client presented no certificate is closed `unauthenticated_lifetime` after
/// its handshake.
async fn serve(
    what: &'static str,
    listener: TcpListener,
    gate: Arc<Gate>,
    unauthenticated_lifetime: Duration,
    tls: Arc<ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, rx) = mpsc::channel::<Result<TlsConn, io::Error>>(64);
    let acceptor = TlsAcceptor::from(tls);
    let mut stop_accepting = shutdown.clone();
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(server = what, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop_accepting.changed() => return,
            };
            // Beyond a cap: closed before any TLS work (counted and logged by the gate).
            let Ok(mut place) = gate.admit(peer.ip()) else {
                drop(tcp);
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        place.handshake_done();
                        let id = peer_id(stream.get_ref().1);
                        let deadline = id
                            .is_none()
                            .then(|| Box::pin(tokio::time::sleep(unauthenticated_lifetime)));
                        let peer = PeerInfo { addr: peer, id };
                        let _ = tx
                            .send(Ok(TlsConn {
                                stream,
                                peer,
                                deadline,
                                _place: place,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(
                        server = what,
                        %peer,
                        reason = HandshakeFailure::from_io(&e).as_str(),
                        "tls handshake failed: {e}"
                    ),
                    Err(_) => tracing::debug!(server = what, %peer, "tls handshake timed out"),
                }
            });
        }
    });
    let signal = async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = router
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), signal)
        .await
    {
        tracing::error!(server = what, "grpc server failed: {e}");
    }
    accept.abort();
}

/// Who is on the other end of a connection, available to handlers as a request extension.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The client's SPIFFE id when it presented a mesh certificate (verified during the
    /// handshake: chain to the bundle, our trust domain, valid now); `None` when it presented none.
    pub id: Option<SpiffeId>,
}

/// An accepted TLS connection, as tonic wants it. It holds its place in the listener's
/// connection count until tonic drops it.
struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerInfo,
    /// Without a client certificate: when the connection reads as closed (end of file), which
    /// ends it (see [`limits::UNAUTHENTICATED_LIFETIME`]).
    deadline: Option<Pin<Box<Sleep>>>,
    _place: limits::Connection,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper always has a read pending on an HTTP/2 connection, so this also arms the timer.
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
