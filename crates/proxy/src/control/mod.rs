//! Control-plane mode: the [`Discover`], [`InboundPolicy`] and [`Certifier`] seams implemented
//! over the control plane's gRPC API (`onemesh-api`), so the proxy is configured by the control
//! plane instead of a static file.
//!
//! The mode is selected by setting `ONEMESH_PROXY_CONTROL_IDENTITY_ADDR`,
//! `ONEMESH_PROXY_CONTROL_DESTINATION_ADDR` and `ONEMESH_PROXY_CONTROL_POLICY_ADDR` (each
//! `host:port`; see [`crate::config`]). The control plane must prove `ONEMESH_PROXY_CONTROL_ID`
//! (default `spiffe://<our trust domain>/ns/onemesh/sa/control`) with a chain to
//! `ONEMESH_PROXY_TRUST_ANCHORS`; `ONEMESH_PROXY_IDENTITY_TOKEN` is the bootstrap token sent with
//! each certificate signing request.
//!
//! What each seam does here:
//!
//! - [`ControlCertifier`] (`Identity.Certify`): sends the CSR made by [`crate::credentials`] with
//!   the token and turns the answer into an [`onemesh_identity::Issued`]. The private key never
//!   leaves the proxy; the renewal loop in `credentials` calls it again at ~70 % of the leaf's life.
//! - [`ControlDiscover`] (`Destination.Watch` + `Policy.WatchOutbound`): on the first resolve of
//!   a name it opens one destination stream and one outbound-policy stream for it and caches them
//!   per [`Target`], so each name has one pair of streams for the life of the proxy. A snapshot
//!   replaces the endpoint set, a diff adds/replaces/removes endpoints by address, and the routes
//!   are merged into the same [`Service`](crate::discover::Service) watch. A first snapshot with
//!   `exists: false` (or a name the control plane cannot parse) resolves to
//!   [`Resolution::External`](crate::discover::Resolution::External) and the streams are closed.
//!   Original-destination addresses ([`Target::Addr`]) are sent as `ip:port`: the control plane
//!   answers for a Service's ClusterIP or a meshed pod's IP, and `exists: false` for anything
//!   else (passthrough, counted as egress).
//! - [`ControlPolicy`] (`Policy.WatchInbound`): this workload's authorizations, on a watch. The
//!   first answer is what `/ready` calls "the initial configuration".
//!
//! Transport: one lazily connected tonic channel per service address over our own TLS
//! ([`connect`]): TCP + tokio-rustls with a rustls config from `onemesh-identity` (TLS 1.3, ring,
//! ALPN `h2`) that accepts only the control plane's SPIFFE id. Before the proxy has a
//! certificate it presents none (`bootstrap_client_config`); afterwards it presents its leaf
//! (`CredentialStore::client_config`), once [`ControlPlane::attach_credentials`] was called.
//!
//! Resilience (DESIGN.md: keep serving with the last good state): a stream that fails or ends is
//! reopened with jittered exponential backoff from [`MIN_BACKOFF`] to [`MAX_BACKOFF`], and until
//! then every watch keeps its last value. A reopened stream starts with a snapshot, which replaces
//! what the proxy knew. `control_plane_connected{service="identity|destination|policy"}` (0/1) and
//! `/ready` (via [`ControlPlane`]) tell whether the control plane is reachable: a proxy started
//! while the control plane is down stays unready (503, with the last certify error) until it gets
//! a certificate and its inbound policy; a ready proxy that loses a stream stays ready (it is
//! serving) and says "control plane unreachable, serving last known configuration".
//!
//! Deliberately not done: streams are never closed while the proxy runs (the set of mesh names
//! one workload calls is small; external names close theirs at once), and a destination with
//! `exists: false` is not re-asked later (the outbound side caches `External` anyway).

mod backoff;
mod certify;
pub mod connect;
mod convert;
mod discover;
mod inbound;
mod leaf;
mod status;
pub mod trust;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use onemesh_api::destination::destination_client::DestinationClient;
use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_api::policy::policy_client::PolicyClient;
use onemesh_identity::TrustBundle;

pub use backoff::Backoff;
pub use certify::ControlCertifier;
pub use convert::ConvertError;
pub use discover::ControlDiscover;
pub use inbound::ControlPolicy;
pub use leaf::{LeafError, LeafInfo, identity_json};
pub use status::{ControlPlane, ServiceKind};
pub use trust::TrustWatch;

use crate::Sources;
use crate::config::{self, Config, ControlPlaneConfig};
use crate::discover::Target;
use crate::state_dir::{StateDir, StateDirError};

/// The first delay before reopening a failed stream (doubles up to [`MAX_BACKOFF`], jittered).
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest delay before reopening a failed stream.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the first resolve of a name waits for the control plane's first answer (then 503;
/// the stream keeps trying, and the next resolve waits on it again).
pub const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one `Audit.Append` call may take (then the same batch is sent again).
pub const AUDIT_APPEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `Certify` call may take.
pub const CERTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why control-plane mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control-plane variables are not set.
    #[error(
        "control-plane mode is not configured: set {}, {} and {}",
        config::ENV_CONTROL_IDENTITY_ADDR,
        config::ENV_CONTROL_DESTINATION_ADDR,
        config::ENV_CONTROL_POLICY_ADDR
    )]
    NotConfigured,
    /// No trust anchors to verify the control plane with.
    #[error(
        "control-plane mode needs {}: set it to the PEM trust bundle",
        config::ENV_TRUST_ANCHORS
    )]
    NoTrustAnchors,
    /// The trust anchors file could not be read.
    #[error(
        "cannot read the trust anchors {path}: {source}; check {}",
        config::ENV_TRUST_ANCHORS
    )]
    ReadAnchors {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The trust anchors are not a PEM bundle.
    #[error("the trust anchors {path} are unusable: {source}")]
    BadAnchors {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<onemesh_identity::Error>,
    },
    /// The state directory cannot be used.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// A control-plane address does not make a URI.
    #[error("the control-plane address {addr:?} is not usable: {source}; set host:port")]
    BadAddr {
        /// The address.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// Control-plane mode: reads the trust anchors named in `config` and builds the [`Sources`]
/// (discovery, inbound policy, certifier) from the control plane. Must run inside a tokio
/// runtime: it starts the inbound-policy stream at once.
pub fn sources(config: &Config) -> Result<Sources, ControlError> {
    let control = config.control.as_ref().ok_or(ControlError::NotConfigured)?;
    let path = config
        .trust_anchors
        .clone()
        .ok_or(ControlError::NoTrustAnchors)?;
    let pem = std::fs::read_to_string(&path).map_err(|source| ControlError::ReadAnchors {
        path: path.clone(),
        source,
    })?;
    let bundle = TrustBundle::from_pem(&pem).map_err(|source| ControlError::BadAnchors {
        path,
        source: Box::new(source),
    })?;
    sources_with_bundle(config, control, bundle)
}

/// Opens the state directory of `control` (if any) and adds the bundle saved there to `bundle`:
/// a proxy restarted after an anchor rotation it saw trusts the new anchor even if the file it
/// was started with is older. (The first trust update replaces the union with the mesh's bundle.)
fn open_state(
    control: &ControlPlaneConfig,
    bundle: TrustBundle,
) -> Result<(Option<StateDir>, TrustBundle), ControlError> {
    let Some(path) = control.state_dir.as_deref() else {
        return Ok((None, bundle));
    };
    let state = StateDir::open(path)?;
    let bundle = match state.load_bundle() {
        Some(saved) => bundle.merge(&saved),
        None => bundle,
    };
    Ok((Some(state), bundle))
}

/// As [`sources`], with the trust bundle already loaded.
pub fn sources_with_bundle(
    config: &Config,
    control: &ControlPlaneConfig,
    bundle: TrustBundle,
) -> Result<Sources, ControlError> {
    let (state, bundle) = open_state(control, bundle)?;
    let plane = ControlPlane::new();
    let channel = |addr: &str| {
        connect::channel(
            addr,
            control.id.clone(),
            bundle.clone(),
            plane.credentials_slot(),
        )
        .map_err(|source| ControlError::BadAddr {
            addr: addr.to_string(),
            source,
        })
    };
    let identity = IdentityClient::new(channel(&control.identity_addr)?);
    let destination = DestinationClient::new(channel(&control.destination_addr)?);
    // The policy watch and the decision log share one channel (one connection).
    let policy_channel = channel(&control.policy_addr)?;
    let audit = crate::audit::GrpcSink::new(policy_channel.clone(), AUDIT_APPEND_TIMEOUT);
    let policy = PolicyClient::new(policy_channel);
    let namespace = config.namespace().to_string();
    let inbound = ControlPolicy::spawn(
        policy.clone(),
        namespace.clone(),
        config.workload.clone(),
        plane.clone(),
        state.clone(),
    );
    Ok(Sources {
        discover: Arc::new(ControlDiscover::new(
            destination,
            policy,
            namespace,
            plane.clone(),
            state.clone(),
        )),
        policy: Arc::new(inbound),
        certifier: Arc::new(ControlCertifier::new(
            identity.clone(),
            control.token.clone(),
            control.identity_addr.clone(),
            config.identity.clone(),
            plane.clone(),
        )),
        // Its own channel: the certifier's connection may have been dialled before the proxy had a
        // certificate (the first Certify), and WatchTrust needs one.
        trust: Some(TrustWatch::new(
            IdentityClient::new(channel(&control.identity_addr)?),
            state.clone(),
        )),
        trust_bundle: bundle,
        tcp_forwards: Vec::new(),
        control: Some(plane),
        state_dir: state,
        audit: Some(Arc::new(audit)),
    })
}

/// The name sent to the control plane for a target: `host:port`, or the address itself (a
/// ClusterIP or a pod IP, which the control plane maps to its Service or pod).
fn watch_name(target: &Target) -> String {
    match target {
        Target::Name { host, port } => format!("{host}:{port}"),
        Target::Addr(addr) => addr.to_string(),
    }
}
