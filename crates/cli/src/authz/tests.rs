//! Unit tests of the rendering and of the files' line mapping.

use super::*;

fn files(dir: &Path, texts: &[(&str, &str)]) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    texts
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn an_error_line_is_named_in_the_file_it_came_from() {
    let dir = std::env::temp_dir().join(format!("onemesh-cli-authz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let paths = files(
        &dir,
        &[
            ("a.yaml", "kind: AuthorizationPolicy\nx: 1\n"),
            ("b.yaml", "kind: AuthorizationPolicy\nspec:\n  mode: loud\n"),
        ],
    );
    let (body, files) = read_files(&paths).unwrap();
    // a: lines 1-2, `---` on 3, b from line 4: its `mode` on line 6
    assert_eq!(body.lines().nth(5), Some("  mode: loud"));
    let message = "the control plane's API answered 400 Bad Request for /api/v1/authz/diff: \
                   policies.yaml:6: spec.mode: `loud` is not enforce or audit";
    let relabelled = files.relabel(message);
    assert!(
        relabelled.ends_with(&format!(
            "{}:3: spec.mode: `loud` is not enforce or audit",
            paths[1].display()
        )),
        "{relabelled}"
    );
    assert_eq!(files.relabel("no line here"), "no line here");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diff_reads_as_the_issue_says() {
    let d: Diff = serde_json::from_str(
        r#"{"changes": [{"from": {"id": "spiffe://cluster.local/ns/pg/sa/pg", "namespace": "pg", "workload": "pg"},
            "to": {"namespace": "card", "workload": "card", "port": 8080}, "route": null,
            "before": {"decision": "allow", "policy": "card-allow-pg"},
            "after": {"decision": "deny", "policy": "card-allow-appcard"},
            "rps": 12.44, "requests": 746}],
            "live_denials": 1}"#,
    )
    .unwrap();
    let text = render_diff(&d, "1m");
    assert!(
        text.starts_with(
            "pg/pg → card/card:8080: 12.4 requests/s now allowed (card-allow-pg), would be \
             DENIED by card-allow-appcard\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("1 change(s); 1 would deny live traffic\n"),
        "{text}"
    );
}

#[test]
fn an_explained_denial_shows_the_policies_and_the_change_that_allows_it() {
    let e: Explanation = serde_json::from_str(
        r#"{"from": {"id": "spiffe://cluster.local/ns/order/sa/order", "namespace": "order", "workload": "order"},
            "to": {"namespace": "bank", "workload": "bank", "port": 8080},
            "request": {"method": "POST", "path": "/v1/transfers"},
            "instance": "bank-0 (127.0.0.1:41000)",
            "decision": "deny", "policy": "bank-allow-card", "default": false, "rule": null,
            "policies": [{"name": "bank-allow-card", "mode": "enforce", "covers_port": true,
                          "admits_caller": false, "matches_request": true, "route": 0}],
            "suggestion": {"summary": "add AuthorizationPolicy allow-order-order-bank", "yaml": "kind: AuthorizationPolicy\n"}}"#,
    )
    .unwrap();
    let text = render_explanation(&e);
    assert!(
        text.starts_with("order/order → bank/bank:8080: POST /v1/transfers\n"),
        "{text}"
    );
    assert!(
        text.contains("decision: DENIED by bank-allow-card"),
        "{text}"
    );
    assert!(text.contains("bank-allow-card  enforce"), "{text}");
    assert!(
        text.contains("to allow it: add AuthorizationPolicy allow-order-order-bank"),
        "{text}"
    );
}
