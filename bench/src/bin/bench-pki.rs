//! `bench-pki --out DIR [--trust-domain TD]`: makes the mesh PKI the benchmark's proxy pair runs
//! on, with `onemesh-identity` itself (so the certificates are exactly what the mesh makes):
//! `DIR/anchors.pem` (the trust bundle, for ONEMESH_PROXY_TRUST_ANCHORS), `DIR/issuer.pem` and
//! `DIR/issuer.key` (the issuer CA for ONEMESH_PROXY_IDENTITY_ISSUER_CERT / _KEY). The root's key
//! is not written: nothing in the benchmark needs it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use onemesh_identity::{DEFAULT_TRUST_DOMAIN, TrustAnchor};

/// Writes a trust anchor bundle and an issuer CA for a benchmark run.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory to write anchors.pem, issuer.pem and issuer.key into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The mesh's trust domain.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long the root and the issuer stay valid, in hours.
    #[arg(long, default_value_t = 48)]
    lifetime_hours: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lifetime = Duration::from_secs(args.lifetime_hours * 3600);
    let anchor = TrustAnchor::generate(&args.trust_domain, lifetime)
        .context("could not generate the trust anchor")?;
    let issuer = anchor
        .issue_issuer(lifetime)
        .context("could not issue the issuer CA")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("could not create {}", args.out.display()))?;
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))
    };
    write("anchors.pem", anchor.bundle().to_pem())?;
    write("issuer.pem", issuer.chain_pem())?;
    write("issuer.key", issuer.key_pem())?;
    Ok(())
}
