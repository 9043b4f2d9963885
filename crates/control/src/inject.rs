//! Proxy injection: what a pod meant for the mesh gets, as pure functions over the Kubernetes API
//! types. The control plane's admission webhook ([`crate::webhook`]) and `onemesh inject` /
//! `onemesh uninject` (offline, on YAML) call the same code, so both produce the same pod.
//!
//! [`inject`] adds, at the FRONT of `initContainers` (so the pod's own init containers already
//! run inside the mesh):
//!
//! 1. `onemesh-init`: the proxy image's `init` subcommand, which installs the rules redirecting
//!    the pod's TCP to the proxy (root with `NET_ADMIN`/`NET_RAW` only, for that one step);
//! 2. `onemesh-proxy`: the proxy as a native sidecar (`restartPolicy: Always`, a startup probe
//!    on `/ready`), so the app starts once the proxy is ready and a Job's pod still completes;
//!    uid 2102, read-only root, no capabilities; its identity
//!    `spiffe://<td>/ns/$(ONEMESH_POD_NAMESPACE)/sa/$(ONEMESH_POD_SERVICE_ACCOUNT)` is expanded by
//!    the kubelet from downward-API variables, so the same output fits any namespace;
//!
//! and three volumes: the projected ServiceAccount token (audience `onemesh`), the trust anchors
//! ConfigMap and a memory-backed `emptyDir` for the proxy's state. It marks the pod with the
//! annotation `onemesh.dev/injected: <version>`: injecting again is a no-op.
//!
//! App probes: with capture and default-deny, the kubelet's unauthenticated probe of the app's
//! port would be refused by the proxy. Each app container's `httpGet`/`tcpSocket` probe is
//! rewritten to `httpGet` on the proxy's admin port (which the init step leaves uncaptured) at
//! `/app-probe/<container>/<liveness|readiness|startup>`; the originals, named ports resolved,
//! go to the proxy in `ONEMESH_PROXY_APP_PROBES` (JSON), and the proxy performs them on loopback
//! (as Istio does). `exec` and `grpc` probes, and HTTPS or other-host probes, are left alone.
//!
//! Deliberately not here: deciding which namespaces are meshed (the API server's
//! `namespaceSelector`/`objectSelector` in the webhook configuration do it before we are called;
//! `onemesh inject` injects what it is given) and the capture rules themselves (`onemesh-proxy
//! init`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, PodSpec, Probe, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::kubestore::fold::{PROXY_CONTAINER, workload_of};

/// The init container that installs the capture rules.
pub const INIT_CONTAINER: &str = "onemesh-init";
/// Marker annotation: the version that injected the pod.
pub const INJECTED_ANNOTATION: &str = "onemesh.dev/injected";
/// Pod label: `enabled` injects a pod of a namespace that is not meshed, `disabled` keeps a pod
/// of a meshed namespace out.
pub const INJECT_LABEL: &str = "onemesh.dev/inject";
/// Inbound ports whose traffic reaches the app without the proxy (`22,8000-8010`).
pub const SKIP_INBOUND_PORTS: &str = "onemesh.dev/skip-inbound-ports";
/// Outbound ports the app reaches without the proxy.
pub const SKIP_OUTBOUND_PORTS: &str = "onemesh.dev/skip-outbound-ports";
/// Outbound networks (CIDRs) the app reaches without the proxy.
pub const SKIP_OUTBOUND_CIDRS: &str = "onemesh.dev/skip-outbound-cidrs";
/// Ports carried as opaque TCP (no protocol detection): replaces the proxy's default list.
pub const OPAQUE_PORTS: &str = "onemesh.dev/opaque-ports";
/// `json`: the proxy writes one JSON line per request (masked as tap is) on its standard output.
pub const ACCESS_LOG: &str = "onemesh.dev/access-log";
/// The proxy container's CPU request.
pub const PROXY_CPU_REQUEST: &str = "onemesh.dev/proxy-cpu-request";
/// The proxy container's memory request.
pub const PROXY_MEMORY_REQUEST: &str = "onemesh.dev/proxy-memory-request";
/// The proxy container's memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "onemesh.dev/proxy-memory-limit";
/// The proxy's variable holding the app's original probes.
pub const APP_PROBES_ENV: &str = "ONEMESH_PROXY_APP_PROBES";
/// The volumes injected (token, anchors, state).
pub const TOKEN_VOLUME: &str = "onemesh-token";
pub const ANCHORS_VOLUME: &str = "onemesh-anchors";
pub const STATE_VOLUME: &str = "onemesh-proxy-state";
const VOLUMES: [&str; 3] = [TOKEN_VOLUME, ANCHORS_VOLUME, STATE_VOLUME];
/// Where the proxy's files are mounted.
const TOKEN_DIR: &str = "/var/run/secrets/onemesh";
const ANCHORS_DIR: &str = "/var/run/onemesh/anchors";
const STATE_MOUNT: &str = "/var/run/onemesh/proxy";
/// The downward-API variables the identity is expanded from.
const POD_NAMESPACE_ENV: &str = "ONEMESH_POD_NAMESPACE";
const POD_SERVICE_ACCOUNT_ENV: &str = "ONEMESH_POD_SERVICE_ACCOUNT";
/// The label Jobs put on their pods (a CronJob's Job name is known only when it runs).
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Default ports of the proxy (the init step's defaults too).
pub const DEFAULT_INBOUND_PORT: u16 = 4143;
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
pub const DEFAULT_ADMIN_PORT: u16 = 4191;
/// The proxy's uid: the capture rules let its own traffic through, so no app may run as it.
pub const DEFAULT_PROXY_UID: i64 = 2102;

/// What the injector needs to know about the mesh; the defaults are `onemesh install`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// The proxy's image (also runs the init step).
    pub proxy_image: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The control plane's namespace and Service name, and the cluster's DNS domain.
    pub control_namespace: String,
    pub control_service: String,
    pub cluster_domain: String,
    /// The ServiceAccount token audience the control plane accepts.
    pub token_audience: String,
    /// The proxy's uid (and gid).
    pub proxy_uid: i64,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    /// The proxy container's resources unless annotated otherwise.
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// Written into the `onemesh.dev/injected` annotation.
    pub version: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        InjectConfig {
            proxy_image: format!("onemesh/proxy:v{version}"),
            trust_domain: onemesh_identity::DEFAULT_TRUST_DOMAIN.to_string(),
            control_namespace: "onemesh".to_string(),
            control_service: "onemesh-control".to_string(),
            cluster_domain: "cluster.local".to_string(),
            token_audience: "onemesh".to_string(),
            proxy_uid: DEFAULT_PROXY_UID,
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            cpu_request: "10m".to_string(),
            memory_request: "16Mi".to_string(),
            memory_limit: "64Mi".to_string(),
            version: version.to_string(),
        }
    }
}

impl InjectConfig {
    /// `host:port` of one of the control plane's services.
    fn control_addr(&self, port: u16) -> String {
        format!(
            "{}.{}.svc.{}:{port}",
            self.control_service, self.control_namespace, self.cluster_domain
        )
    }
}

/// The name the proxy reports as its workload (`ONEMESH_PROXY_WORKLOAD`): the same rule as the
/// control plane's Kubernetes store (`kubestore::fold::workload_of`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Known when injecting: a controller's (or a bare pod's) name.
    Name(String),
    /// A CronJob's pods: their Job's name, read from the pod's `batch.kubernetes.io/job-name`
    /// label by the downward API (the Job does not exist yet when the CronJob is injected).
    JobNameLabel,
}

impl Workload {
    /// The workload of a pod being admitted: its controller through its owner references.
    pub fn of_pod(pod: &Pod) -> Workload {
        let (_, name) = workload_of(pod);
        // A bare pod with only `generateName`: its name is not known yet.
        Workload::Name(name.trim_end_matches('-').to_string())
    }
}

/// What injection did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy was added.
    Injected,
    /// The pod carries `onemesh.dev/injected` already: nothing to do.
    AlreadyInjected,
    /// Left as it is, and why.
    Skipped(String),
}

/// Why a pod cannot be injected; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: {value:?} {problem}")]
    BadAnnotation {
        annotation: &'static str,
        value: String,
        problem: String,
    },
    #[error(
        "container {container:?} runs as uid {uid}, the mesh proxy's uid: its traffic would bypass the proxy; run it as another user or label the pod onemesh.dev/inject=disabled"
    )]
    ProxyUid { container: String, uid: i64 },
    #[error(
        "the pod already has a {what} named {name:?}, which the mesh needs for the proxy: rename it"
    )]
    NameTaken { what: &'static str, name: String },
    #[error(
        "container {container:?}: the {kind} probe's port {port:?} is not a named port of the container: name the port or give its number"
    )]
    ProbePort {
        container: String,
        kind: &'static str,
        port: String,
    },
    #[error("the pod has no spec")]
    NoSpec,
    #[error(
        "the injected proxy's {APP_PROBES_ENV} is not the injector's JSON ({0}): uninject by hand"
    )]
    AppProbes(serde_json::Error),
    #[error("cannot build the injected containers: {0}")]
    Build(serde_json::Error),
}

/// The pod annotations the injector reads, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Options {
    skip_inbound_ports: Option<String>,
    skip_outbound_ports: Option<String>,
    skip_outbound_cidrs: Option<String>,
    opaque_ports: Option<String>,
    cpu_request: Option<String>,
    memory_request: Option<String>,
    memory_limit: Option<String>,
    access_log: Option<String>,
}

impl Options {
    fn read(annotations: &BTreeMap<String, String>) -> Result<Options, InjectError> {
        let get = |name: &'static str, check: fn(&str) -> Result<String, String>| {
            annotations
                .get(name)
                .map(|value| {
                    check(value).map_err(|problem| InjectError::BadAnnotation {
                        annotation: name,
                        value: value.clone(),
                        problem,
                    })
                })
                .transpose()
        };
        Ok(Options {
            skip_inbound_ports: get(SKIP_INBOUND_PORTS, port_ranges)?,
            skip_outbound_ports: get(SKIP_OUTBOUND_PORTS, port_ranges)?,
            skip_outbound_cidrs: get(SKIP_OUTBOUND_CIDRS, cidrs)?,
            opaque_ports: get(OPAQUE_PORTS, ports)?,
            cpu_request: get(PROXY_CPU_REQUEST, quantity)?,
            memory_request: get(PROXY_MEMORY_REQUEST, quantity)?,
            memory_limit: get(PROXY_MEMORY_LIMIT, quantity)?,
            access_log: get(ACCESS_LOG, access_log)?,
        })
    }
}

/// Splits a comma list, trimming, dropping empty items; an empty list is refused.
fn items(s: &str) -> Result<Vec<&str>, String> {
    let items: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if items.is_empty() {
        return Err("is empty: remove the annotation or list something".to_string());
    }
    Ok(items)
}

fn port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `22,5432,8000-8010`, normalised (no spaces).
fn port_ranges(s: &str) -> Result<String, String> {
    let items = items(s)?;
    for item in &items {
        let ok = match item.split_once('-') {
            Some((a, b)) => matches!((port(a), port(b)), (Some(a), Some(b)) if a <= b),
            None => port(item).is_some(),
        };
        if !ok {
            return Err(format!(
                "is not a list of ports and port ranges such as 22,5432,8000-8010: {item:?} is not a port 1-65535 or a range low-high"
            ));
        }
    }
    Ok(items.join(","))
}

/// `9000,9001`: single ports only (the proxy's `ONEMESH_PROXY_OPAQUE_PORTS`).
fn ports(s: &str) -> Result<String, String> {
    let items = items(s)?;
    if let Some(bad) = items.iter().find(|i| port(i).is_none()) {
        return Err(format!(
            "is not a list of ports such as 5432,9000: {bad:?} is not a port 1-65535 (ranges are not accepted here)"
        ));
    }
    Ok(items.join(","))
}

/// `10.0.0.0/8,fd00::/8`.
fn cidrs(s: &str) -> Result<String, String> {
    let items = items(s)?;
    for item in &items {
        let ok = item.split_once('/').is_some_and(|(ip, len)| {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        });
        if !ok {
            return Err(format!(
                "is not a list of networks such as 10.0.0.0/8,fd00::/8: {item:?} is not address/prefix-length"
            ));
        }
    }
    Ok(items.join(","))
}

/// A Kubernetes quantity such as `100m`, `0.5`, `64Mi`, `1G`.
/// `json` or `off`.
fn access_log(s: &str) -> Result<String, String> {
    match s.trim() {
        v @ ("json" | "off") => Ok(v.to_string()),
        _ => Err("is not json or off".to_string()),
    }
}

fn quantity(s: &str) -> Result<String, String> {
    let s = s.trim();
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number_ok && SUFFIXES.contains(&suffix) {
        Ok(s.to_string())
    } else {
        Err("is not a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi".to_string())
    }
}

/// Whether `labels` opt the pod out.
fn opted_out(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "disabled")
}

/// Whether a pod is injected, given its namespace's labels and its own: the rule the webhook
/// configuration's selectors express (a meshed namespace injects unless the pod says
/// `disabled`; elsewhere only a pod labeled `enabled`).
pub fn wanted(
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> bool {
    let meshed = namespace_labels
        .get(crate::publish::MESH_LABEL)
        .is_some_and(|v| v == crate::publish::MESH_LABEL_VALUE);
    match pod_labels.get(INJECT_LABEL).map(String::as_str) {
        Some("disabled") => false,
        Some("enabled") => true,
        _ => meshed,
    }
}

/// Every container of the pod that is the app's (not ours), init containers included.
fn app_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name != INIT_CONTAINER && c.name != PROXY_CONTAINER)
}

/// Adds the proxy to a pod (or a pod template: `meta` is its metadata). See the module doc.
pub fn inject(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    workload: &Workload,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    if opted_out(meta) {
        return Ok(Outcome::Skipped(format!(
            "the pod is labeled {INJECT_LABEL}: disabled"
        )));
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    if annotations.contains_key(INJECTED_ANNOTATION) {
        return Ok(Outcome::AlreadyInjected);
    }
    let has = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .any(|c| c.name == name)
    };
    if has(PROXY_CONTAINER) {
        return Ok(Outcome::Skipped(format!(
            "the pod already has a container named {PROXY_CONTAINER} (a proxy written by hand): left as it is"
        )));
    }
    if has(INIT_CONTAINER) {
        return Err(InjectError::NameTaken {
            what: "container",
            name: INIT_CONTAINER.to_string(),
        });
    }
    if let Some(taken) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| VOLUMES.contains(&v.name.as_str()))
    {
        return Err(InjectError::NameTaken {
            what: "volume",
            name: taken.name.clone(),
        });
    }
    let options = Options::read(&annotations)?;
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    for c in app_containers(spec) {
        let uid = c
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid);
        if uid == Some(config.proxy_uid) {
            return Err(InjectError::ProxyUid {
                container: c.name.clone(),
                uid: config.proxy_uid,
            });
        }
    }

    let probes = rewrite_probes(spec, config.admin_port)?;
    let init = init_container(config, &options)?;
    let proxy = proxy_container(config, &options, workload, &probes)?;
    let mut init_containers = vec![init, proxy];
    init_containers.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init_containers);
    let mut volumes = spec.volumes.take().unwrap_or_default();
    volumes.extend(injected_volumes(config)?);
    spec.volumes = Some(volumes);
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_ANNOTATION.to_string(), config.version.clone());
    Ok(Outcome::Injected)
}

/// Removes what [`inject`] added (only from a pod carrying the marker annotation: a proxy
/// written by hand stays) and restores the app's probes. Returns whether anything changed.
pub fn uninject(meta: &mut ObjectMeta, spec: &mut PodSpec) -> Result<bool, InjectError> {
    let marked = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION));
    if !marked {
        return Ok(false);
    }
    let probes_json = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == PROXY_CONTAINER)
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == APP_PROBES_ENV))
        .and_then(|e| e.value.clone());
    if let Some(json) = probes_json {
        let probes: BTreeMap<String, AppProbe> =
            serde_json::from_str(&json).map_err(InjectError::AppProbes)?;
        for (key, probe) in probes {
            let Some((container, kind)) = key.split_once('/') else {
                continue;
            };
            let Some(c) = containers_mut(spec).find(|c| c.name == container) else {
                continue;
            };
            if let Some(p) = probe_mut(c, kind) {
                let original: ProbeHandler =
                    serde_json::from_value(probe.original).map_err(InjectError::AppProbes)?;
                p.http_get = original.http_get;
                p.tcp_socket = original.tcp_socket;
            }
        }
    }
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| c.name != INIT_CONTAINER && c.name != PROXY_CONTAINER);
    }
    if spec.init_containers.as_ref().is_some_and(Vec::is_empty) {
        spec.init_containers = None;
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| !VOLUMES.contains(&v.name.as_str()));
    }
    if spec.volumes.as_ref().is_some_and(Vec::is_empty) {
        spec.volumes = None;
    }
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(INJECTED_ANNOTATION);
    }
    if meta.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
        meta.annotations = None;
    }
    Ok(true)
}

/// The webhook's answer for a pod being created: the outcome, and for [`Outcome::Injected`] the
/// RFC 6902 JSON Patch that turns `pod` into the injected pod (`add` of the whole annotations,
/// init containers, containers and volumes: `add` replaces a member that exists).
pub fn patch(pod: &Pod, config: &InjectConfig) -> Result<(Outcome, Vec<Value>), InjectError> {
    let mut meta = pod.metadata.clone();
    let mut spec = pod.spec.clone().ok_or(InjectError::NoSpec)?;
    let outcome = inject(&mut meta, &mut spec, &Workload::of_pod(pod), config)?;
    if outcome != Outcome::Injected {
        return Ok((outcome, Vec::new()));
    }
    fn value<T: serde::Serialize>(v: &T) -> Result<Value, InjectError> {
        serde_json::to_value(v).map_err(InjectError::Build)
    }
    let ops = vec![
        json!({"op": "add", "path": "/metadata/annotations", "value": value(&meta.annotations)?}),
        json!({"op": "add", "path": "/spec/initContainers", "value": value(&spec.init_containers)?}),
        json!({"op": "add", "path": "/spec/containers", "value": value(&spec.containers)?}),
        json!({"op": "add", "path": "/spec/volumes", "value": value(&spec.volumes)?}),
    ];
    Ok((outcome, ops))
}

/// One app probe as the proxy receives it in `ONEMESH_PROXY_APP_PROBES` (keyed
/// `<container>/<kind>`): exactly one of `http`, `tcp`; `timeoutSeconds`; and `original`, the
/// probe's handler as the pod had it (for `uninject`; the proxy ignores it).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub http: Option<HttpProbe>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tcp: Option<TcpProbe>,
    pub timeout_seconds: i32,
    pub original: Value,
}

/// `GET http://127.0.0.1:<port><path>` with these headers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpProbe {
    pub port: u16,
    pub path: String,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub headers: Vec<(String, String)>,
}

/// A connect to `127.0.0.1:<port>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpProbe {
    pub port: u16,
}

/// The two handlers the injector rewrites, as written in a probe.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeHandler {
    #[serde(skip_serializing_if = "Option::is_none")]
    http_get: Option<HTTPGetAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_socket: Option<k8s_openapi::api::core::v1::TCPSocketAction>,
}

const PROBE_KINDS: [&str; 3] = ["liveness", "readiness", "startup"];

fn probe_mut<'a>(c: &'a mut Container, kind: &str) -> Option<&'a mut Probe> {
    match kind {
        "liveness" => c.liveness_probe.as_mut(),
        "readiness" => c.readiness_probe.as_mut(),
        "startup" => c.startup_probe.as_mut(),
        _ => None,
    }
}

fn containers_mut(spec: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    spec.init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
        .filter(|c| c.name != INIT_CONTAINER && c.name != PROXY_CONTAINER)
}

/// A probe's port as a number: a number, or a named port of the container.
fn resolve_port(
    c: &Container,
    kind: &'static str,
    wanted: &IntOrString,
) -> Result<u16, InjectError> {
    let bad = |p: String| InjectError::ProbePort {
        container: c.name.clone(),
        kind,
        port: p,
    };
    match wanted {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(n.to_string())),
        IntOrString::String(name) => {
            if let Some(n) = port(name) {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| bad(name.clone()))
        }
    }
}

/// Rewrites the app containers' HTTP and TCP probes to the proxy's admin port; returns the
/// originals keyed `<container>/<kind>`.
fn rewrite_probes(
    spec: &mut PodSpec,
    admin_port: u16,
) -> Result<BTreeMap<String, AppProbe>, InjectError> {
    let mut out = BTreeMap::new();
    for c in containers_mut(spec) {
        for kind in PROBE_KINDS {
            let resolved = {
                let Some(p) = probe_mut(c, kind) else {
                    continue;
                };
                let timeout_seconds = p.timeout_seconds.unwrap_or(1).max(1);
                let original = ProbeHandler {
                    http_get: p.http_get.clone(),
                    tcp_socket: p.tcp_socket.clone(),
                };
                (original, timeout_seconds)
            };
            let (original, timeout_seconds) = resolved;
            let (http, tcp) = match (&original.http_get, &original.tcp_socket) {
                (Some(get), None) => {
                    let plain = get.scheme.as_deref().is_none_or(|s| s == "HTTP");
                    if !plain || get.host.is_some() {
                        // HTTPS (the kubelet does not verify it) or another host: left alone.
                        continue;
                    }
                    let http = HttpProbe {
                        port: resolve_port(c, kind, &get.port)?,
                        path: get.path.clone().unwrap_or_else(|| "/".to_string()),
                        headers: get
                            .http_headers
                            .iter()
                            .flatten()
                            .map(|h| (h.name.clone(), h.value.clone()))
                            .collect(),
                    };
                    (Some(http), None)
                }
                (None, Some(tcp)) if tcp.host.is_none() => (
                    None,
                    Some(TcpProbe {
                        port: resolve_port(c, kind, &tcp.port)?,
                    }),
                ),
                _ => continue,
            };
            let key = format!("{}/{kind}", c.name);
            let Some(p) = probe_mut(c, kind) else {
                continue;
            };
            p.tcp_socket = None;
            p.http_get = Some(HTTPGetAction {
                path: Some(format!("/app-probe/{key}")),
                port: IntOrString::Int(i32::from(admin_port)),
                ..HTTPGetAction::default()
            });
            out.insert(
                key,
                AppProbe {
                    http,
                    tcp,
                    timeout_seconds,
                    original: serde_json::to_value(&original).map_err(InjectError::Build)?,
                },
            );
        }
    }
    Ok(out)
}

fn init_container(config: &InjectConfig, options: &Options) -> Result<Container, InjectError> {
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".to_string(),
        config.proxy_uid.to_string(),
    ];
    let flags = [
        ("--inbound-port", config.inbound_port, DEFAULT_INBOUND_PORT),
        (
            "--outbound-port",
            config.outbound_port,
            DEFAULT_OUTBOUND_PORT,
        ),
        ("--admin-port", config.admin_port, DEFAULT_ADMIN_PORT),
    ];
    for (flag, port, default) in flags {
        if port != default {
            args.extend([flag.to_string(), port.to_string()]);
        }
    }
    let lists = [
        ("--skip-inbound-ports", &options.skip_inbound_ports),
        ("--skip-outbound-ports", &options.skip_outbound_ports),
        ("--skip-outbound-cidrs", &options.skip_outbound_cidrs),
    ];
    for (flag, value) in lists {
        if let Some(v) = value {
            args.extend([flag.to_string(), v.clone()]);
        }
    }
    serde_json::from_value(json!({
        "name": INIT_CONTAINER,
        "image": config.proxy_image,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        },
    }))
    .map_err(InjectError::Build)
}

fn proxy_container(
    config: &InjectConfig,
    options: &Options,
    workload: &Workload,
    probes: &BTreeMap<String, AppProbe>,
) -> Result<Container, InjectError> {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut env = vec![
        json!({"name": POD_NAMESPACE_ENV, "valueFrom": field("metadata.namespace")}),
        json!({"name": POD_SERVICE_ACCOUNT_ENV, "valueFrom": field("spec.serviceAccountName")}),
        json!({"name": "ONEMESH_PROXY_IDENTITY", "value": format!(
            "spiffe://{}/ns/$({POD_NAMESPACE_ENV})/sa/$({POD_SERVICE_ACCOUNT_ENV})",
            config.trust_domain
        )}),
        match workload {
            Workload::Name(name) => json!({"name": "ONEMESH_PROXY_WORKLOAD", "value": name}),
            Workload::JobNameLabel => json!({
                "name": "ONEMESH_PROXY_WORKLOAD",
                "valueFrom": field(&format!("metadata.labels['{JOB_NAME_LABEL}']")),
            }),
        },
        json!({"name": "ONEMESH_PROXY_CONTROL_IDENTITY_ADDR", "value": config.control_addr(8080)}),
        json!({"name": "ONEMESH_PROXY_CONTROL_DESTINATION_ADDR", "value": config.control_addr(8086)}),
        json!({"name": "ONEMESH_PROXY_CONTROL_POLICY_ADDR", "value": config.control_addr(8090)}),
        json!({"name": "ONEMESH_PROXY_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
        json!({"name": "ONEMESH_PROXY_TRUST_ANCHORS", "value": format!("{ANCHORS_DIR}/ca.crt")}),
        json!({"name": "ONEMESH_PROXY_STATE_DIR", "value": format!("{STATE_MOUNT}/state")}),
        json!({"name": "ONEMESH_PROXY_INBOUND_ADDR", "value": format!("0.0.0.0:{}", config.inbound_port)}),
        json!({"name": "ONEMESH_PROXY_OUTBOUND_ADDR", "value": format!("127.0.0.1:{}", config.outbound_port)}),
        json!({"name": "ONEMESH_PROXY_ADMIN_ADDR", "value": format!("0.0.0.0:{}", config.admin_port)}),
    ];
    if let Some(ports) = &options.opaque_ports {
        env.push(json!({"name": "ONEMESH_PROXY_OPAQUE_PORTS", "value": ports}));
    }
    if let Some(log) = &options.access_log {
        env.push(json!({"name": "ONEMESH_PROXY_ACCESS_LOG", "value": log}));
    }
    if !probes.is_empty() {
        let text = serde_json::to_string(probes).map_err(InjectError::Build)?;
        env.push(json!({"name": APP_PROBES_ENV, "value": text}));
    }
    let cpu = options.cpu_request.as_ref().unwrap_or(&config.cpu_request);
    let memory = options
        .memory_request
        .as_ref()
        .unwrap_or(&config.memory_request);
    let limit = options
        .memory_limit
        .as_ref()
        .unwrap_or(&config.memory_limit);
    serde_json::from_value(json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "mesh-inbound", "containerPort": config.inbound_port},
            {"name": "mesh-admin", "containerPort": config.admin_port},
        ],
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": config.admin_port},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": config.admin_port},
            "periodSeconds": 10,
        },
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"memory": limit},
        },
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": ANCHORS_VOLUME, "mountPath": ANCHORS_DIR, "readOnly": true},
            {"name": STATE_VOLUME, "mountPath": STATE_MOUNT},
        ],
    }))
    .map_err(InjectError::Build)
}

fn injected_volumes(config: &InjectConfig) -> Result<Vec<Volume>, InjectError> {
    serde_json::from_value(json!([
        {"name": TOKEN_VOLUME, "projected": {"sources": [
            {"serviceAccountToken": {"audience": config.token_audience, "expirationSeconds": 3600, "path": "token"}},
        ]}},
        {"name": ANCHORS_VOLUME, "configMap": {"name": crate::publish::ANCHORS_CONFIGMAP}},
        {"name": STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
    ]))
    .map_err(InjectError::Build)
}

#[cfg(test)]
mod tests;
