use super::*;

fn parse(q: &str) -> Result<Filter, FilterError> {
    Filter::parse(Some(q))
}

#[test]
fn queries_parse_and_bad_ones_say_why() {
    let f = Filter::parse(None).unwrap();
    assert_eq!(f.max_rps, DEFAULT_MAX_RPS);
    assert_eq!(f.direction, None);
    let f = parse("direction=inbound&path=%2Fv1%2Fpay&method=post&max_rps=5000").unwrap();
    assert_eq!(f.direction, Some(Direction::Inbound));
    assert_eq!(f.path.as_deref(), Some("/v1/pay"));
    assert_eq!(f.method, Some(Method::POST));
    assert_eq!(f.max_rps, MAX_RPS);
    let f = parse("to=card/card").unwrap();
    assert_eq!(f.direction, Some(Direction::Outbound));
    assert_eq!(f.to, Some(("card".into(), "card".into())));
    assert_eq!(parse("x=1"), Err(FilterError::Unknown("x".into())));
    assert_eq!(
        parse("direction=up"),
        Err(FilterError::Direction("up".into()))
    );
    assert_eq!(parse("to=card"), Err(FilterError::To("card".into())));
    assert_eq!(
        parse("to=card/card&direction=inbound"),
        Err(FilterError::ToInbound)
    );
    assert_eq!(parse("max_rps=0"), Err(FilterError::MaxRps("0".into())));
    assert_eq!(parse("max_rps=-1"), Err(FilterError::MaxRps("-1".into())));
    assert_eq!(parse("path=v1"), Err(FilterError::Path("v1".into())));
    assert_eq!(parse("path=%ff"), Err(FilterError::Encoding));
    assert_eq!(parse("path=%2"), Err(FilterError::Encoding));
    assert!(matches!(parse("method=G%20T"), Err(FilterError::Method(_))));
}

#[test]
fn the_bucket_refills_at_its_rate() {
    let mut b = Bucket::new(2);
    let t = tokio::time::Instant::now();
    assert!(b.take(t));
    assert!(b.take(t));
    assert!(!b.take(t));
    assert!(b.take(t + Duration::from_millis(500)));
    assert!(!b.take(t + Duration::from_millis(500)));
    // never more than a second's worth saved
    let later = t + Duration::from_secs(60);
    assert!(b.take(later) && b.take(later) && !b.take(later));
}

fn hub() -> Arc<Hub> {
    Hub::new(
        ProxyInfo {
            namespace: "card".into(),
            workload: "card".into(),
            id: "spiffe://cluster.local/ns/card/sa/card".into(),
        },
        Masker::default(),
        false,
    )
}

fn labels() -> RouteLabels {
    RouteLabels {
        edge: crate::metrics::EdgeLabels {
            direction: Direction::Inbound,
            namespace: "card".into(),
            workload: "card".into(),
            dst_namespace: "card".into(),
            dst_workload: "card".into(),
            peer_id: Some("spiffe://cluster.local/ns/pg/sa/pg".into()),
            tls: Tls::True,
        },
        route: "default".into(),
    }
}

fn request(path: &str) -> Request<()> {
    Request::post(path)
        .header("host", "card.card:8080")
        .header("x-merchant-key", "k-123")
        .header("x-note", "4111 1111 1111 1111")
        .body(())
        .unwrap()
}

/// Reads a tap's lines (a chunk may hold several).
struct Reader {
    stream: TapStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(stream: TapStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next line, or `None` when none comes within `wait`.
    async fn line_within(&mut self, wait: Duration) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line).unwrap());
            }
            let chunk =
                tokio::time::timeout(wait, std::future::poll_fn(|cx| self.stream.poll_line(cx)))
                    .await
                    .ok()?
                    .unwrap();
            self.buf.extend_from_slice(&chunk);
        }
    }

    async fn line(&mut self) -> String {
        self.line_within(Duration::from_secs(5))
            .await
            .expect("a line")
    }
}

#[tokio::test]
async fn nothing_is_captured_without_a_tap() {
    let hub = hub();
    assert!(!hub.enabled());
    assert!(hub.capture(&request("/")).is_none());
    let tap = hub.subscribe(Filter::parse(None).unwrap()).unwrap();
    assert!(hub.enabled());
    assert!(hub.capture(&request("/")).is_some());
    drop(tap);
    assert!(!hub.enabled());
    assert_eq!(hub.taps(), 0);
}

#[tokio::test]
async fn an_event_is_masked_and_matches_the_contract() {
    let hub = hub();
    let mut tap = Reader::new(hub.subscribe(Filter::parse(None).unwrap()).unwrap());
    let pending = hub
        .capture(&request(
            "/v1/pay/4111111111111111?card=4111-1111-1111-1111",
        ))
        .unwrap();
    let rsp = Response::builder().status(201).body(()).unwrap();
    pending.publish(Direction::Inbound, &labels(), Instant::now(), &rsp);
    let line = tap.line().await;
    assert!(line.ends_with('\n'));
    assert!(!line.contains("41111"), "{line}");
    assert!(!line.contains("k-123"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["direction"], "inbound");
    assert_eq!(
        v["path"],
        "/v1/pay/************1111?card=****-****-****-1111"
    );
    assert_eq!(v["authority"], "card.card:8080");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["status"], 201);
    assert_eq!(v["tls"], true);
    assert_eq!(v["route"], "default");
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["source"]["namespace"], "pg");
    assert_eq!(v["source"]["workload"], "pg");
    assert_eq!(
        v["destination"]["id"],
        "spiffe://cluster.local/ns/card/sa/card"
    );
    assert_eq!(v["proxy"]["workload"], "card");
    assert_eq!(v["headers"]["x-merchant-key"], "[masked]");
    assert_eq!(v["headers"]["x-note"], "**** **** **** 1111");
    assert!(v["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["time_unix"].as_f64().unwrap() > 1.7e9);
}

#[tokio::test]
async fn filters_select_events() {
    let hub = hub();
    let sub = |q: &str| Reader::new(hub.subscribe(parse(q).unwrap()).unwrap());
    let mut outbound = sub("direction=outbound");
    let mut get = sub("method=GET");
    let mut pay = sub("path=/v1/pay");
    // a masked number cannot be probed by a path filter
    let mut probe = sub("path=/v1/pay/4111");
    let rsp = Response::new(());
    let p = hub.capture(&request("/v1/pay/4111111111111111")).unwrap();
    p.publish(Direction::Inbound, &labels(), Instant::now(), &rsp);
    let line = pay.line().await;
    assert!(line.contains("\"inbound\""));
    for quiet in [&mut outbound, &mut get, &mut probe] {
        let none = quiet.line_within(Duration::from_millis(50)).await;
        assert!(none.is_none(), "{none:?}");
    }
}

#[tokio::test]
async fn at_most_eight_taps() {
    let hub = hub();
    let taps: Vec<_> = (0..MAX_TAPS)
        .map(|_| hub.subscribe(Filter::parse(None).unwrap()).unwrap())
        .collect();
    assert!(hub.subscribe(Filter::parse(None).unwrap()).is_err());
    drop(taps);
    assert!(hub.subscribe(Filter::parse(None).unwrap()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn events_over_the_rate_are_dropped_and_reported_once_a_second() {
    let hub = hub();
    let mut tap = Reader::new(hub.subscribe(parse("max_rps=3").unwrap()).unwrap());
    let rsp = Response::new(());
    for _ in 0..10 {
        let p = hub.capture(&request("/")).unwrap();
        p.publish(Direction::Inbound, &labels(), Instant::now(), &rsp);
    }
    for _ in 0..3 {
        assert!(tap.line().await.contains("\"direction\""));
    }
    // the report comes when its second is up
    assert_eq!(tap.line().await, "{\"dropped\": 7}\n");
    // and nothing more until there is something to say
    assert_eq!(tap.line_within(Duration::from_secs(3)).await, None);
}

#[tokio::test]
async fn odd_characters_make_valid_json() {
    let hub = hub();
    let mut tap = Reader::new(hub.subscribe(Filter::parse(None).unwrap()).unwrap());
    let value = http::HeaderValue::from_bytes(b"a\"b\\c\tde \xc3\xa9 \xff").unwrap();
    let req = Request::get("/p%22?q=%22x%22")
        .header("x-odd", value)
        .header("x-two", "1")
        .header("x-two", "2")
        .body(())
        .unwrap();
    let pending = hub.capture(&req).unwrap();
    pending.publish(
        Direction::Outbound,
        &labels(),
        Instant::now(),
        &Response::new(()),
    );
    let line = tap.line().await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["headers"]["x-odd"], "a\"b\\c\tde é \u{fffd}");
    assert_eq!(v["headers"]["x-two"], "1, 2");
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["destination"]["workload"], "card");
    assert_eq!(v["source"]["id"], "spiffe://cluster.local/ns/card/sa/card");
}

#[test]
fn control_characters_are_escaped() {
    let text = "a\u{1}b\u{7f}c\nd\re\u{1f}\"\\";
    let mut out = Vec::new();
    json::str(&mut out, text);
    let back: String = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, text);
    assert!(out.iter().all(|b| *b >= 0x20 && *b != 0x7f), "{out:?}");
}

#[tokio::test]
async fn to_matches_the_destination_or_the_authority() {
    let hub = hub();
    let mut by_workload = Reader::new(hub.subscribe(parse("to=card/card").unwrap()).unwrap());
    let mut by_host = Reader::new(hub.subscribe(parse("to=card/pay").unwrap()).unwrap());
    let mut other = Reader::new(hub.subscribe(parse("to=bank/pay").unwrap()).unwrap());
    let publish = |host: &str, direction| {
        let req = Request::get("/").header("host", host).body(()).unwrap();
        let p = hub.capture(&req).unwrap();
        let mut l = labels();
        l.edge.direction = direction;
        p.publish(direction, &l, Instant::now(), &Response::new(()));
    };
    // inbound events never match `to`
    publish("card.card:8080", Direction::Inbound);
    // the destination workload matches card/card; the host pay.card... matches card/pay
    publish("pay.card.svc.cluster.local:80", Direction::Outbound);
    assert!(by_workload.line().await.contains("pay.card.svc"));
    assert!(by_host.line().await.contains("pay.card.svc"));
    assert_eq!(other.line_within(Duration::from_millis(50)).await, None);
    assert_eq!(
        by_workload.line_within(Duration::from_millis(50)).await,
        None
    );
    // a host that only starts like the name does not match
    publish("payment.card:80", Direction::Outbound);
    assert_eq!(by_host.line_within(Duration::from_millis(50)).await, None);
}
