//! What the CLI needs from mesh.yaml, read through the control plane's own validating loader
//! (`onemesh_control::config`), so `up` refuses exactly what the control plane would refuse.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use onemesh_control::config::{self, MeshConfig, TargetPort};
use serde::Serialize;

/// The trust domain of a local mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";

pub struct Mesh {
    config: MeshConfig,
    workloads: Vec<MeshWorkload>,
}

/// A workload as `up` runs it.
pub struct MeshWorkload {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// Declared ports.
    pub ports: Vec<u16>,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `spec.accessLog: json`: its proxy logs every request (masked).
    pub access_log: bool,
}

/// A service reachable from this machine (`spec.expose`).
pub struct Exposed {
    pub namespace: String,
    pub service: String,
    pub addr: SocketAddr,
    /// The workload port it leads to, and the workloads that serve it.
    pub target_port: u16,
    pub workloads: Vec<String>,
}

/// One authorization in force on a workload, for `onemesh authz`.
#[derive(Serialize)]
pub struct AuthzRule {
    pub name: String,
    /// `enforce`, or `audit` (denials let through as would-deny).
    pub mode: &'static str,
    pub ports: String,
    pub routes: String,
    pub from: String,
    pub is_default: bool,
    /// Its decisions over the last minute, from the control plane's window (absent when the
    /// API did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<Decisions>,
}

/// A policy's decisions in the metrics window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Decisions {
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
}

impl Mesh {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let config = config::load(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{} is not a valid mesh", path.display()))?;
        let workloads = config
            .workloads
            .values()
            .map(|w| MeshWorkload {
                namespace: w.meta.namespace.clone(),
                name: w.meta.name.clone(),
                identity: format!(
                    "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
                    w.meta.namespace, w.service_account
                ),
                ports: w.ports.iter().map(|p| p.port).collect(),
                command: w.command.clone(),
                env: w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                access_log: w.access_log,
            })
            .collect();
        Ok(Self { config, workloads })
    }

    pub fn trust_domain(&self) -> &str {
        TRUST_DOMAIN
    }

    pub fn workloads(&self) -> &[MeshWorkload] {
        &self.workloads
    }

    pub fn exposed(&self) -> Vec<Exposed> {
        let mut out = Vec::new();
        for s in self.config.services.values() {
            let Some(addr) = s.expose else { continue };
            let selected: Vec<&config::Workload> = self
                .config
                .selected(&s.meta.namespace, &s.selector)
                .collect();
            let Some(port) = s.ports.first() else {
                continue;
            };
            let target_port = match &port.target_port {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => selected
                    .iter()
                    .flat_map(|w| &w.ports)
                    .find(|p| p.name.as_deref() == Some(name))
                    .map_or(0, |p| p.port),
            };
            out.push(Exposed {
                namespace: s.meta.namespace.clone(),
                service: s.meta.name.clone(),
                addr,
                target_port,
                workloads: selected.iter().map(|w| w.meta.name.clone()).collect(),
            });
        }
        out
    }

    /// The authorizations on a workload, or the default when no policy targets it.
    pub fn authz(&self, namespace: &str, workload: &str) -> Vec<AuthzRule> {
        let rules: Vec<AuthzRule> = self
            .config
            .policies
            .iter()
            .filter(|p| p.meta.namespace == namespace)
            .filter(|p| p.target_workload.as_deref().is_none_or(|w| w == workload))
            .map(|p| {
                let routes: Vec<String> = p
                    .routes
                    .iter()
                    .map(|r| {
                        let m = if r.methods.is_empty() {
                            "*".to_string()
                        } else {
                            r.methods.join(",")
                        };
                        format!("{m} {}*", r.path_prefix.as_deref().unwrap_or("/"))
                    })
                    .collect();
                let mut from: Vec<String> =
                    p.from_identities.iter().map(|i| i.to_string()).collect();
                from.extend(p.from_namespaces.iter().map(|n| format!("namespace {n}")));
                if p.from_unauthenticated {
                    from.push("unauthenticated".into());
                }
                AuthzRule {
                    name: p.meta.name.clone(),
                    mode: p.mode.as_str(),
                    ports: p.target_port.map_or("all".into(), |p| p.to_string()),
                    routes: if routes.is_empty() {
                        "all".into()
                    } else {
                        routes.join(" ")
                    },
                    from: if from.is_empty() {
                        "nobody".into()
                    } else {
                        from.join(", ")
                    },
                    is_default: false,
                    decisions: None,
                }
            })
            .collect();
        if rules.is_empty() {
            let mode = self
                .config
                .namespaces
                .get(namespace)
                .map_or("enforce", |n| n.default_mode.as_str());
            return vec![AuthzRule {
                name: "default:same-namespace".into(),
                mode,
                ports: "all".into(),
                routes: "all".into(),
                from: format!("meshed callers in namespace {namespace}"),
                is_default: true,
                decisions: None,
            }];
        }
        rules
    }
}
