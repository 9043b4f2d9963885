//! Unit tests of mesh.yaml parsing: a valid file, then one test per kind of error, each checking
//! the line, the field path and the problem reported.

use super::*;

/// A small valid mesh: two namespaces, two workloads, a service, a policy and a route.
pub(crate) const GOOD: &str = "\
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: onemesh.dev/v1
kind: Namespace
metadata: {name: card}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: bank, namespace: bank}
spec:
  serviceAccount: bank
  labels: {app: bank}
  command: [onemesh-platform, bank]
  env: {PORT: 8080, MODE: fast}
  ports:
    - {name: http, port: 8080, protocol: http}
    - {port: 9000, protocol: opaque}
---
apiVersion: onemesh.dev/v1
kind: Workload
metadata: {name: card, namespace: card}
spec:
  serviceAccount: card
  labels: {app: card}
  ports: [{port: 8080}]
---
apiVersion: onemesh.dev/v1
kind: Service
metadata: {name: bank, namespace: bank}
spec:
  selector: {app: bank}
  ports: [{port: 80, targetPort: 8080}, {port: 9000}, {port: 81, targetPort: http}]
---
apiVersion: onemesh.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-card, namespace: bank}
spec:
  target: {workload: bank, port: 8080}
  routes: [{methods: [POST], pathPrefix: /v1/}]
  from:
    identities: [spiffe://cluster.local/ns/card/sa/card]
    namespaces: [card]
    unauthenticated: false
---
apiVersion: onemesh.dev/v1
kind: Route
metadata: {name: bank-reads, namespace: bank}
spec:
  service: bank
  match: {methods: [GET], pathPrefix: /}
  timeout: 2s
  retryable: true
";

fn errors_of(text: &str) -> Vec<FieldError> {
    match parse(Path::new("mesh.yaml"), text) {
        Err(ConfigError::Invalid { errors }) => errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

/// The GOOD file with `from` replaced by `to` (which must occur exactly once).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        GOOD.matches(from).count(),
        1,
        "fixture edit {from:?} is ambiguous"
    );
    GOOD.replace(from, to)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn good_file_parses_into_the_model() {
    let mesh = parse(Path::new("mesh.yaml"), GOOD).unwrap();
    assert_eq!(mesh.namespaces.len(), 2);
    let bank = &mesh.workloads[&("bank".to_string(), "bank".to_string())];
    assert_eq!(bank.service_account, "bank");
    assert_eq!(bank.command, vec!["onemesh-platform", "bank"]);
    assert_eq!(bank.env["PORT"], "8080");
    assert_eq!(bank.ports[1].protocol, Protocol::Opaque);
    assert_eq!(bank.ports[0].name.as_deref(), Some("http"));
    let svc = &mesh.services[&("bank".to_string(), "bank".to_string())];
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
    assert_eq!(svc.ports[1].target_port, TargetPort::Number(9000));
    assert_eq!(svc.ports[2].target_port, TargetPort::Name("http".into()));
    let policy = &mesh.policies[0];
    assert_eq!(policy.target_port, Some(8080));
    assert_eq!(policy.routes[0].methods, vec!["POST"]);
    assert_eq!(
        policy.from_identities[0].to_string(),
        "spiffe://cluster.local/ns/card/sa/card"
    );
    let route = &mesh.routes[0];
    assert_eq!(route.rules.timeout, Some(Duration::from_secs(2)));
    assert!(route.rules.retryable);
    assert_eq!(route.meta.line, line_of(GOOD, "name: bank-reads") - 2);
}

#[test]
fn unknown_kind_names_the_kind_line() {
    let text = edit("kind: Route", "kind: Rout");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, line_of(&text, "kind: Rout"));
    assert_eq!(errors[0].field, "kind");
    assert!(matches!(&errors[0].problem, Problem::UnknownKind(k) if k == "Rout"));
    let shown = errors[0].to_string();
    assert!(
        shown.starts_with(&format!("mesh.yaml:{}: kind: unknown kind", errors[0].line)),
        "{shown}"
    );
}

#[test]
fn unknown_field_names_its_path() {
    let text = edit("  retryable: true", "  retryable: true\n  retries: 3");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, line_of(&text, "retries: 3"));
    assert_eq!(errors[0].field, "spec.retries");
    assert!(matches!(errors[0].problem, Problem::UnknownField { .. }));
}

#[test]
fn missing_field_names_its_path() {
    let text = edit("  serviceAccount: card\n", "");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.serviceAccount");
    assert_eq!(errors[0].line, line_of(&text, "labels: {app: card}"));
    assert!(matches!(errors[0].problem, Problem::MissingField));
}

#[test]
fn wrong_type_says_expected_and_found() {
    let text = edit(
        "{port: 9000, protocol: opaque}",
        "{port: nine, protocol: opaque}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.ports[1].port");
    assert_eq!(errors[0].line, line_of(&text, "port: nine"));
    assert!(matches!(
        errors[0].problem,
        Problem::WrongType {
            expected: "an integer",
            found: "a string"
        }
    ));
}

#[test]
fn duplicate_port_in_a_workload() {
    let text = edit(
        "{port: 9000, protocol: opaque}",
        "{port: 8080, protocol: opaque}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.ports[1].port");
    assert_eq!(
        errors[0].line,
        line_of(&text, "{port: 8080, protocol: opaque}")
    );
    assert!(matches!(
        errors[0].problem,
        Problem::DuplicatePort { port: 8080, .. }
    ));
    assert!(
        errors[0]
            .to_string()
            .ends_with("spec.ports[1].port: duplicate port 8080 in workload bank/bank"),
        "{}",
        errors[0]
    );
}

#[test]
fn duplicate_resource_name() {
    let text = format!(
        "{GOOD}---\napiVersion: onemesh.dev/v1\nkind: Namespace\nmetadata: {{name: card}}\n"
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "metadata.name");
    assert!(matches!(
        errors[0].problem,
        Problem::DuplicateResource {
            kind: "Namespace",
            first_line: 5,
            ..
        }
    ));
    assert_eq!(errors[0].line, text.lines().count() - 2);
}

#[test]
fn policy_naming_an_unknown_workload() {
    let text = edit(
        "target: {workload: bank, port: 8080}",
        "target: {workload: vault, port: 8080}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.target.workload");
    assert_eq!(errors[0].line, line_of(&text, "workload: vault"));
    assert!(matches!(&errors[0].problem, Problem::UnknownWorkload(w) if w == "bank/vault"));
}

#[test]
fn policy_naming_an_undeclared_port() {
    let text = edit(
        "target: {workload: bank, port: 8080}",
        "target: {workload: bank, port: 8081}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.target.port");
    assert!(matches!(
        errors[0].problem,
        Problem::UndeclaredPort { port: 8081, .. }
    ));
}

#[test]
fn policy_naming_an_unknown_namespace() {
    let text = edit("namespaces: [card]", "namespaces: [cards]");
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.from.namespaces[0]");
    assert_eq!(errors[0].line, line_of(&text, "namespaces: [cards]"));
    assert!(matches!(&errors[0].problem, Problem::UnknownNamespace(n) if n == "cards"));
}

#[test]
fn resource_in_an_unknown_namespace() {
    let text = edit(
        "metadata: {name: card, namespace: card}",
        "metadata: {name: card, namespace: cash}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "metadata.namespace");
    assert_eq!(errors[0].line, line_of(&text, "namespace: cash"));
}

#[test]
fn route_naming_an_unknown_service() {
    let text = edit("  service: bank", "  service: banc");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.service");
    assert!(matches!(&errors[0].problem, Problem::UnknownService(s) if s == "bank/banc"));
}

#[test]
fn service_selecting_nothing_or_an_undeclared_target_port() {
    let text = edit("selector: {app: bank}", "selector: {app: vault}");
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.selector");
    assert!(matches!(errors[0].problem, Problem::SelectsNothing(_)));

    let text = edit(
        "{port: 80, targetPort: 8080}",
        "{port: 80, targetPort: 8081}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.ports[0].targetPort");
    assert!(matches!(
        errors[0].problem,
        Problem::UndeclaredPort { port: 8081, .. }
    ));
}

#[test]
fn bad_spiffe_id() {
    let text = edit(
        "identities: [spiffe://cluster.local/ns/card/sa/card]",
        "identities: [spiffe://cluster.local/card]",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.from.identities[0]");
    assert_eq!(errors[0].line, line_of(&text, "identities:"));
    assert!(matches!(errors[0].problem, Problem::BadSpiffeId { .. }));
}

#[test]
fn bad_duration() {
    let text = edit("timeout: 2s", "timeout: 2 seconds");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.timeout");
    assert!(matches!(&errors[0].problem, Problem::BadDuration(d) if d == "2 seconds"));
}

#[test]
fn bad_method_name_and_protocol() {
    let text = edit("methods: [POST]", "methods: [post]");
    assert!(matches!(errors_of(&text)[0].problem, Problem::BadMethod(_)));
    let text = edit("metadata: {name: bank-reads", "metadata: {name: Bank_Reads");
    assert!(matches!(errors_of(&text)[0].problem, Problem::BadName(_)));
    let text = edit("protocol: opaque", "protocol: udp");
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.ports[1].protocol");
    assert!(matches!(errors[0].problem, Problem::BadProtocol(_)));
}

#[test]
fn bad_api_version_and_port_range() {
    let text = GOOD.replacen("apiVersion: onemesh.dev/v1", "apiVersion: v1", 1);
    let errors = errors_of(&text);
    assert_eq!(
        (errors[0].line, errors[0].field.as_str()),
        (1, "apiVersion")
    );
    let text = edit(
        "{port: 9000, protocol: opaque}",
        "{port: 70000, protocol: opaque}",
    );
    assert!(matches!(
        errors_of(&text)[0].problem,
        Problem::BadPort { value: 70000 }
    ));
}

#[test]
fn several_errors_are_all_reported_in_line_order() {
    let text = edit("timeout: 2s", "timeout: soon").replace(
        "kind: Namespace\nmetadata: {name: card}",
        "kind: Namespace\nmetadata: {name: card, color: red}",
    );
    let errors = errors_of(&text);
    assert!(errors.len() >= 2, "{errors:?}");
    assert!(errors.windows(2).all(|w| w[0].line <= w[1].line));
    assert!(errors.iter().any(|e| e.field == "spec.timeout"));
    assert!(errors.iter().any(|e| e.field == "metadata.color"));
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let text = format!("{GOOD}---\nkind: [unclosed\n");
    match parse(Path::new("mesh.yaml"), &text) {
        Err(ConfigError::Syntax { line, .. }) => {
            assert!(line >= text.lines().count() - 1, "line {line}")
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    for bad in ["", "5", "s", "2 s", "1.5s", "-1s", "3d"] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn the_control_planes_namespace_is_reserved() {
    let text = format!(
        "{GOOD}---\napiVersion: onemesh.dev/v1\nkind: Namespace\nmetadata: {{name: onemesh}}\n"
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "metadata.name");
    assert!(matches!(&errors[0].problem, Problem::ReservedNamespace(n) if n == "onemesh"));
    assert_eq!(errors[0].line, text.lines().count() - 2);
}

/// GOOD with a second service `bank-v2` and `backends` (YAML list entries) on its route.
fn with_backends(entries: &str) -> String {
    let canary = "apiVersion: onemesh.dev/v1\nkind: Service\nmetadata: {name: bank-v2, namespace: bank}\nspec:\n  selector: {app: bank}\n  ports: [{port: 80, targetPort: 8080}]\n---\napiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy";
    edit(
        "  retryable: true\n",
        &format!("  retryable: true\n  backends:\n{entries}"),
    )
    .replacen(
        "apiVersion: onemesh.dev/v1\nkind: AuthorizationPolicy",
        canary,
        1,
    )
}

#[test]
fn route_backends_split_by_weight() {
    let text = with_backends("    - {service: bank, weight: 90}\n    - {service: bank-v2}\n");
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    let backends = &config.routes[0].rules.backends;
    assert_eq!(backends.len(), 2);
    assert_eq!(
        (backends[0].service.as_str(), backends[0].weight),
        ("bank", 90)
    );
    // a weight left out is 1
    assert_eq!(
        (backends[1].service.as_str(), backends[1].weight),
        ("bank-v2", 1)
    );
}

#[test]
fn route_backends_refused_with_the_field_to_fix() {
    type Case = (&'static str, &'static str, fn(&Problem) -> bool);
    let cases: [Case; 6] = [
        (
            "    - {service: vault, weight: 1}\n",
            "spec.backends[0].service",
            |p| matches!(p, Problem::UnknownService(s) if s == "bank/vault"),
        ),
        (
            "    - {service: bank, weight: 1000001}\n",
            "spec.backends[0].weight",
            |p| matches!(p, Problem::BadWeight(1_000_001)),
        ),
        (
            "    - {service: bank, weight: -1}\n",
            "spec.backends[0].weight",
            |p| matches!(p, Problem::BadWeight(-1)),
        ),
        (
            "    - {service: bank, weight: 0}\n    - {service: bank-v2, weight: 0}\n",
            "spec.backends",
            |p| matches!(p, Problem::NoWeight),
        ),
        (
            "    - {service: bank}\n    - {service: bank, weight: 2}\n",
            "spec.backends",
            |p| matches!(p, Problem::DuplicateBackend(s) if s == "bank"),
        ),
        (
            "    - {service: bank, wieght: 2}\n",
            "spec.backends[0].wieght",
            |p| matches!(p, Problem::UnknownField { .. }),
        ),
    ];
    for (entries, field, is) in cases {
        let errors = errors_of(&with_backends(entries));
        assert_eq!(errors.len(), 1, "{entries}: {errors:?}");
        assert_eq!(errors[0].field, field, "{entries}");
        assert!(is(&errors[0].problem), "{entries}: {:?}", errors[0].problem);
    }
}

/// GOOD with `circuitBreaker: <breaker>` (a YAML flow map) on its route and on its service.
fn with_breakers(route: &str, service: &str) -> String {
    edit(
        "  retryable: true\n",
        &format!("  retryable: true\n  circuitBreaker: {route}\n"),
    )
    .replacen(
        "  ports: [{port: 80, targetPort: 8080}, {port: 9000}, {port: 81, targetPort: http}]\n",
        &format!(
            "  ports: [{{port: 80, targetPort: 8080}}, {{port: 9000}}, {{port: 81, targetPort: http}}]\n  circuitBreaker: {service}\n"
        ),
        1,
    )
}

#[test]
fn circuit_breakers_on_services_and_routes() {
    let text = with_breakers(
        "{consecutiveFailures: 3, baseEjection: 500ms, maxEjection: 10s, maxEjectionPercent: 100}",
        "{successRate: {minPercent: 99.5, window: 30s, minRequests: 50}}",
    );
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    let route = config.routes[0].rules.circuit_breaker.clone().unwrap();
    assert_eq!(
        route,
        CircuitBreaker {
            consecutive_failures: 3,
            success_rate: None,
            base_ejection: Duration::from_millis(500),
            max_ejection: Duration::from_secs(10),
            max_ejection_percent: 100,
        }
    );
    let service = config.services.values().next().unwrap();
    let breaker = service.circuit_breaker.clone().unwrap();
    // defaults: 1 s to 60 s, at most half of the endpoints
    assert_eq!(breaker.consecutive_failures, 0);
    assert_eq!(breaker.base_ejection, Duration::from_secs(1));
    assert_eq!(breaker.max_ejection, Duration::from_secs(60));
    assert_eq!(breaker.max_ejection_percent, 50);
    assert_eq!(
        breaker.success_rate,
        Some(SuccessRate {
            min_permille: 995,
            window: Duration::from_secs(30),
            min_requests: 50,
        })
    );
    // an integer percentage is fine too; window and minRequests have defaults
    let text = with_breakers(
        "{consecutiveFailures: 1}",
        "{successRate: {minPercent: 90}}",
    );
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    let rate = config
        .services
        .values()
        .next()
        .unwrap()
        .circuit_breaker
        .clone();
    let rate = rate.unwrap().success_rate.unwrap();
    assert_eq!(
        (rate.min_permille, rate.window, rate.min_requests),
        (900, Duration::from_secs(10), 20)
    );
}

#[test]
fn circuit_breakers_refused_with_the_field_to_fix() {
    type Case = (&'static str, &'static str, fn(&Problem) -> bool);
    let cases: [Case; 9] = [
        ("{}", "spec.circuitBreaker", |p| {
            matches!(p, Problem::NoBreakerRule)
        }),
        (
            "{consecutiveFailures: 0}",
            "spec.circuitBreaker.consecutiveFailures",
            |p| matches!(p, Problem::OutOfRange { value, .. } if value == "0"),
        ),
        (
            "{consecutiveFailures: 5, maxEjectionPercent: 101}",
            "spec.circuitBreaker.maxEjectionPercent",
            |p| matches!(p, Problem::OutOfRange { value, .. } if value == "101"),
        ),
        (
            "{consecutiveFailures: 5, baseEjection: 10s, maxEjection: 1s}",
            "spec.circuitBreaker.maxEjection",
            |p| matches!(p, Problem::EjectionOrder { .. }),
        ),
        (
            "{consecutiveFailures: 5, baseEjection: soon}",
            "spec.circuitBreaker.baseEjection",
            |p| matches!(p, Problem::BadDuration(s) if s == "soon"),
        ),
        (
            "{consecutiveFailures: 5, maxEjection: 2h}",
            "spec.circuitBreaker.maxEjection",
            |p| matches!(p, Problem::OutOfRange { .. }),
        ),
        (
            "{successRate: {window: 10s}}",
            "spec.circuitBreaker.successRate.minPercent",
            |p| matches!(p, Problem::MissingField),
        ),
        (
            "{successRate: {minPercent: 120}}",
            "spec.circuitBreaker.successRate.minPercent",
            |p| matches!(p, Problem::OutOfRange { value, .. } if value == "120"),
        ),
        (
            "{consecutivefailures: 5}",
            "spec.circuitBreaker.consecutivefailures",
            |p| matches!(p, Problem::UnknownField { .. }),
        ),
    ];
    for (breaker, field, is) in cases {
        // on the route
        let errors = errors_of(&with_breakers(breaker, "{consecutiveFailures: 5}"));
        assert_eq!(errors.len(), 1, "{breaker}: {errors:?}");
        assert_eq!(errors[0].field, field, "{breaker}");
        assert!(is(&errors[0].problem), "{breaker}: {:?}", errors[0].problem);
        // and the same on the service
        let errors = errors_of(&with_breakers("{consecutiveFailures: 5}", breaker));
        assert_eq!(errors.len(), 1, "{breaker}: {errors:?}");
        assert_eq!(errors[0].field, field, "service: {breaker}");
    }
}

#[test]
fn route_retry_policy_with_defaults_for_what_is_left_out() {
    let retry = "  retryable: true\n  retry:\n    attempts: 5\n    on: [connect-failure, 500, gateway-error, unavailable]\n    perTryTimeout: 300ms\n    idempotencyHeader: X-Request-Key\n    budget: {percent: 50}\n";
    let config = parse(Path::new("mesh.yaml"), &edit("  retryable: true\n", retry)).unwrap();
    let r = config.routes[0].rules.retry.clone().unwrap();
    assert_eq!(r.attempts, 5);
    let want = [
        RetryOn::ConnectFailure,
        RetryOn::Status(500),
        RetryOn::Status(502),
        RetryOn::Status(503),
        RetryOn::Status(504),
        RetryOn::Grpc(14),
    ];
    assert_eq!(r.on, want);
    assert_eq!(r.per_try_timeout, Some(Duration::from_millis(300)));
    assert_eq!(r.idempotency_header, "x-request-key");
    assert_eq!((r.budget_percent, r.budget_min_per_second), (50, 10));
    assert_eq!(r.max_body_bytes, Retry::default().max_body_bytes);
}

#[test]
fn route_retry_refused_with_the_field_to_fix() {
    type Case = (&'static str, &'static str, fn(&Problem) -> bool);
    let cases: [Case; 6] = [
        (
            "attempts: 0",
            "spec.retry.attempts",
            |p| matches!(p, Problem::OutOfRange { value, .. } if value == "0"),
        ),
        (
            "attempts: 11",
            "spec.retry.attempts",
            |p| matches!(p, Problem::OutOfRange { value, .. } if value == "11"),
        ),
        (
            "on: [teapot]",
            "spec.retry.on[0]",
            |p| matches!(p, Problem::BadRetryOn(s) if s == "teapot"),
        ),
        (
            "on: [200]",
            "spec.retry.on[0]",
            |p| matches!(p, Problem::BadRetryOn(s) if s == "200"),
        ),
        (
            "idempotencyHeader: 'x key'",
            "spec.retry.idempotencyHeader",
            |p| matches!(p, Problem::BadIdempotencyHeader(_)),
        ),
        (
            "budget: {percent: 2000}",
            "spec.retry.budget.percent",
            |p| matches!(p, Problem::OutOfRange { value, .. } if value == "2000"),
        ),
    ];
    for (field_text, field, is) in cases {
        let text = edit(
            "  retryable: true\n",
            &format!("  retryable: true\n  retry:\n    {field_text}\n"),
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{field_text}: {errors:?}");
        assert_eq!(errors[0].field, field, "{field_text}");
        assert!(
            is(&errors[0].problem),
            "{field_text}: {:?}",
            errors[0].problem
        );
        // every message says what to write
        assert!(errors[0].to_string().contains("use "), "{}", errors[0]);
    }
}

/// GOOD with `fault` (YAML lines under it, indented by 4) on its route.
fn with_fault(lines: &str) -> String {
    edit(
        "  retryable: true\n",
        &format!("  retryable: true\n  fault:\n{lines}"),
    )
}

#[test]
fn route_fault_is_read_with_defaults() {
    let text = with_fault(
        "    abort: {httpStatus: 503, percent: 30}\n    delay: {duration: 3s}\n    header: {name: X-Fault, value: \"on\"}\n",
    );
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    let fault = config.routes[0].rules.fault.clone().expect("a fault");
    let abort = fault.abort.expect("an abort");
    assert_eq!(abort.status, AbortStatus::Http(503));
    assert_eq!(abort.percent, Percent(30_000));
    let delay = fault.delay.expect("a delay");
    assert_eq!(delay.duration, Duration::from_secs(3));
    assert_eq!(
        delay.percent,
        Percent::ALL,
        "percent left out: every request"
    );
    let header = fault.header.expect("a header");
    assert_eq!(
        (header.name.as_str(), header.value.as_deref()),
        ("x-fault", Some("on"))
    );
    let grpc = with_fault("    abort: {grpcStatus: 14, percent: 0.5}\n");
    let config = parse(Path::new("mesh.yaml"), &grpc).unwrap();
    let abort = config.routes[0].rules.fault.clone().and_then(|f| f.abort);
    assert_eq!(
        abort.map(|a| (a.status, a.percent)),
        Some((AbortStatus::Grpc(14), Percent(500)))
    );
    let none = parse(Path::new("mesh.yaml"), GOOD).unwrap();
    assert_eq!(none.routes[0].rules.fault, None, "off unless declared");
}

#[test]
fn route_fault_refused_with_the_field_to_fix() {
    type Case = (&'static str, &'static str, fn(&Problem) -> bool);
    let cases: [Case; 9] = [
        (
            "    abort: {httpStatus: 200}\n",
            "spec.fault.abort.httpStatus",
            |p| matches!(p, Problem::BadAbortStatus(200)),
        ),
        (
            "    abort: {grpcStatus: 0}\n",
            "spec.fault.abort.grpcStatus",
            |p| matches!(p, Problem::BadGrpcStatus(0)),
        ),
        (
            "    abort: {httpStatus: 503, grpcStatus: 14}\n",
            "spec.fault.abort",
            |p| matches!(p, Problem::AbortStatusChoice),
        ),
        ("    abort: {percent: 10}\n", "spec.fault.abort", |p| {
            matches!(p, Problem::AbortStatusChoice)
        }),
        (
            "    abort: {httpStatus: 503, percent: 101}\n",
            "spec.fault.abort.percent",
            |p| matches!(p, Problem::BadPercent(s) if s == "101"),
        ),
        (
            "    delay: {duration: 3}\n",
            "spec.fault.delay.duration",
            |p| matches!(p, Problem::WrongType { .. }),
        ),
        (
            "    delay: {duration: 0s}\n",
            "spec.fault.delay.duration",
            |p| matches!(p, Problem::BadDuration(_)),
        ),
        ("    header: {name: x-fault}\n", "spec.fault", |p| {
            matches!(p, Problem::EmptyFault)
        }),
        (
            "    delay: {duration: 1s}\n    header: {name: onemesh-client-id}\n",
            "spec.fault.header.name",
            |p| matches!(p, Problem::BadHeaderName(_)),
        ),
    ];
    for (lines, field, is) in cases {
        let errors = errors_of(&with_fault(lines));
        assert_eq!(errors.len(), 1, "{lines}: {errors:?}");
        assert_eq!(errors[0].field, field, "{lines}");
        assert!(is(&errors[0].problem), "{lines}: {:?}", errors[0].problem);
    }
}

/// GOOD with a RateLimitPolicy whose spec is `spec` (YAML lines, indented by 2).
fn with_rate_limit(spec: &str) -> String {
    format!(
        "{GOOD}---\napiVersion: onemesh.dev/v1\nkind: RateLimitPolicy\nmetadata: {{name: bank-limit, namespace: bank}}\nspec:\n{spec}"
    )
}

#[test]
fn rate_limit_policy_is_read_with_defaults() {
    let text = with_rate_limit(
        "  target: {workload: bank, port: 8080}\n  total: {requestsPerSecond: 100, burst: 200}\n  identity: {requestsPerSecond: 10}\n  overrides:\n    - requestsPerSecond: 50\n      from: {identities: [spiffe://cluster.local/ns/card/sa/card], namespaces: [card]}\n",
    );
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    assert_eq!(config.rate_limits.len(), 1);
    let l = &config.rate_limits[0];
    assert_eq!(
        (l.target_workload.as_str(), l.target_port),
        ("bank", Some(8080))
    );
    let rate = |rps, burst| Rate {
        requests_per_second: rps,
        burst,
    };
    assert_eq!(l.limits.total, Some(rate(100, 200)));
    assert_eq!(
        l.limits.identity,
        Some(rate(10, 10)),
        "burst left out: the rate"
    );
    assert_eq!(l.limits.overrides[0].rate, rate(50, 50));
    assert_eq!(l.limits.overrides[0].namespaces, vec!["card"]);
    assert_eq!(l.matches, HttpMatch::default(), "no match: every request");
    // a route's requests only
    let text = with_rate_limit(
        "  target: {workload: bank}\n  match: {methods: [POST], pathPrefix: /accounts}\n  total: {requestsPerSecond: 100}\n",
    );
    let config = parse(Path::new("mesh.yaml"), &text).unwrap();
    assert_eq!(
        config.rate_limits[0].matches,
        HttpMatch {
            methods: vec!["POST".into()],
            path_prefix: Some("/accounts".into()),
        }
    );
}

#[test]
fn rate_limit_policy_refused_with_the_field_to_fix() {
    type Case = (&'static str, &'static str, fn(&Problem) -> bool);
    let cases: [Case; 9] = [
        (
            "  target: {workload: bank}\n  match: {methods: [post]}\n  total: {requestsPerSecond: 1}\n",
            "spec.match.methods[0]",
            |p| matches!(p, Problem::BadMethod(m) if m == "post"),
        ),
        (
            "  target: {workload: bank}\n  match: {pathPrefix: accounts}\n  total: {requestsPerSecond: 1}\n",
            "spec.match.pathPrefix",
            |p| matches!(p, Problem::BadPathPrefix(_)),
        ),
        (
            "  target: {workload: vault}\n  total: {requestsPerSecond: 1}\n",
            "spec.target.workload",
            |p| matches!(p, Problem::UnknownWorkload(w) if w == "bank/vault"),
        ),
        (
            "  target: {workload: bank, port: 7}\n  total: {requestsPerSecond: 1}\n",
            "spec.target.port",
            |p| matches!(p, Problem::UndeclaredPort { port: 7, .. }),
        ),
        ("  total: {requestsPerSecond: 1}\n", "spec.target", |p| {
            matches!(p, Problem::MissingField)
        }),
        ("  target: {workload: bank}\n", "spec", |p| {
            matches!(p, Problem::NoLimit)
        }),
        (
            "  target: {workload: bank}\n  total: {requestsPerSecond: 0}\n",
            "spec.total.requestsPerSecond",
            |p| matches!(p, Problem::BadRate(0)),
        ),
        (
            "  target: {workload: bank}\n  identity: {requestsPerSecond: 5, burst: -1}\n",
            "spec.identity.burst",
            |p| matches!(p, Problem::BadRate(-1)),
        ),
        (
            "  target: {workload: bank}\n  overrides: [{requestsPerSecond: 5, from: {}}]\n",
            "spec.overrides[0].from",
            |p| matches!(p, Problem::Empty),
        ),
    ];
    for (spec, field, is) in cases {
        let errors = errors_of(&with_rate_limit(spec));
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
        assert_eq!(errors[0].field, field, "{spec}");
        assert!(is(&errors[0].problem), "{spec}: {:?}", errors[0].problem);
    }
}

#[test]
fn modes_are_read_and_default_to_enforce() {
    let mesh = parse(Path::new("mesh.yaml"), GOOD).unwrap();
    assert_eq!(mesh.policies[0].mode, PolicyMode::Enforce);
    assert_eq!(mesh.namespaces["bank"].default_mode, PolicyMode::Enforce);
    let text = edit(
        "metadata: {name: bank}\n",
        "metadata: {name: bank}\nspec: {defaultPolicyMode: audit}\n",
    )
    .replace(
        "  target: {workload: bank, port: 8080}",
        "  mode: audit\n  target: {workload: bank, port: 8080}",
    );
    let mesh = parse(Path::new("mesh.yaml"), &text).unwrap();
    assert_eq!(mesh.policies[0].mode, PolicyMode::Audit);
    assert_eq!(mesh.namespaces["bank"].default_mode, PolicyMode::Audit);
    assert_eq!(mesh.namespaces["card"].default_mode, PolicyMode::Enforce);
}

#[test]
fn a_bad_mode_is_reported_at_its_line() {
    let text = edit(
        "  target: {workload: bank, port: 8080}",
        "  mode: dry-run\n  target: {workload: bank, port: 8080}",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, line_of(&text, "mode: dry-run"));
    assert_eq!(errors[0].field, "spec.mode");
    assert!(matches!(errors[0].problem, Problem::BadMode(_)));
    let text = edit(
        "metadata: {name: card}\n",
        "metadata: {name: card}\nspec: {defaultPolicyMode: Audit}\n",
    );
    let errors = errors_of(&text);
    assert_eq!(errors[0].field, "spec.defaultPolicyMode");
    assert_eq!(errors[0].line, line_of(&text, "defaultPolicyMode"));
}

#[test]
fn grpc_routes_become_the_path_match_they_stand_for() {
    let text = edit(
        "  routes: [{methods: [POST], pathPrefix: /v1/}]",
        "  routes:\n    - grpc: {service: pay.v1.Payments, method: Authorize}\n    - grpc: {service: pay.v1.Refunds}\n    - {methods: [GET]}",
    );
    let mesh = parse(Path::new("mesh.yaml"), &text).unwrap();
    let routes = &mesh.policies[0].routes;
    assert_eq!(routes[0].methods, vec!["POST"]);
    assert_eq!(
        routes[0].path_prefix.as_deref(),
        Some("/pay.v1.Payments/Authorize")
    );
    assert_eq!(routes[1].path_prefix.as_deref(), Some("/pay.v1.Refunds/"));
    assert_eq!(routes[2].methods, vec!["GET"]);
}

#[test]
fn bad_grpc_routes_are_reported_at_their_field() {
    for (route, field, want) in [
        (
            "{grpc: {service: pay.v1.Payments}, methods: [GET]}",
            "spec.routes[0].grpc",
            "cannot be combined",
        ),
        (
            "{grpc: {service: pay..Payments}}",
            "spec.routes[0].grpc.service",
            "not a grpc service name",
        ),
        (
            "{grpc: {service: /pay.Payments/Pay}}",
            "spec.routes[0].grpc.service",
            "not a grpc service name",
        ),
        (
            "{grpc: {service: pay.Payments, method: Pay/x}}",
            "spec.routes[0].grpc.method",
            "not a grpc method name",
        ),
        (
            "{grpc: {method: Pay}}",
            "spec.routes[0].grpc.service",
            "missing required field",
        ),
        (
            "{grpc: {service: pay.Payments, verb: Pay}}",
            "spec.routes[0].grpc.verb",
            "use one of service, method",
        ),
    ] {
        let text = edit(
            "  routes: [{methods: [POST], pathPrefix: /v1/}]",
            &format!("  routes:\n    - {route}"),
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{route}: {errors:?}");
        assert_eq!(errors[0].field, field, "{route}");
        assert_eq!(errors[0].line, line_of(&text, "grpc"), "{route}");
        assert!(
            errors[0].to_string().contains(want),
            "{route}: {}",
            errors[0]
        );
    }
}
