//! onemesh-control: the control plane of onemesh.
//!
//! It serves three gRPC services over TLS (contract in `onemesh-api`), as Linkerd does on three
//! ports:
//!
//! | service | default address | what |
//! |---|---|---|
//! | `Identity.Certify` | 127.0.0.1:8080 | signs a proxy's CSR when its bootstrap token entitles the SPIFFE id asked for |
//! | `Identity.WatchTrust` | 127.0.0.1:8080 | the live trust bundle and issuer; each proxy reports what it holds |
//! | `Admin` | 127.0.0.1:8080 | the operator's: rotate the anchor or the issuer, trust status (operator certificate only) |
//! | `Destination.Watch` | 127.0.0.1:8086 | a service's endpoints: full set first, then diffs |
//! | `Policy.WatchInbound` / `WatchOutbound` | 127.0.0.1:8090 | a workload's authorizations / a service's routes |
//! | `Audit.Append` | 127.0.0.1:8090 | a workload's authorization decisions, for the decision log ([`audit`]) |
//!
//! The control plane has its own mesh identity, `spiffe://<td>/ns/onemesh/sa/control`, signed at
//! start by the same issuer that signs the proxies (and renewed at 70 % of its life). Proxies
//! verify it against the trust bundle. TLS 1.3 only, rustls with `ring`.
//!
//! ## Who gets an answer
//!
//! The control plane answers only the proxies of its mesh, each with only what it needs. The TLS
//! servers ask for a client certificate without requiring it (a proxy's first Certify comes
//! before it has one), and every call checks what was presented
//! (`services::authenticated`):
//!
//! | call | needs |
//! |---|---|
//! | `Identity.Certify` with a token | the token (bound to the first key that used it) |
//! | `Identity.Certify` without a token | a mesh leaf: renews that leaf's id only |
//! | `Destination.Watch`, `Policy.WatchOutbound` | any mesh leaf, else `UNAUTHENTICATED` |
//! | `Policy.WatchInbound`, `Audit.Append` | a leaf whose namespace and service account are the workload's, else `PERMISSION_DENIED` |
//!
//! Certify re-checks entitlement on every call: the id must still be declared in the mesh and
//! not revoked (`<state-dir>/revoked.json`, see [`revocations`]).
//!
//! Every listener bounds what a client can hold (see [`limits`]): open connections per
//! listener and per source address, concurrent TLS handshakes, and the HTTP/2 settings
//! (concurrent streams, header list size, reset streams, frame and window sizes, keepalive).
//!
//! ## Where the mesh comes from: stores
//!
//! The services read the mesh only through the [`store::Store`] trait: a watch channel of
//! [`state::MeshState`] (the store-neutral [`model`]: namespaces, workloads, services with their
//! endpoints, policies, routes, each with its origin) and a token lookup. Kubernetes mode uses
//! [`kubestore::KubeStore`] (watchers on meshed Namespaces, Pods, Services, EndpointSlices and
//! the onemesh CRDs of `onemesh-crds`; identity by ServiceAccount token and TokenReview; the CA
//! from the mounted issuer Secret). Local mode uses [`local::LocalStore`]:
//!
//! - `mesh.yaml` (see [`config`] and `docs/mesh-yaml.md`): Namespace, Workload, Service,
//!   AuthorizationPolicy and Route resources. Every problem is reported as
//!   `mesh.yaml:42: spec.ports[1].port: duplicate port 8080 in workload bank/bank`.
//! - `<state-dir>/endpoints.json`: where `onemesh up` really started each workload and its proxy.
//!   A Service's endpoints are the instances of the workloads its selector matches, with the
//!   service's `targetPort` mapped to the real local port. The same mapping is applied to the
//!   ports of inbound authorizations, so a proxy compares them with the target port it really sees.
//! - `<state-dir>/tokens.json`: one bootstrap token per proxy, each entitling exactly one id; the
//!   first Certify binds a token to the key of its CSR (kept across restarts in
//!   `token-bindings.json`), later ones must use that key. A proxy may
//!   also renew without a token over a connection that presents its current leaf, for that
//!   leaf's id only (see [`services::identity`]).
//!
//! The files are polled every 250 ms; a valid change reaches every open watch stream at once
//! (well within a second), an invalid one is logged and refused, and the last good state stays in
//! force.
//!
//! The CA lives in the state directory (`trust-anchors.pem`, `issuer.crt`, `issuer.key`,
//! `trust-anchor.crt`, `trust-anchor.key`) and is made there when absent. It is rotated without an
//! outage (see [`pki`]): the issuer by itself at 70 % of its life (default 1 year:
//! [`pki::CaSettings`]), the anchor when the operator asks, each step waiting for every connected
//! proxy (default deadline 5 minutes) and surviving a restart of the control plane.
//!
//! In Kubernetes mode it also serves the proxy-injection webhook ([`webhook`], HTTPS on
//! `--listen-webhook`), whose injection is the pure [`inject`] module that `onemesh inject`
//! shares, and publishes the trust anchors to every namespace ([`publish`]).
//!
//! ## What it deliberately does not do
//!
//! It does not enforce policy (proxies do, with DESIGN.md's default: deny between namespaces,
//! same-namespace meshed callers allowed unless a policy names the port) and does not start
//! workloads (`onemesh up` does). It keeps no state of its own besides the CA files (and the
//! operator's credentials), the revoked ids (`revoked.json`) and the token-to-key bindings
//! (`token-bindings.json`, see [`bindings`]), all in the state directory, the decision log
//! (`--audit-dir`, default `<state-dir>/audit`, see [`audit`]), and, in memory, the registry of
//! connected proxies' trust reports.

pub mod audit;
pub mod authz;
pub mod bindings;
pub mod config;
pub mod health;
pub mod inject;
pub mod kubestore;
pub mod limits;
pub mod local;
pub mod model;
pub mod observe;
pub mod persist;
pub mod pki;
pub mod publish;
pub mod revocations;
pub mod server;
pub mod services;
pub mod state;
pub mod store;
pub mod webhook;

pub use server::{Control, Settings, start};
