//! The decision log end to end: a real tonic client over mTLS on loopback calls `Audit.Append`
//! on a control plane over a local store, and `onemesh-audit` verifies what it wrote.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use onemesh_api::audit::audit_client::AuditClient;
use onemesh_api::audit::{AppendRequest, Decision, Mode, Record};
use onemesh_audit::{Filter, Trust, query_dir, verify_dir};
use onemesh_control::local::{ENDPOINTS_FILE, LocalStore, POLL_INTERVAL, TOKENS_FILE};
use onemesh_control::{Control, Settings, start};
use onemesh_identity::{
    CredentialStore, Issuer, SpiffeId, TrustBundle, WorkloadKey, bootstrap_client_config,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(10);

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
  ports: [{name: http, port: 8080, protocol: http}]
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: card, namespace: card}
spec:
  serviceAccount: card
  ports: [{port: 8080}]
";

const ENDPOINTS: &str = r#"[
  {"namespace": "bank", "workload": "bank", "inbound": "127.0.0.1:41001", "ports": {"8080": 42001}}
]"#;

const TOKENS: &str = r#"{"t-bank": "spiffe://cluster.local/ns/bank/sa/bank"}"#;

const BANK: &str = "spiffe://cluster.local/ns/bank/sa/bank";
const CARD: &str = "spiffe://cluster.local/ns/card/sa/card";

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> (PathBuf, RemoveOnDrop) {
    let dir = std::env::temp_dir().join(format!(
        "onemesh-control-audit-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.join(ENDPOINTS_FILE), ENDPOINTS).unwrap();
    std::fs::write(dir.join(TOKENS_FILE), TOKENS).unwrap();
    (dir.clone(), RemoveOnDrop(dir))
}

struct Plane {
    dir: PathBuf,
    control: Control,
    watcher: tokio::task::JoinHandle<()>,
}

async fn plane(dir: &std::path::Path) -> Plane {
    let store = LocalStore::open(&dir.join("mesh.yaml"), dir).unwrap();
    let watcher = store.spawn_watcher(POLL_INTERVAL);
    let mut settings = Settings::new(dir.to_path_buf());
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.identity_addr = any;
    settings.destination_addr = any;
    settings.policy_addr = any;
    settings.audit.seal_interval = Duration::from_millis(200);
    let control = tokio::time::timeout(WAIT, start(&settings, Arc::new(store)))
        .await
        .unwrap()
        .unwrap();
    Plane {
        dir: dir.to_path_buf(),
        control,
        watcher,
    }
}

impl Plane {
    async fn stop(self) {
        self.watcher.abort();
        self.control.shutdown().await;
    }

    fn issuer(&self) -> Issuer {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap();
        Issuer::from_pem(&read("issuer.crt"), &read("issuer.key")).unwrap()
    }

    /// A client presenting a leaf for `id` minted by the mesh's issuer (as a compromised
    /// workload holds one), or none.
    async fn client(&self, id: Option<&str>) -> AuditClient<Channel> {
        let expected = &self.control.id;
        let config = match id {
            Some(id) => {
                let id: SpiffeId = id.parse().unwrap();
                let key = WorkloadKey::generate().unwrap();
                let issued = self
                    .issuer()
                    .sign_csr(
                        &key.csr_der(&id).unwrap(),
                        Duration::from_secs(3600),
                        |_| true,
                    )
                    .unwrap();
                CredentialStore::new(id, key, issued, self.control.bundle.clone())
                    .unwrap()
                    .client_config(expected, &[b"h2"])
            }
            None => bootstrap_client_config(&self.control.bundle, expected, &[b"h2"]),
        };
        let connector = TlsConnector::from(config);
        let (addr, name) = (self.control.policy_addr, expected.tls_server_name());
        let connect = tower::service_fn(move |_| {
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        let channel = tokio::time::timeout(
            WAIT,
            Endpoint::from_static("http://onemesh-control").connect_with_connector(connect),
        )
        .await
        .unwrap()
        .unwrap();
        AuditClient::new(channel)
    }

    fn trust(&self) -> Trust {
        let pem = std::fs::read_to_string(self.dir.join("trust-anchors.pem")).unwrap();
        Trust::new(TrustBundle::from_pem(&pem).unwrap())
    }
}

fn decision(path: &str, decision: Decision) -> Record {
    Record {
        time_unix_ms: 1_780_000_000_000,
        caller: CARD.to_string(),
        // The real port the bank's app listens on (local mode).
        port: 42001,
        kind: "http".to_string(),
        method: "POST".to_string(),
        path: path.to_string(),
        decision: decision as i32,
        policy: "allow-card".to_string(),
        mode: Mode::Enforce as i32,
        count: 1,
        until_unix_ms: 0,
    }
}

fn batch(instance: &str, batch: u64, records: Vec<Record>) -> AppendRequest {
    AppendRequest {
        namespace: "bank".to_string(),
        workload: "bank".to_string(),
        instance: instance.to_string(),
        batch,
        records,
    }
}

#[tokio::test]
async fn a_forged_identity_cannot_log_for_another_workload() {
    let (dir, _cleanup) = temp_dir("forged");
    let p = plane(&dir).await;
    // The card's leaf (valid, minted by the mesh issuer) logging decisions as the bank.
    let forged = p
        .client(Some(CARD))
        .await
        .append(batch("i-1", 1, vec![decision("/v1/x", Decision::Allow)]))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged:?}");
    assert!(forged.message().contains(CARD), "{forged:?}");
    // The bank's service account name in another namespace.
    let lookalike = p
        .client(Some("spiffe://cluster.local/ns/card/sa/bank"))
        .await
        .append(batch("i-1", 1, vec![decision("/v1/x", Decision::Allow)]))
        .await
        .unwrap_err();
    assert_eq!(lookalike.code(), Code::PermissionDenied);
    // No certificate at all.
    let anonymous = p
        .client(None)
        .await
        .append(batch("i-1", 1, vec![decision("/v1/x", Decision::Allow)]))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    // Too many records, and an empty instance.
    let mut bank = p.client(Some(BANK)).await;
    let flood = (0..4097)
        .map(|_| decision("/", Decision::Deny))
        .collect::<Vec<_>>();
    let too_many = bank.append(batch("i-1", 1, flood)).await.unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let nameless = bank
        .append(batch("", 1, vec![decision("/", Decision::Deny)]))
        .await
        .unwrap_err();
    assert_eq!(nameless.code(), Code::InvalidArgument);
    let audit_dir = dir.join("audit");
    p.stop().await;
    let found = query_dir(&audit_dir, &Filter::default()).unwrap();
    assert!(found.records.is_empty(), "{:?}", found.records);
}

#[tokio::test]
async fn a_resent_batch_is_appended_once_and_restarts_continue_the_chain() {
    let (dir, _cleanup) = temp_dir("chain");
    let p = plane(&dir).await;
    let mut bank = p.client(Some(BANK)).await;
    let first = batch(
        "i-1",
        1,
        vec![
            decision("/v1/a", Decision::Allow),
            decision("/v1/b", Decision::Deny),
        ],
    );
    let seq = bank
        .append(first.clone())
        .await
        .unwrap()
        .into_inner()
        .sequence;
    // The answer was lost: the proxy sends the same batch again.
    let again = bank
        .append(first.clone())
        .await
        .unwrap()
        .into_inner()
        .sequence;
    assert_eq!(seq, again);
    // Sealed by the timer (every 200 ms here) while running, not only at shutdown.
    let trust = p.trust();
    let audit_dir = dir.join("audit");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let report = verify_dir(&audit_dir, &trust).unwrap();
        if report.records == 2 && report.unsealed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never sealed: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop().await;
    let report = verify_dir(&audit_dir, &trust).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 2);
    assert_eq!(report.unsealed, 0);
    assert!(
        report
            .signers
            .contains("spiffe://cluster.local/ns/onemesh/sa/control")
    );

    // Restarted on the same directory: the chain goes on, and the batch is still known.
    let p = plane(&dir).await;
    let mut bank = p.client(Some(BANK)).await;
    let resent = bank.append(first).await.unwrap().into_inner().sequence;
    assert_eq!(resent, seq);
    let next = bank
        .append(batch(
            "i-1",
            2,
            vec![decision("/v1/c", Decision::WouldDeny)],
        ))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    assert!(next > seq);
    p.stop().await;
    let report = verify_dir(&audit_dir, &trust).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!((report.records, report.unsealed), (3, 0));
    let found = query_dir(&audit_dir, &Filter::default()).unwrap();
    let paths: Vec<&str> = found.records.iter().map(|(_, r)| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/a", "/v1/b", "/v1/c"]);
    for (_, r) in &found.records {
        // Namespace and workload from the checked request, the port as declared.
        assert_eq!(
            (r.namespace.as_str(), r.workload.as_str(), r.port),
            ("bank", "bank", 8080)
        );
        assert_eq!(r.instance, "i-1");
    }
}

#[tokio::test]
async fn concurrent_batches_are_all_appended_in_one_chain() {
    let (dir, _cleanup) = temp_dir("concurrent");
    let p = plane(&dir).await;
    let bank = p.client(Some(BANK)).await;
    let mut calls = Vec::new();
    for instance in 0..8 {
        for n in 1..=5u64 {
            let mut client = bank.clone();
            calls.push(tokio::spawn(async move {
                let records = (0..3)
                    .map(|i| decision(&format!("/v1/{instance}/{n}/{i}"), Decision::Allow))
                    .collect();
                client
                    .append(batch(&format!("i-{instance}"), n, records))
                    .await
                    .map(|r| r.into_inner().sequence)
            }));
        }
    }
    let mut sequences = Vec::new();
    for call in calls {
        sequences.push(call.await.unwrap().unwrap());
    }
    sequences.sort_unstable();
    sequences.dedup();
    // Batches sent out of order by one instance (5 before 4) are refused as already seen:
    // a proxy sends one batch at a time, so only count what was written.
    let trust = p.trust();
    p.stop().await;
    let report = verify_dir(&dir.join("audit"), &trust).unwrap();
    assert!(report.ok(), "{:?}", report.failure);
    assert_eq!(report.records, 3 * sequences.len() as u64);
    assert!(sequences.len() >= 8, "{sequences:?}");
}
