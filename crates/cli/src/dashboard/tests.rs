//! The dashboard's DNS-rebinding guard: which `Host` values it answers, and that a forged one is
//! refused on every path before anything is read.

use super::*;

fn bound() -> SocketAddr {
    "127.0.0.1:8084".parse().unwrap()
}

fn dashboard(extra: &[&str]) -> Dashboard {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let layout = Layout {
        pid: 1,
        config: "mesh.yaml".into(),
        trust_domain: "cluster.local".into(),
        control: crate::layout::Control {
            identity: String::new(),
            destination: String::new(),
            policy: String::new(),
            id: String::new(),
            pid: None,
        },
        dashboard: bound().to_string(),
        entries: Default::default(),
        workloads: vec![],
        isolation: None,
    };
    let (_tx, rx) = watch::channel(layout);
    Dashboard::new(rx, Hosts::new(bound(), &extra).unwrap())
}

fn get(d: &Dashboard, uri: &str, host: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(uri);
    if let Some(h) = host {
        req = req.header(header::HOST, h);
    }
    let resp = d.handle(req.body(()).unwrap());
    let status = resp.status();
    let body = futures_body(resp);
    (status, body)
}

fn futures_body(resp: Response<Full<Bytes>>) -> String {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bytes = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn its_own_names_on_its_port_are_answered() {
    let d = dashboard(&[]);
    for host in [
        "127.0.0.1:8084",
        "localhost:8084",
        "LOCALHOST:8084",
        "[::1]:8084",
    ] {
        let (status, _) = get(&d, "/api/status", Some(host));
        assert_eq!(status, StatusCode::OK, "{host}");
    }
}

#[test]
fn a_forged_host_is_refused_on_every_path() {
    let d = dashboard(&[]);
    for host in [
        "evil.example:8084",
        "evil.example",
        "localhost:9999",
        "127.0.0.1",
        "127.0.0.1:8084.evil.example",
        "localhost.:8084",
        "",
        "[::1]x:8084",
    ] {
        for path in ["/", "/api/stat", "/api/edges", "/api/status", "/nope"] {
            let (status, body) = get(&d, path, Some(host));
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host} {path}");
            assert!(body.contains("DNS rebinding"), "{body}");
            assert!(body.contains("--dashboard-host"), "{body}");
            assert!(!body.contains("workloads"), "{body}");
        }
    }
}

#[test]
fn a_request_without_host_or_with_a_forged_authority_is_refused() {
    let d = dashboard(&[]);
    let (status, body) = get(&d, "/api/status", None);
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert!(body.contains("names no Host"), "{body}");
    // Absolute form: the authority is checked as well as the Host header.
    let (status, _) = get(
        &d,
        "http://evil.example:8084/api/status",
        Some("127.0.0.1:8084"),
    );
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (status, _) = get(
        &d,
        "http://localhost:8084/api/status",
        Some("localhost:8084"),
    );
    assert_eq!(status, StatusCode::OK);
    // Two Hosts, one good: refused whatever the order.
    for pair in [
        ["localhost:8084", "evil.example:8084"],
        ["evil.example:8084", "localhost:8084"],
    ] {
        let mut req = Request::get("/api/status");
        for h in pair {
            req = req.header(header::HOST, h);
        }
        let resp = d.handle(req.body(()).unwrap());
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "{pair:?}");
        assert!(futures_body(resp).contains("more than one Host"));
    }
}

#[test]
fn names_given_by_the_user_are_answered() {
    let d = dashboard(&["dash.example", "localhost:9084", "[fd00::1]:80"]);
    for host in [
        "dash.example",
        "dash.example:31000",
        "localhost:9084",
        "[fd00::1]",
    ] {
        assert_eq!(get(&d, "/", Some(host)).0, StatusCode::OK, "{host}");
    }
    for host in ["localhost:9085", "other.example:9084", "[fd00::1]:81"] {
        assert_eq!(
            get(&d, "/", Some(host)).0,
            StatusCode::MISDIRECTED_REQUEST,
            "{host}"
        );
    }
}

#[test]
fn a_bad_dashboard_host_flag_is_an_error_that_says_what_to_give() {
    for bad in ["", "a/b", "dash.example:http", "a b", "[::1"] {
        let e = Hosts::new(bound(), &[bad.to_string()]).unwrap_err();
        assert!(e.to_string().contains("NAME:PORT"), "{bad}: {e}");
    }
}

#[test]
fn an_unspecified_bind_address_is_not_a_name() {
    let h = Hosts::new("0.0.0.0:8084".parse().unwrap(), &[]).unwrap();
    assert!(!h.allows("0.0.0.0:8084"));
    assert!(h.allows("localhost:8084"));
    let h = Hosts::new("[::1]:0".parse().unwrap(), &[]).unwrap();
    assert!(h.allows("[::1]:0"));
}
