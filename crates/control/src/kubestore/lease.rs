//! Leadership among the control plane's replicas: a `coordination.k8s.io/v1` Lease.
//!
//! In Kubernetes mode two or more replicas serve at once; what must happen once — writing the
//! `Accepted` conditions and Events of onemesh objects, the issuer's automatic rotation — runs
//! only in the replica holding the Lease `onemesh-control` of the control plane's namespace. The
//! holder renews it every 2 s; a Lease not renewed for 10 s is taken over by another replica. The
//! holder steps down by itself when it could not renew for 7 s (before anyone may take over),
//! so two leaders never overlap as long as clocks agree within a few seconds. Every write names
//! the `resourceVersion` it read: of two replicas racing for a free Lease, one wins.
//!
//! [`decide`] is the pure decision (unit-tested); [`spawn`] runs the loop and publishes whether
//! this replica leads on a watch channel.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's namespace (the control plane's).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's name in `holderIdentity` (its pod name).
    pub identity: String,
    /// A Lease not renewed for this long is free (10 s).
    pub duration: Duration,
    /// The holder renews this often (2 s).
    pub renew: Duration,
}

impl LeaseSettings {
    /// The defaults for `identity` in `namespace`: Lease `onemesh-control`, 10 s, renewed every 2 s.
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.to_string(),
            name: "onemesh-control".to_string(),
            identity: identity.to_string(),
            duration: Duration::from_secs(10),
            renew: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it.
    Follow { holder: String },
}

/// The decision for `me` given the Lease's spec (`None`: no Lease yet).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    match renewed {
        Some(MicroTime(t)) if *t + duration > now => Decision::Follow {
            holder: holder.to_string(),
        },
        _ => Decision::Acquire,
    }
}

/// The spec `me` writes to take or renew the Lease.
fn held(spec: Option<&LeaseSpec>, me: &str, settings: &LeaseSettings, now: Timestamp) -> LeaseSpec {
    let ours = spec.and_then(|s| s.holder_identity.as_deref()) == Some(me);
    let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(settings.duration.as_secs()).unwrap_or(10)),
        acquire_time: if ours {
            spec.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..LeaseSpec::default()
    }
}

/// One round: read the Lease, take or renew it when we may. `Ok(true)`: we hold it now.
async fn round(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let me = settings.identity.as_str();
    let current = api.get_opt(&settings.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    match decide(spec, me, now) {
        Decision::Follow { .. } => Ok(false),
        Decision::Acquire | Decision::Renew => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    namespace: Some(settings.namespace.clone()),
                    // The version read: a replica that raced us in between makes this fail.
                    resource_version: current
                        .as_ref()
                        .and_then(|l| l.metadata.resource_version.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held(spec, me, settings, now)),
            };
            let written = match current {
                None => api.create(&PostParams::default(), &lease).await,
                Some(_) => {
                    api.replace(&settings.name, &PostParams::default(), &lease)
                        .await
                }
            };
            match written {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs the election until the task is aborted; the receiver says whether this replica leads.
pub fn spawn(api: Api<Lease>, settings: LeaseSettings) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        // Step down before another replica may take over: it waits `duration` after our last renewal.
        let step_down = settings
            .duration
            .saturating_sub(settings.renew + settings.renew / 2);
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match round(&api, &settings).await {
                Ok(true) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    if !*tx.borrow() {
                        tracing::info!(lease = %settings.name, identity = %settings.identity, "leading: this replica writes statuses and rotates the issuer");
                    }
                    tx.send_replace(true);
                }
                Ok(false) => {
                    if *tx.borrow() {
                        tracing::info!(lease = %settings.name, "another replica leads now");
                    }
                    last_renewal = None;
                    tx.send_replace(false);
                }
                Err(e) => {
                    tracing::warn!(lease = %settings.name, "cannot read or renew the lease: {e}");
                    if last_renewal.is_none_or(|t| t.elapsed() >= step_down) && *tx.borrow() {
                        tracing::warn!(lease = %settings.name, "stepping down: the lease could not be renewed in time");
                        tx.send_replace(false);
                    }
                }
            }
            tokio::time::sleep(settings.renew).await;
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests;
