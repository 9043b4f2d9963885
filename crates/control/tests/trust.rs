//! Trust rotation end to end: an in-process control plane on 127.0.0.1 port 0 over a temp state
//! directory, fake proxies that hold a real `CredentialStore`, watch `Identity.WatchTrust`, apply
//! each update, renew over `Identity.Certify` with their leaf and report, and the operator calling
//! `Admin` with the credentials the control plane wrote to the state directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use onemesh_api::admin::admin_client::AdminClient;
use onemesh_api::admin::{
    RevokeRequest, RotateRequest, RotationProgress, TrustRequest, TrustStatus,
};
use onemesh_api::identity::identity_client::IdentityClient;
use onemesh_api::identity::{CertifyRequest, TrustReport};
use onemesh_control::local::{LocalStore, POLL_INTERVAL, TOKENS_FILE};
use onemesh_control::pki::{self, CaSettings};
use onemesh_control::{Control, Settings, start};
use onemesh_identity::{
    CredentialStore, Issued, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey,
    bootstrap_client_config, verify_peer,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);
const TD: &str = "cluster.local";

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
  ports: [{port: 8080}]
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: card, namespace: card}
spec:
  serviceAccount: card
  ports: [{port: 8080}]
";

const TOKENS: &str = r#"{
  "t-bank": "spiffe://cluster.local/ns/bank/sa/bank",
  "t-card": "spiffe://cluster.local/ns/card/sa/card"
}"#;

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
        "onemesh-trust-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.join(TOKENS_FILE), TOKENS).unwrap();
    dir
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn bank() -> SpiffeId {
    id("spiffe://cluster.local/ns/bank/sa/bank")
}

fn card() -> SpiffeId {
    id("spiffe://cluster.local/ns/card/sa/card")
}

fn control_id() -> SpiffeId {
    pki::control_id(TD).unwrap()
}

/// A control plane over `dir` with short rotation timings.
struct Plane {
    control: Control,
    _watcher: AbortOnDrop,
}

async fn plane(dir: &Path) -> Plane {
    let store = LocalStore::open(&dir.join("mesh.yaml"), dir).unwrap();
    let watcher = AbortOnDrop(store.spawn_watcher(POLL_INTERVAL));
    let mut settings = Settings::new(dir.to_path_buf());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.identity_addr = any;
    settings.destination_addr = any;
    settings.policy_addr = any;
    settings.ca = CaSettings {
        anchor_lifetime: Duration::from_secs(3600),
        issuer_lifetime: Duration::from_secs(1800),
        rotation_deadline: Duration::from_secs(15),
        renew_within: Duration::from_millis(200),
        reconnect_grace: Duration::from_secs(1),
        ..CaSettings::default()
    };
    let control = tokio::time::timeout(WAIT, start(&settings, Arc::new(store)))
        .await
        .unwrap()
        .unwrap();
    Plane {
        control,
        _watcher: watcher,
    }
}

async fn tls_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = TlsConnector::from(config);
    let name = control_id().tls_server_name();
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

/// A channel without a client certificate (a proxy before its first Certify).
async fn anonymous(addr: SocketAddr, bundle: &TrustBundle) -> Channel {
    tls_channel(
        addr,
        bootstrap_client_config(bundle, &control_id(), &[b"h2"]),
    )
    .await
    .unwrap()
}

/// A channel presenting `creds`' leaf.
async fn with_leaf(addr: SocketAddr, creds: &CredentialStore) -> Channel {
    tls_channel(addr, creds.client_config(&control_id(), &[b"h2"]))
        .await
        .unwrap()
}

fn bundle_on_disk(dir: &Path) -> TrustBundle {
    TrustBundle::from_pem(&std::fs::read_to_string(dir.join(pki::TRUST_ANCHORS_FILE)).unwrap())
        .unwrap()
}

/// The operator's credentials as the control plane wrote them.
fn operator_creds(dir: &Path) -> CredentialStore {
    let read = |name| std::fs::read_to_string(dir.join(name)).unwrap();
    let key = WorkloadKey::from_pem(&read(pki::OPERATOR_KEY_FILE)).unwrap();
    let issued = Issued::from_chain_pem(&read(pki::OPERATOR_CERT_FILE)).unwrap();
    CredentialStore::new(
        pki::operator_id(TD).unwrap(),
        key,
        issued,
        bundle_on_disk(dir),
    )
    .unwrap()
}

async fn operator(plane: &Plane, dir: &Path) -> AdminClient<Channel> {
    AdminClient::new(with_leaf(plane.control.identity_addr, &operator_creds(dir)).await)
}

async fn trust(admin: &mut AdminClient<Channel>) -> TrustStatus {
    admin.trust(TrustRequest {}).await.unwrap().into_inner()
}

/// A proxy's first certificate, by token.
async fn bootstrap(plane: &Plane, who: &SpiffeId, token: &str) -> CredentialStore {
    let bundle = plane.control.ca().bundle.clone();
    let mut client = IdentityClient::new(anonymous(plane.control.identity_addr, &bundle).await);
    let key = WorkloadKey::generate().unwrap();
    let response = client
        .certify(CertifyRequest {
            csr: key.csr_der(who).unwrap(),
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let issued = Issued::from_chain_pem(&response.chain_pem).unwrap();
    CredentialStore::new(who.clone(), key, issued, bundle).unwrap()
}

/// What a fake proxy does with updates.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Applies each update, renews when the issuer changed, reports.
    Apply,
    /// Opens the stream and never reports (a stuck proxy).
    Silent,
}

/// A fake proxy's trust loop; it stops when dropped.
struct FakeProxy {
    creds: CredentialStore,
    _task: AbortOnDrop,
}

async fn fake_proxy(plane: &Plane, creds: CredentialStore, mode: Mode) -> FakeProxy {
    let channel = with_leaf(plane.control.identity_addr, &creds).await;
    let (ready_tx, mut ready) = watch::channel(false);
    let proxy = creds.clone();
    let task = tokio::spawn(async move {
        let mut client = IdentityClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        let report = |fingerprint: Vec<u8>, creds: &CredentialStore| TrustReport {
            fingerprint,
            chain: creds.current().chain.iter().map(|c| c.to_vec()).collect(),
        };
        if mode == Mode::Apply {
            tx.send(report(Vec::new(), &proxy)).unwrap();
        }
        let mut updates = client
            .watch_trust(UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        ready_tx.send_replace(true);
        while let Some(Ok(update)) = updates.next().await {
            if mode == Mode::Silent {
                continue;
            }
            let anchors = update
                .trust_anchors
                .iter()
                .map(|c| c.clone().into())
                .collect();
            proxy.update_bundle(TrustBundle::from_roots(anchors).unwrap());
            let signed_by = proxy.current().chain.get(1).map(|c| c.to_vec());
            if signed_by.as_deref() != Some(update.issuer.as_slice()) {
                let renewed = client
                    .certify(CertifyRequest {
                        csr: proxy.key().csr_der(proxy.id()).unwrap(),
                        token: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let chain = renewed.chain.into_iter().map(Into::into).collect();
                proxy.update(Issued::from_chain(chain).unwrap()).unwrap();
            }
            tx.send(report(update.fingerprint, &proxy)).unwrap();
        }
    });
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    FakeProxy {
        creds,
        _task: AbortOnDrop(task),
    }
}

/// An mTLS handshake from `client` to `server` over loopback, as two proxies would make it.
async fn handshake(client: &CredentialStore, server: &CredentialStore) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config(&[]));
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        acceptor
            .accept(tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let connector = TlsConnector::from(client.client_config(server.id(), &[]));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connected = connector
        .connect(server.id().tls_server_name(), tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let accepted = tokio::time::timeout(WAIT, accept).await.unwrap().unwrap();
    connected.and(accepted)
}

/// Reads a rotation's progress to its end; after each message, the fake proxies must still
/// reach each other (the goal: no failed request at any point of a rotation).
async fn follow(
    stream: &mut tonic::Streaming<RotationProgress>,
    proxies: &[&FakeProxy],
) -> Vec<RotationProgress> {
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("rotation progress")
            .expect("a message before the stream ends")
            .unwrap();
        for a in proxies {
            for b in proxies {
                if let Err(e) = handshake(&a.creds, &b.creds).await {
                    panic!(
                        "{} -> {} failed at {:?}: {e}",
                        a.creds.id(),
                        b.creds.id(),
                        message
                    );
                }
            }
        }
        let done = message.done;
        seen.push(message);
        if done {
            return seen;
        }
    }
}

fn sha256_hex(der: &[u8]) -> String {
    onemesh_control::pki::cert::hex(&onemesh_control::pki::cert::sha256(der))
}

/// Every fake proxy's leaf verifies against `bundle` and was signed by the issuer `issuer_sha`.
fn assert_leaves(proxies: &[&FakeProxy], bundle: &TrustBundle, issuer_sha: &str) {
    for p in proxies {
        let leaf = p.creds.current();
        verify_peer(bundle, &leaf.chain, SystemTime::now(), TD, None)
            .unwrap_or_else(|e| panic!("{}: {e}", p.creds.id()));
        assert_eq!(sha256_hex(&leaf.chain[1]), issuer_sha, "{}", p.creds.id());
        assert_eq!(&p.creds.bundle(), bundle, "{}", p.creds.id());
    }
}

#[tokio::test]
async fn issuer_rotation_reissues_every_connected_proxy() {
    let dir = temp_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    let plane = plane(&dir).await;
    let a = fake_proxy(
        &plane,
        bootstrap(&plane, &bank(), "t-bank").await,
        Mode::Apply,
    )
    .await;
    let b = fake_proxy(
        &plane,
        bootstrap(&plane, &card(), "t-card").await,
        Mode::Apply,
    )
    .await;
    let mut admin = operator(&plane, &dir).await;
    let before = trust(&mut admin).await;
    assert_eq!(before.proxies.len(), 2);

    let mut progress = admin
        .rotate_issuer(RotateRequest { deadline_secs: 10 })
        .await
        .unwrap()
        .into_inner();
    let seen = follow(&mut progress, &[&a, &b]).await;
    assert!(seen.iter().all(|m| m.stragglers.is_empty()), "{seen:?}");
    let last_step = seen.iter().rev().find(|m| !m.done).unwrap();
    assert_eq!(last_step.step, "leaves re-issued");
    assert_eq!((last_step.done_proxies, last_step.total_proxies), (2, 2));

    let after = trust(&mut admin).await;
    let issuer = after.issuer.clone().unwrap();
    assert_ne!(issuer.sha256, before.issuer.unwrap().sha256);
    assert_eq!(after.anchors, before.anchors);
    assert_eq!(after.rotation, "");
    assert!(
        after
            .proxies
            .iter()
            .all(|p| p.current_issuer && p.current_bundle),
        "{:?}",
        after.proxies
    );
    let bundle = bundle_on_disk(&dir);
    assert_eq!(bundle, plane.control.ca().bundle);
    assert_leaves(&[&a, &b], &bundle, &issuer.sha256);
    // The files on disk are the new issuer, and the rotation is over.
    let issuer_pem = std::fs::read_to_string(dir.join(pki::ISSUER_CERT_FILE)).unwrap();
    let on_disk = pki::cert::pem_certs(&issuer_pem).unwrap();
    assert_eq!(sha256_hex(&on_disk[0]), issuer.sha256);
    assert!(!dir.join(pki::ROTATION_FILE).exists());
    // The operator's certificate was re-issued by the new issuer.
    let operator_leaf = operator_creds(&dir).current();
    assert_eq!(sha256_hex(&operator_leaf.chain[1]), issuer.sha256);
    plane.control.shutdown().await;
}

#[tokio::test]
async fn anchor_rotation_moves_every_proxy_to_the_new_anchor_without_a_failed_handshake() {
    let dir = temp_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    let plane = plane(&dir).await;
    let old_bundle = bundle_on_disk(&dir);
    let a = fake_proxy(
        &plane,
        bootstrap(&plane, &bank(), "t-bank").await,
        Mode::Apply,
    )
    .await;
    let b = fake_proxy(
        &plane,
        bootstrap(&plane, &card(), "t-card").await,
        Mode::Apply,
    )
    .await;
    let mut admin = operator(&plane, &dir).await;

    let mut progress = admin
        .rotate_anchor(RotateRequest { deadline_secs: 10 })
        .await
        .unwrap()
        .into_inner();
    // While it runs, a second rotation is refused, naming the step.
    let second = admin
        .rotate_issuer(RotateRequest { deadline_secs: 10 })
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");
    assert!(second.message().contains("anchor rotation"), "{second:?}");

    let started = Instant::now();
    let seen = follow(&mut progress, &[&a, &b]).await;
    println!(
        "anchor rotation with 2 proxies took {:?}",
        started.elapsed()
    );
    assert!(seen.iter().all(|m| m.stragglers.is_empty()), "{seen:?}");
    let mut steps: Vec<&str> = Vec::new();
    for m in &seen {
        if steps.last() != Some(&m.step.as_str()) {
            steps.push(&m.step);
        }
    }
    assert_eq!(
        steps,
        [
            "new anchor in the bundle",
            "leaves re-issued",
            "old anchor removed",
            "done"
        ]
    );

    let status = trust(&mut admin).await;
    assert_eq!(status.anchors.len(), 1);
    assert_eq!(status.rotation, "");
    let new_bundle = bundle_on_disk(&dir);
    assert_eq!(new_bundle.roots().len(), 1);
    assert!(!new_bundle.roots().contains(&old_bundle.roots()[0]));
    assert_eq!(sha256_hex(&new_bundle.roots()[0]), status.anchors[0].sha256);
    assert_eq!(new_bundle, plane.control.ca().bundle);
    let issuer = status.issuer.unwrap().sha256;
    assert_leaves(&[&a, &b], &new_bundle, &issuer);
    // The leaves chain to the new anchor only: not to the old one.
    for p in [&a, &b] {
        assert!(
            verify_peer(
                &old_bundle,
                &p.creds.current().chain,
                SystemTime::now(),
                TD,
                None
            )
            .is_err()
        );
    }
    // The anchor files are the new anchor's; the old key is gone.
    let anchor_pem = std::fs::read_to_string(dir.join(pki::TRUST_ANCHOR_CERT_FILE)).unwrap();
    assert_eq!(
        pki::cert::pem_certs(&anchor_pem).unwrap(),
        new_bundle.roots()
    );
    assert!(!dir.join("trust-anchor.old.key").exists());
    assert!(!dir.join(pki::ROTATION_FILE).exists());
    // New connections work: the control plane's own certificate is from the new issuer (a fresh
    // operator channel built from the files on disk verifies it against the new bundle alone).
    let mut fresh = operator(&plane, &dir).await;
    assert_eq!(trust(&mut fresh).await.proxies.len(), 2);
    plane.control.shutdown().await;
}

#[tokio::test]
async fn a_proxy_that_never_reports_is_a_straggler_at_the_deadline() {
    let dir = temp_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    let plane = plane(&dir).await;
    let a = fake_proxy(
        &plane,
        bootstrap(&plane, &bank(), "t-bank").await,
        Mode::Apply,
    )
    .await;
    let stuck = fake_proxy(
        &plane,
        bootstrap(&plane, &card(), "t-card").await,
        Mode::Silent,
    )
    .await;
    let mut admin = operator(&plane, &dir).await;
    let started = Instant::now();
    let mut progress = admin
        .rotate_issuer(RotateRequest { deadline_secs: 1 })
        .await
        .unwrap()
        .into_inner();
    let seen = follow(&mut progress, &[&a]).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    let late: Vec<&RotationProgress> = seen.iter().filter(|m| !m.stragglers.is_empty()).collect();
    assert_eq!(late.len(), 1, "{seen:?}");
    assert_eq!(late[0].step, "leaves re-issued");
    assert_eq!((late[0].done_proxies, late[0].total_proxies), (1, 2));
    assert_eq!(late[0].stragglers.len(), 1);
    assert!(
        late[0].stragglers[0].starts_with("spiffe://cluster.local/ns/card/sa/card @ 127.0.0.1:"),
        "{:?}",
        late[0].stragglers
    );
    assert!(seen.last().unwrap().done);
    // Trust shows it too: the stuck proxy's leaf is not from the current issuer.
    let status = trust(&mut admin).await;
    let shown: Vec<(&str, bool)> = status
        .proxies
        .iter()
        .map(|p| (p.id.as_str(), p.current_issuer))
        .collect();
    assert_eq!(
        shown,
        [
            ("spiffe://cluster.local/ns/bank/sa/bank", true),
            ("spiffe://cluster.local/ns/card/sa/card", false)
        ]
    );
    drop(stuck);
    plane.control.shutdown().await;
}

#[tokio::test]
async fn admin_answers_only_the_operator() {
    let dir = temp_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    let plane = plane(&dir).await;
    let addr = plane.control.identity_addr;
    let bundle = plane.control.ca().bundle.clone();

    // No client certificate.
    let mut nobody = AdminClient::new(anonymous(addr, &bundle).await);
    let refused = nobody.trust(TrustRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("operator.crt"), "{refused:?}");
    let refused = nobody
        .rotate_anchor(RotateRequest { deadline_secs: 1 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // A proxy's certificate.
    let proxy = bootstrap(&plane, &bank(), "t-bank").await;
    let mut as_proxy = AdminClient::new(with_leaf(addr, &proxy).await);
    for refused in [
        as_proxy.trust(TrustRequest {}).await.unwrap_err(),
        as_proxy
            .rotate_issuer(RotateRequest { deadline_secs: 1 })
            .await
            .unwrap_err(),
        as_proxy
            .revoke(RevokeRequest {
                id: card().to_string(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }

    // An operator certificate minted by a CA the mesh does not trust never gets a TLS session.
    let rogue = TrustAnchor::generate(TD, Duration::from_secs(3600)).unwrap();
    let rogue_issuer = rogue.issue_issuer(Duration::from_secs(3600)).unwrap();
    let operator_id = pki::operator_id(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let minted = rogue_issuer
        .sign_csr(
            &key.csr_der(&operator_id).unwrap(),
            Duration::from_secs(600),
            |_| true,
        )
        .unwrap();
    let forged = CredentialStore::new(operator_id, key, minted, bundle.clone()).unwrap();
    let forged_call = async {
        let channel = tls_channel(addr, forged.client_config(&control_id(), &[b"h2"])).await?;
        Ok::<_, Box<dyn std::error::Error>>(AdminClient::new(channel).trust(TrustRequest {}).await?)
    };
    assert!(forged_call.await.is_err());

    // Nor does a proxy get the operator's id certified with its token or its leaf.
    let mut identity = IdentityClient::new(with_leaf(addr, &proxy).await);
    let csr = WorkloadKey::generate()
        .unwrap()
        .csr_der(&pki::operator_id(TD).unwrap())
        .unwrap();
    for token in ["t-bank", ""] {
        let refused = identity
            .certify(CertifyRequest {
                csr: csr.clone(),
                token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }

    // The operator is answered, and may revoke: card is never certified again.
    let mut admin = operator(&plane, &dir).await;
    let status = trust(&mut admin).await;
    assert_eq!(status.anchors.len(), 1);
    assert!(status.issuer.is_some());
    assert!(status.revoked.is_empty());
    for newly in [true, false] {
        let revoked = admin
            .revoke(RevokeRequest {
                id: card().to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revoked.newly_revoked, newly);
    }
    assert_eq!(trust(&mut admin).await.revoked, vec![card().to_string()]);
    let bad = admin
        .revoke(RevokeRequest {
            id: "not-a-spiffe-id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let card_csr = WorkloadKey::generate().unwrap().csr_der(&card()).unwrap();
    let refused = identity
        .certify(CertifyRequest {
            csr: card_csr,
            token: "t-card".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // A proxy's certificate may not revoke.
    let mut as_proxy = AdminClient::new(with_leaf(addr, &proxy).await);
    let refused = as_proxy
        .revoke(RevokeRequest {
            id: bank().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Its key is private to the user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(pki::OPERATOR_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    plane.control.shutdown().await;
}

#[tokio::test]
async fn watch_trust_needs_a_client_certificate() {
    let dir = temp_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    let plane = plane(&dir).await;
    let bundle = plane.control.ca().bundle.clone();
    let mut client = IdentityClient::new(anonymous(plane.control.identity_addr, &bundle).await);
    let (_tx, rx) = mpsc::unbounded_channel::<TrustReport>();
    let refused = client
        .watch_trust(UnboundedReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // With a certificate, the first update comes at once and carries the CA.
    let proxy = bootstrap(&plane, &bank(), "t-bank").await;
    let mut client = IdentityClient::new(with_leaf(plane.control.identity_addr, &proxy).await);
    let (_tx, rx) = mpsc::unbounded_channel::<TrustReport>();
    let mut updates = client
        .watch_trust(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, updates.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ca = plane.control.ca();
    assert_eq!(first.fingerprint, ca.fingerprint.to_vec());
    assert_eq!(first.issuer, ca.issuer_cert.to_vec());
    assert_eq!(first.renew_within_ms, 200);
    assert_eq!(first.trust_anchors.len(), 1);
    plane.control.shutdown().await;
}

#[tokio::test]
async fn a_control_plane_stopped_mid_rotation_finishes_it_after_a_restart() {
    let dir = temp_dir();
    let _cleanup = RemoveOnDrop(dir.clone());
    let first = plane(&dir).await;
    let old_bundle = bundle_on_disk(&dir);
    let bank_creds = bootstrap(&first, &bank(), "t-bank").await;
    let card_creds = bootstrap(&first, &card(), "t-card").await;
    let a = fake_proxy(&first, bank_creds.clone(), Mode::Apply).await;
    // A stuck proxy holds the first step until its deadline.
    let stuck = fake_proxy(&first, card_creds.clone(), Mode::Silent).await;
    let mut admin = operator(&first, &dir).await;
    let mut progress = admin
        .rotate_anchor(RotateRequest { deadline_secs: 60 })
        .await
        .unwrap()
        .into_inner();
    let joined = tokio::time::timeout(WAIT, progress.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(joined.step, "new anchor in the bundle");
    // The bank proxy applies the two-anchor bundle; then the control plane goes away.
    tokio::time::timeout(WAIT, async {
        while a.creds.bundle().roots().len() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(dir.join(pki::ROTATION_FILE).exists());
    drop((a, stuck, admin, progress));
    first.control.shutdown().await;

    // A new control plane on the same directory (new ports), the proxies reconnect to it.
    let second = plane(&dir).await;
    assert_eq!(second.control.ca().bundle.roots().len(), 2);
    let a = fake_proxy(&second, bank_creds, Mode::Apply).await;
    let b = fake_proxy(&second, card_creds, Mode::Apply).await;
    let mut admin = operator(&second, &dir).await;
    let started = Instant::now();
    let status = loop {
        let status = trust(&mut admin).await;
        if status.rotation.is_empty() {
            break status;
        }
        assert!(
            started.elapsed() < WAIT,
            "still rotating: {}",
            status.rotation
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "resumed rotation finished {:?} after the restart",
        started.elapsed()
    );
    assert_eq!(status.anchors.len(), 1);
    let new_bundle = bundle_on_disk(&dir);
    assert_eq!(new_bundle.roots().len(), 1);
    assert!(!new_bundle.roots().contains(&old_bundle.roots()[0]));
    assert_leaves(&[&a, &b], &new_bundle, &status.issuer.unwrap().sha256);
    assert!(!dir.join(pki::ROTATION_FILE).exists());
    handshake(&a.creds, &b.creds).await.unwrap();
    second.control.shutdown().await;
}
