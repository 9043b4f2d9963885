//! The webhook check: missing, a caBundle of other anchors, the right anchors.

use std::time::Duration;

use k8s_openapi::ByteString;
use onemesh_identity::TrustAnchor;

use super::*;

fn config(ca: &str) -> MutatingWebhookConfiguration {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": WEBHOOK},
        "webhooks": [
            {"name": "a.inject.onemesh.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "clientConfig": {}},
            {"name": "b.inject.onemesh.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "clientConfig": {}},
        ],
    }))
    .map(|mut c: MutatingWebhookConfiguration| {
        for hook in c.webhooks.iter_mut().flatten() {
            hook.client_config.ca_bundle = Some(ByteString(ca.as_bytes().to_vec()));
        }
        c
    })
    .unwrap()
}

#[test]
fn the_webhook_must_exist_and_trust_the_anchors() {
    let ours = TrustAnchor::generate("cluster.local", Duration::from_secs(3600))
        .unwrap()
        .bundle()
        .to_pem();
    let other = TrustAnchor::generate("cluster.local", Duration::from_secs(3600))
        .unwrap()
        .bundle()
        .to_pem();
    assert_eq!(webhook_line(Some(&config(&ours)), &ours).mark, Mark::Pass);
    let line = webhook_line(Some(&config(&other)), &ours);
    assert_eq!(line.mark, Mark::Fail);
    assert!(line.hint.contains("a.inject.onemesh.dev"), "{}", line.hint);
    let mut one_wrong = config(&ours);
    one_wrong.webhooks.as_mut().unwrap()[1]
        .client_config
        .ca_bundle = Some(ByteString(b"garbage".to_vec()));
    let line = webhook_line(Some(&one_wrong), &ours);
    assert_eq!(line.mark, Mark::Fail);
    assert!(line.hint.contains("b.inject.onemesh.dev"), "{}", line.hint);
    let line = webhook_line(None, &ours);
    assert_eq!(line.mark, Mark::Fail);
    assert!(line.hint.contains("missing"), "{}", line.hint);
}
