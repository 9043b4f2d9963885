//! Policy you can trust, on the real platform under `onemesh up`:
//!
//! 1. `onemesh authz explain` (the destination proxy's own decision, relayed by the control
//!    plane) agrees with what the proxies do for all 20 ordered pairs of the five organizations
//!    and for route-level cases; its suggested change, applied, makes a denied call pass (on a
//!    port with a policy, and on a port under the default, which must keep its same-namespace
//!    callers);
//! 2. audit mode: a policy in audit mode lets a forbidden call through, counted as would-deny in
//!    the proxy and the control plane's window; switched to enforce, the next call is refused; a
//!    namespace's default in audit mode does the same for the default;
//! 3. `onemesh authz diff`: a change that removes `pg → card` names that edge with its live rate
//!    and exits 1; a change that only adds an allowance exits 0;
//! 4. the decision log: after payments `onemesh audit verify` passes; one byte edited, a record
//!    deleted, two swapped each fail it, naming the spot; a proxy and the control plane killed
//!    and restarted leave the chain intact.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::platform::{self, Kind};
use support::{Up, api, metrics, request};

/// The five organizations, each one workload of the same name.
const ORGS: [&str; 5] = ["order", "pg", "appcard", "card", "bank"];
/// How long a policy edit may take to reach the proxies (measured: well under a second).
const PROPAGATION: Duration = Duration::from_secs(15);

/// A call from workload `from`'s app, through its proxy, to service `to` (port 80 → 8080):
/// `Some(policy)` when a proxy refused it by policy (403 with `onemesh-error: forbidden`),
/// `None` when it reached the app.
async fn call(up: &Up, from: &str, to: &str, method: &str, path: &str) -> Option<String> {
    let out = up.outbound_addr(&format!("{from}/{from}"));
    let (status, headers, body) = request(&out, method, &format!("{to}.{to}"), path, b"").await;
    let forbidden = status == 403
        && headers
            .get("onemesh-error")
            .is_some_and(|v| v.as_bytes() == b"forbidden");
    forbidden.then(|| {
        assert!(
            body.contains("onemesh authz explain"),
            "a 403 must point at `onemesh authz explain`: {body}"
        );
        body
    })
}

/// `onemesh authz explain ... -o json`.
fn explain(up: &Up, from: &str, to: &str, request: Option<(&str, &str)>) -> Value {
    let mut args = vec!["authz", "explain", "--from", from, "--to", to, "-o", "json"];
    if let Some((method, path)) = request {
        args.extend(["--method", method, "--path", path]);
    }
    let (ok, out) = up.cli(&args);
    assert!(ok, "authz explain {args:?} failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain -o json: {e}: {out}"))
}

/// Checks that explain and a real call agree; returns the decision.
async fn agree(up: &Up, from: &str, to: &str, method: &str, path: &str) -> String {
    let e = explain(
        up,
        &format!("{from}/{from}"),
        &format!("{to}/{to}:8080"),
        Some((method, path)),
    );
    let decision = e["decision"].as_str().unwrap().to_string();
    let refused = call(up, from, to, method, path).await;
    assert_eq!(
        refused.is_some(),
        decision == "deny",
        "{from} → {to} {method} {path}: explain says {decision} ({e}), the proxy {}",
        match &refused {
            Some(body) => format!("refused it: {body}"),
            None => "let it through".to_string(),
        }
    );
    decision
}

/// Waits until `ok` holds, up to [`PROPAGATION`]; returns how long it took.
async fn within<F, Fut>(what: &str, mut ok: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ok().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "{what}: not within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A route-level policy on appcard: card may only GET /healthz (and below).
const CARD_READS: &str = concat!(
    "\n---\napiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\n",
    "metadata: {name: appcard-allow-card-reads, namespace: appcard}\n",
    "spec:\n",
    "  target: {workload: appcard, port: 8080}\n",
    "  routes: [{methods: [GET], pathPrefix: /healthz}]\n",
    "  from: {identities: [spiffe://cluster.local/ns/card/sa/card]}\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_audit_mode_and_diff_agree_with_the_proxies() {
    platform::assert_platform_built();
    let mesh = platform::platform_mesh() + CARD_READS;
    let up = Up::start("authz", &mesh);
    let entry = platform::entry(&up);
    // Wait for the chain: one payment through every organization.
    let done = platform::customer_order(
        &entry,
        "authz-warm",
        Kind::pick(0),
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    assert!(
        done.order_id.is_some(),
        "the platform never took a payment: {done:?}"
    );

    // 1. All 20 ordered pairs: explain agrees with the proxies.
    let mut allowed = Vec::new();
    for from in ORGS {
        for to in ORGS.iter().filter(|t| **t != from) {
            if agree(&up, from, to, "GET", "/healthz").await != "deny" {
                allowed.push(format!("{from}→{to}"));
            }
        }
    }
    allowed.sort();
    let mut chain = vec![
        "order→pg",
        "pg→appcard",
        "pg→card",
        "appcard→card",
        "card→bank",
        "card→appcard",
    ];
    chain.sort();
    assert_eq!(allowed, chain, "the platform's allowed pairs");
    // Route-level: card → appcard may only GET /healthz (whole segments).
    for (method, path, want) in [
        ("GET", "/healthz", "allow"),
        ("GET", "/healthz/deep", "allow"),
        ("POST", "/healthz", "deny"),
        ("GET", "/healthzx", "deny"),
        ("GET", "/v1/cards", "deny"),
    ] {
        let got = agree(&up, "card", "appcard", method, path).await;
        assert_eq!(got, want, "card → appcard {method} {path}");
    }
    let e = explain(
        &up,
        "card/card",
        "appcard/appcard:8080",
        Some(("GET", "/healthz")),
    );
    assert_eq!(e["rule"]["policy"], "appcard-allow-card-reads", "{e}");

    // 2. Audit mode: bank-allow-card in audit mode lets pg → bank through as would-deny.
    let bank_admin = platform::addrs(&up)
        .into_iter()
        .find(|a| a.key == "bank/bank")
        .unwrap()
        .admin;
    let would_deny = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("authz_would_deny_total{")
                    && l.contains("policy=\"bank-allow-card\"")
                    && l.contains("/ns/pg/")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(call(&up, "pg", "bank", "GET", "/healthz").await.is_some());
    set_mode(&up, "bank-allow-card", "audit");
    let took = within("pg → bank let through in audit mode", || async {
        call(&up, "pg", "bank", "GET", "/healthz").await.is_none()
    })
    .await;
    println!("audit mode in force after {took:?}");
    let e = explain(&up, "pg/pg", "bank/bank:8080", Some(("GET", "/healthz")));
    assert_eq!(e["decision"], "would_deny", "{e}");
    assert!(would_deny(&metrics(&bank_admin).await) >= 1.0);
    let _ = within("the window's would-deny count", || async {
        let (_, rows) = api(&up, "/api/v1/authz?window=5m").await;
        rows.as_array()
            .into_iter()
            .flatten()
            .any(|r| r["policy"] == "bank-allow-card" && r["would_deny"].as_u64().unwrap_or(0) > 0)
    })
    .await;
    set_mode(&up, "bank-allow-card", "enforce");
    let took = within("pg → bank refused once enforced", || async {
        call(&up, "pg", "bank", "GET", "/healthz").await.is_some()
    })
    .await;
    println!("enforce mode in force after {took:?}");
    // The payment chain still works under enforce.
    let done = platform::customer_order(
        &entry,
        "authz-enforced",
        Kind::pick(1),
        Instant::now() + Duration::from_secs(30),
    )
    .await;
    assert!(done.order_id.is_some(), "{done:?}");

    // 2b. A namespace's default in audit mode: no policy names order's port, so appcard → order
    // is denied by the default; with order's default in audit mode it is let through.
    assert!(
        call(&up, "appcard", "order", "GET", "/healthz")
            .await
            .is_some()
    );
    let namespace = "kind: Namespace\nmetadata:\n  name: order\n";
    up.edit_config(|text| {
        text.replacen(
            namespace,
            &format!("{namespace}spec:\n  defaultPolicyMode: audit\n"),
            1,
        )
    });
    let _ = within(
        "appcard → order let through by the default in audit mode",
        || async {
            call(&up, "appcard", "order", "GET", "/healthz")
                .await
                .is_none()
        },
    )
    .await;
    let e = explain(
        &up,
        "appcard/appcard",
        "order/order:8080",
        Some(("GET", "/healthz")),
    );
    assert_eq!(
        (e["decision"].as_str(), e["policy"].as_str()),
        (Some("would_deny"), Some("default:same-namespace")),
        "{e}"
    );
    up.edit_config(|text| text.replacen("spec:\n  defaultPolicyMode: audit\n", "", 1));
    let _ = within("appcard → order refused again", || async {
        call(&up, "appcard", "order", "GET", "/healthz")
            .await
            .is_some()
    })
    .await;

    // 1b. A suggestion, applied, makes the call pass: a port with policies (order → bank), and
    // a port under the default (bank → order), which must keep its same-namespace callers.
    for (from, to) in [("order", "bank"), ("bank", "order")] {
        let e = explain(
            &up,
            &format!("{from}/{from}"),
            &format!("{to}/{to}:8080"),
            Some(("POST", "/v1/payments")),
        );
        assert_eq!(e["decision"], "deny", "{e}");
        let yaml = e["suggestion"]["yaml"]
            .as_str()
            .unwrap_or_else(|| panic!("no suggestion for {from} → {to}: {e}"))
            .to_string();
        up.edit_config(|text| format!("{}\n---\n{}", text.trim_end(), yaml.trim()));
        let took = within(&format!("{from} → {to} after the suggestion"), || async {
            call(&up, from, to, "POST", "/v1/payments").await.is_none()
        })
        .await;
        println!("{from} → {to}: allowed {took:?} after the suggestion was applied");
    }
    assert!(
        call(&up, "order", "order", "GET", "/healthz")
            .await
            .is_none(),
        "the suggestion for a default port dropped its same-namespace callers"
    );

    // 3. Diff: live traffic on pg → card, then a change that removes it.
    for n in 0..6 {
        let _ = platform::customer_order(
            &entry,
            &format!("authz-diff-{n}"),
            Kind::pick(n),
            Instant::now() + Duration::from_secs(30),
        )
        .await;
    }
    let current = std::fs::read_to_string(&up.config).unwrap();
    let narrowed = current.replace(
        "      - spiffe://cluster.local/ns/pg/sa/pg\n      - spiffe://cluster.local/ns/appcard/sa/appcard\n",
        "      - spiffe://cluster.local/ns/appcard/sa/appcard\n",
    );
    assert_ne!(narrowed, current, "card's policy moved in mesh.yaml");
    let file = up.dir.join("narrowed.yaml");
    std::fs::write(&file, &narrowed).unwrap();
    let (ok, out) = up.cli(&["authz", "diff", file.to_str().unwrap(), "--window", "5m"]);
    assert!(
        !ok,
        "diff must exit 1 when live traffic would be denied: {out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("pg/pg → card/card:8080"))
        .unwrap_or_else(|| panic!("diff did not name pg → card: {out}"));
    assert!(
        line.contains("requests/s now allowed") && line.contains("would be DENIED"),
        "{line}"
    );
    let rate: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {line}"));
    assert!(rate > 0.0, "{line}");
    // Only an added allowance: exit 0, and it is listed.
    let added = up.dir.join("added.yaml");
    std::fs::write(
        &added,
        concat!(
            "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy\n",
            "metadata: {name: bank-allow-appcard, namespace: bank}\n",
            "spec:\n  target: {workload: bank, port: 8080}\n",
            "  from: {identities: [spiffe://cluster.local/ns/appcard/sa/appcard]}\n",
        ),
    )
    .unwrap();
    let (ok, out) = up.cli(&["authz", "diff", added.to_str().unwrap()]);
    assert!(ok, "an added allowance must pass: {out}");
    assert!(
        out.contains("appcard/appcard → bank/bank:8080") && out.contains("would be allowed"),
        "{out}"
    );
    up.stop_and_clean();
}

/// Sets `spec.mode` of the policy `name` in the running mesh.yaml.
fn set_mode(up: &Up, name: &str, mode: &str) {
    up.edit_config(|text| {
        let docs: Vec<String> = text
            .split("\n---\n")
            .map(|d| {
                if !d.contains(&format!("name: {name}\n")) {
                    return d.to_string();
                }
                let d = d
                    .lines()
                    .filter(|l| !l.starts_with("  mode: "))
                    .collect::<Vec<_>>()
                    .join("\n");
                d.replacen("spec:\n", &format!("spec:\n  mode: {mode}\n"), 1)
            })
            .collect();
        docs.join("\n---\n")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_verifies_and_names_tampering_across_restarts() {
    platform::assert_platform_built();
    let up = Up::start("auditlog", &platform::platform_mesh());
    let entry = platform::entry(&up);
    for n in 0..4 {
        let done = platform::customer_order(
            &entry,
            &format!("auditlog-{n}"),
            Kind::pick(n),
            Instant::now() + Duration::from_secs(60),
        )
        .await;
        assert!(done.order_id.is_some(), "{done:?}");
    }
    // A forbidden call: recorded one by one.
    assert!(
        call(&up, "order", "bank", "POST", "/v1/transfers")
            .await
            .is_some()
    );

    // The denial reaches the log (shipped within a second or two, sealed every few seconds).
    let took = within("the denial in the decision log", || async {
        let (ok, out) = up.cli(&["audit", "query", "--decision", "deny", "-o", "json"]);
        ok && serde_json::from_str::<Value>(&out).is_ok_and(|v| {
            v["records"].as_array().into_iter().flatten().any(|r| {
                r["caller"] == "spiffe://cluster.local/ns/order/sa/order"
                    && r["path"] == "/v1/transfers"
                    && r["workload"] == "bank"
            })
        })
    })
    .await;
    println!("a denial was queryable {took:?} after it was decided");
    verify_ok(&up, "after payments");

    // A proxy and the control plane killed: the chain continues.
    let status = up.status();
    let pg = up.workload("pg/pg");
    let proxy = pg["proxy_pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(proxy), Signal::SIGKILL).unwrap();
    let control = status["control"]["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(control), Signal::SIGKILL).unwrap();
    let _ = within("payments after the kills", || async {
        platform::customer_order(
            &entry,
            "auditlog-after",
            Kind::pick(5),
            Instant::now() + Duration::from_secs(10),
        )
        .await
        .order_id
        .is_some()
    })
    .await;
    assert!(
        call(&up, "order", "bank", "GET", "/v1/after")
            .await
            .is_some()
    );
    let _ = within("the post-restart denial in the log", || async {
        let (ok, out) = up.cli(&["audit", "query", "--decision", "deny", "-o", "json"]);
        ok && out.contains("/v1/after")
    })
    .await;
    verify_ok(&up, "after a proxy and the control plane were killed");
    // More denials (one record each), then everything sealed by a signed checkpoint.
    for n in 0..6 {
        assert!(
            call(&up, "order", "bank", "GET", &format!("/v1/probe/{n}"))
                .await
                .is_some()
        );
    }
    let start = Instant::now();
    loop {
        let (ok, out) = up.cli(&["audit", "verify"]);
        assert!(ok, "audit verify failed while waiting for the seal: {out}");
        if !out.contains("not sealed") && sealed_probes(&up) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the denials were not sealed within 40 s: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "six denials sealed {:?} after they were decided",
        start.elapsed()
    );

    // Tampering, each on a copy of the log: the first failing spot is named.
    let log_dir = up.dir.join("state").join("audit");
    let tamper = |what: &str, f: &dyn Fn(&mut Vec<String>)| -> String {
        let copy = up.dir.join(format!("audit-{what}"));
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&copy).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in &files {
            std::fs::copy(f, copy.join(f.file_name().unwrap())).unwrap();
        }
        let first = copy.join(files[0].file_name().unwrap());
        let mut lines: Vec<String> = std::fs::read_to_string(&first)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        f(&mut lines);
        std::fs::write(&first, lines.join("\n") + "\n").unwrap();
        let (ok, out) = up.cli(&["audit", "verify", "--dir", copy.to_str().unwrap()]);
        assert!(!ok, "verify passed a log with {what}: {out}");
        out
    };
    // The first of the probes' records: sealed, with others after it.
    let record = |lines: &Vec<String>| {
        lines
            .iter()
            .position(|l| l.contains("/v1/probe/0"))
            .expect("the probes' records in the first file")
    };
    let edited = tamper("an-edited-byte", &|lines| {
        let i = record(lines);
        lines[i] = lines[i].replacen("\"count\":", "\"count\": ", 1);
    });
    assert!(edited.contains("was changed"), "{edited}");
    let removed = tamper("a-removed-record", &|lines| {
        let i = record(lines);
        lines.remove(i);
    });
    assert!(removed.contains("were removed"), "{removed}");
    let swapped = tamper("two-swapped-records", &|lines| {
        let i = record(lines);
        lines.swap(i, i + 1);
    });
    assert!(swapped.contains("out of order"), "{swapped}");
    for out in [&edited, &removed, &swapped] {
        println!(
            "{}",
            out.lines().find(|l| l.contains("FAILED")).unwrap_or(out)
        );
    }
    up.stop_and_clean();
}

/// Whether all six probe denials are in the log and no entry is left unsealed.
fn sealed_probes(up: &Up) -> bool {
    let (ok, out) = up.cli(&["audit", "query", "--decision", "deny", "-o", "json"]);
    ok && (0..6).all(|n| out.contains(&format!("/v1/probe/{n}\"")))
}

fn verify_ok(up: &Up, when: &str) {
    let (ok, out) = up.cli(&["audit", "verify"]);
    assert!(ok, "audit verify failed {when}: {out}");
    println!("audit verify {when}: {}", out.lines().last().unwrap_or(""));
}
