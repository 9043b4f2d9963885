//! Tests of control-plane mode against a fake control plane: the generated tonic server traits
//! over state the test pushes to, served over TLS (a leaf for the control plane's id from a test
//! CA) on 127.0.0.1 port 0, one port for all three services. Stopping the fake drops every
//! connection, as a crashed control plane would; restarting it binds the same port again.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use onemesh_api::destination::destination_server::{self, DestinationServer};
use onemesh_api::destination::{self as dst, Snapshot, Update, WatchRequest};
use onemesh_api::identity::identity_server::{self, IdentityServer};
use onemesh_api::identity::{CertifyRequest, CertifyResponse};
use onemesh_api::policy::policy_server::{self, PolicyServer};
use onemesh_api::policy::{self as pol, InboundRequest, OutboundRequest};
use onemesh_identity::{CredentialStore, Issuer, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::*;
use crate::config::Config;
use crate::discover::{Discover, Resolution, Service};

const OWN_ID: &str = "spiffe://cluster.local/ns/pg/sa/pg";
const CONTROL_ID: &str = "spiffe://cluster.local/ns/onemesh/sa/control";
const TOKEN: &str = "good-token";
const WAIT: Duration = Duration::from_secs(10);

// ---------- the fake control plane ----------

struct FakeState {
    issuer: Issuer,
    anchors: TrustBundle,
    destinations: watch::Sender<HashMap<String, Snapshot>>,
    outbound: watch::Sender<HashMap<String, pol::OutboundPolicy>>,
    inbound: watch::Sender<pol::InboundPolicy>,
    destination_watches: AtomicUsize,
    certify_calls: AtomicUsize,
    /// How long `watch_outbound` holds back its first message (a slow policy stream).
    outbound_delay: std::sync::Mutex<Duration>,
    /// Every `Audit.Append` received, answered or not.
    appends: std::sync::Mutex<Vec<onemesh_api::audit::AppendRequest>>,
    /// How many `Audit.Append` calls to fail (after receiving them) before answering.
    fail_appends: AtomicUsize,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Clone)]
struct Fake(Arc<FakeState>);

/// Streams `first(current)`, then `next(previous, current)` on every change, until the client
/// goes away.
fn follow<S, T>(
    mut rx: watch::Receiver<S>,
    first: impl Fn(&S) -> T + Send + 'static,
    next: impl Fn(&S, &S) -> Option<T> + Send + 'static,
) -> BoxStream<T>
where
    S: Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut previous = rx.borrow_and_update().clone();
        if tx.send(Ok(first(&previous))).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            let current = rx.borrow_and_update().clone();
            if let Some(update) = next(&previous, &current)
                && tx.send(Ok(update)).await.is_err()
            {
                return;
            }
            previous = current;
        }
    });
    Box::pin(ReceiverStream::new(out))
}

fn missing() -> Snapshot {
    Snapshot {
        exists: false,
        ..Snapshot::default()
    }
}

/// The update that takes a client from `old` to `new`: a diff when only endpoints changed.
fn destination_update(old: &Snapshot, new: &Snapshot) -> Option<Update> {
    if old == new {
        return None;
    }
    let kind = if old.exists != new.exists || old.service != new.service {
        dst::update::Kind::Snapshot(new.clone())
    } else {
        let before: BTreeMap<_, _> = old.endpoints.iter().map(|e| (&e.addr, e)).collect();
        let after: BTreeMap<_, _> = new.endpoints.iter().map(|e| (&e.addr, e)).collect();
        dst::update::Kind::Diff(dst::Diff {
            add: after
                .iter()
                .filter(|(a, e)| before.get(*a) != Some(*e))
                .map(|(_, e)| (*e).clone())
                .collect(),
            remove: before
                .keys()
                .filter(|a| !after.contains_key(*a))
                .map(|a| (*a).clone())
                .collect(),
        })
    };
    Some(Update { kind: Some(kind) })
}

#[tonic::async_trait]
impl identity_server::Identity for Fake {
    type WatchTrustStream = BoxStream<onemesh_api::identity::TrustUpdate>;

    async fn watch_trust(
        &self,
        _request: Request<tonic::Streaming<onemesh_api::identity::TrustReport>>,
    ) -> Result<Response<Self::WatchTrustStream>, Status> {
        Err(Status::unimplemented("this fake serves no trust updates"))
    }

    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        self.0.certify_calls.fetch_add(1, Ordering::SeqCst);
        let req = request.into_inner();
        if req.token != TOKEN {
            return Err(Status::unauthenticated(
                "unknown bootstrap token: send the token `onemesh up` gave this proxy",
            ));
        }
        let own: SpiffeId = OWN_ID.parse().unwrap();
        let issued = self
            .0
            .issuer
            .sign_csr(&req.csr, Duration::from_secs(3600), |asked| asked == &own)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        Ok(Response::new(CertifyResponse {
            identity: issued.id.to_string(),
            chain: issued.chain.iter().map(|c| c.to_vec()).collect(),
            chain_pem: issued.chain_pem(),
            trust_anchors: self.0.anchors.roots().iter().map(|c| c.to_vec()).collect(),
            trust_anchors_pem: self.0.anchors.to_pem(),
            not_before_unix_secs: 0,
            not_after_unix_secs: 0,
        }))
    }
}

#[tonic::async_trait]
impl destination_server::Destination for Fake {
    type WatchStream = BoxStream<Update>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.destination_watches.fetch_add(1, Ordering::SeqCst);
        let name = request.into_inner().name;
        if name.contains('!') {
            return Err(Status::invalid_argument("cannot parse the name"));
        }
        let rx = self.0.destinations.subscribe();
        let n1 = name.clone();
        let stream = follow(
            rx,
            move |all| Update {
                kind: Some(dst::update::Kind::Snapshot(
                    all.get(&n1).cloned().unwrap_or_else(missing),
                )),
            },
            move |old, new| {
                let get =
                    |m: &HashMap<String, Snapshot>| m.get(&name).cloned().unwrap_or_else(missing);
                destination_update(&get(old), &get(new))
            },
        );
        Ok(Response::new(stream))
    }
}

#[tonic::async_trait]
impl onemesh_api::audit::audit_server::Audit for Fake {
    async fn append(
        &self,
        req: Request<onemesh_api::audit::AppendRequest>,
    ) -> Result<Response<onemesh_api::audit::AppendResponse>, Status> {
        let batch = req.into_inner();
        let records = batch.records.len() as u64;
        self.0.appends.lock().unwrap().push(batch);
        let fail = self
            .0
            .fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            // received, but the answer is lost: the proxy must send the same batch again
            return Err(Status::unavailable("the log is not writable right now"));
        }
        Ok(Response::new(onemesh_api::audit::AppendResponse {
            sequence: records,
        }))
    }
}

#[tonic::async_trait]
impl policy_server::Policy for Fake {
    type WatchInboundStream = BoxStream<pol::InboundPolicy>;
    type WatchOutboundStream = BoxStream<pol::OutboundPolicy>;

    async fn watch_inbound(
        &self,
        _request: Request<InboundRequest>,
    ) -> Result<Response<Self::WatchInboundStream>, Status> {
        let stream = follow(
            self.0.inbound.subscribe(),
            |p| p.clone(),
            |old, new| (old != new).then(|| new.clone()),
        );
        Ok(Response::new(stream))
    }

    async fn watch_outbound(
        &self,
        request: Request<OutboundRequest>,
    ) -> Result<Response<Self::WatchOutboundStream>, Status> {
        let name = request.into_inner().name;
        let delay = *self.0.outbound_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let n1 = name.clone();
        let stream = follow(
            self.0.outbound.subscribe(),
            move |all| all.get(&n1).cloned().unwrap_or_default(),
            move |old, new| {
                let (old, new) = (old.get(&name), new.get(&name));
                (old != new).then(|| new.cloned().unwrap_or_default())
            },
        );
        Ok(Response::new(stream))
    }
}

/// The test PKI and the fake's state; servers come and go around it.
struct Plane {
    state: Arc<FakeState>,
    tls: Arc<rustls::ServerConfig>,
    bundle: TrustBundle,
}

/// A running fake server; dropping it (or [`Server::stop`]) closes every connection.
struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Server {
    fn stop(self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Plane {
    fn new() -> Plane {
        let anchor = TrustAnchor::generate("cluster.local", Duration::from_secs(86_400)).unwrap();
        let issuer = anchor.issue_issuer(Duration::from_secs(86_400)).unwrap();
        let control: SpiffeId = CONTROL_ID.parse().unwrap();
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_der(&control).unwrap();
        let leaf = issuer
            .sign_csr(&csr, Duration::from_secs(3600), |_| true)
            .unwrap();
        let store = CredentialStore::new(control, key, leaf, anchor.bundle()).unwrap();
        let tls = store.server_config_optional_client_auth(&[b"h2"]);
        let (destinations, _) = watch::channel(HashMap::new());
        let (outbound, _) = watch::channel(HashMap::new());
        let (inbound, _) = watch::channel(pol::InboundPolicy::default());
        Plane {
            state: Arc::new(FakeState {
                issuer,
                anchors: anchor.bundle(),
                destinations,
                outbound,
                inbound,
                destination_watches: AtomicUsize::new(0),
                certify_calls: AtomicUsize::new(0),
                outbound_delay: std::sync::Mutex::new(Duration::ZERO),
                appends: std::sync::Mutex::new(Vec::new()),
                fail_appends: AtomicUsize::new(0),
            }),
            tls,
            bundle: anchor.bundle(),
        }
    }

    /// Serves on `addr` (port 0 for any).
    async fn serve(&self, addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Fake(self.state.clone());
        let routes = tonic::service::Routes::new(IdentityServer::new(fake.clone()))
            .add_service(DestinationServer::new(fake.clone()))
            .add_service(PolicyServer::new(fake.clone()))
            .add_service(onemesh_api::audit::audit_server::AuditServer::new(fake));
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let (stop, stopped) = watch::channel(false);
        let mut stop_accepting = stopped.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    _ = stop_accepting.wait_for(|s| *s) => return,
                };
                let acceptor = acceptor.clone();
                let routes = routes.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(routes));
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Server { addr, stop }
    }

    fn set_destination(&self, name: &str, snapshot: Snapshot) {
        self.state.destinations.send_modify(|all| {
            all.insert(name.to_string(), snapshot);
        });
    }

    fn set_inbound(&self, policy: pol::InboundPolicy) {
        self.state.inbound.send_replace(policy);
    }
}

fn endpoint(addr: &str) -> dst::Endpoint {
    dst::Endpoint {
        addr: addr.to_string(),
        target_port: 8080,
        identity: "spiffe://cluster.local/ns/bank/sa/bank".to_string(),
        weight: 1,
        protocol: dst::ProtocolHint::Http as i32,
        workload: "bank".to_string(),
        namespace: "bank".to_string(),
    }
}

fn bank(endpoints: &[&str]) -> Snapshot {
    Snapshot {
        exists: true,
        service: "bank".to_string(),
        namespace: "bank".to_string(),
        port: 80,
        endpoints: endpoints.iter().map(|a| endpoint(a)).collect(),
    }
}

fn allow(name: &str) -> pol::InboundPolicy {
    pol::InboundPolicy {
        exists: true,
        authorizations: vec![pol::Authorization {
            name: name.to_string(),
            ports: vec![8080],
            routes: vec![],
            identities: vec!["spiffe://cluster.local/ns/order/sa/web".to_string()],
            namespaces: vec![],
            unauthenticated: false,
            mode: pol::Mode::Enforce.into(),
        }],
        ports: vec![8080],
        ..Default::default()
    }
}

// ---------- the proxy side ----------

fn config(control: SocketAddr, token: &str) -> Config {
    let control = control.to_string();
    let vars: HashMap<&str, &str> = HashMap::from([
        (config::ENV_IDENTITY, OWN_ID),
        (config::ENV_OUTBOUND_ADDR, "127.0.0.1:0"),
        (config::ENV_INBOUND_ADDR, "127.0.0.1:0"),
        (config::ENV_ADMIN_ADDR, "127.0.0.1:0"),
        (config::ENV_CONTROL_ADMIN_ADDR, "127.0.0.1:0"),
        (
            config::ENV_TRUST_ANCHORS,
            "/the/test/passes/the/bundle/itself.pem",
        ),
        (config::ENV_CONTROL_IDENTITY_ADDR, control.as_str()),
        (config::ENV_CONTROL_DESTINATION_ADDR, control.as_str()),
        (config::ENV_CONTROL_POLICY_ADDR, control.as_str()),
        (config::ENV_IDENTITY_TOKEN, token),
    ]);
    Config::from_source(&vars).unwrap()
}

fn sources_for(plane: &Plane, config: &Config) -> Sources {
    let control = config.control.clone().unwrap();
    sources_with_bundle(config, &control, plane.bundle.clone()).unwrap()
}

/// Gives `sources` a certificate for [`OWN_ID`] without running a proxy (the control-plane
/// streams open only once the proxy holds one).
fn attach_certificate(plane: &Plane, sources: &Sources) {
    let id: SpiffeId = OWN_ID.parse().unwrap();
    let key = onemesh_identity::WorkloadKey::generate().unwrap();
    let issued = plane
        .state
        .issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(3600), |a| {
            a == &id
        })
        .unwrap();
    let store =
        onemesh_identity::CredentialStore::new(id, key, issued, plane.bundle.clone()).unwrap();
    let (tx, rx) = watch::channel(Some(store));
    std::mem::forget(tx);
    sources.control.as_ref().unwrap().attach_credentials(rx);
}

/// `GET path` on the admin server: status and body.
async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let fetch = async {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(WAIT, fetch).await.unwrap()
}

/// Polls `check` every 20 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bank_target() -> Target {
    Target::Name {
        host: "bank.bank".to_string(),
        port: 80,
    }
}

async fn resolve_mesh(discover: &dyn Discover, target: &Target) -> watch::Receiver<Arc<Service>> {
    match tokio::time::timeout(WAIT, discover.resolve(target))
        .await
        .unwrap()
    {
        Ok(Resolution::Mesh(rx)) => rx,
        Ok(Resolution::External) => panic!("{target:?} resolved to external"),
        Err(e) => panic!("{target:?} did not resolve: {e}"),
    }
}

fn addrs(service: &Service) -> Vec<String> {
    service
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

// ---------- tests ----------

#[test]
fn control_plane_variables_select_the_mode_and_default_the_id() {
    let base = [
        (config::ENV_IDENTITY, "spiffe://prod.example/ns/pg/sa/pg"),
        (config::ENV_TRUST_ANCHORS, "/anchors.pem"),
    ];
    let static_mode = Config::from_source(&HashMap::from(base)).unwrap();
    assert!(static_mode.control.is_none());

    let mut vars: HashMap<&str, &str> = HashMap::from(base);
    vars.insert(config::ENV_CONTROL_IDENTITY_ADDR, "control.onemesh:8080");
    vars.insert(config::ENV_CONTROL_DESTINATION_ADDR, "127.0.0.1:8086");
    vars.insert(config::ENV_CONTROL_POLICY_ADDR, "127.0.0.1:8090");
    vars.insert(config::ENV_IDENTITY_TOKEN, "t");
    let control = Config::from_source(&vars).unwrap().control.unwrap();
    assert_eq!(
        control.id.as_str(),
        "spiffe://prod.example/ns/onemesh/sa/control"
    );
    assert_eq!(control.identity_addr, "control.onemesh:8080");
    assert!(
        !format!("{control:?}").contains("\"t\""),
        "the token must not be logged"
    );

    // A missing address, a bad one and a missing token are all reported at once.
    vars.remove(config::ENV_CONTROL_POLICY_ADDR);
    vars.insert(config::ENV_CONTROL_DESTINATION_ADDR, "no-port");
    vars.remove(config::ENV_IDENTITY_TOKEN);
    let err = Config::from_source(&vars).unwrap_err();
    let names: Vec<_> = err.bad_vars().iter().map(|b| b.name).collect();
    assert!(names.contains(&config::ENV_CONTROL_POLICY_ADDR), "{err}");
    assert!(
        names.contains(&config::ENV_CONTROL_DESTINATION_ADDR),
        "{err}"
    );
    assert!(names.contains(&config::ENV_IDENTITY_TOKEN), "{err}");
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let mut b = Backoff::new();
    let first = b.next_delay();
    assert!(
        first <= MIN_BACKOFF && first >= MIN_BACKOFF * 4 / 5,
        "{first:?}"
    );
    let second = b.next_delay();
    assert!(
        second <= MIN_BACKOFF * 2 && second >= MIN_BACKOFF * 8 / 5,
        "{second:?}"
    );
    for _ in 0..20 {
        let d = b.next_delay();
        assert!(d <= MAX_BACKOFF, "{d:?}");
    }
    assert!(b.next_delay() >= MAX_BACKOFF * 4 / 5);
    b.reset();
    assert!(b.next_delay() <= MIN_BACKOFF);
}

#[test]
fn unusable_entries_are_skipped_and_never_widen_policy() {
    let mut d = convert::Destination::default();
    let mut snapshot = bank(&["127.0.0.1:1", "not-an-addr"]);
    snapshot.endpoints[0].weight = 0;
    let skipped = d.apply(Update {
        kind: Some(dst::update::Kind::Snapshot(snapshot)),
    });
    assert_eq!(skipped, vec![ConvertError::BadAddr("not-an-addr".into())]);
    let service = d.service("bank.bank:80", Vec::new(), None);
    assert_eq!(&*service.name, "bank.bank");
    assert_eq!(service.endpoints.len(), 1);
    assert_eq!(service.endpoints[0].weight, 1);

    // An authorization whose only route has a bad method still covers its port, but admits nobody.
    let mut policy = allow("bad-route");
    policy.authorizations[0].routes = vec![pol::HttpRoute {
        methods: vec!["GE T".into()],
        path_prefix: "/".into(),
    }];
    let (auths, skipped) = convert::authorizations(&policy);
    assert_eq!(skipped.len(), 1);
    let caller: SpiffeId = "spiffe://cluster.local/ns/order/sa/web".parse().unwrap();
    let same_ns: SpiffeId = "spiffe://cluster.local/ns/pg/sa/other".parse().unwrap();
    let get = (&http::Method::GET, crate::path::check("/").unwrap());
    assert!(!crate::policy::authorize(&auths, "pg", 8080, Some(&caller), Some(get)).lets_through());
    assert!(
        !crate::policy::authorize(&auths, "pg", 8080, Some(&same_ns), Some(get)).lets_through()
    );

    // Declared ports are carried over; an unusable one is skipped (one port fewer forwarded).
    let mut policy = allow("ports");
    policy.ports = vec![9090, 8080, 70000, 0];
    let (auths, skipped) = convert::authorizations(&policy);
    assert_eq!(auths.ports.as_slice(), [8080, 9090]);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    // A workload that is not declared has no ports: nothing is forwarded.
    policy.exists = false;
    assert!(
        convert::authorizations(&policy)
            .0
            .ports
            .as_slice()
            .is_empty()
    );
}

#[tokio::test]
async fn a_proxy_certifies_with_its_token_and_shows_its_identity() {
    let plane = Plane::new();
    plane.set_inbound(allow("allow-web"));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    let proxy = crate::build(config, sources).await.unwrap();
    assert!(
        proxy.wait_ready(WAIT).await,
        "no certificate from the control plane"
    );

    let admin = proxy.admin_addr;
    assert!(eventually(WAIT, async || get(admin, "/ready").await.0 == 200).await);
    let (status, body) = get(admin, "/ready").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let (status, body) = get(admin, "/identity").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["id"], OWN_ID);
    assert!(
        json["issuer"].as_str().unwrap().contains("cluster.local"),
        "{json}"
    );
    let serial = json["serial"].as_str().unwrap();
    assert!(
        !serial.is_empty() && serial.chars().all(|c| c.is_ascii_hexdigit()),
        "{json}"
    );
    let (nb, na) = (
        json["not_before_unix_secs"].as_u64().unwrap(),
        json["not_after_unix_secs"].as_u64().unwrap(),
    );
    assert!(na > nb && na - nb <= 3600 + 600, "{json}");

    let (_, metrics) = get(admin, "/metrics").await;
    assert!(
        metrics.contains("control_plane_connected{service=\"identity\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("control_plane_connected{service=\"policy\"} 1"),
        "{metrics}"
    );
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));
    server.stop();
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_refused_token_is_a_clear_error_and_the_proxy_stays_unready() {
    let plane = Plane::new();
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, "stolen-token");
    let sources = sources_for(&plane, &config);
    let proxy = crate::build(config, sources).await.unwrap();
    let admin = proxy.admin_addr;
    let refused = async || {
        let (status, body) = get(admin, "/ready").await;
        status == 503 && body.contains("unknown bootstrap token")
    };
    assert!(eventually(WAIT, refused).await);
    let (_, body) = get(admin, "/ready").await;
    assert!(body.contains("no identity certificate yet"), "{body}");
    assert!(body.contains("refused"), "{body}");
    assert!(body.contains(config::ENV_IDENTITY_TOKEN), "{body}");
    let (status, body) = get(admin, "/identity").await;
    assert_eq!(status, 503, "{body}");
    assert!(proxy.credentials.borrow().is_none());
    // The identity service answered: it is reachable, just refusing.
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(
        metrics.contains("control_plane_connected{service=\"identity\"} 1"),
        "{metrics}"
    );
    server.stop();
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn destinations_resolve_to_snapshots_then_diffs() {
    let plane = Plane::new();
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001"]));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    attach_certificate(&plane, &sources);
    let discover = sources.discover.clone();

    let mut rx = resolve_mesh(&*discover, &bank_target()).await;
    assert_eq!(addrs(&rx.borrow_and_update()), ["127.0.0.1:1001"]);
    let service = rx.borrow().clone();
    assert_eq!(&*service.name, "bank.bank");
    assert_eq!(
        service.endpoints[0].identity.as_str(),
        "spiffe://cluster.local/ns/bank/sa/bank"
    );

    // A diff adding an endpoint reaches the watch within a second.
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001", "127.0.0.1:1002"]));
    tokio::time::timeout(
        Duration::from_secs(1),
        rx.wait_for(|s| s.endpoints.len() == 2),
    )
    .await
    .expect("the added endpoint did not arrive within a second")
    .unwrap();
    // And one removing an endpoint.
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1002"]));
    tokio::time::timeout(
        Duration::from_secs(1),
        rx.wait_for(|s| s.endpoints.len() == 1),
    )
    .await
    .expect("the removal did not arrive within a second")
    .unwrap();
    assert_eq!(addrs(&rx.borrow()), ["127.0.0.1:1002"]);

    // Routes from the outbound policy are merged into the same watch.
    plane.state.outbound.send_modify(|all| {
        all.insert(
            "bank.bank:80".to_string(),
            pol::OutboundPolicy {
                exists: true,
                service: "bank".into(),
                namespace: "bank".into(),
                routes: vec![pol::Route {
                    name: "pay".into(),
                    methods: vec!["POST".into()],
                    path_prefix: "/v1/".into(),
                    timeout_ms: 1500,
                    retryable: false,
                    circuit_breaker: Some(pol::CircuitBreaker {
                        consecutive_failures: 3,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                circuit_breaker: Some(pol::CircuitBreaker {
                    min_success_permille: 900,
                    window_ms: 10_000,
                    min_requests: 20,
                    ..Default::default()
                }),
            },
        );
    });
    tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|s| s.routes.len() == 1))
        .await
        .expect("the routes did not arrive within a second")
        .unwrap();
    let route = rx.borrow().routes[0].clone();
    assert_eq!(route.timeout, Some(Duration::from_millis(1500)));
    // circuit breakers: the route's and the service's, defaults filled in
    let route_breaker = route.breaker.expect("the route's breaker arrived");
    assert_eq!(route_breaker.consecutive_failures, 3);
    assert_eq!(route_breaker.max_ejection_percent, 50);
    assert_eq!(route_breaker.base_ejection, Duration::from_secs(1));
    let service_breaker = rx
        .borrow()
        .breaker
        .clone()
        .expect("the service's breaker arrived");
    let rate = service_breaker.success_rate.expect("a success-rate rule");
    assert_eq!((rate.min_permille, rate.min_requests), (900, 20));
    assert_eq!(service_breaker.consecutive_failures, 0);
    assert_eq!(
        addrs(&rx.borrow()),
        ["127.0.0.1:1002"],
        "routes must keep the endpoints"
    );

    // Resolving again reuses the same watch and stream.
    let again = resolve_mesh(&*discover, &bank_target()).await;
    assert!(again.same_channel(&rx));
    assert_eq!(plane.state.destination_watches.load(Ordering::SeqCst), 1);

    // Not in the mesh, unparsable, or an address: external.
    for target in [
        Target::Name {
            host: "example.com".into(),
            port: 443,
        },
        Target::Name {
            host: "bad!name".into(),
            port: 80,
        },
        Target::Addr("10.0.0.1:80".parse().unwrap()),
    ] {
        let r = tokio::time::timeout(WAIT, discover.resolve(&target))
            .await
            .unwrap();
        assert!(matches!(r, Ok(Resolution::External)), "{target:?}: {r:?}");
    }
    server.stop();
}

/// A route with a 1.5 s timeout for `bank.bank:80`.
fn bank_routes() -> pol::OutboundPolicy {
    pol::OutboundPolicy {
        exists: true,
        service: "bank".into(),
        namespace: "bank".into(),
        routes: vec![pol::Route {
            name: "pay".into(),
            timeout_ms: 1500,
            ..Default::default()
        }],
        circuit_breaker: None,
    }
}

#[tokio::test]
async fn a_first_answer_waits_for_the_routes_of_a_slow_policy_stream() {
    let plane = Plane::new();
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001"]));
    plane.state.outbound.send_modify(|all| {
        all.insert("bank.bank:80".to_string(), bank_routes());
    });
    // the endpoints come at once, the routes 300 ms later
    *plane.state.outbound_delay.lock().unwrap() = Duration::from_millis(300);
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    attach_certificate(&plane, &sources);
    let start = std::time::Instant::now();
    let rx = resolve_mesh(&*sources.discover, &bank_target()).await;
    let took = start.elapsed();
    let service = rx.borrow().clone();
    assert_eq!(addrs(&service), ["127.0.0.1:1001"]);
    assert_eq!(
        service.routes.len(),
        1,
        "the first answer has no routes: its first requests would go without the route's timeout"
    );
    assert!(took >= Duration::from_millis(250), "answered in {took:?}");
}

#[tokio::test]
async fn inbound_policy_changes_reach_the_watch() {
    let plane = Plane::new();
    plane.set_inbound(allow("first"));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    attach_certificate(&plane, &sources);
    let control = sources.control.clone().unwrap();
    let mut rx = sources.policy.authorizations();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|a| a.list.first().is_some_and(|x| &*x.name == "first")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rx.borrow().list.len(), 1);
    assert!(*control.config_loaded().borrow());

    plane.set_inbound(allow("second"));
    tokio::time::timeout(
        Duration::from_secs(1),
        rx.wait_for(|a| &*a.list[0].name == "second"),
    )
    .await
    .expect("the policy change did not arrive within a second")
    .unwrap();
    // Not declared any more: the default applies (no authorizations).
    plane.set_inbound(pol::InboundPolicy::default());
    tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|a| a.list.is_empty()))
        .await
        .unwrap()
        .unwrap();
    server.stop();
}

#[tokio::test]
async fn watches_survive_a_control_plane_restart() {
    let plane = Plane::new();
    plane.set_inbound(allow("first"));
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001"]));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let config = config(addr, TOKEN);
    let sources = sources_for(&plane, &config);
    let control = sources.control.clone().unwrap();
    let mut auths = sources.policy.authorizations();
    let discover = sources.discover.clone();
    let proxy = crate::build(config, sources).await.unwrap();
    assert!(proxy.wait_ready(WAIT).await);
    let mut service = resolve_mesh(&*discover, &bank_target()).await;
    tokio::time::timeout(WAIT, auths.wait_for(|a| a.list.len() == 1))
        .await
        .unwrap()
        .unwrap();
    let admin = proxy.admin_addr;
    assert!(
        eventually(WAIT, async || get(admin, "/ready").await
            == (200, "ready\n".into()))
        .await
    );

    // The control plane goes away: the proxy keeps its last state and says so.
    server.stop();
    let lost = async || {
        !control.connected(ServiceKind::Destination) && !control.connected(ServiceKind::Policy)
    };
    assert!(eventually(WAIT, lost).await, "the loss was not noticed");
    // Changes made while it is away cannot arrive; the last known state stays.
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001", "127.0.0.1:1002"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(addrs(&service.borrow_and_update()), ["127.0.0.1:1001"]);
    assert_eq!(&*auths.borrow_and_update().list[0].name, "first");
    let (status, body) = get(admin, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("control plane unreachable, serving last known configuration"),
        "{body}"
    );
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(
        metrics.contains("control_plane_connected{service=\"destination\"} 0"),
        "{metrics}"
    );

    // It comes back on the same address: the streams reconnect and new state arrives.
    let _server = plane.serve(addr).await;
    tokio::time::timeout(
        Duration::from_secs(8),
        service.wait_for(|s| s.endpoints.len() == 2),
    )
    .await
    .expect("the destination stream did not reconnect")
    .unwrap();
    plane.set_inbound(allow("after-restart"));
    tokio::time::timeout(
        Duration::from_secs(8),
        auths.wait_for(|a| &*a.list[0].name == "after-restart"),
    )
    .await
    .expect("the inbound policy stream did not reconnect")
    .unwrap();
    let back = async || get(admin, "/ready").await == (200, "ready\n".into());
    assert!(eventually(WAIT, back).await);
    assert!(control.connected(ServiceKind::Destination));
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_proxy_started_while_the_control_plane_is_down_becomes_ready_later() {
    let plane = Plane::new();
    // A free port nobody listens on yet.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = config(addr, TOKEN);
    let sources = sources_for(&plane, &config);
    let proxy = crate::build(config, sources).await.unwrap();
    let admin = proxy.admin_addr;
    let unreachable = async || {
        let (status, body) = get(admin, "/ready").await;
        status == 503 && body.contains("cannot reach the control plane")
    };
    assert!(eventually(WAIT, unreachable).await);
    let (_, body) = get(admin, "/ready").await;
    assert!(body.contains("no identity certificate yet"), "{body}");
    let (status, _) = get(admin, "/identity").await;
    assert_eq!(status, 503);

    let _server = plane.serve(addr).await;
    // The credentials task retries with up to 10 s between attempts.
    assert!(
        proxy.wait_ready(Duration::from_secs(25)).await,
        "no certificate after the control plane came up"
    );
    let ready = async || get(admin, "/ready").await == (200, "ready\n".into());
    assert!(eventually(WAIT, ready).await);
    assert!(plane.state.certify_calls.load(Ordering::SeqCst) >= 1);
    let (status, _) = get(admin, "/identity").await;
    assert_eq!(status, 200);
    proxy.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn concurrent_resolves_share_one_stream_and_a_removed_service_empties() {
    let plane = Plane::new();
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001"]));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    let discover = sources.discover.clone();
    // Streams open once the proxy holds a certificate.
    let proxy = crate::build(config, sources).await.unwrap();
    assert!(proxy.wait_ready(WAIT).await);

    let resolves = (0..20).map(|_| {
        let d = discover.clone();
        tokio::spawn(async move { resolve_mesh(&*d, &bank_target()).await })
    });
    let mut watches = Vec::new();
    for r in resolves {
        watches.push(r.await.unwrap());
    }
    assert!(watches.iter().all(|w| w.same_channel(&watches[0])));
    assert_eq!(plane.state.destination_watches.load(Ordering::SeqCst), 1);

    // The service goes away: no endpoints (503s), but the watch stays for when it comes back.
    let mut rx = watches.pop().unwrap();
    plane.set_destination("bank.bank:80", missing());
    tokio::time::timeout(
        Duration::from_secs(1),
        rx.wait_for(|s| s.endpoints.is_empty()),
    )
    .await
    .expect("the removal did not arrive within a second")
    .unwrap();
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1003"]));
    tokio::time::timeout(
        Duration::from_secs(1),
        rx.wait_for(|s| s.endpoints.len() == 1),
    )
    .await
    .expect("the service did not come back within a second")
    .unwrap();
    assert_eq!(addrs(&rx.borrow()), ["127.0.0.1:1003"]);
    server.stop();
}

#[test]
fn before_the_first_policy_nobody_is_let_in() {
    let closed = super::inbound::awaiting_policy();
    let same_ns = onemesh_identity::SpiffeId::new("cluster.local", "bank", "bank").unwrap();
    let d = crate::policy::authorize(&closed, "bank", 8080, Some(&same_ns), None);
    assert!(!d.lets_through());
    assert_eq!(&*d.policy, super::inbound::AWAITING_POLICY);
    // and no port is known, so nothing is forwarded at all — for now (503, retryable), not for
    // good (403): the policy is on its way
    assert_eq!(
        crate::policy::check_port(&closed.ports, &[], 8080),
        Err(crate::policy::PortRefusal::AwaitingPolicy)
    );
    let refused = crate::error::ProxyError::Port(crate::policy::PortRefusal::AwaitingPolicy);
    assert_eq!(
        refused.outcome().status,
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    // The proxy's own ports stay refused for good, policy or not.
    assert_eq!(
        crate::policy::check_port(&closed.ports, &[4191], 4191),
        Err(crate::policy::PortRefusal::ProxyPort(4191))
    );
}

/// A fresh state directory for one test.
fn state_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-proxy-restart-{name}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config_with_state(control: SocketAddr, dir: &std::path::Path) -> Config {
    let mut config = config(control, TOKEN);
    if let Some(c) = config.control.as_mut() {
        c.state_dir = Some(dir.to_path_buf());
    }
    config
}

#[tokio::test]
async fn a_restarted_proxy_is_ready_at_once_with_the_control_plane_down() {
    let dir = state_dir("down");
    let plane = Plane::new();
    plane.set_inbound(allow("saved"));
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1001"]));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;

    // First life: certify with the token, learn the policy and bank's endpoints.
    let config = config_with_state(addr, &dir);
    let sources = sources_for(&plane, &config);
    let discover = sources.discover.clone();
    let first = crate::build(config, sources).await.unwrap();
    assert!(first.wait_ready(WAIT).await);
    let service = resolve_mesh(&*discover, &bank_target()).await;
    assert_eq!(addrs(&service.borrow()), ["127.0.0.1:1001"]);
    let admin = first.admin_addr;
    assert!(eventually(WAIT, async || get(admin, "/ready").await.0 == 200).await);
    let (_, first_identity) = get(admin, "/identity").await;
    // Everything a restart needs is on disk, private to this user.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for file in [
        crate::state_dir::KEY_FILE,
        crate::state_dir::CHAIN_FILE,
        inbound::CACHE_FILE,
    ] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    first.shutdown(Duration::from_secs(1)).await;
    let calls = plane.state.certify_calls.load(Ordering::SeqCst);

    // The control plane is gone; the proxy restarts (same directory, new process state).
    server.stop();
    let started = std::time::Instant::now();
    let config = config_with_state(addr, &dir);
    let sources = sources_for(&plane, &config);
    let auths = sources.policy.authorizations();
    let discover = sources.discover.clone();
    let second = crate::build(config, sources).await.unwrap();
    assert!(
        second.wait_ready(WAIT).await,
        "no certificate after restart"
    );
    let admin = second.admin_addr;
    let ready = async || get(admin, "/ready").await.0 == 200;
    assert!(
        eventually(WAIT, ready).await,
        "{:?}",
        get(admin, "/ready").await
    );
    let took = started.elapsed();
    println!("restart to ready with the control plane down: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Same leaf (no certify happened), saved policy, saved endpoints.
    assert_eq!(get(admin, "/identity").await.1, first_identity);
    assert_eq!(plane.state.certify_calls.load(Ordering::SeqCst), calls);
    assert_eq!(&*auths.borrow().list[0].name, "saved");
    let service = resolve_mesh(&*discover, &bank_target()).await;
    assert_eq!(addrs(&service.borrow()), ["127.0.0.1:1001"]);

    // The control plane comes back: the streams take over from the saved state.
    let _server = plane.serve(addr).await;
    plane.set_destination("bank.bank:80", bank(&["127.0.0.1:1002"]));
    let mut service = service;
    tokio::time::timeout(
        Duration::from_secs(8),
        service.wait_for(|s| addrs(s) == ["127.0.0.1:1002"]),
    )
    .await
    .expect("the live stream did not replace the saved endpoints")
    .unwrap();
    second.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_restarted_proxy_with_an_expired_leaf_certifies_again_with_the_same_key() {
    let dir = state_dir("expired");
    let plane = Plane::new();
    plane.set_inbound(allow("p"));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config_with_state(server.addr, &dir);
    let key_before = {
        let sources = sources_for(&plane, &config);
        let first = crate::build(config.clone(), sources).await.unwrap();
        assert!(first.wait_ready(WAIT).await);
        first.shutdown(Duration::from_secs(1)).await;
        std::fs::read_to_string(dir.join(crate::state_dir::KEY_FILE)).unwrap()
    };
    // A leaf that is no longer valid: the proxy must not serve it, and must ask again with the
    // key its token is bound to.
    let key = onemesh_identity::WorkloadKey::from_pem(&key_before).unwrap();
    let id: SpiffeId = OWN_ID.parse().unwrap();
    let expired = plane
        .state
        .issuer
        .sign_csr_with_validity(
            &key.csr_der(&id).unwrap(),
            std::time::SystemTime::now() - Duration::from_secs(7200),
            std::time::SystemTime::now() - Duration::from_secs(3600),
            |a| a == &id,
        )
        .unwrap();
    crate::state_dir::StateDir::open(&dir)
        .unwrap()
        .save_chain(&expired);
    let calls = plane.state.certify_calls.load(Ordering::SeqCst);
    let sources = sources_for(&plane, &config);
    let second = crate::build(config, sources).await.unwrap();
    assert!(second.wait_ready(WAIT).await);
    assert!(plane.state.certify_calls.load(Ordering::SeqCst) > calls);
    let current = second.credentials.borrow().clone().unwrap();
    assert!(current.not_after() > std::time::SystemTime::now());
    assert_eq!(
        std::fs::read_to_string(dir.join(crate::state_dir::KEY_FILE)).unwrap(),
        key_before,
        "the key must survive the restart"
    );
    second.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens `GET /tap` on a control-only admin listener as `id` (a leaf from the fake control
/// plane's issuer): the status line and the first bytes read.
async fn tap_as(plane: &Plane, id: &str, addr: SocketAddr) -> String {
    let id: SpiffeId = id.parse().unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = plane
        .state
        .issuer
        .sign_csr(
            &key.csr_der(&id).unwrap(),
            Duration::from_secs(3600),
            |_| true,
        )
        .unwrap();
    let store = CredentialStore::new(id, key, issued, plane.bundle.clone()).unwrap();
    let own: SpiffeId = OWN_ID.parse().unwrap();
    let config = store.client_config(&own, &[b"http/1.1"]);
    let fetch = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("proxy").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /tap HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        let n = tls.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    tokio::time::timeout(WAIT, fetch).await.unwrap()
}

#[tokio::test]
async fn in_control_plane_mode_the_control_plane_and_only_it_gets_a_tap() {
    let plane = Plane::new();
    plane.set_inbound(allow("allow-web"));
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    // ONEMESH_PROXY_CONTROL_ID unset: the default id, the one the fake control plane proves
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    let proxy = crate::build(config, sources).await.unwrap();
    assert!(proxy.wait_ready(WAIT).await);
    let addr = proxy.control_admin_addr.expect("on in control-plane mode");
    let head = tap_as(&plane, CONTROL_ID, addr).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/x-ndjson"), "{head}");
    let head = tap_as(&plane, "spiffe://cluster.local/ns/web/sa/web", addr).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[test]
fn modes_come_from_the_policy_and_an_unknown_mode_enforces() {
    use crate::policy::Mode;
    let mut policy = allow("audited");
    policy.authorizations[0].mode = pol::Mode::Audit.into();
    policy.default_mode = pol::Mode::Audit.into();
    let (auths, skipped) = convert::authorizations(&policy);
    assert!(skipped.is_empty());
    assert_eq!(auths.list[0].mode, Mode::Audit);
    assert_eq!(auths.default_mode, Mode::Audit);
    // forged: a value this proxy does not know (a newer control plane, or a bad one) must fail
    // closed, not let denied callers through
    policy.authorizations[0].mode = 7;
    policy.default_mode = -1;
    let (auths, _) = convert::authorizations(&policy);
    assert_eq!(auths.list[0].mode, Mode::Enforce);
    assert_eq!(auths.default_mode, Mode::Enforce);
    let caller: SpiffeId = "spiffe://cluster.local/ns/mallory/sa/m".parse().unwrap();
    let d = crate::policy::authorize(&auths, "pg", 8080, Some(&caller), None);
    assert_eq!(d.verdict, crate::policy::Verdict::Deny);
}

#[tokio::test]
async fn decision_records_reach_the_audit_service_once_even_when_an_answer_is_lost() {
    use crate::audit::{self, AuditLog, Denial, Kind};
    use crate::policy::{Mode, Verdict};
    let plane = Plane::new();
    plane.state.fail_appends.store(1, Ordering::SeqCst);
    let server = plane.serve("127.0.0.1:0".parse().unwrap()).await;
    let config = config(server.addr, TOKEN);
    let sources = sources_for(&plane, &config);
    attach_certificate(&plane, &sources);
    let sink = sources
        .audit
        .clone()
        .expect("control-plane mode ships the decision log");
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let log = AuditLog::new(100, metrics.clone());
    let drain = crate::drain::Controller::new();
    let who = audit::Shipper {
        namespace: "pg".into(),
        workload: "pg".into(),
        instance: audit::instance_id().unwrap(),
    };
    let shipping = tokio::spawn(audit::ship(
        log.collector(audit::unix_ms()),
        sink,
        who.clone(),
        drain.handle(),
    ));
    let caller: Arc<str> = "spiffe://cluster.local/ns/mallory/sa/m".into();
    let policy: Arc<str> = "allow-web".into();
    for path in ["/a", "/b", "/c"] {
        log.deny(
            Denial {
                caller: Some(&caller),
                port: 8080,
                request: Some((&http::Method::GET, path)),
                verdict: Verdict::Deny,
                policy: &policy,
                mode: Mode::Enforce,
            },
            audit::unix_ms(),
        );
    }
    let slot = log.slot(audit::Key {
        caller: Some("spiffe://cluster.local/ns/order/sa/web".into()),
        port: 8080,
        kind: Kind::Http,
        verdict: Verdict::Allow,
        policy: policy.clone(),
        mode: Mode::Enforce,
    });
    for _ in 0..5 {
        slot.hit();
    }
    // the first batch is received, its answer lost, and it comes again
    let deadline = tokio::time::Instant::now() + WAIT;
    while plane.state.appends.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // draining ships the current minute's aggregate too
    drain.drain().await;
    tokio::time::timeout(WAIT, shipping).await.unwrap().unwrap();
    let appends = plane.state.appends.lock().unwrap().clone();
    assert_eq!(appends[0].batch, 1);
    assert_eq!(appends[0].instance, who.instance);
    assert_eq!(
        (&appends[0].namespace[..], &appends[0].workload[..]),
        ("pg", "pg")
    );
    assert_eq!(
        appends[1], appends[0],
        "the same (instance, batch) with the same records"
    );
    assert_eq!(appends[0].records.len(), 3);
    // as the control plane sees it once it drops a batch it already has: each decision once
    let mut seen = std::collections::BTreeSet::new();
    let kept: Vec<&onemesh_api::audit::Record> = appends
        .iter()
        .filter(|a| seen.insert((a.instance.clone(), a.batch)))
        .flat_map(|a| a.records.iter())
        .collect();
    let paths: Vec<&str> = kept
        .iter()
        .filter(|r| r.count == 1 && !r.path.is_empty())
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    let allowed: u64 = kept
        .iter()
        .filter(|r| r.decision() == onemesh_api::audit::Decision::Allow)
        .map(|r| r.count)
        .sum();
    assert_eq!(allowed, 5, "{kept:?}");
    assert_eq!(metrics.audit_ship_failures_total.get(), 1);
    assert_eq!(metrics.audit_shipped_records_total.get(), 4);
}
