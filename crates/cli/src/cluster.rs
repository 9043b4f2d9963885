//! `onemesh check --kubernetes`: the mesh's health on a Kubernetes cluster, with the same look as
//! the local checks (`√` pass, `!` warning, `×` failure with what to do).
//!
//! What it checks, in order (a failure early on does not hide the later ones):
//! the API server answers (and its version); both CRDs exist and are established; the control
//! plane's Deployment has every replica ready; the trust anchors (ConfigMap
//! `onemesh-trust-anchors`) and the issuer (Secret `onemesh-identity-issuer`) are far from expiry
//! and the issuer chains to the anchors; the proxy-injection webhook configuration
//! (`onemesh-proxy-injector`) exists and trusts those anchors; and the control plane's
//! ServiceAccount may do what it
//! needs (a SubjectAccessReview per permission, so a stripped ClusterRole shows up here and not
//! as a silent watch failure).

use std::path::Path;
use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, Client};
use onemesh_control::pki::expiry;

use crate::trust::{CheckLine, Mark};

/// The control plane's namespace, Deployment, ServiceAccount and identity objects (see
/// `deploy/install/control-plane.yaml`).
const NAMESPACE: &str = "onemesh";
const CONTROL: &str = "onemesh-control";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:onemesh:control";
const ANCHORS_CONFIGMAP: &str = "onemesh-trust-anchors";
const ISSUER_SECRET: &str = "onemesh-identity-issuer";
const CRDS: [&str; 2] = ["authorizationpolicies.onemesh.dev", "routes.onemesh.dev"];
const WEBHOOK: &str = "onemesh-proxy-injector";

/// What the control plane must be allowed: (group, resource, verb, why).
const PERMISSIONS: &[(&str, &str, &str, &str)] = &[
    (
        "",
        "namespaces",
        "watch",
        "to see which namespaces are meshed",
    ),
    (
        "",
        "pods",
        "watch",
        "to know workloads' identities and ports",
    ),
    ("", "services", "watch", "to resolve service names"),
    (
        "discovery.k8s.io",
        "endpointslices",
        "watch",
        "to know ready endpoints",
    ),
    (
        "onemesh.dev",
        "authorizationpolicies",
        "watch",
        "to serve policies",
    ),
    ("onemesh.dev", "routes", "watch", "to serve routes"),
    (
        "gateway.networking.k8s.io",
        "httproutes",
        "watch",
        "to serve Gateway API HTTPRoutes",
    ),
    (
        "gateway.networking.k8s.io",
        "httproutes/status",
        "patch",
        "to write HTTPRoutes' status.parents",
    ),
    (
        "authentication.k8s.io",
        "tokenreviews",
        "create",
        "to check proxies' ServiceAccount tokens",
    ),
    (
        "",
        "configmaps",
        "create",
        "to publish the trust anchors in every namespace",
    ),
];

/// A client for the cluster of `kubeconfig`, else of `$KUBECONFIG` / `~/.kube/config` / the pod's.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    Ok(onemesh_control::kubestore::client(kubeconfig).await?)
}

/// Runs every check and returns the lines to print.
pub async fn checks(client: &Client) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    match client.apiserver_version().await {
        Ok(v) => lines.push(pass(format!("Kubernetes API answers ({})", v.git_version))),
        Err(e) => {
            lines.push(fail(
                "Kubernetes API answers".into(),
                format!("{e}: check the kubeconfig's server and credentials"),
            ));
            return lines;
        }
    }
    lines.extend(crds(client).await);
    lines.push(control_plane(client).await);
    lines.extend(trust(client).await);
    lines.push(webhook(client).await);
    lines.extend(rbac(client).await);
    lines
}

async fn crds(client: &Client) -> Vec<CheckLine> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut lines = Vec::new();
    for name in CRDS {
        let line = match api.get_opt(name).await {
            Ok(Some(crd)) => {
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    pass(format!("CRD {name} is established"))
                } else {
                    fail(
                        format!("CRD {name} is established"),
                        "the API server has not accepted it yet: see `kubectl describe crd`".into(),
                    )
                }
            }
            Ok(None) => fail(
                format!("CRD {name} exists"),
                "install the mesh: `onemesh install | kubectl apply --server-side -f -`".into(),
            ),
            Err(e) => fail(format!("CRD {name} exists"), format!("cannot read it: {e}")),
        };
        lines.push(line);
    }
    // Gateway API is optional: said either way, never a failure.
    let gateway = "httproutes.gateway.networking.k8s.io";
    match api.get_opt(gateway).await {
        Ok(Some(_)) => lines.push(pass(format!(
            "CRD {gateway} is installed: HTTPRoutes with a Service parent are served"
        ))),
        Ok(None) => lines.push(pass(format!(
            "CRD {gateway} is not installed (optional): Gateway API HTTPRoutes are not read"
        ))),
        Err(e) => lines.push(CheckLine {
            mark: Mark::Warn,
            what: format!("CRD {gateway}"),
            hint: format!("cannot read it: {e}"),
        }),
    }
    lines
}

async fn control_plane(client: &Client) -> CheckLine {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    let what = format!("control plane {NAMESPACE}/{CONTROL} is ready");
    match api.get_opt(CONTROL).await {
        Ok(Some(d)) => {
            let wanted = d.spec.replicas.unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            let what = format!("{what}: {ready}/{wanted} replicas");
            if ready >= wanted && ready > 0 {
                pass(what)
            } else if ready > 0 {
                CheckLine {
                    mark: Mark::Warn,
                    what,
                    hint: "one replica serves, the mesh has no spare: see `kubectl -n onemesh get pods`".into(),
                }
            } else {
                fail(
                    what,
                    "no replica is ready: see `kubectl -n onemesh describe pods`".into(),
                )
            }
        }
        Ok(None) => fail(
            what,
            "not installed: `onemesh install | kubectl apply --server-side -f -`".into(),
        ),
        Err(e) => fail(what, format!("cannot read it: {e}")),
    }
}

async fn trust(client: &Client) -> Vec<CheckLine> {
    let what = "trust anchors and issuer".to_string();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let anchors = match maps.get_opt(ANCHORS_CONFIGMAP).await {
        Ok(Some(cm)) => cm.data.and_then(|d| d.get("ca.crt").cloned()),
        Ok(None) => None,
        Err(e) => {
            return vec![fail(
                what,
                format!("cannot read ConfigMap {NAMESPACE}/{ANCHORS_CONFIGMAP}: {e}"),
            )];
        }
    };
    let Some(anchors) = anchors else {
        return vec![fail(
            what,
            format!(
                "ConfigMap {NAMESPACE}/{ANCHORS_CONFIGMAP} with key ca.crt is missing: reinstall"
            ),
        )];
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let issuer = match secrets.get_opt(ISSUER_SECRET).await {
        Ok(Some(s)) => s.data.and_then(|d| {
            let text = |key: &str| {
                d.get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            };
            Some((text("tls.crt")?, text("tls.key")?))
        }),
        Ok(None) => None,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return vec![CheckLine {
                mark: Mark::Warn,
                what,
                hint: format!(
                    "you may not read Secret {NAMESPACE}/{ISSUER_SECRET}: the issuer was not checked"
                ),
            }];
        }
        Err(e) => {
            return vec![fail(
                what,
                format!("cannot read Secret {NAMESPACE}/{ISSUER_SECRET}: {e}"),
            )];
        }
    };
    let Some((issuer, key)) = issuer else {
        return vec![fail(
            what,
            format!(
                "Secret {NAMESPACE}/{ISSUER_SECRET} with keys tls.crt and tls.key is missing: reinstall"
            ),
        )];
    };
    let mut lines = Vec::new();
    lines.push(chains(&anchors, &issuer, &key));
    match expiry::expiries_from_pem(
        (
            &anchors,
            &format!("ConfigMap {NAMESPACE}/{ANCHORS_CONFIGMAP}"),
        ),
        (&issuer, &format!("Secret {NAMESPACE}/{ISSUER_SECRET}")),
    ) {
        Ok(list) => lines.extend(crate::trust::judge_expiries(&list, SystemTime::now())),
        Err(e) => lines.push(fail(what, e.to_string())),
    }
    lines
}

async fn webhook(client: &Client) -> CheckLine {
    let what = format!("proxy-injection webhook {WEBHOOK}");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let anchors = match maps.get_opt(ANCHORS_CONFIGMAP).await {
        Ok(cm) => cm
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("ca.crt").cloned()),
        Err(e) => return fail(what, format!("cannot read the trust anchors: {e}")),
    };
    let Some(anchors) = anchors else {
        return fail(
            what,
            "no trust anchors to compare its caBundle with: reinstall".into(),
        );
    };
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.get_opt(WEBHOOK).await {
        Ok(config) => webhook_line(config.as_ref(), &anchors),
        Err(e) => fail(what, format!("cannot read it: {e}")),
    }
}

/// Whether the webhook configuration exists and every webhook in it trusts exactly `anchors`.
pub fn webhook_line(config: Option<&MutatingWebhookConfiguration>, anchors: &str) -> CheckLine {
    let what = format!("proxy-injection webhook {WEBHOOK} trusts the mesh's anchors");
    let Some(config) = config else {
        return fail(
            what,
            "it is missing: no pod is injected; reinstall: `onemesh install | kubectl apply --server-side -f -`".into(),
        );
    };
    let want = onemesh_identity::TrustBundle::from_pem(anchors).ok();
    let hooks = config.webhooks.as_deref().unwrap_or_default();
    if hooks.is_empty() {
        return fail(what, "it has no webhooks: reinstall".into());
    }
    for hook in hooks {
        let bundle = hook
            .client_config
            .ca_bundle
            .as_ref()
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .and_then(|pem| onemesh_identity::TrustBundle::from_pem(pem).ok());
        if bundle.is_none() || bundle != want {
            return fail(
                what,
                format!(
                    "webhook {}'s caBundle is not the anchors of ConfigMap {NAMESPACE}/{ANCHORS_CONFIGMAP}: the API server cannot call it (pods meant for the mesh are refused); reinstall with the same anchors",
                    hook.name
                ),
            );
        }
    }
    pass(what)
}

/// Whether the issuer signs leaves that verify against the published anchors.
fn chains(anchors: &str, issuer: &str, key: &str) -> CheckLine {
    let what =
        "issuer signs certificates that verify against the published trust anchors".to_string();
    let from = crate::install::Sources {
        anchors: format!("ConfigMap {NAMESPACE}/{ANCHORS_CONFIGMAP}"),
        issuer: format!("Secret {NAMESPACE}/{ISSUER_SECRET}"),
    };
    match crate::install::check_issuer(None, anchors, issuer, key, &from) {
        Ok(_) => pass(what),
        Err(e) => fail(
            what,
            format!("{e:#}: proxies would refuse every certificate it signs"),
        ),
    }
}

async fn rbac(client: &Client) -> Vec<CheckLine> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let mut lines = Vec::new();
    for (group, resource, verb, why) in PERMISSIONS {
        // `httproutes/status`: a subresource.
        let (plain, subresource) = match resource.split_once('/') {
            Some((r, sub)) => (r, Some(sub.to_string())),
            None => (*resource, None),
        };
        let shown = match (group.is_empty(), &subresource) {
            (true, _) => resource.to_string(),
            (false, None) => format!("{resource}.{group}"),
            (false, Some(sub)) => format!("{plain}.{group}/{sub}"),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(SERVICE_ACCOUNT.to_string()),
                groups: Some(vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{NAMESPACE}"),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(plain.to_string()),
                    subresource,
                    verb: Some(verb.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = format!("control plane may {verb} {shown} ({why})");
        let line = match api.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => pass(what),
            Ok(_) => fail(
                what,
                "its ClusterRole lacks this: reinstall, or compare with `onemesh install`".into(),
            ),
            Err(kube::Error::Api(e)) if e.code == 403 => CheckLine {
                mark: Mark::Warn,
                what,
                hint: "you may not create SubjectAccessReviews: not checked".into(),
            },
            Err(e) => fail(what, format!("cannot ask the API server: {e}")),
        };
        lines.push(line);
    }
    lines
}

fn pass(what: String) -> CheckLine {
    CheckLine {
        mark: Mark::Pass,
        what,
        hint: String::new(),
    }
}

fn fail(what: String, hint: String) -> CheckLine {
    CheckLine {
        mark: Mark::Fail,
        what,
        hint,
    }
}

#[cfg(test)]
mod tests;
