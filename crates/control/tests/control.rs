//! Whole-behaviour tests of the control plane: started in-process on 127.0.0.1 port 0 over a temp
//! state directory, called with the generated tonic clients over TLS, as a proxy would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use onemesh_api::destination::destination_client::DestinationClient;
use onemesh_api::destination::{WatchRequest, update};
use onemesh_api::identity::CertifyRequest;
use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_api::policy::policy_client::PolicyClient;
use onemesh_api::policy::{InboundRequest, OutboundRequest};
use onemesh_control::local::{ENDPOINTS_FILE, LocalStore, POLL_INTERVAL, TOKENS_FILE};
use onemesh_control::revocations::Revocations;
use onemesh_control::{Control, Settings, start};
use onemesh_identity::{
    CredentialStore, Issued, Issuer, SpiffeId, TrustBundle, WorkloadKey, bootstrap_client_config,
    verify_peer,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);
/// A change must reach a watcher within this (the issue's requirement).
const PUSH_DEADLINE: Duration = Duration::from_secs(1);

const MESH: &str = "\
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: card}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: bank, namespace: bank}
spec:
  serviceAccount: bank
  labels: {app: bank}
  command: [onemesh-platform, bank]
  ports: [{name: http, port: 8080, protocol: http}]
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: card, namespace: card}
spec:
  serviceAccount: card
  labels: {app: card}
  ports: [{port: 8080}]
---
apiVersion: onemesh.dev/v1
kind: Service
metadata: {name: bank, namespace: bank}
spec:
  selector: {app: bank}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-card, namespace: bank}
spec:
  target: {workload: bank, port: 8080}
  routes: [{methods: [POST], pathPrefix: /v1/}]
  from: {identities: [spiffe://cluster.local/ns/card/sa/card]}
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {name: bank-reads, namespace: bank}
spec:
  service: bank
  match: {methods: [GET], pathPrefix: /}
  timeout: 2s
  retryable: true
";

const ENDPOINTS_ONE: &str = r#"[
  {"namespace": "bank", "workload": "bank", "inbound": "127.0.0.1:41001", "ports": {"8080": 42001}}
]"#;

const ENDPOINTS_TWO: &str = r#"[
  {"namespace": "bank", "workload": "bank", "inbound": "127.0.0.1:41001", "ports": {"8080": 42001}},
  {"namespace": "bank", "workload": "bank", "inbound": "127.0.0.1:41002", "ports": {"8080": 42002}}
]"#;

const TOKENS: &str = r#"{
  "t-bank": "spiffe://cluster.local/ns/bank/sa/bank",
  "t-card": "spiffe://cluster.local/ns/card/sa/card"
}"#;

struct Harness {
    dir: PathBuf,
    store: LocalStore,
    control: Control,
    _watcher: AbortOnDrop,
    _cleanup: RemoveOnDrop,
}

/// Removes the test's temp directory at the end.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-control-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a file the way an editor or `onemesh up` would replace it: write aside, then rename.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn harness() -> Harness {
    let dir = temp_dir();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.join(ENDPOINTS_FILE), ENDPOINTS_ONE).unwrap();
    std::fs::write(dir.join(TOKENS_FILE), TOKENS).unwrap();
    harness_in(dir).await
}

/// A control plane over an existing state directory (a restart, when one ran there before).
async fn harness_in(dir: PathBuf) -> Harness {
    let store = LocalStore::open(&dir.join("mesh.yaml"), &dir).unwrap();
    let watcher = AbortOnDrop(store.spawn_watcher(POLL_INTERVAL));
    let mut settings = Settings::new(dir.clone());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.identity_addr = any;
    settings.destination_addr = any;
    settings.policy_addr = any;
    let control = tokio::time::timeout(WAIT, start(&settings, Arc::new(store.clone())))
        .await
        .unwrap()
        .unwrap();
    Harness {
        _cleanup: RemoveOnDrop(dir.clone()),
        dir,
        store,
        control,
        _watcher: watcher,
    }
}

/// A gRPC channel over TLS that, like a proxy without a certificate yet, checks the server's
/// chain against `bundle` and its id against `expected`.
async fn channel(
    addr: SocketAddr,
    bundle: &TrustBundle,
    expected: &SpiffeId,
) -> Result<Channel, tonic::transport::Error> {
    let config = bootstrap_client_config(bundle, expected, &[b"h2"]);
    try_tls_channel(addr, config, expected).await
}

/// A gRPC channel over TLS with the given client configuration.
async fn try_tls_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    expected: &SpiffeId,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(config);
    let name = expected.tls_server_name();
    let connect = tower::service_fn(move |_| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let endpoint = Endpoint::from_static("http://onemesh-control").connect_timeout(WAIT);
    tokio::time::timeout(WAIT, endpoint.connect_with_connector(connect))
        .await
        .unwrap()
}

async fn tls_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    expected: &SpiffeId,
) -> Channel {
    try_tls_channel(addr, config, expected).await.unwrap()
}

impl Harness {
    async fn channel(&self, addr: SocketAddr) -> Channel {
        channel(addr, &self.control.bundle, &self.control.id)
            .await
            .unwrap()
    }

    fn mesh(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// The control plane's issuer, read from the state directory: what a test (or an attacker
    /// who stole it, or a compromised workload's leaf) uses to mint leaves.
    fn issuer(&self) -> Issuer {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap();
        Issuer::from_pem(&read("issuer.crt"), &read("issuer.key")).unwrap()
    }

    /// A valid leaf for `id` minted by the issuer, whatever the mesh declares, and its key.
    fn mint(&self, id: &SpiffeId) -> CredentialStore {
        let key = WorkloadKey::generate().unwrap();
        let issued = self
            .issuer()
            .sign_csr(&key.csr_der(id).unwrap(), Duration::from_secs(3600), |_| {
                true
            })
            .unwrap();
        CredentialStore::new(id.clone(), key, issued, self.control.bundle.clone()).unwrap()
    }

    /// A channel to `addr` presenting a minted leaf for `id`, as that workload's proxy would.
    async fn channel_as(&self, addr: SocketAddr, id: &SpiffeId) -> Channel {
        let config = self.mint(id).client_config(&self.control.id, &[b"h2"]);
        tls_channel(addr, config, &self.control.id).await
    }
}

/// A proxy of the card workload (any mesh proxy may watch destinations and outbound policy).
const CARD: &str = "spiffe://cluster.local/ns/card/sa/card";
/// The bank workload's id (only it may watch the bank's inbound policy).
const BANK: &str = "spiffe://cluster.local/ns/bank/sa/bank";

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

#[tokio::test]
async fn certify_signs_an_entitled_csr() {
    let h = harness().await;
    assert_eq!(
        h.control.id.to_string(),
        "spiffe://cluster.local/ns/onemesh/sa/control"
    );
    let mut client = IdentityClient::new(h.channel(h.control.identity_addr).await);
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let key = WorkloadKey::generate().unwrap();
    let response = client
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: "t-bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.identity, bank.to_string());
    assert_eq!(response.chain.len(), 2, "leaf then issuer");
    let issued = Issued::from_chain_pem(&response.chain_pem).unwrap();
    assert_eq!(issued.id, bank);
    assert_eq!(issued.chain[0].as_ref(), response.chain[0].as_slice());
    let life = response.not_after_unix_secs - response.not_before_unix_secs;
    assert!(
        (24 * 3600..=24 * 3600 + 120).contains(&life),
        "lifetime {life}s"
    );
    // The bundle sent is the control plane's, and the chain verifies against it.
    let bundle = TrustBundle::from_pem(&response.trust_anchors_pem).unwrap();
    assert_eq!(bundle.roots().len(), response.trust_anchors.len());
    assert_eq!(
        bundle.roots()[0].as_ref(),
        h.control.bundle.roots()[0].as_ref()
    );
    let chain: Vec<_> = response.chain.into_iter().map(Into::into).collect();
    let verified = verify_peer(&bundle, &chain, SystemTime::now(), "cluster.local", None).unwrap();
    assert_eq!(verified, bank);

    // Renewal: the same token with the same key is signed again.
    let again = client
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: "t-bank".into(),
        })
        .await;
    assert!(again.is_ok(), "{again:?}");
    // A few more renewals on the same connection, timed for the record.
    let started = Instant::now();
    for _ in 0..20 {
        let renewed = client
            .certify(CertifyRequest {
                csr: key.csr_der(&bank).unwrap(),
                token: "t-bank".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(renewed.identity, bank.to_string());
    }
    println!(
        "certify round trip: {:?} on average",
        started.elapsed() / 20
    );
    // The CA was made in the state directory.
    for file in ["trust-anchors.pem", "issuer.crt", "issuer.key"] {
        assert!(h.dir.join(file).exists(), "{file}");
    }
}

#[tokio::test]
async fn certify_refuses_what_the_token_does_not_entitle() {
    let h = harness().await;
    let mut client = IdentityClient::new(h.channel(h.control.identity_addr).await);
    let card = id("spiffe://cluster.local/ns/card/sa/card");
    let key = WorkloadKey::generate().unwrap();

    // The bank's token asking for the card's id.
    let status = client
        .certify(CertifyRequest {
            csr: key.csr_der(&card).unwrap(),
            token: "t-bank".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("entitles spiffe://cluster.local/ns/bank/sa/bank")
    );

    // An unknown token, and no token.
    for token in ["nope", ""] {
        let status = client
            .certify(CertifyRequest {
                csr: key.csr_der(&card).unwrap(),
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // A broken CSR (one byte of the signature flipped), and garbage.
    let mut csr = key.csr_der(&card).unwrap();
    let last = csr.len() - 1;
    csr[last] ^= 0xff;
    for csr in [csr, b"not a csr".to_vec()] {
        let status = client
            .certify(CertifyRequest {
                csr,
                token: "t-card".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }

    // Another trust domain.
    let other = id("spiffe://other.domain/ns/card/sa/card");
    let status = client
        .certify(CertifyRequest {
            csr: key.csr_der(&other).unwrap(),
            token: "t-card".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Once used, a token is bound to its key: another key is refused.
    client
        .certify(CertifyRequest {
            csr: key.csr_der(&card).unwrap(),
            token: "t-card".into(),
        })
        .await
        .unwrap();
    let thief = WorkloadKey::generate().unwrap();
    let status = client
        .certify(CertifyRequest {
            csr: thief.csr_der(&card).unwrap(),
            token: "t-card".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn clients_refuse_a_server_with_another_identity() {
    let h = harness().await;
    let wrong = id("spiffe://cluster.local/ns/bank/sa/bank");
    let channel = channel(h.control.identity_addr, &h.control.bundle, &wrong).await;
    assert!(
        channel.is_err(),
        "a client expecting {wrong} must not connect"
    );
}

#[tokio::test]
async fn destination_sends_the_full_set_then_changes_within_a_second() {
    let h = harness().await;
    let mut client =
        DestinationClient::new(h.channel_as(h.control.destination_addr, &id(CARD)).await);
    let mut stream = client
        .watch(WatchRequest {
            name: "bank.bank.svc.cluster.local:80".into(),
            caller_namespace: "card".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(update::Kind::Snapshot(snapshot)) = first.kind else {
        panic!("first message must be a snapshot: {first:?}");
    };
    assert!(snapshot.exists);
    assert_eq!(snapshot.endpoints.len(), 1);
    let ep = &snapshot.endpoints[0];
    assert_eq!(ep.addr, "127.0.0.1:41001");
    assert_eq!(ep.target_port, 42001, "targetPort mapped to the real port");
    assert_eq!(ep.identity, "spiffe://cluster.local/ns/bank/sa/bank");

    // `onemesh up` registers a second instance.
    let started = Instant::now();
    replace(&h.dir.join(ENDPOINTS_FILE), ENDPOINTS_TWO);
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    let Some(update::Kind::Diff(diff)) = next.kind else {
        panic!("expected a diff: {next:?}");
    };
    assert_eq!(diff.add.len(), 1);
    assert_eq!(diff.add[0].addr, "127.0.0.1:41002");
    assert!(diff.remove.is_empty());
    assert!(
        elapsed < PUSH_DEADLINE,
        "endpoints.json change took {elapsed:?}"
    );
    println!("endpoints.json change pushed in {elapsed:?}");

    // mesh.yaml: the port becomes opaque, so both endpoints change.
    let started = Instant::now();
    replace(
        &h.mesh(),
        &MESH.replace("port: 8080, protocol: http", "port: 8080, protocol: opaque"),
    );
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    let Some(update::Kind::Diff(diff)) = next.kind else {
        panic!("expected a diff: {next:?}");
    };
    assert_eq!(diff.add.len(), 2);
    assert!(diff.add.iter().all(|e| e.protocol == 2), "{diff:?}");
    assert!(elapsed < PUSH_DEADLINE, "mesh.yaml change took {elapsed:?}");
    println!("mesh.yaml change pushed in {elapsed:?}");
}

#[tokio::test]
async fn inbound_policy_follows_an_edit_on_every_watcher() {
    let h = harness().await;
    // Two proxies of the same workload, each on its own connection.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut client = PolicyClient::new(h.channel_as(h.control.policy_addr, &id(BANK)).await);
        let stream = client
            .watch_inbound(InboundRequest {
                namespace: "bank".into(),
                workload: "bank".into(),
                port: 0,
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    for stream in &mut streams {
        let first = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(first.exists);
        assert_eq!(first.authorizations.len(), 1);
        let a = &first.authorizations[0];
        assert_eq!(a.name, "allow-card");
        assert_eq!(a.ports, vec![42001], "policy port mapped to the real port");
        assert_eq!(a.identities, vec!["spiffe://cluster.local/ns/card/sa/card"]);
        assert_eq!(a.routes[0].methods, vec!["POST"]);
        assert!(a.namespaces.is_empty());
    }

    let started = Instant::now();
    replace(
        &h.mesh(),
        &MESH.replace(
            "from: {identities: [spiffe://cluster.local/ns/card/sa/card]}",
            "from: {namespaces: [card], unauthenticated: true}",
        ),
    );
    for stream in &mut streams {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let elapsed = started.elapsed();
        let a = &next.authorizations[0];
        assert!(a.identities.is_empty());
        assert_eq!(a.namespaces, vec!["card"]);
        assert!(a.unauthenticated);
        assert!(elapsed < PUSH_DEADLINE, "policy change took {elapsed:?}");
    }
}

#[tokio::test]
async fn an_invalid_edit_is_refused_and_the_last_good_state_kept() {
    let h = harness().await;
    let mut client = PolicyClient::new(h.channel_as(h.control.policy_addr, &id(BANK)).await);
    let mut stream = client
        .watch_outbound(OutboundRequest {
            name: "bank".into(),
            caller_namespace: "bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.routes[0].timeout_ms, 2000);

    // A bad duration: refused, nothing pushed, the error names file, line and field.
    let bad = MESH.replace("timeout: 2s", "timeout: two seconds");
    replace(&h.mesh(), &bad);
    let pushed = tokio::time::timeout(4 * POLL_INTERVAL, stream.next()).await;
    assert!(
        pushed.is_err(),
        "an invalid edit must not be pushed: {pushed:?}"
    );
    let errors = h.store.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = bad.lines().position(|l| l.contains("two seconds")).unwrap() + 1;
    assert!(
        errors[0].contains(&format!("mesh.yaml:{line}: spec.timeout:")),
        "{}",
        errors[0]
    );

    // A new watcher still gets the last good state.
    let mut late = client
        .watch_outbound(OutboundRequest {
            name: "bank.bank".into(),
            caller_namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let kept = tokio::time::timeout(WAIT, late.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(kept.routes[0].timeout_ms, 2000);

    // Fixing the file applies the fix.
    replace(&h.mesh(), &MESH.replace("timeout: 2s", "timeout: 3s"));
    let next = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.routes[0].timeout_ms, 3000);
    assert!(h.store.errors().is_empty());
}

#[tokio::test]
async fn shutdown_ends_watch_streams() {
    let h = harness().await;
    let mut client =
        DestinationClient::new(h.channel_as(h.control.destination_addr, &id(CARD)).await);
    let mut stream = client
        .watch(WatchRequest {
            name: "bank.bank".into(),
            caller_namespace: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Harness { control, .. } = h;
    let started = Instant::now();
    tokio::time::timeout(WAIT, control.shutdown())
        .await
        .unwrap();
    // Nothing should need the grace period: every task stops on the signal or is aborted.
    assert!(
        started.elapsed() < onemesh_control::server::SHUTDOWN_GRACE,
        "shutdown took {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(
        !matches!(end, Some(Ok(_))),
        "no update after shutdown: {end:?}"
    );
}

#[tokio::test]
async fn renewal_with_the_current_certificate_needs_no_token() {
    let h = harness().await;
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let key = WorkloadKey::generate().unwrap();
    let mut bootstrap = IdentityClient::new(h.channel(h.control.identity_addr).await);
    let first = bootstrap
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: "t-bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let issued = Issued::from_chain_pem(&first.chain_pem).unwrap();
    let creds =
        CredentialStore::new(bank.clone(), key.clone(), issued, h.control.bundle.clone()).unwrap();

    // Over a connection presenting the bank's leaf, no token is needed for the bank's id...
    let config = creds.client_config(&h.control.id, &[b"h2"]);
    let mut client =
        IdentityClient::new(tls_channel(h.control.identity_addr, config, &h.control.id).await);
    let renewed = client
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.identity, bank.to_string());
    assert_ne!(renewed.chain[0], first.chain[0], "a new leaf");

    // ...but the leaf proves only its own id.
    let card = id("spiffe://cluster.local/ns/card/sa/card");
    let status = client
        .certify(CertifyRequest {
            csr: key.csr_der(&card).unwrap(),
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );

    // Without a certificate and without a token: unauthenticated.
    let status = bootstrap
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn a_service_added_later_replaces_the_empty_snapshot() {
    let h = harness().await;
    let mut client =
        DestinationClient::new(h.channel_as(h.control.destination_addr, &id(BANK)).await);
    let mut stream = client
        .watch(WatchRequest {
            name: "card.card.svc.cluster.local:8080".into(),
            caller_namespace: "bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first.kind, Some(update::Kind::Snapshot(s)) if !s.exists),
        "{first:?}"
    );

    let card = "\n---\napiVersion: onemesh.dev/v1\nkind: Service\nmetadata: {name: card, namespace: card}\nspec: {selector: {app: card}, ports: [{port: 8080}]}\n";
    let endpoints = ENDPOINTS_ONE.replace(
        "\n]",
        ",\n  {\"namespace\": \"card\", \"workload\": \"card\", \"inbound\": \"127.0.0.1:41003\"}\n]",
    );
    replace(&h.dir.join(ENDPOINTS_FILE), &endpoints);
    replace(&h.mesh(), &format!("{MESH}{card}"));
    let deadline = Instant::now() + WAIT;
    let snapshot = loop {
        let next = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(update::Kind::Snapshot(s)) = next.kind
            && s.exists
        {
            break s;
        }
    };
    assert_eq!((snapshot.service.as_str(), snapshot.port), ("card", 8080));
    assert_eq!(snapshot.endpoints.len(), 1);
    assert_eq!(snapshot.endpoints[0].addr, "127.0.0.1:41003");
    assert_eq!(
        snapshot.endpoints[0].target_port, 8080,
        "no port mapping: the declared port"
    );
    assert_eq!(
        snapshot.endpoints[0].identity,
        "spiffe://cluster.local/ns/card/sa/card"
    );
}

#[tokio::test]
async fn watches_without_a_client_certificate_are_unauthenticated() {
    let h = harness().await;
    let mut destination = DestinationClient::new(h.channel(h.control.destination_addr).await);
    let status = destination
        .watch(WatchRequest {
            name: "bank.bank.svc.cluster.local:80".into(),
            caller_namespace: "card".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("no mesh client certificate"),
        "{status:?}"
    );

    let mut policy = PolicyClient::new(h.channel(h.control.policy_addr).await);
    let status = policy
        .watch_outbound(OutboundRequest {
            name: "bank.bank".into(),
            caller_namespace: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = policy
        .watch_inbound(InboundRequest {
            namespace: "bank".into(),
            workload: "bank".into(),
            port: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // Refused even for a request that would otherwise be invalid: nothing is looked at first.
    let status = policy
        .watch_inbound(InboundRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn inbound_policy_goes_only_to_the_workloads_own_identity() {
    let h = harness().await;
    // A valid leaf of another workload (minted by the issuer, as a compromised workload holds),
    // asking for the bank's inbound policy: who may call the bank is not its business.
    for caller in [
        "spiffe://cluster.local/ns/order/sa/customers",
        CARD,
        // The bank's service account name in another namespace.
        "spiffe://cluster.local/ns/card/sa/bank",
    ] {
        let mut client = PolicyClient::new(h.channel_as(h.control.policy_addr, &id(caller)).await);
        let status = client
            .watch_inbound(InboundRequest {
                namespace: "bank".into(),
                workload: "bank".into(),
                port: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{caller}: {status:?}"
        );
        assert!(status.message().contains(caller), "{status:?}");
        // The same caller still gets what any proxy may see.
        let mut outbound = client
            .watch_outbound(OutboundRequest {
                name: "bank.bank".into(),
                caller_namespace: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = tokio::time::timeout(WAIT, outbound.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(first.exists);
    }
    // A workload that is not declared: refused too, even to a matching identity.
    let ghost = "spiffe://cluster.local/ns/ghost/sa/ghost";
    let mut client = PolicyClient::new(h.channel_as(h.control.policy_addr, &id(ghost)).await);
    let status = client
        .watch_inbound(InboundRequest {
            namespace: "ghost".into(),
            workload: "ghost".into(),
            port: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn renewal_of_an_undeclared_id_is_refused() {
    let h = harness().await;
    // A leaf for an id declared nowhere, minted by the issuer: it must not renew itself.
    let ghost = id("spiffe://cluster.local/ns/ghost/sa/ghost");
    let creds = h.mint(&ghost);
    let config = creds.client_config(&h.control.id, &[b"h2"]);
    let mut client =
        IdentityClient::new(tls_channel(h.control.identity_addr, config, &h.control.id).await);
    let status = client
        .certify(CertifyRequest {
            csr: creds.key().csr_der(&ghost).unwrap(),
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("spiffe://cluster.local/ns/ghost/sa/ghost is not declared"),
        "{status:?}"
    );

    // The bank, declared, renews by leaf; once removed from mesh.yaml it no longer does.
    let bank = id(BANK);
    let creds = h.mint(&bank);
    let config = creds.client_config(&h.control.id, &[b"h2"]);
    let mut client =
        IdentityClient::new(tls_channel(h.control.identity_addr, config, &h.control.id).await);
    let renew = || CertifyRequest {
        csr: creds.key().csr_der(&bank).unwrap(),
        token: String::new(),
    };
    client.certify(renew()).await.unwrap();
    let without_bank = MESH
        .replace("serviceAccount: bank", "serviceAccount: vault")
        .replace(
            "from: {identities: [spiffe://cluster.local/ns/card/sa/card]}",
            "from: {namespaces: [card]}",
        );
    replace(&h.mesh(), &without_bank);
    let deadline = Instant::now() + WAIT;
    loop {
        match client.certify(renew()).await {
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(POLL_INTERVAL / 2).await;
            }
            Ok(_) => panic!("the bank still renews after its service account changed"),
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                assert!(status.message().contains("not declared"), "{status:?}");
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_revoked_id_is_refused_by_token_and_by_leaf() {
    let h = harness().await;
    let bank = id(BANK);
    let key = WorkloadKey::generate().unwrap();
    let mut bootstrap = IdentityClient::new(h.channel(h.control.identity_addr).await);
    let first = bootstrap
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: "t-bank".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let issued = Issued::from_chain_pem(&first.chain_pem).unwrap();
    let creds =
        CredentialStore::new(bank.clone(), key.clone(), issued, h.control.bundle.clone()).unwrap();

    // The operator revokes the bank while the control plane is down; it starts again.
    let Harness {
        control,
        dir,
        _cleanup,
        _watcher,
        ..
    } = h;
    control.shutdown().await;
    drop(_watcher);
    assert!(Revocations::load(&dir).unwrap().revoke(&bank).unwrap());
    let h = harness_in(dir).await;

    let mut bootstrap = IdentityClient::new(h.channel(h.control.identity_addr).await);
    let status = bootstrap
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: "t-bank".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");

    let config = creds.client_config(&h.control.id, &[b"h2"]);
    let mut client =
        IdentityClient::new(tls_channel(h.control.identity_addr, config, &h.control.id).await);
    let status = client
        .certify(CertifyRequest {
            csr: key.csr_der(&bank).unwrap(),
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");

    // The card is not affected.
    let card_key = WorkloadKey::generate().unwrap();
    bootstrap
        .certify(CertifyRequest {
            csr: card_key.csr_der(&id(CARD)).unwrap(),
            token: "t-card".into(),
        })
        .await
        .unwrap();
    drop(_cleanup);
}

#[tokio::test]
async fn token_bindings_survive_a_restart() {
    let h = harness().await;
    let bank = id(BANK);
    let key = WorkloadKey::generate().unwrap();
    let certify = |key: &WorkloadKey| CertifyRequest {
        csr: key.csr_der(&bank).unwrap(),
        token: "t-bank".into(),
    };
    let mut client = IdentityClient::new(h.channel(h.control.identity_addr).await);
    client.certify(certify(&key)).await.unwrap();

    // A new control plane over the same state directory.
    let Harness {
        control,
        dir,
        _cleanup,
        _watcher,
        ..
    } = h;
    control.shutdown().await;
    drop(_watcher);
    let h = harness_in(dir).await;
    let mut client = IdentityClient::new(h.channel(h.control.identity_addr).await);

    // A thief with the token but another key is still refused...
    let thief = WorkloadKey::generate().unwrap();
    let status = client.certify(certify(&thief)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("another key"), "{status:?}");
    // ...and the proxy that kept its key still gets its certificate by token.
    let renewed = client.certify(certify(&key)).await.unwrap().into_inner();
    assert_eq!(renewed.identity, BANK);
    drop(_cleanup);
}

/// Reads until end of file or `within`; true when the server closed the connection in time.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_strangers_connection_is_closed_soon_and_a_proxys_kept() {
    let h = harness().await;
    let connect = |config: Arc<rustls::ClientConfig>| {
        let addr = h.control.destination_addr;
        let name = h.control.id.tls_server_name();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            TlsConnector::from(config).connect(name, tcp).await.unwrap()
        }
    };
    let started = Instant::now();
    let mut stranger = connect(bootstrap_client_config(
        &h.control.bundle,
        &h.control.id,
        &[b"h2"],
    ))
    .await;
    let mut proxy = connect(h.mint(&id(CARD)).client_config(&h.control.id, &[b"h2"])).await;
    assert!(
        closed_within(&mut stranger, WAIT).await,
        "a connection without a certificate is closed"
    );
    let took = started.elapsed();
    assert!(
        took >= onemesh_control::limits::UNAUTHENTICATED_LIFETIME
            && took < onemesh_control::limits::UNAUTHENTICATED_LIFETIME * 3,
        "closed after {took:?}"
    );
    assert!(
        !closed_within(&mut proxy, Duration::from_secs(2)).await,
        "a proxy's connection stays open"
    );
}

#[tokio::test]
async fn every_listener_announces_its_http2_limits() {
    use onemesh_control::limits;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness().await;
    for addr in [
        h.control.identity_addr,
        h.control.destination_addr,
        h.control.policy_addr,
    ] {
        let config = h.mint(&id(CARD)).client_config(&h.control.id, &[b"h2"]);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(config)
            .connect(h.control.id.tls_server_name(), tcp)
            .await
            .unwrap();
        // The client preface and an empty SETTINGS frame, by hand.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        // The server's first frame is its SETTINGS.
        let mut header = [0u8; 9];
        tokio::time::timeout(WAIT, tls.read_exact(&mut header))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(header[3], 0x4, "a SETTINGS frame: {header:?}");
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await.unwrap();
        let settings: std::collections::BTreeMap<u16, u32> = payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        // SETTINGS_MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE.
        assert_eq!(
            settings.get(&0x3),
            Some(&limits::MAX_CONCURRENT_STREAMS),
            "{settings:?}"
        );
        assert_eq!(
            settings.get(&0x4),
            Some(&limits::INITIAL_STREAM_WINDOW),
            "{settings:?}"
        );
        assert_eq!(
            settings.get(&0x6),
            Some(&limits::MAX_HEADER_LIST_SIZE),
            "{settings:?}"
        );
        // MAX_FRAME_SIZE: absent means the protocol's default, 16 KiB.
        assert_eq!(
            settings.get(&0x5).copied().unwrap_or(16_384),
            limits::MAX_FRAME_SIZE
        );
    }
}
