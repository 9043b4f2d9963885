use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use onemesh_api::identity::TrustReport;
use onemesh_identity::{SpiffeId, TrustAnchor, WorkloadKey};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status};

use super::*;
use crate::pki::CaSnapshot;

const TD: &str = "cluster.local";

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

struct Ca {
    anchor: TrustAnchor,
    snapshot: CaSnapshot,
}

fn ca() -> Ca {
    let anchor = TrustAnchor::generate(TD, Duration::from_secs(3600)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(3600)).unwrap();
    let snapshot = CaSnapshot::new(Arc::new(issuer), anchor.bundle()).unwrap();
    Ca { anchor, snapshot }
}

fn chain(ca: &CaSnapshot, who: &SpiffeId) -> Vec<Vec<u8>> {
    let key = WorkloadKey::generate().unwrap();
    let issued = ca
        .issuer
        .sign_csr(&key.csr_der(who).unwrap(), Duration::from_secs(60), |_| {
            true
        })
        .unwrap();
    issued.chain.iter().map(|c| c.to_vec()).collect()
}

fn report(ca: &CaSnapshot, chain: Vec<Vec<u8>>) -> TrustReport {
    TrustReport {
        fingerprint: ca.fingerprint.to_vec(),
        chain,
    }
}

#[test]
fn a_report_counts_its_issuer_only_when_the_chain_verifies() {
    let ca = ca();
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let now = SystemTime::now();
    let (fingerprint, leaf) = check_report(
        &report(&ca.snapshot, chain(&ca.snapshot, &bank)),
        &bank,
        &ca.snapshot,
        now,
    )
    .unwrap();
    assert_eq!(fingerprint, Some(ca.snapshot.fingerprint));
    let leaf = leaf.unwrap();
    assert_eq!(leaf.issuer, Some(ca.snapshot.issuer_sha256()));
    assert_eq!(leaf.summary.id.as_deref(), Some(bank.as_str()));

    // A leaf from a rogue issuer, presented with the real issuer's certificate behind it, is
    // recorded but not counted as signed by the current issuer.
    let rogue_anchor = TrustAnchor::generate(TD, Duration::from_secs(3600)).unwrap();
    let rogue = CaSnapshot::new(
        Arc::new(
            rogue_anchor
                .issue_issuer(Duration::from_secs(3600))
                .unwrap(),
        ),
        rogue_anchor.bundle(),
    )
    .unwrap();
    let mut forged = chain(&rogue, &bank);
    forged[1] = ca.snapshot.issuer_cert.to_vec();
    let (_, leaf) = check_report(&report(&ca.snapshot, forged), &bank, &ca.snapshot, now).unwrap();
    assert_eq!(leaf.unwrap().issuer, None);
    let _ = ca.anchor;
}

#[test]
fn bad_reports_are_refused_with_invalid_argument() {
    let ca = ca();
    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let card = id("spiffe://cluster.local/ns/card/sa/card");
    let now = SystemTime::now();
    let good = chain(&ca.snapshot, &bank);

    let short = TrustReport {
        fingerprint: vec![1; 31],
        chain: good.clone(),
    };
    let long_chain = report(&ca.snapshot, vec![good[0].clone(); MAX_CHAIN_CERTS + 1]);
    let big = report(&ca.snapshot, vec![vec![0x30; MAX_CERT_BYTES + 1]]);
    let garbage = report(&ca.snapshot, vec![vec![1, 2, 3]]);
    let cases = [
        (short, "Fingerprint"),
        (long_chain, "ChainTooLong"),
        (big, "CertTooBig"),
        (garbage, "BadLeaf"),
        // card's chain on bank's stream.
        (report(&ca.snapshot, chain(&ca.snapshot, &card)), "OtherId"),
    ];
    for (bad, what) in cases {
        let err = check_report(&bad, &bank, &ca.snapshot, now).unwrap_err();
        assert!(format!("{err:?}").starts_with(what), "{what}: {err:?}");
        assert_eq!(Status::from(err).code(), Code::InvalidArgument, "{what}");
    }
}

fn peer(who: Option<&SpiffeId>, port: u16) -> PeerInfo {
    PeerInfo {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        id: who.cloned(),
    }
}

#[tokio::test]
async fn a_stream_needs_a_certificate_and_its_entry_goes_with_it() {
    let ca = ca();
    let fingerprint = ca.snapshot.fingerprint;
    let (ca_tx, ca_rx) = watch::channel(Arc::new(ca.snapshot));
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let registry = Registry::new();
    let service = TrustService::new(
        registry.clone(),
        ca_rx,
        Duration::from_millis(1234),
        shutdown,
    );

    let (_tx, rx) = mpsc::unbounded_channel::<Result<TrustReport, Status>>();
    let refused = service.watch(Some(&peer(None, 1)), UnboundedReceiverStream::new(rx));
    assert!(matches!(refused, Err(TrustError::NoCertificate)));
    assert_eq!(
        Status::from(TrustError::NoCertificate).code(),
        Code::Unauthenticated
    );

    let bank = id("spiffe://cluster.local/ns/bank/sa/bank");
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = service
        .watch(
            Some(&peer(Some(&bank), 2)),
            UnboundedReceiverStream::new(rx),
        )
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.fingerprint, fingerprint.to_vec());
    assert_eq!(first.renew_within_ms, 1234);
    assert_eq!(registry.progress(&Goal::Fingerprint(fingerprint)).total, 1);
    assert_eq!(registry.progress(&Goal::Fingerprint(fingerprint)).done, 0);

    let snapshot = ca_tx.borrow().clone();
    tx.send(Ok(report(&snapshot, chain(&snapshot, &bank))))
        .unwrap();
    // The report is read while the stream is polled for the next update.
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    let progress = registry.progress(&Goal::Issuer(snapshot.issuer_sha256()));
    assert_eq!((progress.done, progress.total), (1, 1));
    let shown = registry.proxies(&snapshot);
    assert_eq!(shown.len(), 1);
    assert!(shown[0].current_issuer && shown[0].current_bundle);
    assert_eq!(shown[0].addr, "127.0.0.1:2");

    // A bad report ends the stream with its error, and the entry goes.
    tx.send(Ok(TrustReport {
        fingerprint: vec![0; 5],
        chain: Vec::new(),
    }))
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(stream.next().await.is_none());
    drop(stream);
    assert_eq!(registry.progress(&Goal::Fingerprint(fingerprint)).total, 0);
}
