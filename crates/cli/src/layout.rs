//! The running layout that `onemesh up` writes to `<state-dir>/layout.json` and every other command
//! reads: where the control plane, each workload's app and proxy listen, and their pids. Its JSON
//! form is stable (scripts and tests read it); `docs/cli.md` documents every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// File name of the layout inside the state directory.
pub const FILE: &str = "layout.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Layout {
    /// Pid of the `onemesh up` process that owns everything below.
    pub pid: u32,
    /// Absolute path of the mesh.yaml in force.
    pub config: PathBuf,
    pub trust_domain: String,
    pub control: Control,
    /// The dashboard and its JSON API (`/api/stat`, `/api/edges`, `/api/status`).
    pub dashboard: String,
    /// Public entry points: service `namespace/name` → `http://127.0.0.1:PORT`.
    pub entries: BTreeMap<String, String>,
    pub workloads: Vec<Workload>,
    /// `up --isolate`: the bridge and addresses of its network namespaces (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<crate::isolate::Net>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Control {
    pub identity: String,
    pub destination: String,
    pub policy: String,
    pub id: String,
    pub pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    /// SPIFFE id of the workload's proxy.
    pub identity: String,
    /// Declared port (mesh.yaml) → the local port the app really listens on.
    pub app_ports: BTreeMap<u16, u16>,
    pub inbound: String,
    pub outbound: String,
    pub admin: String,
    /// The proxy's control-only admin listener (mTLS, the control plane's id only): tap.
    #[serde(default)]
    pub control_admin: String,
    pub app_pid: Option<u32>,
    pub proxy_pid: Option<u32>,
    /// How often `up` restarted the app or the proxy after it died.
    pub restarts: u32,
    /// `up --isolate`: the workload's network namespace (`ip netns` name); its app listens on
    /// `127.0.0.1:<port>` there, reachable from outside only through the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `up --isolate`: the namespace's address (the proxy's inbound and admin listen on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
}

impl Workload {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A connection to the app's `port` (a real port of `app_ports`), from inside the
    /// workload's network namespace when it has one.
    pub async fn connect_app(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        crate::isolate::connect(self.netns.as_deref(), addr).await
    }
}

impl Layout {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is `onemesh up` running? (start it, or pass --state-dir)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid layout", path.display()))
    }

    /// Writes atomically (temp file + rename) so readers never see half a file.
    pub fn store(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Finds a workload by `name` or `namespace/name`.
    pub fn workload(&self, which: &str) -> anyhow::Result<&Workload> {
        let found: Vec<&Workload> = self
            .workloads
            .iter()
            .filter(|w| w.key() == which || w.name == which)
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => anyhow::bail!(
                "no workload {which:?}; known: {}",
                self.workloads
                    .iter()
                    .map(Workload::key)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => anyhow::bail!("{which:?} names several workloads: say namespace/name"),
        }
    }
}
