//! `onemesh install` and `onemesh uninstall`: the Kubernetes manifests of the mesh, printed for
//! `kubectl apply -f -` / `kubectl delete -f -` (as `linkerd install` does).
//!
//! The manifests are one reviewed YAML file, `deploy/install/control-plane.yaml`, whose `{{…}}`
//! fields are filled in here, preceded by the CRDs (`deploy/crds/`). The identity issuer is
//! generated (a new trust anchor for `--trust-domain`, its private key dropped: keep your own
//! anchor with the `--identity-*-file` flags if you mean to rotate issuers offline) or read from
//! the operator's files, which are checked first: the issuer must be a CA of the trust domain, its
//! key must match, and a leaf it signs must verify against the anchors.
//!
//! `uninstall` prints only the kind, name and namespace of every object `install` makes, last
//! first, so `kubectl delete` removes exactly those (and, with the CRDs, every policy and route).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use base64::Engine as _;
use onemesh_identity::{SpiffeId, TrustAnchor, TrustBundle, WorkloadKey, verify_peer};
use saphyr::{LoadableYamlNode, Yaml};

/// The control plane's manifests, with `{{…}}` fields.
const CONTROL_PLANE: &str = include_str!("../../../deploy/install/control-plane.yaml");
/// The CRDs, as `crdgen` writes them.
const CRDS: [&str; 3] = [
    include_str!("../../../deploy/crds/authorizationpolicies.yaml"),
    include_str!("../../../deploy/crds/routes.yaml"),
    include_str!("../../../deploy/crds/ratelimitpolicies.yaml"),
];

/// A generated trust anchor lives ten years, the issuer one (the control plane rotates it at 70 %).
const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// `onemesh install` flags.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The mesh's trust domain: identities are `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, default_value = onemesh_identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Control-plane replicas (each serves every call; 2 or more leaves no single point of failure).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// The control plane's container image.
    #[arg(long, default_value = concat!("onemesh/control:v", env!("CARGO_PKG_VERSION")))]
    pub control_image: String,
    /// The proxy image the control plane's webhook injects (as `onemesh inject --proxy-image`).
    #[arg(long, default_value = concat!("onemesh/proxy:v", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
    /// PEM trust anchors (one or more roots) the issuer chains to; with the two flags below.
    #[arg(long, requires_all = ["identity_issuer_certificate_file", "identity_issuer_key_file"])]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// PEM issuer certificate (an intermediate CA of the trust domain), optionally followed by
    /// further intermediates.
    #[arg(long, requires = "identity_trust_anchors_file")]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// The issuer's PKCS#8 PEM private key.
    #[arg(long, requires = "identity_trust_anchors_file")]
    pub identity_issuer_key_file: Option<PathBuf>,
}

/// The issuer as it goes into the Secret, and the anchors it chains to.
struct IssuerPem {
    chain: String,
    key: String,
    anchors: String,
}

/// Everything `kubectl apply -f -` needs for the mesh: the CRDs, then the control plane.
pub fn manifests(args: &InstallArgs) -> anyhow::Result<String> {
    let issuer = match (
        &args.identity_trust_anchors_file,
        &args.identity_issuer_certificate_file,
        &args.identity_issuer_key_file,
    ) {
        (Some(anchors), Some(cert), Some(key)) => {
            read_issuer(&args.trust_domain, anchors, cert, key)?
        }
        _ => generate_issuer(&args.trust_domain)?,
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    // The template indents the first line; the others follow it.
    let indented = issuer.anchors.trim().replace('\n', "\n    ");
    let control = fill(
        without_leading_comment(CONTROL_PLANE),
        &[
            ("TRUST_DOMAIN", &args.trust_domain),
            ("REPLICAS", &args.replicas.to_string()),
            ("CONTROL_IMAGE", &args.control_image),
            ("PROXY_IMAGE", &args.proxy_image),
            ("VERSION", env!("CARGO_PKG_VERSION")),
            ("ISSUER_CRT_B64", &b64(&issuer.chain)),
            ("ISSUER_KEY_B64", &b64(&issuer.key)),
            ("ANCHORS_B64", &b64(&issuer.anchors)),
            ("ANCHORS_PEM", &indented),
            ("DASHBOARD_TOKEN_B64", &b64(&dashboard_token()?)),
        ],
    )?;
    let mut out = format!(
        "# onemesh {} for trust domain {}, made by `onemesh install`.\n# Every object is labelled app.kubernetes.io/part-of: onemesh; `onemesh uninstall | kubectl delete -f -` removes them.\n",
        env!("CARGO_PKG_VERSION"),
        args.trust_domain
    );
    for crd in CRDS {
        out.push_str(crd.trim_end());
        out.push_str("\n---\n");
    }
    out.push_str(&control);
    Ok(out)
}

/// A new dashboard token: 256 bits from the OS's cryptographic RNG, in hex.
fn dashboard_token() -> anyhow::Result<String> {
    let random: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| {
            anyhow::anyhow!(
                "the system's random number generator failed: check that getrandom(2) works"
            )
        })?
        .expose();
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// What `kubectl delete -f -` needs to remove everything `install` made, last made first.
pub fn uninstall_manifests() -> anyhow::Result<String> {
    let mut objects = Vec::new();
    for crd in CRDS {
        objects.extend(heads(crd)?);
    }
    objects.extend(heads(CONTROL_PLANE)?);
    let mut out = String::new();
    for (i, head) in objects.iter().rev().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let _ = writeln!(
            out,
            "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}",
            head.api_version, head.kind, head.name
        );
        if let Some(ns) = &head.namespace {
            let _ = writeln!(out, "  namespace: {ns}");
        }
    }
    Ok(out)
}

/// The identifying fields of one object.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// Reads the objects' heads from a (possibly templated) multi-document YAML text.
pub fn heads(text: &str) -> anyhow::Result<Vec<Head>> {
    // A templated field stands where a plain word may: parse the layout with a word there.
    let plain = fields(text, |_| Some("x".to_string()));
    let docs = Yaml::load_from_str(&plain).context("the manifests are not valid YAML")?;
    let mut heads = Vec::new();
    for doc in docs {
        if doc.is_null() {
            continue;
        }
        let field = |path: &[&str]| -> Option<String> {
            let mut node = &doc;
            for key in path {
                node = node.as_mapping_get(key)?;
            }
            node.as_str().map(str::to_string)
        };
        let (Some(api_version), Some(kind), Some(name)) = (
            field(&["apiVersion"]),
            field(&["kind"]),
            field(&["metadata", "name"]),
        ) else {
            bail!("a manifest lacks apiVersion, kind or metadata.name");
        };
        heads.push(Head {
            api_version,
            kind,
            name,
            namespace: field(&["metadata", "namespace"]),
        });
    }
    Ok(heads)
}

/// The text after its leading `#` comment lines.
fn without_leading_comment(text: &str) -> &str {
    let mut rest = text;
    while rest.starts_with('#') {
        rest = rest.split_once('\n').map_or("", |(_, after)| after);
    }
    rest
}

/// Replaces every `{{NAME}}`; a field left unfilled is a bug in this file, caught by the tests.
fn fill(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut missing = None;
    let out = fields(template, |name| {
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string());
        if value.is_none() {
            missing = Some(name.to_string());
        }
        value
    });
    match missing {
        Some(name) => bail!("internal error: template field {name} has no value"),
        None => Ok(out),
    }
}

/// Replaces each `{{NAME}}` (upper-case letters, digits and `_`) by `value(NAME)`, or leaves it.
fn fields(template: &str, mut value: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let closed = after[name_len..].starts_with("}}");
        out.push_str(&rest[..start]);
        match (closed && !name.is_empty()).then(|| value(name)).flatten() {
            Some(v) => {
                out.push_str(&v);
                rest = &after[name_len + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn generate_issuer(trust_domain: &str) -> anyhow::Result<IssuerPem> {
    let anchor = TrustAnchor::generate(trust_domain, ANCHOR_LIFETIME)
        .with_context(|| format!("cannot make a trust anchor for trust domain {trust_domain:?}"))?;
    let issuer = anchor
        .issue_issuer(ISSUER_LIFETIME)
        .context("cannot make the identity issuer")?;
    Ok(IssuerPem {
        chain: issuer.chain_pem(),
        key: issuer.key_pem(),
        anchors: anchor.bundle().to_pem(),
    })
}

/// Reads the operator's issuer and checks it will work before anything reaches the cluster.
fn read_issuer(
    trust_domain: &str,
    anchors: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<IssuerPem> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))
    };
    let (anchors_pem, chain, key_pem) = (
        read(anchors, "trust anchors")?,
        read(cert, "issuer certificate")?,
        read(key, "issuer key")?,
    );
    let sources = Sources {
        anchors: anchors.display().to_string(),
        issuer: format!("{} and {}", cert.display(), key.display()),
    };
    let issuer = check_issuer(Some(trust_domain), &anchors_pem, &chain, &key_pem, &sources)?;
    Ok(IssuerPem {
        chain: issuer.chain_pem(),
        key: key_pem,
        anchors: anchors_pem,
    })
}

/// Where an issuer's parts came from, for messages.
pub struct Sources {
    pub anchors: String,
    pub issuer: String,
}

/// Checks that an issuer will work: a CA of `trust_domain` (when given), its key matching, and a
/// leaf it signs verifying against the anchors. Returns the issuer.
pub fn check_issuer(
    trust_domain: Option<&str>,
    anchors_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    from: &Sources,
) -> anyhow::Result<onemesh_identity::Issuer> {
    let bundle = TrustBundle::from_pem(anchors_pem)
        .with_context(|| format!("{}: not a PEM bundle of CA certificates", from.anchors))?;
    let issuer = onemesh_identity::Issuer::from_pem(chain_pem, key_pem).with_context(|| {
        format!(
            "{}: not an issuer certificate with its PKCS#8 key",
            from.issuer
        )
    })?;
    let td = issuer.trust_domain().to_string();
    if let Some(wanted) = trust_domain.filter(|wanted| *wanted != td) {
        bail!(
            "the issuer in {} is for trust domain {td:?}, not {wanted:?}: pass --trust-domain {td:?} or another issuer",
            from.issuer
        );
    }
    // A leaf this issuer signs must verify against the anchors, or no proxy could ever connect.
    let id =
        SpiffeId::new(&td, "onemesh", "control").context("cannot make the control plane's id")?;
    let probe = WorkloadKey::generate().context("cannot make a test key")?;
    let csr = probe.csr_der(&id).context("cannot make a test CSR")?;
    let leaf = issuer
        .sign_csr(&csr, Duration::from_secs(3600), |_| true)
        .context("the issuer cannot sign: check that the key belongs to the certificate")?;
    verify_peer(&bundle, &leaf.chain, SystemTime::now(), &td, None).map_err(|e| {
        anyhow::anyhow!(
            "the issuer in {} does not chain to the anchors in {} ({e}): use the anchors that signed it",
            from.issuer,
            from.anchors
        )
    })?;
    Ok(issuer)
}

#[cfg(test)]
mod tests;
