//! The pure part of the Kubernetes store: watch events folded into a cache of objects, and the
//! cache turned into the store-neutral [`Mesh`] and the verdict on each onemesh object.
//!
//! No I/O here: the watchers in [`super`] feed [`Cache::apply`] and call [`build`]; the unit tests
//! feed recorded events the same way.
//!
//! Relists: kube-rs's watcher starts over with `Init`, then `InitApply` for every object, then
//! `InitDone` (after a `410 Gone`, a dropped connection, or at start). The cache buffers a relist
//! and swaps it in whole at `InitDone`, so the objects a relist no longer lists disappear, and
//! until it ends the previous objects stay in force: a relist never shows an empty or partial
//! mesh. [`Cache::ready`] is false until every kind has completed its first list: the store
//! publishes nothing before.
//!
//! What a Kubernetes object becomes in the model:
//!
//! - **Namespace**: meshed when labelled `onemesh.dev/mesh: enabled` or when one of its pods runs
//!   the proxy (a pod opted in by its own label); only objects in meshed namespaces count. The control plane's namespace `onemesh` is never part of the mesh.
//! - **Workload**: of the pods that run the proxy (a container or native sidecar named
//!   `onemesh-proxy`; a pod without it is not part of the mesh), the pod's owning controller — a Deployment (found through its ReplicaSet: the
//!   ReplicaSet's name minus the pod's `pod-template-hash`), a StatefulSet, a DaemonSet, a Job,
//!   or any other controller by its own name; a pod without a controller is its own workload.
//!   Identity = namespace + `spec.serviceAccountName` (`default` when empty); declared ports = the
//!   `containerPort`s of its containers, except the proxy's own container (`onemesh-proxy`);
//!   labels = the pod's labels; instances = its pods that have an IP and are not finished, each at
//!   `<podIP>:4143` (the proxy's inbound port) with the app's ports unchanged.
//! - **Service**: its ClusterIPs (a captured connection to one resolves to the Service) and its
//!   ports; each port's endpoints are the ready endpoints of its EndpointSlices
//!   (label `kubernetes.io/service-name`) whose `targetRef` is a meshed pod, at `<podIP>:4143`
//!   with the slice's port as the target port. `appProtocol: opaque` or `tcp` makes a port
//!   opaque, anything else is detected as HTTP.
//! - **AuthorizationPolicy**, **Route**: checked with the same checks as mesh.yaml; an invalid one
//!   is left out and its verdict says why ([`Verdict`]). A Route naming no Service of its
//!   namespace is left out too. Policies are ordered by namespace and name, routes by namespace,
//!   then creation time, then name (the first matching route wins, as in Gateway API).
//! - **HTTPRoute** (Gateway API, a Service as parent): routes after every onemesh Route, in Gateway
//!   API's precedence order, with a status per Service parent ([`super::gateway`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};

use crate::config::{
    Fault, FaultAbort, FaultDelay, FaultHeader, HttpMatch, Percent, PolicyMode, Problem, Protocol,
    WorkloadPort,
};
use crate::model::{
    Backend, CircuitBreaker, Endpoint, Instance, Mesh, ModelError, Namespace, Origin, Policy,
    RateLimit, Retry, Route, RouteRules, Service, ServicePort, Workload, check, sort_endpoints,
};

/// The label that meshes a namespace.
pub const MESH_LABEL: &str = "onemesh.dev/mesh";
/// Its value.
pub const MESH_ENABLED: &str = "enabled";
/// The proxy's inbound port: every endpoint's address.
pub const INBOUND_PORT: u16 = 4143;
/// The injected proxy's admin port (`/metrics`), which the metrics window scrapes.
pub const ADMIN_PORT: u16 = 4191;
/// The injected proxy's control-only admin port (mTLS, the control plane only: tap).
pub const CONTROL_ADMIN_PORT: u16 = 4190;
/// The name of the injected proxy container, whose ports are not the workload's.
pub const PROXY_CONTAINER: &str = "onemesh-proxy";

/// The kinds the store watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    AuthorizationPolicy,
    Route,
    RateLimitPolicy,
    /// Gateway API `HTTPRoute` (listed as empty while its CRD is not installed).
    HttpRoute,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
        Kind::Route,
        Kind::RateLimitPolicy,
        Kind::HttpRoute,
    ];
}

/// One watched object.
#[derive(Clone, Debug)]
pub enum Object {
    Namespace(K8sNamespace),
    Pod(Box<Pod>),
    Service(Box<K8sService>),
    EndpointSlice(EndpointSlice),
    /// An onemesh object, kept undecoded so that a bad one is reported instead of failing the list.
    AuthorizationPolicy(DynamicObject),
    Route(DynamicObject),
    RateLimitPolicy(DynamicObject),
    /// A Gateway API HTTPRoute, undecoded: its fields are checked one by one ([`super::gateway`]).
    HttpRoute(DynamicObject),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::Route(_) => Kind::Route,
            Object::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Object::HttpRoute(_) => Kind::HttpRoute,
        }
    }

    fn key(&self) -> (String, String) {
        fn k<R: Resource>(r: &R) -> (String, String) {
            (r.namespace().unwrap_or_default(), r.name_any())
        }
        match self {
            Object::Namespace(o) => k(o),
            Object::Pod(o) => k(o.as_ref()),
            Object::Service(o) => k(o.as_ref()),
            Object::EndpointSlice(o) => k(o),
            Object::AuthorizationPolicy(o)
            | Object::Route(o)
            | Object::RateLimitPolicy(o)
            | Object::HttpRoute(o) => k(o),
        }
    }
}

/// A watch event of one kind, as kube-rs's watcher yields them.
#[derive(Clone, Debug)]
pub enum Event {
    Apply(Object),
    Delete(Object),
    /// A (re)list of `Kind` starts.
    Init(Kind),
    InitApply(Object),
    /// The (re)list of `Kind` is complete.
    InitDone(Kind),
}

type Objects = BTreeMap<(String, String), Object>;

/// The objects seen, per kind.
#[derive(Debug, Default)]
pub struct Cache {
    objects: BTreeMap<Kind, Objects>,
    /// A relist in progress, per kind.
    relist: BTreeMap<Kind, Objects>,
    listed: BTreeSet<Kind>,
}

impl Cache {
    /// Folds one event in. Returns true when the objects in force changed (a relist in
    /// progress changes nothing until it is done).
    pub fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Apply(o) => {
                let kind = o.kind();
                self.objects.entry(kind).or_default().insert(o.key(), o);
                true
            }
            Event::Delete(o) => {
                let kind = o.kind();
                self.objects
                    .entry(kind)
                    .or_default()
                    .remove(&o.key())
                    .is_some()
            }
            Event::Init(kind) => {
                self.relist.insert(kind, Objects::new());
                false
            }
            Event::InitApply(o) => {
                let kind = o.kind();
                self.relist.entry(kind).or_default().insert(o.key(), o);
                false
            }
            Event::InitDone(kind) => {
                let listed = self.relist.remove(&kind).unwrap_or_default();
                self.objects.insert(kind, listed);
                self.listed.insert(kind);
                true
            }
        }
    }

    /// Whether every kind has been listed once: before that, the mesh would be partial.
    pub fn ready(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects.get(&kind).into_iter().flat_map(|m| m.values())
    }

    /// The meshed namespaces: those labelled for the mesh, and those where a pod runs the proxy
    /// (a pod opted in by its own `onemesh.dev/inject: enabled` label), never the control plane's.
    pub fn meshed(&self) -> BTreeSet<String> {
        let labelled = self
            .of(Kind::Namespace)
            .filter_map(|o| match o {
                Object::Namespace(ns) => Some(ns),
                _ => None,
            })
            .filter(|ns| is_meshed(ns))
            .map(ResourceExt::name_any);
        let with_proxies = self
            .of(Kind::Pod)
            .filter_map(|o| match o {
                Object::Pod(p) if has_proxy(p) => p.metadata.namespace.clone(),
                _ => None,
            })
            .filter(|ns| ns != crate::pki::CONTROL_NAMESPACE);
        labelled.chain(with_proxies).collect()
    }

    /// An onemesh object by kind, namespace and name.
    pub fn crd_object(&self, kind: Kind, namespace: &str, name: &str) -> Option<&DynamicObject> {
        match self
            .objects
            .get(&kind)?
            .get(&(namespace.to_string(), name.to_string()))?
        {
            Object::AuthorizationPolicy(o) | Object::Route(o) | Object::RateLimitPolicy(o) => {
                Some(o)
            }
            _ => None,
        }
    }

    /// An HTTPRoute by namespace and name.
    pub fn http_route(&self, namespace: &str, name: &str) -> Option<&DynamicObject> {
        match self
            .objects
            .get(&Kind::HttpRoute)?
            .get(&(namespace.to_string(), name.to_string()))?
        {
            Object::HttpRoute(o) => Some(o),
            _ => None,
        }
    }

    /// The uid of every pod of a meshed namespace, by namespace and name.
    pub fn meshed_pods(&self) -> BTreeMap<(String, String), String> {
        let meshed = self.meshed();
        self.of(Kind::Pod)
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && meshed.contains(p.metadata.namespace.as_deref().unwrap_or_default())
            })
            .map(|p| {
                (
                    (p.namespace().unwrap_or_default(), p.name_any()),
                    p.uid().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        match self
            .objects
            .get(&Kind::Pod)?
            .get(&(namespace.to_string(), name.to_string()))?
        {
            Object::Pod(p) => Some(p),
            _ => None,
        }
    }
}

/// A Service's virtual IPs (`spec.clusterIPs`, else `spec.clusterIP`); none for a headless one.
fn cluster_ips(svc: &K8sService) -> Vec<IpAddr> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    let all = if listed.is_empty() {
        spec.cluster_ip.iter().cloned().collect()
    } else {
        listed
    };
    all.iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// Whether a namespace carries the mesh label (the control plane's own never counts).
pub fn is_meshed(ns: &K8sNamespace) -> bool {
    ns.labels().get(MESH_LABEL).map(String::as_str) == Some(MESH_ENABLED)
        && ns.name_any() != crate::pki::CONTROL_NAMESPACE
}

/// The mode of a namespace's default: its annotation `onemesh.dev/default-policy-mode`
/// (`enforce` when absent), or what is wrong with it.
pub fn default_policy_mode(ns: &K8sNamespace) -> Result<PolicyMode, String> {
    match ns
        .annotations()
        .get(onemesh_crds::DEFAULT_POLICY_MODE_ANNOTATION)
    {
        None => Ok(PolicyMode::Enforce),
        Some(v) => check::mode(v.trim()).map_err(|p| {
            format!(
                "metadata.annotations[{}]: {p}",
                onemesh_crds::DEFAULT_POLICY_MODE_ANNOTATION
            )
        }),
    }
}

/// What the control plane made of one onemesh object: the `Accepted` condition to write on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    /// `Ok`: in force. `Err`: left out, with every problem found.
    pub accepted: Result<(), Vec<String>>,
    /// The reason word of the condition: `Accepted`, `Invalid`, `UnknownReference`.
    pub reason: &'static str,
}

/// The mesh the cache describes, and a verdict on every onemesh object of a meshed namespace.
pub fn build(cache: &Cache) -> (Mesh, Vec<Verdict>) {
    let (mesh, verdicts, _) = build_all(cache);
    (mesh, verdicts)
}

/// [`build`], and the status of every HTTPRoute of a meshed namespace
/// ([`super::gateway::fold`]).
pub fn build_all(cache: &Cache) -> (Mesh, Vec<Verdict>, Vec<super::gateway::RouteStatus>) {
    let meshed = cache.meshed();
    let mut mesh = Mesh::default();
    let ns_objects: BTreeMap<String, &K8sNamespace> = cache
        .of(Kind::Namespace)
        .filter_map(|o| match o {
            Object::Namespace(ns) => Some((ns.name_any(), ns)),
            _ => None,
        })
        .collect();
    for ns in &meshed {
        let default_mode = match ns_objects.get(ns).map(|o| default_policy_mode(o)) {
            Some(Ok(mode)) => mode,
            Some(Err(e)) => {
                // (a Namespace has no status of ours to write: the control plane's log says it)
                tracing::warn!(namespace = %ns, "{e}; the namespace's default stays enforce");
                PolicyMode::Enforce
            }
            None => PolicyMode::Enforce,
        };
        mesh.namespaces.insert(
            ns.clone(),
            Namespace {
                name: ns.clone(),
                default_mode,
                origin: Origin::Object {
                    kind: "Namespace",
                    namespace: String::new(),
                    name: ns.clone(),
                    uid: String::new(),
                    generation: None,
                },
            },
        );
    }

    // Workloads from pods; and each pod's workload, for the endpoints.
    let mut pod_workload: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for o in cache.of(Kind::Pod) {
        let Object::Pod(pod) = o else { continue };
        let namespace = pod.namespace().unwrap_or_default();
        if !meshed.contains(&namespace) {
            continue;
        }
        if !has_proxy(pod) {
            continue; // not injected: no inbound proxy to send to, no identity of its own
        }
        let (owner_kind, workload) = workload_of(pod);
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        pod_workload.insert(
            (namespace.clone(), pod.name_any()),
            (workload.clone(), service_account.clone()),
        );
        let w = mesh
            .workloads
            .entry((namespace.clone(), workload.clone()))
            .or_insert_with(|| Workload {
                namespace: namespace.clone(),
                name: workload.clone(),
                service_account: service_account.clone(),
                labels: BTreeMap::new(),
                ports: Vec::new(),
                instances: Vec::new(),
                origin: Origin::Object {
                    kind: owner_kind,
                    namespace: namespace.clone(),
                    name: workload.clone(),
                    uid: String::new(),
                    generation: None,
                },
            });
        for (k, v) in pod.labels() {
            if k != "pod-template-hash" {
                w.labels.insert(k.clone(), v.clone());
            }
        }
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let sidecars = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in containers.iter().chain(sidecars) {
            if c.name == PROXY_CONTAINER {
                continue;
            }
            for p in c.ports.iter().flatten() {
                let Ok(port) = check::port(i64::from(p.container_port)) else {
                    continue;
                };
                if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                    continue;
                }
                if !w.ports.iter().any(|wp| wp.port == port) {
                    w.ports.push(WorkloadPort {
                        name: p.name.clone(),
                        port,
                        protocol: Protocol::Http,
                    });
                }
            }
        }
        w.ports.sort_by_key(|p| p.port);
        if let Some(ip) = running_ip(pod) {
            w.instances.push(Instance {
                inbound: SocketAddr::new(ip, INBOUND_PORT),
                admin: Some(SocketAddr::new(ip, ADMIN_PORT)),
                control_admin: Some(SocketAddr::new(ip, CONTROL_ADMIN_PORT)),
                ports: BTreeMap::new(),
            });
            w.instances.sort_by_key(|i| i.inbound);
        }
    }

    // Services and their endpoints from the EndpointSlices.
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for o in cache.of(Kind::EndpointSlice) {
        let Object::EndpointSlice(s) = o else {
            continue;
        };
        let Some(service) = s.labels().get("kubernetes.io/service-name") else {
            continue;
        };
        slices
            .entry((s.namespace().unwrap_or_default(), service.clone()))
            .or_default()
            .push(s);
    }
    for o in cache.of(Kind::Service) {
        let Object::Service(svc) = o else { continue };
        let namespace = svc.namespace().unwrap_or_default();
        if !meshed.contains(&namespace) {
            continue;
        }
        let key = (namespace.clone(), svc.name_any());
        let svc_slices = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
        let mut ports = Vec::new();
        for sp in svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
        {
            if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Ok(port) = check::port(i64::from(sp.port)) else {
                continue;
            };
            let protocol = match sp.app_protocol.as_deref() {
                Some("opaque" | "tcp") => Protocol::Opaque,
                _ => Protocol::Http,
            };
            let name = sp.name.clone().unwrap_or_default();
            let mut endpoints = Vec::new();
            for slice in svc_slices {
                let Some(slice_port) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.clone().unwrap_or_default() == name)
                else {
                    continue;
                };
                let Some(target_port) =
                    slice_port.port.and_then(|p| check::port(i64::from(p)).ok())
                else {
                    continue;
                };
                for e in slice.endpoints.iter().flatten() {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    let Some(target) = e.target_ref.as_ref().filter(|t| {
                        t.kind.as_deref() == Some("Pod")
                            && t.namespace.as_deref().unwrap_or(&namespace) == namespace
                    }) else {
                        continue;
                    };
                    let Some(pod_name) = &target.name else {
                        continue;
                    };
                    let Some((workload, service_account)) =
                        pod_workload.get(&(namespace.clone(), pod_name.clone()))
                    else {
                        continue;
                    };
                    let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok())
                    else {
                        continue;
                    };
                    endpoints.push(Endpoint {
                        addr: SocketAddr::new(ip, INBOUND_PORT),
                        target_port,
                        namespace: namespace.clone(),
                        workload: workload.clone(),
                        service_account: service_account.clone(),
                        protocol,
                    });
                }
            }
            sort_endpoints(&mut endpoints);
            ports.push(ServicePort {
                name: sp.name.clone(),
                port,
                endpoints,
            });
        }
        let cluster_ips = cluster_ips(svc);
        let circuit_breaker = service_breaker(svc).unwrap_or_else(|problems| {
            // (a Service has no status of ours to write: the control plane's log says it)
            tracing::warn!(%namespace, service = %svc.name_any(), "circuit breaker ignored: {}", problems.join("; "));
            None
        });
        mesh.services.insert(
            key,
            Service {
                namespace: namespace.clone(),
                name: svc.name_any(),
                cluster_ips,
                ports,
                circuit_breaker,
                origin: origin("Service", svc.as_ref()),
            },
        );
    }

    let mut verdicts = Vec::new();
    for o in cache.of(Kind::AuthorizationPolicy) {
        let Object::AuthorizationPolicy(obj) = o else {
            continue;
        };
        if !meshed.contains(&obj.namespace().unwrap_or_default()) {
            continue;
        }
        let result = policy(obj);
        if let Ok(p) = &result {
            mesh.policies.push(p.clone());
        }
        verdicts.push(verdict(Kind::AuthorizationPolicy, obj, result.map(|_| ())));
    }
    let mut routes: Vec<(Option<String>, &DynamicObject, Route)> = Vec::new();
    for o in cache.of(Kind::Route) {
        let Object::Route(obj) = o else { continue };
        if !meshed.contains(&obj.namespace().unwrap_or_default()) {
            continue;
        }
        match route(obj) {
            Ok(r) => {
                let created = obj
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string());
                routes.push((created, obj, r));
            }
            Err(e) => verdicts.push(verdict(Kind::Route, obj, Err(e))),
        }
    }
    routes
        .sort_by(|a, b| (&a.2.namespace, &a.0, &a.2.name).cmp(&(&b.2.namespace, &b.0, &b.2.name)));
    for (_, obj, r) in routes {
        let unknown = |field: String, service: &str| {
            let key = (r.namespace.clone(), service.to_string());
            (!mesh.services.contains_key(&key)).then(|| ModelError {
                origin: r.origin.clone(),
                field,
                problem: Problem::UnknownService(format!("{}/{service}", r.namespace)),
            })
        };
        let mut errors: Vec<ModelError> = unknown("spec.service".into(), &r.service)
            .into_iter()
            .collect();
        for (i, b) in r.rules.backends.iter().enumerate() {
            errors.extend(unknown(format!("spec.backends[{i}].service"), &b.service));
        }
        if errors.is_empty() {
            mesh.routes.push(r);
            verdicts.push(verdict(Kind::Route, obj, Ok(())));
        } else {
            verdicts.push(verdict(Kind::Route, obj, Err(errors)));
        }
    }
    for o in cache.of(Kind::RateLimitPolicy) {
        let Object::RateLimitPolicy(obj) = o else {
            continue;
        };
        if !meshed.contains(&obj.namespace().unwrap_or_default()) {
            continue;
        }
        let result = rate_limit(obj);
        if let Ok(l) = &result {
            mesh.rate_limits.push(l.clone());
        }
        verdicts.push(verdict(Kind::RateLimitPolicy, obj, result.map(|_| ())));
    }
    // HTTPRoutes after every onemesh Route: for one Service, its Routes match first.
    let http_routes = cache.of(Kind::HttpRoute).filter_map(|o| match o {
        Object::HttpRoute(obj) => Some(obj),
        _ => None,
    });
    let (gateway_routes, statuses) = super::gateway::fold(http_routes, &mesh);
    mesh.routes.extend(gateway_routes);
    (mesh, verdicts, statuses)
}

/// A RateLimitPolicy object in the model, or every problem it has (the checks of mesh.yaml; a
/// workload without pods right now is fine, as for AuthorizationPolicy).
pub fn rate_limit(obj: &DynamicObject) -> Result<RateLimit, Vec<ModelError>> {
    use crate::config::traffic_check as t;
    use crate::config::{Rate, RateLimits, RateOverride};
    let origin = dyn_origin("RateLimitPolicy", obj);
    let mut p = Problems {
        origin: origin.clone(),
        errors: Vec::new(),
    };
    let spec: Option<onemesh_crds::RateLimitPolicySpec> = decode(&mut p, obj);
    let Some(spec) = spec else {
        return Err(p.errors);
    };
    let workload = p.check("spec.target.workload", check::name(&spec.target.workload));
    let target_port = spec
        .target
        .port
        .and_then(|n| p.check("spec.target.port", check::port(i64::from(n))));
    let matches = spec
        .matches
        .as_ref()
        .map(|m| http_match(&mut p, "spec.match", m))
        .unwrap_or_default();
    let rate = |p: &mut Problems, field: &str, rps: i64, burst: Option<i64>| {
        let per_second = p.check(&format!("{field}.requestsPerSecond"), t::check_rate(rps));
        let burst = match burst {
            None => per_second,
            Some(b) => p.check(&format!("{field}.burst"), t::check_rate(b)),
        };
        Some(Rate {
            requests_per_second: per_second?,
            burst: burst?,
        })
    };
    let mut limits = RateLimits {
        total: spec
            .total
            .as_ref()
            .and_then(|r| rate(&mut p, "spec.total", r.requests_per_second, r.burst)),
        identity: spec
            .identity
            .as_ref()
            .and_then(|r| rate(&mut p, "spec.identity", r.requests_per_second, r.burst)),
        overrides: Vec::new(),
    };
    for (i, o) in spec.overrides.iter().enumerate() {
        let field = format!("spec.overrides[{i}]");
        let rate = rate(&mut p, &field, o.requests_per_second, o.burst);
        let identities: Vec<_> = o
            .from
            .identities
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, id)| {
                p.check(
                    &format!("{field}.from.identities[{j}]"),
                    check::spiffe_id(id),
                )
            })
            .collect();
        let namespaces: Vec<_> = o
            .from
            .namespaces
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, ns)| {
                p.check(&format!("{field}.from.namespaces[{j}]"), check::name(ns))
            })
            .collect();
        if identities.is_empty() && namespaces.is_empty() {
            p.check::<()>(&format!("{field}.from"), Err(Problem::Empty));
        }
        if let Some(rate) = rate {
            limits.overrides.push(RateOverride {
                rate,
                identities,
                namespaces,
            });
        }
    }
    if p.errors.is_empty() {
        p.check("spec", t::check_limits(&limits));
    }
    let (Some(target_workload), true) = (workload, p.errors.is_empty()) else {
        return Err(p.errors);
    };
    Ok(RateLimit {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        target_workload,
        target_port,
        matches,
        limits: std::mem::take(&mut limits),
        origin,
    })
}

/// The workload a pod belongs to: `(kind, name)` of its controller (see the module doc).
pub fn workload_of(pod: &Pod) -> (&'static str, String) {
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let Some(owner) = owner else {
        return ("Pod", pod.name_any());
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = pod.labels().get("pod-template-hash");
            match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => ("Deployment", deployment.to_string()),
                None => ("ReplicaSet", owner.name.clone()),
            }
        }
        "StatefulSet" => ("StatefulSet", owner.name.clone()),
        "DaemonSet" => ("DaemonSet", owner.name.clone()),
        "Job" => ("Job", owner.name.clone()),
        _ => ("Controller", owner.name.clone()),
    }
}

/// Whether the pod runs the proxy: a container, or a native sidecar (an init container with
/// `restartPolicy: Always`), named [`PROXY_CONTAINER`].
pub fn has_proxy(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers.iter().any(|c| c.name == PROXY_CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always"))
}

/// The IP of a pod that runs (has an IP, is not finished and is not being deleted).
fn running_ip(pod: &Pod) -> Option<IpAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

fn origin<R: Resource<DynamicType = ()>>(kind: &'static str, r: &R) -> Origin {
    Origin::Object {
        kind,
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        uid: r.uid().unwrap_or_default(),
        generation: r.meta().generation,
    }
}

fn dyn_origin(kind: &'static str, r: &DynamicObject) -> Origin {
    Origin::Object {
        kind,
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        uid: r.uid().unwrap_or_default(),
        generation: r.metadata.generation,
    }
}

fn verdict(kind: Kind, obj: &DynamicObject, result: Result<(), Vec<ModelError>>) -> Verdict {
    let reason = match &result {
        Ok(()) => "Accepted",
        Err(errors) => errors.first().map_or("Invalid", ModelError::reason),
    };
    Verdict {
        kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        generation: obj.metadata.generation,
        accepted: result.map_err(|errors| errors.iter().map(ToString::to_string).collect()),
        reason,
    }
}

/// Collects the problems of one object, each at its field.
struct Problems {
    origin: Origin,
    errors: Vec<ModelError>,
}

impl Problems {
    fn check<T>(&mut self, field: &str, r: Result<T, Problem>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(problem) => {
                self.errors.push(ModelError {
                    origin: self.origin.clone(),
                    field: field.to_string(),
                    problem,
                });
                None
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(p: &mut Problems, obj: &DynamicObject) -> Option<T> {
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    p.check(
        "spec",
        serde_json::from_value(spec).map_err(|e| Problem::Undecodable(e.to_string())),
    )
}

fn http_match(p: &mut Problems, field: &str, m: &onemesh_crds::HttpMatch) -> HttpMatch {
    let mut out = HttpMatch::default();
    for (i, method) in m.methods.iter().flatten().enumerate() {
        if let Some(v) = p.check(&format!("{field}.methods[{i}]"), check::method(method)) {
            out.methods.push(v);
        }
    }
    if let Some(prefix) = &m.path_prefix {
        out.path_prefix = p.check(&format!("{field}.pathPrefix"), check::path_prefix(prefix));
    }
    out
}

/// One entry of a policy's `routes`: an HTTP match, or `grpc` turned into the one it stands for.
fn policy_route(p: &mut Problems, field: &str, r: &onemesh_crds::PolicyRoute) -> Option<HttpMatch> {
    let Some(g) = &r.grpc else {
        return Some(http_match(
            p,
            field,
            &onemesh_crds::HttpMatch {
                methods: r.methods.clone(),
                path_prefix: r.path_prefix.clone(),
            },
        ));
    };
    if r.methods.is_some() || r.path_prefix.is_some() {
        return p.check(&format!("{field}.grpc"), Err(Problem::GrpcWithHttpMatch));
    }
    match check::grpc_route(&g.service, g.method.as_deref()) {
        Ok(m) => Some(m),
        Err(problem) => {
            let at = match problem {
                Problem::BadGrpcMethod(_) => format!("{field}.grpc.method"),
                _ => format!("{field}.grpc.service"),
            };
            p.check(&at, Err(problem))
        }
    }
}

/// An AuthorizationPolicy object in the model, or every problem it has.
pub fn policy(obj: &DynamicObject) -> Result<Policy, Vec<ModelError>> {
    let origin = dyn_origin("AuthorizationPolicy", obj);
    let mut p = Problems {
        origin: origin.clone(),
        errors: Vec::new(),
    };
    let spec: Option<onemesh_crds::AuthorizationPolicySpec> = decode(&mut p, obj);
    let Some(spec) = spec else {
        return Err(p.errors);
    };
    let target = spec.target.unwrap_or_default();
    let target_workload = target
        .workload
        .as_deref()
        .and_then(|w| p.check("spec.target.workload", check::name(w)));
    let target_port = target
        .port
        .and_then(|n| p.check("spec.target.port", check::port(i64::from(n))));
    let routes = spec
        .routes
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, m)| policy_route(&mut p, &format!("spec.routes[{i}]"), m))
        .collect();
    let mode = match spec.mode.as_deref() {
        None => Some(PolicyMode::Enforce),
        Some(m) => p.check("spec.mode", check::mode(m)),
    };
    let from_identities = spec
        .from
        .identities
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, id)| p.check(&format!("spec.from.identities[{i}]"), check::spiffe_id(id)))
        .collect();
    let from_namespaces = spec
        .from
        .namespaces
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, ns)| p.check(&format!("spec.from.namespaces[{i}]"), check::name(ns)))
        .collect();
    let (true, Some(mode)) = (p.errors.is_empty(), mode) else {
        return Err(p.errors);
    };
    Ok(Policy {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        target_workload,
        target_port,
        routes,
        from_identities,
        from_namespaces,
        from_unauthenticated: spec.from.unauthenticated.unwrap_or(false),
        mode,
        origin,
    })
}

/// A Route object in the model (its service not checked yet), or every problem it has.
pub fn route(obj: &DynamicObject) -> Result<Route, Vec<ModelError>> {
    let origin = dyn_origin("Route", obj);
    let mut p = Problems {
        origin: origin.clone(),
        errors: Vec::new(),
    };
    let spec: Option<onemesh_crds::RouteSpec> = decode(&mut p, obj);
    let Some(spec) = spec else {
        return Err(p.errors);
    };
    let service = p.check("spec.service", check::name(&spec.service));
    let matches = spec
        .matches
        .as_ref()
        .map(|m| http_match(&mut p, "spec.match", m))
        .unwrap_or_default();
    let timeout = spec
        .timeout
        .as_deref()
        .and_then(|t| p.check("spec.timeout", check::duration(t)))
        .filter(|d| !d.is_zero());
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let service = p.check(
            &format!("spec.backends[{i}].service"),
            check::name(&b.service),
        );
        let weight = p.check(
            &format!("spec.backends[{i}].weight"),
            check::weight(i64::from(b.weight.unwrap_or(1))),
        );
        if let (Some(service), Some(weight)) = (service, weight) {
            backends.push(Backend { service, weight });
        }
    }
    p.check("spec.backends", check::backends(&backends));
    let retry = spec.retry.as_ref().map(|r| retry(&mut p, r));
    let fault = spec.fault.as_ref().and_then(|f| route_fault(&mut p, f));
    let circuit_breaker = spec
        .circuit_breaker
        .as_ref()
        .and_then(|b| match check::circuit_breaker(&raw_breaker(b)) {
            Ok(b) => Some(b),
            Err(problems) => {
                for (field, problem) in problems {
                    p.errors.push(ModelError {
                        origin: p.origin.clone(),
                        field: breaker_field("spec.circuitBreaker", field),
                        problem,
                    });
                }
                None
            }
        });
    let (Some(service), true) = (service, p.errors.is_empty()) else {
        return Err(p.errors);
    };
    Ok(Route {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        service,
        matches,
        rules: RouteRules {
            timeout,
            retryable: spec.retryable.unwrap_or(false),
            backends,
            retry,
            fault,
            circuit_breaker,
        },
        origin,
    })
}

/// A Route's `spec.retry` with the defaults filled in (problems recorded in `p`).
fn retry(p: &mut Problems, r: &onemesh_crds::Retry) -> Retry {
    let mut out = Retry::default();
    let int = |v: Option<u32>| v.map(i64::from);
    if let Some(v) =
        int(r.attempts).and_then(|v| p.check("spec.retry.attempts", check::attempts(v)))
    {
        out.attempts = v;
    }
    if let Some(v) = int(r.max_body_bytes)
        .and_then(|v| p.check("spec.retry.maxBodyBytes", check::max_body_bytes(v)))
    {
        out.max_body_bytes = v;
    }
    if let Some(b) = &r.budget {
        if let Some(v) = int(b.percent)
            .and_then(|v| p.check("spec.retry.budget.percent", check::budget_percent(v)))
        {
            out.budget_percent = v;
        }
        if let Some(v) = int(b.min_per_second)
            .and_then(|v| p.check("spec.retry.budget.minPerSecond", check::min_per_second(v)))
        {
            out.budget_min_per_second = v;
        }
    }
    if let Some(on) = &r.on {
        let mut conditions = Vec::new();
        for (i, token) in on.iter().enumerate() {
            if let Some(list) = p.check(&format!("spec.retry.on[{i}]"), check::retry_on(token)) {
                conditions.extend(list);
            }
        }
        conditions.sort();
        conditions.dedup();
        out.on = conditions;
    }
    if let Some(t) = &r.per_try_timeout
        && let Some(d) = p.check("spec.retry.perTryTimeout", check::duration(t))
    {
        out.per_try_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(h) = &r.idempotency_header
        && let Some(name) = p.check("spec.retry.idempotencyHeader", check::header_name(h))
    {
        out.idempotency_header = name;
    }
    out
}

/// A Route object's `spec.fault`, with the checks of mesh.yaml.
fn route_fault(p: &mut Problems, f: &onemesh_crds::RouteFault) -> Option<Fault> {
    use crate::config::traffic_check as t;
    let percent = |p: &mut Problems, field: &str, v: Option<f64>| match v {
        None => Some(Percent::ALL),
        Some(v) => p.check(field, t::check_percent(&v.to_string())),
    };
    let abort = f.abort.as_ref().and_then(|a| {
        let status = match (a.http_status, a.grpc_status) {
            (Some(h), None) => p.check(
                "spec.fault.abort.httpStatus",
                t::check_http_status(i64::from(h)),
            ),
            (None, Some(g)) => p.check(
                "spec.fault.abort.grpcStatus",
                t::check_grpc_status(i64::from(g)),
            ),
            _ => p.check("spec.fault.abort", Err(Problem::AbortStatusChoice)),
        };
        let percent = percent(p, "spec.fault.abort.percent", a.percent);
        Some(FaultAbort {
            status: status?,
            percent: percent?,
        })
    });
    let delay = f.delay.as_ref().and_then(|d| {
        let duration = p
            .check("spec.fault.delay.duration", check::duration(&d.duration))
            .filter(|d| !d.is_zero());
        let percent = percent(p, "spec.fault.delay.percent", d.percent);
        Some(FaultDelay {
            duration: duration?,
            percent: percent?,
        })
    });
    let header = f.header.as_ref().and_then(|h| {
        let name = p.check("spec.fault.header.name", t::check_header_name(&h.name));
        let value = match &h.value {
            None => Some(None),
            Some(v) => p
                .check("spec.fault.header.value", t::check_header_value(v))
                .map(Some),
        };
        Some(FaultHeader {
            name: name?,
            value: value?,
        })
    });
    let fault = Fault {
        abort,
        delay,
        header,
    };
    p.check("spec.fault", t::check_fault(&fault))?;
    Some(fault)
}

/// A circuit breaker's field path under `prefix`.
fn breaker_field(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// A CRD circuit breaker (or a Service annotation's) as written.
fn raw_breaker(b: &onemesh_crds::CircuitBreaker) -> check::RawBreaker {
    check::RawBreaker {
        consecutive_failures: b.consecutive_failures,
        success_rate: b.success_rate.as_ref().map(|s| check::RawSuccessRate {
            // (a number that is not an f64 is out of range anyway)
            min_percent: s
                .min_percent
                .as_ref()
                .map(|n| n.as_f64().unwrap_or(f64::NAN)),
            window: s.window.clone(),
            min_requests: s.min_requests,
        }),
        base_ejection: b.base_ejection.clone(),
        max_ejection: b.max_ejection.clone(),
        max_ejection_percent: b.max_ejection_percent,
    }
}

/// The circuit breaker a Service's annotation gives it: `None` without the annotation; an
/// invalid one is reported, and the Service is kept without a breaker (as without the
/// annotation: a typo must not take a service out of the mesh).
pub fn service_breaker(svc: &K8sService) -> Result<Option<CircuitBreaker>, Vec<String>> {
    let Some(text) = svc
        .annotations()
        .get(onemesh_crds::CIRCUIT_BREAKER_ANNOTATION)
    else {
        return Ok(None);
    };
    let field = format!(
        "metadata.annotations[{}]",
        onemesh_crds::CIRCUIT_BREAKER_ANNOTATION
    );
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        vec![format!(
            "{field}: not JSON ({e}): write a JSON object, e.g. {{\"consecutiveFailures\": 5}}"
        )]
    })?;
    // typos must not pass silently: every key is one of the breaker's
    let known = [
        "consecutiveFailures",
        "successRate",
        "baseEjection",
        "maxEjection",
        "maxEjectionPercent",
    ];
    if let Some(map) = value.as_object()
        && let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str()))
    {
        return Err(vec![format!(
            "{field}: unknown field {unknown:?}: use one of {}",
            known.join(", ")
        )]);
    }
    let spec: onemesh_crds::CircuitBreaker = serde_json::from_value(value).map_err(|e| {
        vec![format!(
            "{field}: {e} (see docs/mesh-yaml.md, circuit breakers)"
        )]
    })?;
    check::circuit_breaker(&raw_breaker(&spec))
        .map(Some)
        .map_err(|problems| {
            problems
                .into_iter()
                .map(|(f, problem)| format!("{}: {problem}", breaker_field(&field, f)))
                .collect()
        })
}

/// The `Accepted` condition to write on an object that carries `current`, or `None` when it
/// already says the same (status, reason, message, observed generation). The transition time is
/// kept while the status stays, else it is `now` (RFC 3339).
pub fn condition_update(
    current: Option<&onemesh_crds::Condition>,
    v: &Verdict,
    now: &str,
) -> Option<onemesh_crds::Condition> {
    let (status, message) = match &v.accepted {
        Ok(()) => ("True", String::new()),
        Err(problems) => ("False", problems.join("\n")),
    };
    let mut wanted = onemesh_crds::Condition {
        type_: onemesh_crds::ACCEPTED.to_string(),
        status: status.to_string(),
        reason: v.reason.to_string(),
        message,
        observed_generation: v.generation,
        last_transition_time: Some(now.to_string()),
    };
    if let Some(current) = current {
        if current.status == wanted.status
            && current.reason == wanted.reason
            && current.message == wanted.message
            && current.observed_generation == wanted.observed_generation
        {
            return None;
        }
        if current.status == wanted.status && current.last_transition_time.is_some() {
            wanted.last_transition_time = current.last_transition_time.clone();
        }
    }
    Some(wanted)
}

/// The `Accepted` condition an onemesh object carries, if any.
pub fn accepted_condition(obj: &DynamicObject) -> Option<onemesh_crds::Condition> {
    let conditions = obj.data.get("status")?.get("conditions")?.clone();
    serde_json::from_value::<Vec<onemesh_crds::Condition>>(conditions)
        .ok()?
        .into_iter()
        .find(|c| c.type_ == onemesh_crds::ACCEPTED)
}
