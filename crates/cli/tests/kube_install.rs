//! `onemesh install`, `check --kubernetes` and `uninstall` against a real kube-apiserver: the
//! manifests apply with server-side apply, the checks see the installed mesh, a stripped
//! ClusterRole and an issuer from another root (forged inputs) are caught, no ServiceAccount may
//! read the dashboard's token, and uninstall removes every object.

mod kube;

use std::time::Duration;

use kube::{NEEDS_CLUSTER, apply, eventually, kubectl, kubectl_in, onemesh};

fn check() -> String {
    let kubeconfig = kube::kubeconfig();
    onemesh(&["check", "--kubeconfig", kubeconfig.to_str().unwrap()]).1
}

/// `kubectl auth can-i get` the dashboard token's Secret, as `who` (impersonated) or as this
/// kubeconfig's user: `yes` or `no` (the exit status agrees with the answer).
fn may_read_dashboard_token(who: Option<&str>) -> String {
    let mut args = vec![
        "auth",
        "can-i",
        "get",
        "secret/onemesh-dashboard-token",
        "-n",
        "onemesh",
    ];
    args.extend(who.map(|w| ["--as", w]).into_iter().flatten());
    let (allowed, answer) = kubectl_in(&args, "");
    let answer = answer.trim().to_string();
    assert_eq!(allowed, answer == "yes", "kubectl auth can-i: {answer}");
    answer
}

#[test]
#[ignore = "needs the test cluster: scripts/k8s-testenv up; eval \"$(scripts/k8s-testenv env)\""]
fn kube_install_check_and_uninstall() {
    let _ = NEEDS_CLUSTER;
    let (ok, manifests) = onemesh(&["install", "--replicas", "2"]);
    assert!(ok, "onemesh install failed: {manifests}");
    apply(&manifests);
    kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/authorizationpolicies.onemesh.dev",
        "crd/routes.onemesh.dev",
    ]);

    // The dashboard's token is the operators' only: the control plane reads it from its volume, and
    // no workload's or the control plane's own ServiceAccount may read the Secret through the API
    // (RBAC as installed; the cluster runs --authorization-mode=RBAC).
    for who in [
        "system:serviceaccount:pg:pg",
        "system:serviceaccount:onemesh:default",
        "system:serviceaccount:onemesh:control",
    ] {
        assert_eq!(
            may_read_dashboard_token(Some(who)),
            "no",
            "{who} may read the dashboard token"
        );
    }
    assert_eq!(
        may_read_dashboard_token(None),
        "yes",
        "the cluster admin (this kubeconfig) cannot read the dashboard token"
    );

    let out = check();
    for line in [
        "√ Kubernetes API answers (v1.3",
        "√ CRD authorizationpolicies.onemesh.dev is established",
        "√ CRD routes.onemesh.dev is established",
        "√ issuer signs certificates that verify against the published trust anchors",
        "√ issuer expiry",
        "√ trust anchor expiry",
        "√ control plane may create tokenreviews.authentication.k8s.io",
        "√ control plane may watch endpointslices.discovery.k8s.io",
        "√ control plane may watch httproutes.gateway.networking.k8s.io",
        "√ CRD httproutes.gateway.networking.k8s.io is ",
        "√ control plane may patch httproutes.gateway.networking.k8s.io/status",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    // A ClusterRole someone trimmed: the check names the missing permission.
    let rules = kubectl(&[
        "get",
        "clusterrole",
        "onemesh-control",
        "-o",
        "jsonpath={.rules[*].resources}",
    ]);
    let at = rules
        .split("] [")
        .position(|r| r.contains("tokenreviews"))
        .expect("the ClusterRole grants tokenreviews");
    kubectl(&[
        "patch",
        "clusterrole",
        "onemesh-control",
        "--type=json",
        &format!(r#"-p=[{{"op":"remove","path":"/rules/{at}"}}]"#),
    ]);
    let out = eventually(
        "the check sees the trimmed ClusterRole",
        Duration::from_secs(10),
        || {
            let out = check();
            out.contains("× control plane may create tokenreviews.authentication.k8s.io")
                .then_some(out)
        },
    );
    assert!(out.contains("some checks failed"), "{out}");

    // An issuer minted under another root than the published anchors.
    let (_, other) = onemesh(&["install"]);
    let secret = other
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Secret"))
        .expect("the install output has the issuer Secret");
    apply(secret);
    let out = check();
    assert!(
        out.contains("× issuer signs certificates that verify against the published trust anchors"),
        "{out}"
    );

    // Uninstall removes everything install made (the namespace last among its objects).
    let (ok, heads) = onemesh(&["uninstall"]);
    assert!(ok, "{heads}");
    let (ok, out) = kubectl_in(
        &["delete", "--wait=true", "--timeout=60s", "-f", "-"],
        &heads,
    );
    assert!(ok, "kubectl delete failed: {out}");
    for gone in [
        vec!["get", "namespace", "onemesh"],
        vec!["get", "clusterrole", "onemesh-control"],
        vec!["get", "crd", "routes.onemesh.dev"],
    ] {
        let (ok, out) = kubectl_in(&gone, "");
        assert!(
            !ok && out.contains("NotFound"),
            "still there after uninstall: {out}"
        );
    }
    let out = check();
    assert!(out.contains("× CRD routes.onemesh.dev exists"), "{out}");
}
