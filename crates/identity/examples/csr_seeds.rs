//! Writes real CSRs made by [`WorkloadKey::csr_der`] into a directory: the seed corpus of the
//! control plane's `csr` fuzz target (`crates/control/fuzz/corpus/csr/`).
//!
//! `cargo run -p onemesh-identity --example csr_seeds -- crates/control/fuzz/corpus/csr`
//!
//! The ids: the one the fuzz target's token entitles, another workload's, another trust
//! domain's, and the control plane's own (which is never issued).

use std::path::PathBuf;

use onemesh_identity::{SpiffeId, WorkloadKey};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: csr_seeds DIRECTORY (e.g. crates/control/fuzz/corpus/csr)")?,
    );
    std::fs::create_dir_all(&dir)?;
    for (name, id) in [
        ("seed-entitled", "spiffe://cluster.local/ns/bank/sa/bank"),
        (
            "seed-other-workload",
            "spiffe://cluster.local/ns/order/sa/web",
        ),
        ("seed-other-domain", "spiffe://example.org/ns/bank/sa/bank"),
        (
            "seed-control-plane",
            "spiffe://cluster.local/ns/onemesh/sa/control",
        ),
    ] {
        let id: SpiffeId = id.parse()?;
        let csr = WorkloadKey::generate()?.csr_der(&id)?;
        std::fs::write(dir.join(name), csr)?;
    }
    Ok(())
}
