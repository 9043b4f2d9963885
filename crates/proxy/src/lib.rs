//! onemesh-proxy: the data plane of onemesh, a small proxy beside every workload.
//!
//! It has three listeners:
//!
//! - **outbound** (default `127.0.0.1:4140`): the application's plain traffic (HTTP in proxy
//!   form or with a Host header, or any TCP redirected by iptables) goes out over mTLS to the
//!   chosen endpoint's inbound proxy ([`outbound`]);
//! - **inbound** (default `0.0.0.0:4143`): mTLS from other proxies is terminated, the caller's
//!   SPIFFE id checked against policy, and the traffic forwarded plain to the local application,
//!   only to its declared ports and never to the proxy's own ([`inbound`]; request paths an app
//!   could read differently from policy are refused first, [`path`]);
//! - **admin** (default `127.0.0.1:4191`): `/metrics`, `/ready`, `/live`, and the app's own
//!   probes at `/app-probe/…` when injected in Kubernetes ([`admin`]);
//! - **control-only admin** (default `0.0.0.0:4190`, control-plane mode): mTLS, served only to
//!   the control plane's identity: live request metadata, masked, at `/tap` ([`control_admin`],
//!   [`tap`]; the same events can be JSON access logs on stdout), and why a request would be
//!   allowed or denied at `/authz/explain` ([`explain`]).
//!
//! Between proxies, HTTP/2 and gRPC ride one multiplexed HTTP/2 connection per endpoint; HTTP/1
//! rides pooled HTTP/1.1 connections ([`pool`]), or with `ONEMESH_PROXY_HTTP1_TRANSPORT=h2` the
//! HTTP/2 connection too, with the application's original version in `onemesh-orig-proto`;
//! upgrades (WebSocket) and opaque TCP get their own connection; every connection begins with a
//! [`transport_header`]. Protocols are detected ([`detect`]) with one bounded read under a
//! deadline. A quiet proxy shrinks its pools and returns freed heap ([`memory`]).
//!
//! What configures the data path is behind the seams in [`discover`] (discovery, inbound policy,
//! certificate issuance); [`static_config`] implements them from a JSON file and a local issuer,
//! [`control`] from the control plane's gRPC API (selected by `ONEMESH_PROXY_CONTROL_*_ADDR`),
//! without touching the data path.
//!
//! Failures become responses in exactly one place ([`error::ProxyError::outcome`]), and every
//! request's outcome is recorded in one place with one rule for both directions ([`telemetry`]);
//! metrics are in [`metrics`]; configuration ([`config`]) is `ONEMESH_PROXY_*` environment
//! variables.
//!
//! [`build`] binds everything and returns the addresses really bound (tests use port 0);
//! [`Proxy::shutdown`] drains.
//!
//! Per-route timeouts (504) and retries (bodiless idempotent or `retryable` requests, once, within
//! a 20 % budget) are applied on the outbound side.
//!
//! Deliberate limits: only the first request head of an HTTP/1 connection gets the proxy's own
//! 400/408/431 answer (later ones on a keep-alive connection get hyper's, and are counted);
//! `protocol: opaque` endpoints are honoured for redirected connections and tcp forwards (an
//! HTTP-detected connection to such a service is still proxied as HTTP); gRPC classification
//! reads `grpc-status` from response headers only, not trailers.

pub mod admin;
pub mod audit;
pub mod body;
pub mod client;
pub mod config;
pub mod control;
pub mod control_admin;
pub mod credentials;
pub mod detect;
pub mod discover;
pub mod drain;
pub mod error;
pub mod explain;
pub mod head;
pub mod http_util;
pub mod inbound;
pub mod io;
pub mod memory;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod path;
pub mod policy;
pub mod pool;
pub mod server;
pub mod state_dir;
pub mod static_config;
pub mod tap;
pub mod telemetry;
mod timer;
pub mod transport_header;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use onemesh_identity::{CredentialStore, Issuer, TrustBundle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use config::{Config, ConfigError, Env, Source};
pub use discover::{Certifier, Discover, InboundPolicy, Target};

use crate::static_config::{
    StaticCertifier, StaticConfig, StaticDiscover, StaticPolicy, TcpForward,
};

/// What configures a proxy: the seams' implementations and the trust bundle.
pub struct Sources {
    /// Service discovery.
    pub discover: Arc<dyn Discover>,
    /// Inbound policy.
    pub policy: Arc<dyn InboundPolicy>,
    /// Certificate issuance.
    pub certifier: Arc<dyn Certifier>,
    /// The trust anchors.
    pub trust_bundle: TrustBundle,
    /// Extra outbound TCP listeners.
    pub tcp_forwards: Vec<TcpForward>,
    /// Control-plane mode's state (readiness, `control_plane_connected`); `None` in static mode.
    pub control: Option<control::ControlPlane>,
    /// The live trust bundle and issuer (control-plane mode).
    pub trust: Option<control::TrustWatch>,
    /// Where the proxy keeps its key, leaf and last configuration across restarts.
    pub state_dir: Option<state_dir::StateDir>,
    /// Where the decision log's batches go (control-plane mode: `Audit.Append`); `None` in static
    /// mode, where an enabled log writes them to stdout.
    pub audit: Option<Arc<dyn audit::AuditSink>>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using it?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Static mode lacks a variable.
    #[error("static mode needs {0}: set it to a file path")]
    Missing(&'static str),
    /// A static file is bad.
    #[error(transparent)]
    Static(#[from] static_config::StaticError),
    /// The identity task could not start.
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    /// The operating system's cryptographic random number generator failed.
    #[error(
        "the system's random number generator failed: check that getrandom(2) or /dev/urandom is available to the proxy"
    )]
    Random,
}

impl Sources {
    /// Static mode: reads the trust anchors, static config and local issuer named in `config`.
    pub fn from_static_config(config: &Config) -> Result<Sources, BuildError> {
        let anchors = config
            .trust_anchors
            .as_deref()
            .ok_or(BuildError::Missing(config::ENV_TRUST_ANCHORS))?;
        let trust_bundle =
            TrustBundle::from_pem(&static_config::read_file("trust anchors", anchors)?).map_err(
                |source| static_config::StaticError::Identity {
                    what: "the trust anchors",
                    source: Box::new(source),
                },
            )?;
        let loaded = match config.static_config.as_deref() {
            Some(path) => {
                StaticConfig::from_json(&static_config::read_file("static config", path)?)?
            }
            None => StaticConfig::default(),
        }
        .load()?;
        let cert = config
            .issuer_cert
            .as_deref()
            .ok_or(BuildError::Missing(config::ENV_IDENTITY_ISSUER_CERT))?;
        let key = config
            .issuer_key
            .as_deref()
            .ok_or(BuildError::Missing(config::ENV_IDENTITY_ISSUER_KEY))?;
        let issuer = Issuer::from_pem(
            &static_config::read_file("issuer certificate", cert)?,
            &static_config::read_file("issuer key", key)?,
        )
        .map_err(|source| static_config::StaticError::Identity {
            what: "the local issuer",
            source: Box::new(source),
        })?;
        Ok(Sources {
            discover: Arc::new(StaticDiscover::new(&loaded, config.namespace())),
            policy: Arc::new(StaticPolicy::new(loaded.authorizations.clone())),
            certifier: Arc::new(StaticCertifier::new(
                issuer,
                config.identity.clone(),
                config.leaf_lifetime,
            )),
            trust_bundle,
            tcp_forwards: loaded.tcp_forwards,
            control: None,
            trust: None,
            state_dir: None,
            audit: None,
        })
    }
}

/// A running proxy.
pub struct Proxy {
    /// The outbound listener's address.
    pub outbound_addr: SocketAddr,
    /// The inbound listener's address.
    pub inbound_addr: SocketAddr,
    /// The admin server's address.
    pub admin_addr: SocketAddr,
    /// The control-only admin listener's address, when it is on.
    pub control_admin_addr: Option<SocketAddr>,
    /// Where requests are published for tap and access logs.
    pub tap: Arc<tap::Hub>,
    /// Each tcp forward's target and bound address.
    pub tcp_forward_addrs: Vec<(Target, SocketAddr)>,
    /// The metrics (tests read them directly too).
    pub metrics: Arc<metrics::Metrics>,
    /// This proxy's credentials (`None` until the first certificate).
    pub credentials: watch::Receiver<Option<CredentialStore>>,
    drain: drain::Controller,
    admin_stop: drain::Controller,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("outbound_addr", &self.outbound_addr)
            .field("inbound_addr", &self.inbound_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BuildError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BuildError::Bind { addr, source })
}

/// Binds every listener, starts the identity task and serves. Returns once bound.
pub async fn build(config: Config, mut sources: Sources) -> Result<Proxy, BuildError> {
    let metrics = Arc::new(metrics::Metrics::new());
    let drain = drain::Controller::new();
    let admin_stop = drain::Controller::new();
    let namespace: Arc<str> = config.namespace().into();
    let workload: Arc<str> = config.workload.as_str().into();
    let limits = server::HttpLimits {
        header_read_timeout: config.header_read_timeout,
        max_header_bytes: config.max_header_bytes,
    };

    let outbound_listener = bind(config.outbound_addr).await?;
    let inbound_listener = bind(config.inbound_addr).await?;
    let admin_listener = bind(config.admin_addr).await?;
    let control_admin_listener = match &config.control_admin {
        Some((addr, id)) => Some((bind(*addr).await?, id.clone())),
        None => None,
    };
    let mut forward_listeners = Vec::new();
    for f in &sources.tcp_forwards {
        forward_listeners.push((f.target.clone(), bind(f.listen).await?));
    }
    let local = |l: &TcpListener, fallback: SocketAddr| l.local_addr().unwrap_or(fallback);
    let outbound_addr = local(&outbound_listener, config.outbound_addr);
    let inbound_addr = local(&inbound_listener, config.inbound_addr);
    let admin_addr = local(&admin_listener, config.admin_addr);
    // The inbound never forwards to the proxy's own listeners, whatever policy declares.
    let control_admin_addr = control_admin_listener
        .as_ref()
        .map(|(l, _)| local(l, SocketAddr::from(([0, 0, 0, 0], 0))));
    let mut proxy_ports = vec![outbound_addr.port(), inbound_addr.port(), admin_addr.port()];
    proxy_ports.extend(control_admin_addr.map(|a| a.port()));
    let tap = tap::Hub::new(
        tap::ProxyInfo {
            namespace: namespace.clone(),
            workload: workload.clone(),
            id: config.identity.as_str().into(),
        },
        config.tap_mask.clone(),
        config.access_log,
    );
    for (_, l) in &forward_listeners {
        proxy_ports.extend(l.local_addr().ok().map(|a| a.port()));
    }

    let credentials::Credentials {
        store: credentials,
        renew,
    } = credentials::spawn(
        config.identity.clone(),
        sources.trust_bundle.clone(),
        sources.certifier.clone(),
        metrics.clone(),
        drain.handle(),
        sources.state_dir.clone(),
    )?;
    if let Some(control) = &sources.control {
        // From now on the control-plane connections present this proxy's certificate.
        control.attach_credentials(credentials.clone());
    }
    if let Some(trust) = sources.trust.take() {
        trust.spawn(credentials.clone(), renew);
    }
    let plain = client::PlainClients::new(config.connect_timeout);
    let mesh = outbound::endpoint::MeshClient::new(
        credentials.clone(),
        config.connect_timeout,
        metrics.clone(),
    );

    let mesh_to_prune = mesh.clone();
    let outbound = outbound::Outbound::new(
        outbound::OutboundSettings {
            detect_timeout: config.detect_timeout,
            detect_first_byte: config.detect_first_byte,
            limits,
            connect_timeout: config.connect_timeout,
            opaque_ports: config.opaque_ports.clone(),
            namespace: namespace.clone(),
            workload: workload.clone(),
            http1_transport: config.http1_transport,
            stream_idle_timeout: config.stream_idle_timeout,
            tap: tap.clone(),
        },
        sources.discover.clone(),
        mesh,
        plain.clone(),
        metrics.clone(),
    )?;
    // The decision log: on by default with a control plane (shipped there), off in static mode
    // (where `on` writes the batches to stdout).
    let audit = if config.audit.unwrap_or(sources.audit.is_some()) {
        let log = audit::AuditLog::new(config.audit_deny_rate, metrics.clone());
        let sink = sources
            .audit
            .clone()
            .unwrap_or_else(|| Arc::new(audit::StdoutSink));
        let who = audit::Shipper {
            namespace: namespace.to_string(),
            workload: workload.to_string(),
            instance: audit::instance_id().ok_or(BuildError::Random)?,
        };
        tokio::spawn(audit::ship(
            log.collector(audit::unix_ms()),
            sink,
            who,
            drain.handle(),
        ));
        Some(log)
    } else {
        None
    };
    // One policy watch for the inbound and the explain endpoint: both see the same snapshot.
    let policy = sources.policy.authorizations();
    let explain = control_admin::ExplainContext {
        policy: policy.clone(),
        namespace: namespace.clone(),
        proxy_ports: proxy_ports.clone(),
    };
    let inbound = inbound::Inbound::new(
        inbound::InboundSettings {
            detect_timeout: config.detect_timeout,
            detect_first_byte: config.detect_first_byte,
            connect_timeout: config.connect_timeout,
            limits,
            opaque_ports: config.opaque_ports.clone(),
            app_host: config.inbound_app_host,
            namespace,
            workload,
            proxy_ports,
            stream_idle_timeout: config.stream_idle_timeout,
            tap: tap.clone(),
            audit,
        },
        credentials.clone(),
        policy.clone(),
        plain,
        metrics.clone(),
    );

    // The static sources are loaded by now; in control-plane mode this flips on the first
    // inbound policy instead.
    let (_config_tx, config_loaded) = watch::channel(true);
    let config_loaded = sources
        .control
        .as_ref()
        .map_or(config_loaded, control::ControlPlane::config_loaded);
    let readiness = admin::Readiness {
        credentials: credentials.clone(),
        config_loaded,
        control: sources.control.clone(),
    };

    let ob = outbound.clone();
    tokio::spawn(server::accept_loop(
        outbound_listener,
        drain.handle(),
        move |tcp, peer, d| ob.clone().handle(tcp, peer, d),
    ));
    let ib = inbound.clone();
    tokio::spawn(server::accept_loop(
        inbound_listener,
        drain.handle(),
        move |tcp, peer, d| ib.clone().handle(tcp, peer, d),
    ));
    let mut tcp_forward_addrs = Vec::new();
    for (target, listener) in forward_listeners {
        let addr = local(&listener, SocketAddr::from(([0, 0, 0, 0], 0)));
        tcp_forward_addrs.push((target.clone(), addr));
        let ob = outbound.clone();
        tokio::spawn(server::accept_loop(
            listener,
            drain.handle(),
            move |tcp, _, d| {
                let ob = ob.clone();
                let target = target.clone();
                async move {
                    ob.opaque(tcp, target).await;
                    drop(d);
                }
            },
        ));
    }
    // In a quiet spell the pools to the app shrink to a few connections per port (a plain
    // connect is cheap) and those to other proxies to more (a TLS handshake is not): see memory.
    let (to_shrink, to_prune) = (inbound.clone(), inbound.clone());
    let mesh_to_shrink = mesh_to_prune.clone();
    tokio::spawn(memory::trim_when_idle(
        drain.handle(),
        move |keep| {
            to_shrink.shrink_idle(keep);
            mesh_to_shrink.shrink_idle(memory::KEEP_MESH_IDLE_WHEN_QUIET);
        },
        move || to_prune.prune_idle() + mesh_to_prune.prune_idle(),
    ));
    if let Some((listener, control_id)) = control_admin_listener {
        let control_admin = control_admin::ControlAdmin::new(
            control_id,
            credentials.clone(),
            tap.clone(),
            explain,
            metrics.clone(),
            limits,
            config.connect_timeout,
        );
        // Stopped with the admin server: an endless tap stream must not hold the data drain.
        tokio::spawn(server::accept_loop(
            listener,
            admin_stop.handle(),
            move |tcp, _, stop| control_admin.clone().handle(tcp, stop),
        ));
    }
    let m = metrics.clone();
    let draining = drain.signal();
    let app_probes = config.app_probes.clone();
    tokio::spawn(server::accept_loop(
        admin_listener,
        admin_stop.handle(),
        move |tcp, _, stop| {
            admin::serve(
                tcp,
                m.clone(),
                readiness.clone(),
                draining.clone(),
                stop,
                limits,
                app_probes.clone(),
            )
        },
    ));

    info!(
        "listening outbound={outbound_addr} inbound={inbound_addr} admin={admin_addr} control_admin={} tcp_forwards=[{}]",
        control_admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        tcp_forward_addrs
            .iter()
            .map(|(t, a)| format!("{}={a}", t.authority()))
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(Proxy {
        outbound_addr,
        inbound_addr,
        admin_addr,
        control_admin_addr,
        tap,
        tcp_forward_addrs,
        metrics,
        credentials,
        drain,
        admin_stop,
    })
}

impl Proxy {
    /// Waits until the proxy has its first certificate (or `timeout` passes); `true` if it has.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.credentials.clone();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting, lets in-flight work finish for up to `grace`, then stops the admin
    /// server. Returns `true` if everything finished within the grace period.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let Proxy {
            drain, admin_stop, ..
        } = self;
        let drained = tokio::time::timeout(grace, drain.drain()).await.is_ok();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_stop.drain()).await;
        drained
    }
}
