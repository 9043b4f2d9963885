//! Which namespaces get the anchors, and the ConfigMap's shape.

use super::*;

#[test]
fn every_namespace_but_kubernetes_own_and_the_control_planes() {
    for ns in ["shop", "default", "bank", "kube-systemx"] {
        assert!(publishes_to(ns, "onemesh"), "{ns}");
    }
    for ns in ["kube-system", "kube-public", "kube-node-lease", "onemesh"] {
        assert!(!publishes_to(ns, "onemesh"), "{ns}");
    }
    assert!(publishes_to("onemesh", "mesh-system"));
    assert!(!publishes_to("mesh-system", "mesh-system"));
}

#[test]
fn the_configmap_holds_the_bundle_under_its_key() {
    let cm = configmap("shop", "PEM");
    assert_eq!(cm.metadata.name.as_deref(), Some(ANCHORS_CONFIGMAP));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(cm.data.unwrap()[ANCHORS_KEY], "PEM");
}
