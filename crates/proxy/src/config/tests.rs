//! Unit tests for configuration parsing.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

const ID: &str = "spiffe://cluster.local/ns/bank/sa/bank";

#[test]
fn defaults_apply() {
    let env = HashMap::from([(ENV_IDENTITY, ID)]);
    let c = Config::from_source(&env).unwrap();
    assert_eq!(c.outbound_addr, DEFAULT_OUTBOUND_ADDR.parse().unwrap());
    assert_eq!(c.inbound_addr, DEFAULT_INBOUND_ADDR.parse().unwrap());
    assert_eq!(c.admin_addr, DEFAULT_ADMIN_ADDR.parse().unwrap());
    assert_eq!(c.detect_timeout, Duration::from_secs(1));
    assert_eq!(c.leaf_lifetime, Duration::from_secs(24 * 3600));
    assert_eq!(c.workload, "bank");
    assert_eq!(c.namespace(), "bank");
    assert!(c.opaque_ports.contains(&5432));
    assert_eq!(c.log_format, LogFormat::Plain);
    assert_eq!(c.cores, 1);
    assert_eq!(c.http1_transport, Http1Transport::Http1);
    assert_eq!(c.stream_idle_timeout, Duration::from_secs(3600));
}

#[test]
fn values_override_defaults() {
    let env = HashMap::from([
        (ENV_IDENTITY, ID),
        (ENV_ADMIN_ADDR, "127.0.0.1:0"),
        (ENV_LEAF_LIFETIME, "3s"),
        (ENV_DETECT_TIMEOUT, "250ms"),
        (ENV_OPAQUE_PORTS, "1, 2,3"),
        (ENV_WORKLOAD, "bank-v2"),
        (ENV_LOG_FORMAT, "json"),
        (ENV_CORES, "2"),
        (ENV_HTTP1_TRANSPORT, "h2"),
        (ENV_STREAM_IDLE_TIMEOUT, "90s"),
    ]);
    let c = Config::from_source(&env).unwrap();
    assert_eq!(c.stream_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.cores, 2);
    assert_eq!(c.http1_transport, Http1Transport::H2);
    assert_eq!(c.admin_addr.port(), 0);
    assert_eq!(c.leaf_lifetime, Duration::from_secs(3));
    assert_eq!(c.detect_timeout, Duration::from_millis(250));
    assert_eq!(
        c.opaque_ports.iter().copied().collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(c.workload, "bank-v2");
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn reports_every_bad_variable_at_once() {
    let env = HashMap::from([
        (ENV_OUTBOUND_ADDR, "nope"),
        (ENV_DETECT_TIMEOUT, "1 fortnight"),
        (ENV_OPAQUE_PORTS, "80,99999"),
        (ENV_MAX_HEADER_BYTES, "12"),
        (ENV_LOG_FORMAT, "xml"),
        (ENV_CORES, "0"),
        (ENV_HTTP1_TRANSPORT, "spdy"),
        (ENV_IDENTITY_ISSUER_CERT, "/x"),
        (ENV_STREAM_IDLE_TIMEOUT, "0s"),
    ]);
    let err = Config::from_source(&env).unwrap_err();
    let names: Vec<_> = err.bad_vars().iter().map(|b| b.name).collect();
    for expected in [
        ENV_OUTBOUND_ADDR,
        ENV_IDENTITY,
        ENV_DETECT_TIMEOUT,
        ENV_OPAQUE_PORTS,
        ENV_MAX_HEADER_BYTES,
        ENV_LOG_FORMAT,
        ENV_CORES,
        ENV_HTTP1_TRANSPORT,
        ENV_IDENTITY_ISSUER_KEY,
        ENV_STREAM_IDLE_TIMEOUT,
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let text = err.to_string();
    assert!(
        text.contains("ONEMESH_PROXY_IDENTITY: is required"),
        "{text}"
    );
}

#[test]
fn bad_identity_is_reported() {
    let env = HashMap::from([(ENV_IDENTITY, "http://x")]);
    let err = Config::from_source(&env).unwrap_err();
    assert_eq!(err.bad_vars()[0].name, ENV_IDENTITY);
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
    assert!(parse_duration("h").is_err());
    assert!(parse_duration("3d").is_err());
    assert!(parse_duration("-1s").is_err());
}

fn control_env(extra: &[(&'static str, String)]) -> HashMap<&'static str, String> {
    let mut env: HashMap<&'static str, String> = HashMap::from([
        (ENV_IDENTITY, ID.to_string()),
        (ENV_CONTROL_IDENTITY_ADDR, "control:8080".to_string()),
        (ENV_CONTROL_DESTINATION_ADDR, "control:8086".to_string()),
        (ENV_CONTROL_POLICY_ADDR, "control:8090".to_string()),
        (ENV_TRUST_ANCHORS, "/anchors.pem".to_string()),
    ]);
    env.extend(extra.iter().cloned());
    env
}

#[test]
fn a_token_file_is_read_again_for_every_request() {
    let dir = std::env::temp_dir().join(format!("onemesh-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "first\n").unwrap();
    let env = control_env(&[(ENV_IDENTITY_TOKEN_FILE, path.display().to_string())]);
    let control = Config::from_source(&env).unwrap().control.unwrap();
    assert_eq!(control.token.read().unwrap(), "first");
    // The kubelet refreshes a projected token in place: the next request sends the new one.
    std::fs::write(&path, "second").unwrap();
    assert_eq!(control.token.read().unwrap(), "second");
    std::fs::write(&path, " \n").unwrap();
    let empty = control.token.read().unwrap_err();
    assert!(empty.contains("is empty"), "{empty}");
    std::fs::remove_dir_all(&dir).unwrap();
    let missing = control.token.read().unwrap_err();
    assert!(
        missing.contains("cannot read the bootstrap token file"),
        "{missing}"
    );
    // Never the token itself in logs.
    assert!(!format!("{control:?}").contains("second"));
}

#[test]
fn a_token_and_a_token_file_together_are_refused() {
    let env = control_env(&[
        (ENV_IDENTITY_TOKEN, "t".to_string()),
        (ENV_IDENTITY_TOKEN_FILE, "/t".to_string()),
    ]);
    let err = Config::from_source(&env).unwrap_err().to_string();
    assert!(err.contains("set only one"), "{err}");
    let err = Config::from_source(&control_env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains(ENV_IDENTITY_TOKEN_FILE), "{err}");
    let value = Config::from_source(&control_env(&[(
        ENV_IDENTITY_TOKEN,
        "secret-value".to_string(),
    )]))
    .unwrap()
    .control
    .unwrap();
    assert_eq!(value.token.read().unwrap(), "secret-value");
    assert!(!format!("{value:?}").contains("secret-value"));
}

#[test]
fn app_probes_parse_from_the_injectors_json() {
    // As the injector writes it (crates/control/src/inject.rs), `original` included.
    let json = r#"{"web/liveness":{"http":{"port":8080,"path":"/healthz","headers":[["X-Probe","1"]]},"timeoutSeconds":2,"original":{"httpGet":{"path":"/healthz","port":"http"}}},"web/readiness":{"tcp":{"port":8080},"timeoutSeconds":1,"original":{"tcpSocket":{"port":8080}}}}"#;
    let env = HashMap::from([(ENV_IDENTITY, ID), (ENV_APP_PROBES, json)]);
    let c = Config::from_source(&env).unwrap();
    assert_eq!(c.app_probes.len(), 2);
    let live = c.app_probes.get("web/liveness").unwrap();
    assert_eq!(live.timeout, Duration::from_secs(2));
    match &live.action {
        ProbeAction::Http {
            port,
            path,
            headers,
        } => {
            assert_eq!((*port, path.as_str()), (8080, "/healthz"));
            assert_eq!(headers[0].0, "x-probe");
            assert_eq!(headers[0].1, "1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.app_probes.get("web/readiness").unwrap().action,
        ProbeAction::Tcp { port: 8080 }
    );
    // Unset: none.
    let env = HashMap::from([(ENV_IDENTITY, ID)]);
    assert!(Config::from_source(&env).unwrap().app_probes.is_empty());
}

#[test]
fn bad_app_probes_are_reported() {
    for bad in [
        "not json",
        r#"{"a/liveness":{"timeoutSeconds":1}}"#,
        r#"{"a/liveness":{"tcp":{"port":0},"timeoutSeconds":1}}"#,
        r#"{"a/liveness":{"tcp":{"port":80},"timeoutSeconds":0}}"#,
        r#"{"a/liveness":{"tcp":{"port":80},"http":{"port":80,"path":"/"},"timeoutSeconds":1}}"#,
        r#"{"a/liveness":{"http":{"port":80,"path":"healthz"},"timeoutSeconds":1}}"#,
        r#"{"a/liveness":{"http":{"port":80,"path":"/","headers":[["bad header","x"]]},"timeoutSeconds":1}}"#,
        r#"{"a/liveness":{"http":{"port":80,"path":"/","headers":[["x","bad\nvalue"]]},"timeoutSeconds":1}}"#,
    ] {
        let env = HashMap::from([(ENV_IDENTITY, ID), (ENV_APP_PROBES, bad)]);
        let err = Config::from_source(&env).unwrap_err();
        assert_eq!(err.bad_vars()[0].name, ENV_APP_PROBES, "{bad}");
    }
}

#[test]
fn the_control_admin_listener_is_on_in_control_plane_mode_only_unless_asked() {
    // static mode: off by default
    let c = Config::from_source(&HashMap::from([(ENV_IDENTITY, ID)])).unwrap();
    assert!(c.control_admin.is_none());
    assert!(!c.access_log);
    assert!(
        c.tap_mask
            .masks(&http::HeaderName::from_static("x-merchant-key"))
    );
    // control-plane mode: on, at the default address, serving the control plane's id
    let env = control_env(&[(ENV_IDENTITY_TOKEN, "t".to_string())]);
    let (addr, id) = Config::from_source(&env).unwrap().control_admin.unwrap();
    assert_eq!(addr, DEFAULT_CONTROL_ADMIN_ADDR.parse().unwrap());
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/onemesh/sa/control");
    // static mode, asked for: needs the peer's id
    let env = HashMap::from([(ENV_IDENTITY, ID), (ENV_CONTROL_ADMIN_ADDR, "127.0.0.1:0")]);
    let err = Config::from_source(&env).unwrap_err();
    assert_eq!(err.bad_vars()[0].name, ENV_CONTROL_ID, "{err}");
    let env = HashMap::from([
        (ENV_IDENTITY, ID),
        (ENV_CONTROL_ADMIN_ADDR, "127.0.0.1:0"),
        (ENV_CONTROL_ID, "spiffe://cluster.local/ns/ops/sa/tapper"),
        (ENV_ACCESS_LOG, "json"),
        (ENV_TAP_MASK_HEADERS, "x-api-key"),
    ]);
    let c = Config::from_source(&env).unwrap();
    let (_, id) = c.control_admin.unwrap();
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/ops/sa/tapper");
    assert!(c.access_log);
    assert!(
        c.tap_mask
            .masks(&http::HeaderName::from_static("x-api-key"))
    );
    assert!(
        !c.tap_mask
            .masks(&http::HeaderName::from_static("x-merchant-key"))
    );
    // bad values are reported together
    let env = HashMap::from([
        (ENV_IDENTITY, ID),
        (ENV_ACCESS_LOG, "yes"),
        (ENV_TAP_MASK_HEADERS, "bad name"),
    ]);
    let err = Config::from_source(&env).unwrap_err();
    let names: Vec<_> = err.bad_vars().iter().map(|b| b.name).collect();
    assert!(names.contains(&ENV_ACCESS_LOG), "{err}");
    assert!(names.contains(&ENV_TAP_MASK_HEADERS), "{err}");
}

#[test]
fn the_decision_log_settings_parse_and_bad_ones_are_reported_together() {
    let env = HashMap::from([(ENV_IDENTITY, ID)]);
    let c = Config::from_source(&env).unwrap();
    assert_eq!(c.audit, None, "unset: on with a control plane, off without");
    assert_eq!(c.audit_deny_rate, 100);
    let env = HashMap::from([
        (ENV_IDENTITY, ID),
        (ENV_AUDIT, "off"),
        (ENV_AUDIT_DENY_RATE, "0"),
    ]);
    let c = Config::from_source(&env).unwrap();
    assert_eq!((c.audit, c.audit_deny_rate), (Some(false), 0));
    let env = HashMap::from([(ENV_IDENTITY, ID), (ENV_AUDIT, "on")]);
    assert_eq!(Config::from_source(&env).unwrap().audit, Some(true));
    let env = HashMap::from([
        (ENV_IDENTITY, ID),
        (ENV_AUDIT, "yes"),
        (ENV_AUDIT_DENY_RATE, "100/s"),
    ]);
    let err = Config::from_source(&env).unwrap_err();
    let names: Vec<_> = err.bad_vars().iter().map(|b| b.name).collect();
    assert_eq!(names, [ENV_AUDIT, ENV_AUDIT_DENY_RATE], "{err}");
    assert!(err.to_string().contains("must be on or off"), "{err}");
    assert!(err.to_string().contains("from 0 to 100000"), "{err}");
    let env = HashMap::from([(ENV_IDENTITY, ID), (ENV_AUDIT_DENY_RATE, "100001")]);
    assert!(Config::from_source(&env).is_err());
}
