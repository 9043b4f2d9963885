//! Unit tests for the install manifests: they parse, nothing is left unfilled, the Secret's issuer
//! works with its anchors, forged or mismatched issuer files are refused, and uninstall names
//! exactly what install makes.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use onemesh_identity::{Issuer, SpiffeId, TrustAnchor, TrustBundle, WorkloadKey, verify_peer};
use saphyr::{LoadableYamlNode, YamlOwned};

use super::*;

fn args() -> InstallArgs {
    InstallArgs {
        trust_domain: "example.org".to_string(),
        replicas: 2,
        control_image: "onemesh/control:test".to_string(),
        proxy_image: "onemesh/proxy:test".to_string(),
        identity_trust_anchors_file: None,
        identity_issuer_certificate_file: None,
        identity_issuer_key_file: None,
    }
}

fn docs(text: &str) -> Vec<YamlOwned> {
    YamlOwned::load_from_str(text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn get<'a>(doc: &'a YamlOwned, path: &[&str]) -> &'a YamlOwned {
    path.iter().fold(doc, |node, key| {
        node.as_mapping_get(key)
            .unwrap_or_else(|| panic!("no {path:?}"))
    })
}

fn find<'a>(docs: &'a [YamlOwned], kind: &str, name: &str) -> &'a YamlOwned {
    docs.iter()
        .find(|d| {
            get(d, &["kind"]).as_str() == Some(kind)
                && get(d, &["metadata", "name"]).as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn secret_pem(secret: &YamlOwned, key: &str) -> String {
    let b64 = get(secret, &["data", key]).as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// The issuer in `secret` signs a leaf that verifies against `anchors`.
fn issuer_works(secret: &YamlOwned, anchors: &str, td: &str) {
    let issuer = Issuer::from_pem(
        &secret_pem(secret, "tls.crt"),
        &secret_pem(secret, "tls.key"),
    )
    .unwrap();
    let id = SpiffeId::new(td, "bank", "bank").unwrap();
    let key = WorkloadKey::generate().unwrap();
    let leaf = issuer
        .sign_csr(&key.csr_der(&id).unwrap(), Duration::from_secs(60), |_| {
            true
        })
        .unwrap();
    let bundle = TrustBundle::from_pem(anchors).unwrap();
    assert_eq!(
        verify_peer(&bundle, &leaf.chain, SystemTime::now(), td, None).unwrap(),
        id
    );
}

#[test]
fn the_manifests_are_complete_and_the_issuer_chains_to_the_anchors() {
    let text = manifests(&args()).unwrap();
    assert!(!text.contains("{{"), "unfilled field");
    let docs = docs(&text);
    let deployment = find(&docs, "StatefulSet", "onemesh-control");
    assert_eq!(get(deployment, &["spec", "replicas"]).as_integer(), Some(2));
    let pod = get(deployment, &["spec", "template", "spec"]);
    assert_eq!(get(pod, &["serviceAccountName"]).as_str(), Some("control"));
    assert_eq!(
        get(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    let args: Vec<&str> = get(pod, &["containers"]).as_sequence().unwrap()[0]
        .as_mapping_get("args")
        .unwrap()
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--trust-domain=example.org"), "{args:?}");
    assert!(args.contains(&"--store=kubernetes"), "{args:?}");
    find(&docs, "PodDisruptionBudget", "onemesh-control");
    find(
        &docs,
        "CustomResourceDefinition",
        "authorizationpolicies.onemesh.dev",
    );
    find(&docs, "CustomResourceDefinition", "routes.onemesh.dev");

    let secret = find(&docs, "Secret", "onemesh-identity-issuer");
    let anchors = secret_pem(secret, "ca.crt");
    let published = get(
        find(&docs, "ConfigMap", "onemesh-trust-anchors"),
        &["data", "ca.crt"],
    );
    assert_eq!(published.as_str().unwrap().trim(), anchors.trim());
    issuer_works(secret, &anchors, "example.org");
    // The anchor's key never goes to the cluster.
    assert_eq!(
        text.matches("PRIVATE KEY").count(),
        0,
        "a key in clear text"
    );
    assert!(!secret_pem(secret, "ca.crt").contains("PRIVATE"));
}

#[test]
fn every_install_makes_a_new_issuer() {
    let a = manifests(&args()).unwrap();
    let b = manifests(&args()).unwrap();
    let key = |t: &str| {
        secret_pem(
            find(&docs(t), "Secret", "onemesh-identity-issuer"),
            "tls.key",
        )
    };
    assert_ne!(key(&a), key(&b));
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("onemesh-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn with_files(anchors: &str, cert: &str, key: &str, files: &Files) -> InstallArgs {
    InstallArgs {
        identity_trust_anchors_file: Some(files.write("anchors.pem", anchors)),
        identity_issuer_certificate_file: Some(files.write("issuer.crt", cert)),
        identity_issuer_key_file: Some(files.write("issuer.key", key)),
        ..args()
    }
}

#[test]
fn the_operators_issuer_is_used_as_given() {
    let files = Files::new("given");
    let anchor = TrustAnchor::generate("example.org", Duration::from_secs(3600)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(600)).unwrap();
    let text = manifests(&with_files(
        &anchor.bundle().to_pem(),
        &issuer.chain_pem(),
        &issuer.key_pem(),
        &files,
    ))
    .unwrap();
    let docs = docs(&text);
    let secret = find(&docs, "Secret", "onemesh-identity-issuer");
    assert_eq!(secret_pem(secret, "tls.crt"), issuer.chain_pem());
    assert_eq!(secret_pem(secret, "ca.crt"), anchor.bundle().to_pem());
}

#[test]
fn an_issuer_that_does_not_fit_is_refused_before_anything_is_printed() {
    let files = Files::new("forged");
    let anchor = TrustAnchor::generate("example.org", Duration::from_secs(3600)).unwrap();
    let issuer = anchor.issue_issuer(Duration::from_secs(600)).unwrap();
    // An issuer minted under another root than the anchors given.
    let stranger = TrustAnchor::generate("example.org", Duration::from_secs(3600)).unwrap();
    let forged = stranger.issue_issuer(Duration::from_secs(600)).unwrap();
    let err = manifests(&with_files(
        &anchor.bundle().to_pem(),
        &forged.chain_pem(),
        &forged.key_pem(),
        &files,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not chain to the anchors"), "{err}");
    // The certificate of one issuer with the key of another.
    let err = manifests(&with_files(
        &anchor.bundle().to_pem(),
        &issuer.chain_pem(),
        &forged.key_pem(),
        &files,
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("issuer"), "{err:#}");
    // Another trust domain.
    let other = TrustAnchor::generate("other.org", Duration::from_secs(3600)).unwrap();
    let other_issuer = other.issue_issuer(Duration::from_secs(600)).unwrap();
    let err = manifests(&with_files(
        &other.bundle().to_pem(),
        &other_issuer.chain_pem(),
        &other_issuer.key_pem(),
        &files,
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("trust domain \"other.org\""), "{err}");
    // Garbage instead of anchors.
    let err = manifests(&with_files(
        "not pem",
        &issuer.chain_pem(),
        &issuer.key_pem(),
        &files,
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("anchors.pem"), "{err:#}");
}

#[test]
fn uninstall_names_exactly_what_install_makes_last_first() {
    let installed: Vec<Head> = heads(&manifests(&args()).unwrap()).unwrap();
    let removed = heads(&uninstall_manifests().unwrap()).unwrap();
    let at = |kind: &str| removed.iter().position(|h| h.kind == kind).unwrap();
    assert!(
        at("StatefulSet") < at("Namespace"),
        "the workloads go before their namespace"
    );
    assert!(
        at("Namespace") < at("CustomResourceDefinition"),
        "the CRDs go last"
    );
    let mut removed = removed;
    removed.reverse();
    assert_eq!(installed, removed);
    assert!(
        !uninstall_manifests().unwrap().contains("tls.key"),
        "no secret material"
    );
}

/// Whether a label selector matches `labels` (matchLabels and the four set operators), as the
/// API server evaluates the webhook's selectors.
fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

#[test]
fn the_injection_webhook_selects_meshed_namespaces_and_opted_in_pods() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let text = manifests(&args()).unwrap();
    let config: MutatingWebhookConfiguration =
        serde_saphyr::from_multiple::<serde_json::Value>(&text)
            .unwrap()
            .into_iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .map(|d| serde_json::from_value(d).unwrap())
            .expect("a MutatingWebhookConfiguration");
    assert_eq!(
        config.metadata.name.as_deref(),
        Some("onemesh-proxy-injector")
    );
    let hooks = config.webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    let anchors = secret_pem(
        find(&docs(&text), "Secret", "onemesh-identity-issuer"),
        "ca.crt",
    );
    for hook in &hooks {
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.timeout_seconds, Some(10));
        assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(hook.admission_review_versions, ["v1"]);
        let service = hook.client_config.service.as_ref().unwrap();
        assert_eq!(
            (
                service.name.as_str(),
                service.namespace.as_str(),
                service.path.as_deref(),
                service.port
            ),
            ("onemesh-control", "onemesh", Some("/inject"), Some(8443))
        );
        let ca = hook.client_config.ca_bundle.as_ref().unwrap();
        assert_eq!(String::from_utf8(ca.0.clone()).unwrap(), anchors);
        let rule = &hook.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.operations.as_deref(),
            Some(&["CREATE".to_string()][..])
        );
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    }

    let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // (namespace, its labels, pod labels, sent to the webhook by how many of the two)
    let table = [
        ("shop", vec![("onemesh.dev/mesh", "enabled")], vec![], 1),
        (
            "shop",
            vec![("onemesh.dev/mesh", "enabled")],
            vec![("onemesh.dev/inject", "enabled")],
            1,
        ),
        (
            "shop",
            vec![("onemesh.dev/mesh", "enabled")],
            vec![("onemesh.dev/inject", "disabled")],
            0,
        ),
        ("web", vec![], vec![], 0),
        ("web", vec![], vec![("onemesh.dev/inject", "enabled")], 1),
        (
            "web",
            vec![("onemesh.dev/mesh", "off")],
            vec![("onemesh.dev/inject", "enabled")],
            1,
        ),
        ("web", vec![], vec![("onemesh.dev/inject", "disabled")], 0),
        (
            "kube-system",
            vec![("onemesh.dev/mesh", "enabled")],
            vec![("onemesh.dev/inject", "enabled")],
            0,
        ),
        (
            "kube-public",
            vec![],
            vec![("onemesh.dev/inject", "enabled")],
            0,
        ),
        (
            "kube-node-lease",
            vec![],
            vec![("onemesh.dev/inject", "enabled")],
            0,
        ),
        (
            "onemesh",
            vec![("onemesh.dev/mesh", "enabled")],
            vec![("onemesh.dev/inject", "enabled")],
            0,
        ),
    ];
    for (name, ns_labels, pod_labels, want) in table {
        let mut ns = labels(&ns_labels);
        // The API server sets this label on every namespace.
        ns.insert("kubernetes.io/metadata.name".into(), name.into());
        let pod = labels(&pod_labels);
        let sent = hooks
            .iter()
            .filter(|h| {
                selects(h.namespace_selector.as_ref().unwrap(), &ns)
                    && selects(h.object_selector.as_ref().unwrap(), &pod)
            })
            .count();
        assert_eq!(
            sent, want,
            "namespace {name} {ns_labels:?}, pod {pod_labels:?}"
        );
        // The injector's own rule agrees wherever the webhook is called at all.
        if !onemesh_control::publish::SYSTEM_NAMESPACES.contains(&name) && name != "onemesh" {
            assert_eq!(
                sent == 1,
                onemesh_control::inject::wanted(&ns, &pod),
                "{name} {pod_labels:?}"
            );
        }
    }
}

#[test]
fn the_control_plane_serves_the_webhook_with_the_proxy_image() {
    let text = manifests(&args()).unwrap();
    let docs = docs(&text);
    let deployment = find(&docs, "StatefulSet", "onemesh-control");
    let container = &get(deployment, &["spec", "template", "spec", "containers"])
        .as_sequence()
        .unwrap()[0];
    let args: Vec<&str> = get(container, &["args"])
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--listen-webhook=0.0.0.0:8443"), "{args:?}");
    assert!(
        args.contains(&"--proxy-image=onemesh/proxy:test"),
        "{args:?}"
    );
    let service = find(&docs, "Service", "onemesh-control");
    let ports: Vec<i64> = get(service, &["spec", "ports"])
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_mapping_get("port").and_then(|p| p.as_integer()))
        .collect();
    assert!(ports.contains(&8443), "{ports:?}");
}
