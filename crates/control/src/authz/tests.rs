//! The model evaluator against the proxy's rules, case by case: the default, policies in force,
//! routes (whole-segment prefixes, methods, opaque connections), audit modes, and the refusals
//! that come before any policy.

use std::path::Path;

use super::*;
use crate::state::MeshState;

pub(crate) const MESH: &str = "\
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: pg}
---
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: card}
---
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: pg, namespace: pg}
spec: {serviceAccount: pg, ports: [{port: 8080}]}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: card, namespace: card}
spec: {serviceAccount: card, ports: [{port: 8080}, {port: 9000, protocol: opaque}]}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: batch, namespace: card}
spec: {serviceAccount: batch, ports: [{port: 8080}]}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: bank, namespace: bank}
spec: {serviceAccount: bank, ports: [{port: 8080}]}
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: card-allow-pg, namespace: card}
spec:
  target: {workload: card, port: 8080}
  routes: [{methods: [POST], pathPrefix: /v1}, {pathPrefix: /health/}]
  from: {identities: [spiffe://cluster.local/ns/pg/sa/pg]}
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: card-allow-bank, namespace: card}
spec:
  target: {workload: card, port: 8080}
  from: {namespaces: [bank]}
";

pub(crate) fn mesh_of(text: &str) -> Mesh {
    let config = crate::config::parse(Path::new("mesh.yaml"), text).unwrap();
    MeshState::local(&config, &[]).mesh
}

pub(crate) fn id(ns: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{ns}/sa/{ns}")
        .parse()
        .unwrap()
}

fn card(port: u16) -> Target<'static> {
    Target {
        namespace: "card",
        workload: "card",
        port,
    }
}

fn post(path: &str) -> Option<Request<'_>> {
    Some(Request {
        method: "POST",
        path,
    })
}

#[test]
fn the_default_allows_the_same_namespace_only() {
    let mesh = mesh_of(MESH);
    let same: SpiffeId = "spiffe://cluster.local/ns/card/sa/batch".parse().unwrap();
    let d = decide(&mesh, Some(&same), card(9000), None);
    assert_eq!(
        (d.verdict, d.policy.as_str(), d.default),
        (Verdict::Allow, DEFAULT_SAME_NAMESPACE, true)
    );
    for caller in [Some(&id("pg")), None] {
        let d = decide(&mesh, caller, card(9000), None);
        assert_eq!((d.verdict, d.default), (Verdict::Deny, true), "{caller:?}");
    }
}

#[test]
fn policies_on_a_port_replace_the_default_and_name_themselves_on_a_denial() {
    let mesh = mesh_of(MESH);
    let same: SpiffeId = "spiffe://cluster.local/ns/card/sa/batch".parse().unwrap();
    let d = decide(&mesh, Some(&same), card(8080), post("/v1/pay"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policy, "card-allow-pg,card-allow-bank");
    assert!(!d.default);
    let d = decide(&mesh, Some(&id("bank")), card(8080), None);
    assert_eq!(
        (d.verdict, d.policy.as_str()),
        (Verdict::Allow, "card-allow-bank")
    );
    assert_eq!(d.route, None);
}

#[test]
fn routes_match_methods_and_whole_segments() {
    let mesh = mesh_of(MESH);
    let pg = id("pg");
    let at = |method, path| decide(&mesh, Some(&pg), card(8080), Some(Request { method, path }));
    for (method, path, allowed, route) in [
        ("POST", "/v1", true, Some(0)),
        ("POST", "/v1/pay", true, Some(0)),
        ("POST", "/v1admin", false, None),
        ("GET", "/v1/pay", false, None),
        ("GET", "/health/", true, Some(1)),
        ("GET", "/health/live", true, Some(1)),
        ("GET", "/health", false, None),
        ("GET", "/healthz", false, None),
    ] {
        let d = at(method, path);
        assert_eq!(d.verdict == Verdict::Allow, allowed, "{method} {path}");
        assert_eq!(d.route, route, "{method} {path}");
    }
    // an opaque connection is allowed only by a policy without routes
    let d = decide(&mesh, Some(&pg), card(8080), None);
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn a_denial_is_would_deny_only_when_every_policy_on_the_port_is_audit() {
    let one_audit = MESH.replacen(
        "  target: {workload: card, port: 8080}\n  routes",
        "  mode: audit\n  target: {workload: card, port: 8080}\n  routes",
        1,
    );
    let mesh = mesh_of(&one_audit);
    assert_eq!(mesh.policies[0].mode, PolicyMode::Audit);
    let d = decide(&mesh, Some(&id("appcard")), card(8080), post("/v1/pay"));
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "one enforce policy keeps it enforced"
    );
    let all_audit = one_audit.replace(
        "  target: {workload: card, port: 8080}\n  from",
        "  mode: audit\n  target: {workload: card, port: 8080}\n  from",
    );
    let mesh = mesh_of(&all_audit);
    let d = decide(&mesh, Some(&id("appcard")), card(8080), post("/v1/pay"));
    assert_eq!(d.verdict, Verdict::WouldDeny);
    assert_eq!(d.policy, "card-allow-pg,card-allow-bank");
    // the default's mode is the namespace's, not the policies'
    let d = decide(&mesh, Some(&id("pg")), card(9000), None);
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn an_audit_namespace_default_lets_other_namespaces_through_as_would_deny() {
    let text = MESH.replace(
        "metadata: {name: card}\n",
        "metadata: {name: card}\nspec: {defaultPolicyMode: audit}\n",
    );
    let mesh = mesh_of(&text);
    let d = decide(&mesh, Some(&id("pg")), card(9000), None);
    assert_eq!((d.verdict, d.default), (Verdict::WouldDeny, true));
    let d = decide(&mesh, None, card(9000), None);
    assert_eq!(d.verdict, Verdict::WouldDeny);
    // policies in force on 8080 are enforce: the default's mode does not apply there
    let d = decide(&mesh, Some(&id("appcard")), card(8080), None);
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn refusals_before_policy_are_never_audit() {
    let text = MESH.replace(
        "metadata: {name: card}\n",
        "metadata: {name: card}\nspec: {defaultPolicyMode: audit}\n",
    );
    let mesh = mesh_of(&text);
    let d = decide(&mesh, Some(&id("pg")), card(7777), None);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(matches!(
        d.refusal,
        Some(Refusal::UndeclaredPort { port: 7777, .. })
    ));
    for path in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1%2fpay",
        "/v1;x=1",
        "/v1/%252f",
        "/v1\\pay",
        "/v1/%zz",
        "/v1/.",
    ] {
        let d = decide(&mesh, Some(&id("pg")), card(9000), post(path));
        assert_eq!(d.verdict, Verdict::Deny, "{path}");
        assert!(
            matches!(d.refusal, Some(Refusal::AmbiguousPath(_))),
            "{path}"
        );
        assert_eq!(d.policy, "");
    }
    for path in [
        "/v1/pay",
        "/v1/a.b",
        "/v1/%20x",
        "/.well-known/x",
        "/v1/..x",
    ] {
        assert!(!ambiguous_path(path), "{path}");
    }
    let ghost = Target {
        namespace: "card",
        workload: "ghost",
        port: 8080,
    };
    assert!(matches!(
        decide(&mesh, None, ghost, None).refusal,
        Some(Refusal::UnknownWorkload(_))
    ));
}

#[test]
fn a_namespace_wide_policy_covers_every_workload_and_a_port_policy_only_its_port() {
    let text = format!(
        "{MESH}---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: card-all, namespace: card}}
spec:
  from: {{unauthenticated: true}}
"
    );
    let mesh = mesh_of(&text);
    let batch = Target {
        namespace: "card",
        workload: "batch",
        port: 8080,
    };
    let d = decide(&mesh, None, batch, None);
    assert_eq!((d.verdict, d.policy.as_str()), (Verdict::Allow, "card-all"));
    let d = decide(&mesh, Some(&id("pg")), batch, None);
    assert_eq!((d.verdict, d.policy.as_str()), (Verdict::Deny, "card-all"));
    let d = decide(&mesh, None, card(9000), None);
    assert_eq!(d.verdict, Verdict::Allow);
}

mod suggestions {
    use super::super::suggest::{Denial, suggest};
    use super::*;

    /// Asks the model, takes the suggestion for the denial, appends it to the mesh, and checks
    /// that the file is still valid and the call is now allowed (and what was allowed stays so).
    fn applied_allows(
        text: &str,
        caller: Option<&SpiffeId>,
        target: Target<'_>,
        request: Option<Request<'_>>,
    ) -> String {
        let mesh = mesh_of(text);
        let before = decide(&mesh, caller, target, request);
        assert_ne!(before.verdict, Verdict::Allow, "the case must start denied");
        let s = suggest(
            &mesh,
            &Denial {
                target,
                caller,
                request,
                default: before.default,
                port_refusal: None,
                path_error: None,
            },
        );
        let yaml = s.yaml.clone().expect("a policy can allow it");
        let applied = format!("{text}---\n{yaml}");
        let after = crate::config::parse(Path::new("mesh.yaml"), &applied)
            .unwrap_or_else(|e| panic!("the suggestion is not valid mesh.yaml: {e}\n{yaml}"));
        let after = MeshState::local(&after, &[]).mesh;
        let d = decide(&after, caller, target, request);
        assert_eq!(d.verdict, Verdict::Allow, "{yaml}");
        // every caller that was allowed on that target before still is
        for w in mesh.workloads.values() {
            let other = id_of(w);
            if decide(&mesh, Some(&other), target, request).verdict == Verdict::Allow {
                assert_eq!(
                    decide(&after, Some(&other), target, request).verdict,
                    Verdict::Allow,
                    "{other} lost its access\n{yaml}"
                );
            }
        }
        s.summary
    }

    fn id_of(w: &crate::model::Workload) -> SpiffeId {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            w.namespace, w.service_account
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn on_a_port_with_policies() {
        let summary = applied_allows(MESH, Some(&id("appcard")), card(8080), post("/v1/pay"));
        assert!(
            summary.starts_with("add AuthorizationPolicy allow-appcard-appcard-card (card)"),
            "{summary}"
        );
        assert!(!summary.contains("keep-"), "{summary}");
    }

    #[test]
    fn on_a_port_of_the_default_keeps_the_same_namespace() {
        let summary = applied_allows(MESH, Some(&id("pg")), card(9000), None);
        assert!(summary.contains("keep-card-card-9000"), "{summary}");
    }

    #[test]
    fn for_an_unauthenticated_caller() {
        let summary = applied_allows(MESH, None, card(9000), None);
        assert!(summary.contains("allow-unauthenticated-card"), "{summary}");
        applied_allows(MESH, None, card(8080), post("/v1/pay"));
    }

    #[test]
    fn for_a_route_level_denial() {
        // pg is admitted by card-allow-pg, but only for POST /v1 and /health/
        applied_allows(
            MESH,
            Some(&id("pg")),
            card(8080),
            Some(Request {
                method: "GET",
                path: "/v2/cards/1?x=1",
            }),
        );
        applied_allows(
            MESH,
            Some(&id("pg")),
            card(8080),
            Some(Request {
                method: "DELETE",
                path: "/v1/pay",
            }),
        );
    }

    #[test]
    fn in_audit_mode_too_and_with_a_name_already_taken() {
        let text = MESH.replace(
            "metadata: {name: card}\n",
            "metadata: {name: card}\nspec: {defaultPolicyMode: audit}\n",
        );
        let text = format!(
            "{text}---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: allow-pg-pg-card, namespace: card}}
spec:
  target: {{workload: card, port: 8080}}
  from: {{namespaces: [bank]}}
"
        );
        let summary = applied_allows(&text, Some(&id("pg")), card(9000), None);
        assert!(summary.contains("allow-pg-pg-card-2"), "{summary}");
    }

    #[test]
    fn a_refusal_before_policy_has_no_yaml_and_says_what_to_do() {
        let mesh = mesh_of(MESH);
        let base = Denial {
            target: card(7777),
            caller: None,
            request: None,
            default: false,
            port_refusal: Some("undeclared_port"),
            path_error: None,
        };
        let s = suggest(&mesh, &base);
        assert_eq!(s.yaml, None);
        assert!(s.summary.contains("declare the port"), "{}", s.summary);
        let s = suggest(
            &mesh,
            &Denial {
                port_refusal: None,
                path_error: Some("the path has a dot segment"),
                ..base
            },
        );
        assert_eq!(s.yaml, None);
        assert!(s.summary.contains("resolved path"), "{}", s.summary);
    }
}

mod diffs {
    use super::super::diff::{Rates, diff, proposed};
    use super::*;

    fn changes_of(body: &str) -> super::super::diff::Diff {
        let before = mesh_of(MESH);
        let after = proposed(&before, Path::new("new.yaml"), body).unwrap();
        diff(&before, &after, "cluster.local", &Rates::default())
    }

    #[test]
    fn the_same_policies_change_nothing() {
        let d = changes_of(MESH);
        assert_eq!(d.changes, vec![]);
        assert_eq!(d.live_denials, 0);
    }

    #[test]
    fn a_whole_mesh_yaml_replaces_every_policy() {
        // card-allow-bank removed: bank loses card:8080, and the port keeps card-allow-pg
        let text = MESH
            .split("---\n")
            .filter(|doc| !doc.contains("card-allow-bank"))
            .collect::<Vec<_>>()
            .join("---\n");
        let d = changes_of(&text);
        // the whole port, and each route of a policy on it
        assert_eq!(d.changes.len(), 3, "{:?}", d.changes);
        assert_eq!(d.changes[0].route, None);
        for c in &d.changes {
            assert_eq!(
                (c.from.workload.as_str(), c.to.workload.as_str(), c.to.port),
                ("bank", "card", 8080)
            );
            assert_eq!(
                (c.before.decision, c.after.decision),
                (Verdict::Allow, Verdict::Deny)
            );
            assert_eq!(c.after.policy, "card-allow-pg");
        }
        assert_eq!(d.live_denials, 0, "no traffic in the window");
    }

    #[test]
    fn a_namespace_default_in_audit_turns_its_denials_into_would_deny() {
        let text = MESH.replace(
            "metadata: {name: card}\n",
            "metadata: {name: card}\nspec: {defaultPolicyMode: audit}\n",
        );
        let d = changes_of(&text);
        assert!(!d.changes.is_empty());
        for c in &d.changes {
            // the ports of namespace card that no policy covers
            assert!(c.to.port == 9000 || c.to.workload == "batch", "{c:?}");
            assert_eq!(
                (c.before.decision, c.after.decision),
                (Verdict::Deny, Verdict::WouldDeny)
            );
        }
    }

    #[test]
    fn a_route_losing_one_of_its_methods_is_reported() {
        let policy = |methods: &str| {
            format!(
                "apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {{name: card-v2, namespace: card}}
spec:
  target: {{workload: card, port: 8080}}
  routes: [{{methods: [{methods}], pathPrefix: /v2}}]
  from: {{namespaces: [pg]}}
"
            )
        };
        let base = mesh_of(MESH);
        let before = proposed(&base, Path::new("a.yaml"), &policy("GET, POST")).unwrap();
        let after = proposed(&before, Path::new("b.yaml"), &policy("GET")).unwrap();
        let d = diff(&before, &after, "cluster.local", &Rates::default());
        let lost: Vec<_> = d
            .changes
            .iter()
            .filter(|c| c.from.workload == "pg")
            .collect();
        assert_eq!(lost.len(), 1, "{:?}", d.changes);
        let route = lost[0].route.as_ref().unwrap();
        assert_eq!(route.methods, vec!["GET", "POST"]);
        assert_eq!(lost[0].after.decision, Verdict::Deny);
    }

    #[test]
    fn policy_documents_replace_by_name_and_add_otherwise() {
        let body = "apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: card-allow-pg, namespace: card}
spec:
  mode: audit
  target: {workload: card, port: 8080}
  routes: [{methods: [POST], pathPrefix: /v1}]
  from: {identities: [spiffe://cluster.local/ns/pg/sa/pg]}
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: batch-grpc, namespace: card}
spec:
  target: {workload: batch, port: 8080}
  routes: [{grpc: {service: card.v1.Batch}}]
  from: {namespaces: [pg]}
";
        let before = mesh_of(MESH);
        let after = proposed(&before, Path::new("new.yaml"), body).unwrap();
        assert_eq!(after.policies.len(), 3);
        assert_eq!(after.policies[0].name, "card-allow-pg");
        assert_eq!(after.policies[0].mode, PolicyMode::Audit);
        assert_eq!(after.policies[2].name, "batch-grpc");
        let d = diff(&before, &after, "cluster.local", &Rates::default());
        // pg loses /health/ on card:8080 (the route was dropped); batch now takes grpc from pg
        // and denies the rest of pg's calls; the same-namespace default on batch:8080 ended
        let pg_health = d
            .changes
            .iter()
            .find(|c| {
                c.from.workload == "pg"
                    && c.route
                        .as_ref()
                        .is_some_and(|r| r.path_prefix.as_deref() == Some("/health/"))
            })
            .unwrap();
        assert_eq!(pg_health.after.decision, Verdict::Deny);
        let grpc = d
            .changes
            .iter()
            .find(|c| c.to.workload == "batch" && c.from.workload == "pg" && c.route.is_some())
            .unwrap();
        assert_eq!(grpc.after.decision, Verdict::Allow);
        assert_eq!(grpc.route.as_ref().unwrap().methods, vec!["POST"]);
        assert!(d.changes.iter().any(|c| c.from.workload == "batch"
            && c.to.workload == "batch"
            && c.after.decision == Verdict::Deny));
    }
}

/// The reference platform's mesh.yaml: the model allows exactly the payment chain of DESIGN.md
/// among the 20 ordered pairs of the five organizations; for each denied pair, the suggestion,
/// applied, changes exactly that edge (as diff sees it) and nothing else.
mod platform {
    use super::super::diff::{Rates, diff, proposed};
    use super::super::suggest::{Denial, suggest};
    use super::*;

    const ORGS: [&str; 5] = ["order", "pg", "appcard", "card", "bank"];
    const CHAIN: [(&str, &str); 5] = [
        ("order", "pg"),
        ("pg", "appcard"),
        ("pg", "card"),
        ("appcard", "card"),
        ("card", "bank"),
    ];

    fn platform() -> (String, Mesh) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mesh.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let mesh = mesh_of(&text);
        (text, mesh)
    }

    fn org(name: &str) -> Target<'_> {
        Target {
            namespace: name,
            workload: name,
            port: 8080,
        }
    }

    #[test]
    fn the_model_allows_exactly_the_payment_chain() {
        let (_, mesh) = platform();
        for from in ORGS {
            for to in ORGS.iter().filter(|t| **t != from) {
                let d = decide(&mesh, Some(&id(from)), org(to), post("/v1/pay"));
                let want = CHAIN.contains(&(from, *to));
                assert_eq!(d.verdict == Verdict::Allow, want, "{from} -> {to}: {d:?}");
                // order (the public entry) has no policy: its default decides
                assert_eq!(d.default, *to == "order", "{from} -> {to}");
            }
        }
    }

    #[test]
    fn each_suggestion_opens_exactly_its_edge() {
        let (text, mesh) = platform();
        for from in ORGS {
            for to in ORGS.iter().filter(|t| **t != from) {
                if CHAIN.contains(&(from, *to)) {
                    continue;
                }
                let caller = id(from);
                let request = post("/v1/pay");
                let before = decide(&mesh, Some(&caller), org(to), request);
                let s = suggest(
                    &mesh,
                    &Denial {
                        target: org(to),
                        caller: Some(&caller),
                        request,
                        default: before.default,
                        port_refusal: None,
                        path_error: None,
                    },
                );
                let yaml = s.yaml.unwrap();
                let after = proposed(&mesh, Path::new("fix.yaml"), &yaml).unwrap();
                assert_eq!(
                    decide(&after, Some(&caller), org(to), request).verdict,
                    Verdict::Allow
                );
                let d = diff(&mesh, &after, "cluster.local", &Rates::default());
                let edges: Vec<_> = d
                    .changes
                    .iter()
                    .map(|c| {
                        (
                            c.from.workload.as_str(),
                            c.to.workload.as_str(),
                            c.after.decision,
                        )
                    })
                    .collect();
                assert!(
                    edges.iter().all(|e| *e == (from, *to, Verdict::Allow)),
                    "{from} -> {to}: {edges:?}\n{yaml}"
                );
                assert!(!edges.is_empty());
                // and the file with the suggestion appended is a valid mesh.yaml
                crate::config::parse(Path::new("mesh.yaml"), &format!("{text}---\n{yaml}"))
                    .unwrap();
            }
        }
    }
}
