//! Unit tests of the inbound's small helpers.

use super::*;

#[test]
fn refusal_warnings_go_through_once_per_interval_and_count_the_rest() {
    let throttle = Throttle::new(Duration::from_millis(200));
    assert_eq!(throttle.allow(), Some(0), "the first one goes through");
    for _ in 0..5 {
        assert_eq!(throttle.allow(), None, "held back within the interval");
    }
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(
        throttle.allow(),
        Some(5),
        "the next one says how many were held back"
    );
    assert_eq!(throttle.allow(), None);
}

#[tokio::test]
async fn a_refused_port_is_answered_with_its_reason_and_the_connection_closes() {
    use http_body_util::BodyExt;
    let svc = refusal_service(PortRefusal::ProxyPort(4191), true);
    let (client, server) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc)
            .await;
    });
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", "x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 403);
    assert_eq!(rsp.headers()["onemesh-error"], "proxy_port");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("port 4191 is one of the proxy's own ports"),
        "{body:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection stayed open")
        .unwrap()
        .unwrap();
}

#[test]
fn the_403_names_the_explain_command_with_a_shell_safe_path() {
    let post = http::Method::POST;
    assert_eq!(
        explain_command(
            "spiffe://cluster.local/ns/pg/sa/pg",
            "card",
            "card",
            41234,
            Some((&post, "/v1/pay"))
        ),
        "onemesh authz explain --from spiffe://cluster.local/ns/pg/sa/pg --to card/card:41234 \
         --method POST --path /v1/pay"
    );
    // a path a shell would read otherwise is quoted (the app receives `&`, `;`, `'`, `$` as is)
    assert_eq!(
        explain_command(
            "unauthenticated",
            "card",
            "card",
            80,
            Some((&post, "/a&b;'$(x)"))
        ),
        "onemesh authz explain --from unauthenticated --to card/card:80 --method POST --path \
         '/a&b;'\\''$(x)'"
    );
    assert_eq!(
        explain_command("unauthenticated", "card", "card", 80, None),
        "onemesh authz explain --from unauthenticated --to card/card:80"
    );
}
