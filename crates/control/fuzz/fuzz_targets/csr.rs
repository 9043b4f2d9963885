//! Fuzzes what the control plane does with a proxy's CSR (`Identity.Certify`): the issuer's
//! parsing, signature and entitlement checks (`Issuer::sign_csr` with an entitlement callback),
//! the public-key extraction a bootstrap token is bound to (`csr_public_key`), and the whole
//! service call with a token and as a renewal. Never panics; a leaf is issued only for the id the
//! callback was asked about and allowed, and it certifies exactly the key the CSR carries.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use onemesh_control::pki::CaSnapshot;
use onemesh_control::services::identity::{IdentityService, IdentityState};
use onemesh_control::services::trust::{Registry, TrustService};
use onemesh_control::state::MeshState;
use onemesh_control::store::StaticStore;
use onemesh_identity::{DEFAULT_TRUST_DOMAIN, Issuer, SpiffeId, TrustAnchor, csr_public_key};

/// The id the seed CSRs ask for and the token below entitles.
const ENTITLED: &str = "spiffe://cluster.local/ns/bank/sa/bank";
const TOKEN: &str = "t-bank";
/// The mesh that declares that id (renewal re-checks that it is declared).
const MESH: &str = "\
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: bank, namespace: bank}
spec:
  serviceAccount: bank
  ports: [{port: 8080}]
";

struct World {
    issuer: Arc<Issuer>,
    service: IdentityService,
    entitled: SpiffeId,
    runtime: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let day = Duration::from_secs(86_400);
        let anchor = TrustAnchor::generate(DEFAULT_TRUST_DOMAIN, day).expect("test anchor");
        let issuer = Arc::new(anchor.issue_issuer(day).expect("test issuer"));
        let entitled: SpiffeId = ENTITLED.parse().expect("valid id");
        let tokens = BTreeMap::from([(TOKEN.to_string(), entitled.clone())]);
        let config = onemesh_control::config::parse(std::path::Path::new("mesh.yaml"), MESH)
            .expect("the fuzz mesh is valid");
        let mesh = MeshState::local(&config, &[]);
        let store = Arc::new(StaticStore::new(mesh, tokens));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let snapshot = CaSnapshot::new(issuer.clone(), anchor.bundle()).expect("test ca");
        let (_ca_tx, ca) = tokio::sync::watch::channel(Arc::new(snapshot));
        std::mem::forget(_ca_tx);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        std::mem::forget(_stop_tx);
        let trust = TrustService::new(Registry::new(), ca.clone(), Duration::from_secs(5), stop);
        // Token bindings are written to a state directory of the fuzzer's own.
        let dir = std::env::temp_dir().join(format!("onemesh-fuzz-csr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("state dir");
        let state = IdentityState::load(&dir).expect("identity state");
        let service = IdentityService::new(ca, trust, store, day, state);
        World {
            issuer,
            service,
            entitled,
            runtime,
        }
    })
}

/// The DER SubjectPublicKeyInfo of a leaf.
fn leaf_key(der: &[u8]) -> Vec<u8> {
    let (_, leaf) = x509_parser::parse_x509_certificate(der).expect("an issued leaf parses");
    leaf.public_key().raw.to_vec()
}

fuzz_target!(|csr: &[u8]| {
    let w = world();
    let key = csr_public_key(csr);

    // The issuer alone: the callback sees the id asked for and decides.
    let mut asked = None;
    let signed = w.issuer.sign_csr(csr, Duration::from_secs(600), |id| {
        asked = Some(id.clone());
        *id == w.entitled
    });
    if let Ok(issued) = &signed {
        assert_eq!(asked.as_ref(), Some(&issued.id), "issued for the id asked");
        assert_eq!(issued.id, w.entitled, "issued only when entitled");
        let key = key.as_ref().expect("a signed csr has a readable key");
        assert_eq!(&leaf_key(issued.leaf()), key, "the leaf certifies the csr's key");
    }

    // The service, with the token and as a renewal by the entitled peer.
    for (token, peer) in [(TOKEN, None), ("", Some(&w.entitled))] {
        let answer = w.runtime.block_on(w.service.certify(csr, token, peer));
        if let Ok(response) = answer {
            assert!(signed.is_ok(), "the service signs only what the issuer would");
            assert_eq!(response.identity, ENTITLED);
            let leaf = response.chain.first().expect("a chain");
            assert_eq!(key.as_ref().ok(), Some(&leaf_key(leaf)), "the leaf certifies the csr's key");
        }
    }
});
