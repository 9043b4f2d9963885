//! The "must be shown" list for mesh.yaml: each bad input is refused with one clear
//! message naming the file, the line and the field. The messages are checked whole, as a user
//! reads them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use onemesh_control::config;

const BASE: &str = "\
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: bank, namespace: bank}
spec:
  serviceAccount: bank
  labels: {app: bank}
  ports:
    - {name: http, port: 8080}
    - {name: admin, port: 9090}
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-bank, namespace: bank}
spec:
  target: {workload: bank, port: 8080}
  from: {namespaces: [bank]}
";

/// Writes `text` to a fresh `mesh.yaml` and returns the one error message loading it gives.
fn error_of(text: &str) -> (PathBuf, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "onemesh-control-errors-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, text).unwrap();
    let message = config::load(&path).unwrap_err().to_string();
    assert_eq!(
        message.lines().count(),
        1,
        "exactly one error expected: {message}"
    );
    (path, message)
}

fn expect(text: &str, want: &str) {
    let (path, message) = error_of(text);
    assert_eq!(message, format!("{}:{want}", path.display()));
}

#[test]
fn the_base_file_is_valid() {
    let path =
        std::env::temp_dir().join(format!("onemesh-control-base-{}.yaml", std::process::id()));
    std::fs::write(&path, BASE).unwrap();
    assert!(config::load(&path).is_ok());
}

#[test]
fn unknown_kind() {
    expect(
        &BASE.replace("kind: AuthorizationPolicy", "kind: AuthPolicy"),
        "16: kind: unknown kind \"AuthPolicy\": use one of Namespace, Workload, Service, AuthorizationPolicy, Route, RateLimitPolicy",
    );
}

#[test]
fn missing_field() {
    expect(
        &BASE.replace("  serviceAccount: bank\n", ""),
        "9: spec.serviceAccount: missing required field",
    );
}

#[test]
fn policy_naming_an_unknown_workload() {
    expect(
        &BASE.replace(
            "{workload: bank, port: 8080}",
            "{workload: vault, port: 8080}",
        ),
        "19: spec.target.workload: unknown workload bank/vault: declare it with a Workload resource in that namespace",
    );
}

#[test]
fn duplicate_port() {
    expect(
        &BASE.replace("{name: admin, port: 9090}", "{name: admin, port: 8080}"),
        "13: spec.ports[1].port: duplicate port 8080 in workload bank/bank",
    );
}

#[test]
fn unknown_field_wrong_type_and_bad_spiffe_id() {
    expect(
        &BASE.replace(
            "  labels: {app: bank}",
            "  labels: {app: bank}\n  replicas: 2",
        ),
        "11: spec.replicas: unknown field: use one of serviceAccount, labels, command, env, ports, accessLog",
    );
    expect(
        &BASE.replace("port: 9090}", "port: \"9090\"}"),
        "13: spec.ports[1].port: expected an integer, found a string",
    );
    let (_, message) = error_of(&BASE.replace(
        "from: {namespaces: [bank]}",
        "from: {identities: [spiffe://cluster.local/bank]}",
    ));
    assert!(
        message.contains("mesh.yaml:20: spec.from.identities[0]: \"spiffe://cluster.local/bank\" is not a spiffe id"),
        "{message}"
    );
}

#[test]
fn bad_policy_mode_and_namespace_default() {
    expect(
        &BASE.replace(
            "  from: {namespaces: [bank]}",
            "  from: {namespaces: [bank]}\n  mode: warn",
        ),
        "21: spec.mode: \"warn\" is not a policy mode: use enforce or audit",
    );
    expect(
        &BASE.replace(
            "metadata: {name: bank}\n",
            "metadata: {name: bank}\nspec: {defaultPolicyMode: off}\n",
        ),
        "4: spec.defaultPolicyMode: \"off\" is not a policy mode: use enforce or audit",
    );
    expect(
        &BASE.replace(
            "metadata: {name: bank}\n",
            "metadata: {name: bank}\nspec: {mode: audit}\n",
        ),
        "4: spec.mode: unknown field: use one of defaultPolicyMode",
    );
}

#[test]
fn bad_grpc_route() {
    expect(
        &BASE.replace(
            "  from: {namespaces: [bank]}",
            "  routes: [{grpc: {service: pay.v1.Payments, method: Pay}, pathPrefix: /x}]\n  from: {namespaces: [bank]}",
        ),
        "20: spec.routes[0].grpc: grpc cannot be combined with methods or pathPrefix in the same route: it stands for POST /<service>/<method>; write two route entries",
    );
    expect(
        &BASE.replace(
            "  from: {namespaces: [bank]}",
            "  routes: [{grpc: {service: pay-v1.Payments}}]\n  from: {namespaces: [bank]}",
        ),
        "20: spec.routes[0].grpc.service: \"pay-v1.Payments\" is not a grpc service name: use its full dotted name as in the .proto, e.g. pay.v1.Payments",
    );
    expect(
        &BASE.replace(
            "  from: {namespaces: [bank]}",
            "  routes: [{grpc: {service: pay.v1.Payments, method: 1Pay}}]\n  from: {namespaces: [bank]}",
        ),
        "20: spec.routes[0].grpc.method: \"1Pay\" is not a grpc method name: use the rpc's name as in the .proto, e.g. Authorize",
    );
}
