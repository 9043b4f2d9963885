//! The onemesh control-plane contract: the gRPC services the control plane serves and the proxy
//! calls, defined in `proto/onemesh/*.proto` and generated at build time (protox, no `protoc`).
//!
//! - [`identity`] — `Identity.Certify`: CSR + bootstrap token (or current leaf) → leaf chain,
//!   trust bundle, expiry; `Identity.WatchTrust`: the live trust bundle and issuer, with the
//!   proxy's reports of what it applied.
//! - [`destination`] — `Destination.Watch`: service name → stream of endpoint sets (full snapshot
//!   first, then diffs), each endpoint with its proxy address, target port, expected SPIFFE id,
//!   weight, protocol hint and workload/namespace labels.
//! - [`policy`] — `Policy.WatchInbound` (a workload's authorizations) and `Policy.WatchOutbound`
//!   (a service's routes with timeouts and retryability), each a stream of full states.
//! - [`admin`] — the operator's calls: anchor and issuer rotation, revocation, trust status.
//! - [`audit`] — `Audit.Append`: an inbound proxy's authorization decisions, for the decision log.
//!
//! This crate holds the contract and nothing else: no client logic, no server logic. The proxy and
//! the control plane meet only here (see DESIGN.md).

/// `onemesh.admin.v1`: the operator's service.
pub mod admin {
    tonic::include_proto!("onemesh.admin.v1");
}

/// `onemesh.audit.v1`: the decision log.
pub mod audit {
    tonic::include_proto!("onemesh.audit.v1");
}

/// `onemesh.identity.v1`: certificate issuance.
pub mod identity {
    tonic::include_proto!("onemesh.identity.v1");
}

/// `onemesh.destination.v1`: service discovery.
pub mod destination {
    tonic::include_proto!("onemesh.destination.v1");
}

/// `onemesh.policy.v1`: inbound authorizations and outbound routes.
pub mod policy {
    tonic::include_proto!("onemesh.policy.v1");
}
