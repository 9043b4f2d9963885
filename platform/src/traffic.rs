//! The traffic generator: drives a realistic mix of payments against the `order` service at a
//! chosen rate — successful payments (app card and card number), cancellations, insufficient
//! funds, wrong PINs and over-limit attempts — using only the seeded users and cards.
//!
//! Each scenario places an order, pays it and (for cancellations) cancels it. A 5xx or a broken
//! connection is retried with the *same* `Idempotency-Key` until `retry_for` runs out, the way a
//! careful client would; the summary counts what each kind of scenario ended as.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};

/// What kind of scenario a request belongs to, and so what it should end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// App-card payment with funds: should end `paid`.
    Success,
    /// Card-number payment with funds: should end `paid`.
    CardNumber,
    /// Paid, then cancelled: should end `cancelled`.
    Cancellation,
    /// Check card without the funds: should end `insufficient_funds`.
    InsufficientFunds,
    /// Wrong PIN: should end `wrong_pin`.
    WrongPin,
    /// Credit card over its limit: should end `over_limit`.
    OverLimit,
}

impl Kind {
    /// Picks a kind with the generator's mix (percent): 50 success, 10 card number,
    /// 10 cancellation, 10 insufficient funds, 10 wrong PIN, 10 over limit.
    pub fn pick(roll: u32) -> Kind {
        match roll % 100 {
            0..50 => Kind::Success,
            50..60 => Kind::CardNumber,
            60..70 => Kind::Cancellation,
            70..80 => Kind::InsufficientFunds,
            80..90 => Kind::WrongPin,
            _ => Kind::OverLimit,
        }
    }

    /// The outcome this kind should end with.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Success | Kind::CardNumber => "paid",
            Kind::Cancellation => "cancelled",
            Kind::InsufficientFunds => "insufficient_funds",
            Kind::WrongPin => "wrong_pin",
            Kind::OverLimit => "over_limit",
        }
    }
}

/// How to drive traffic.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Base URL of the order service.
    pub target: String,
    /// Scenarios started per second.
    pub rate: f64,
    /// How long to keep starting scenarios.
    pub duration: Duration,
    /// Stop after this many scenarios (None: only the duration limits).
    pub max_scenarios: Option<u64>,
    /// Scenarios in flight at most.
    pub concurrency: usize,
    /// How long one step keeps retrying 5xx and connection failures.
    pub retry_for: Duration,
    /// Use `HTTP_PROXY` from the environment.
    pub use_env_proxy: bool,
    /// Percent of pay requests sent twice at once with the same key, as a client that retries
    /// before the first answer arrives would (both answers must agree).
    pub duplicate_pay_percent: u32,
}

impl TrafficConfig {
    /// A config with sensible defaults for `target`.
    pub fn new(target: &str, rate: f64, duration: Duration) -> TrafficConfig {
        TrafficConfig {
            target: target.trim_end_matches('/').to_string(),
            rate,
            duration,
            max_scenarios: None,
            concurrency: 64,
            retry_for: Duration::from_secs(30),
            use_env_proxy: true,
            duplicate_pay_percent: 0,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficSummary {
    /// Scenarios started.
    pub attempts: u64,
    /// Outcome counts per kind.
    pub outcomes: BTreeMap<Kind, BTreeMap<String, u64>>,
    /// Scenarios whose outcome differs from their kind's expected one.
    pub unexpected: u64,
    /// Requests retried after a 5xx or a connection failure.
    pub retries: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Orders created, with their kind, in start order (not printed).
    #[serde(skip)]
    pub orders: Vec<(String, Kind)>,
}

/// Could not run the generator.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    Client(#[from] reqwest::Error),
    /// The rate is not a positive number.
    #[error("rate must be a positive number of scenarios per second")]
    Rate,
}

struct Shared {
    http: reqwest::Client,
    config: TrafficConfig,
    summary: Mutex<TrafficSummary>,
}

/// Runs the generator until the duration (or scenario count) is reached and every started
/// scenario has finished.
pub async fn run(config: TrafficConfig) -> Result<TrafficSummary, TrafficError> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(TrafficError::Rate);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2));
    if !config.use_env_proxy {
        builder = builder.no_proxy();
    }
    let shared = Arc::new(Shared {
        http: builder.build()?,
        config: config.clone(),
        summary: Mutex::new(TrafficSummary::default()),
    });
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    while started.elapsed() < config.duration && config.max_scenarios.is_none_or(|m| n < m) {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let kind = Kind::pick(fastrand::u32(..));
        n += 1;
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let outcome = scenario(&shared, kind).await;
            let mut s = shared.summary.lock().await;
            if outcome != kind.expected() {
                s.unexpected += 1;
            }
            *s.outcomes
                .entry(kind)
                .or_default()
                .entry(outcome)
                .or_default() += 1;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut summary = shared.summary.lock().await.clone();
    summary.attempts = n;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The order lines and pay request of a kind.
fn plan(kind: Kind) -> (Value, Value) {
    let small = || {
        let dishes = [
            "m-bibimbap",
            "m-bulgogi",
            "m-kimchi-jjigae",
            "m-tteokbokki",
            "m-soju",
        ];
        let a = dishes[fastrand::usize(..dishes.len())];
        let b = dishes[fastrand::usize(..dishes.len())];
        json!([{"menu_id": a, "qty": fastrand::i64(1..=2)}, {"menu_id": b, "qty": 1}])
    };
    let kim = json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "1234"});
    let lee = json!({"method": "appcard", "user_id": "u-lee", "card_id": "c-lee-2", "pin": "5678"});
    match kind {
        Kind::Success => (small(), if fastrand::bool() { kim } else { lee }),
        Kind::Cancellation => (small(), if fastrand::bool() { kim } else { lee }),
        Kind::CardNumber => (
            small(),
            json!({"method": "card", "card_number": "9410000000000006"}),
        ),
        // Park's check card is linked to an account holding 20,000 won.
        Kind::InsufficientFunds => (
            json!([{"menu_id": "m-bulgogi", "qty": 2}]),
            json!({"method": "appcard", "user_id": "u-park", "card_id": "c-park-3", "pin": "0000"}),
        ),
        Kind::WrongPin => (
            small(),
            json!({"method": "appcard", "user_id": "u-kim", "card_id": "c-kim-1", "pin": "9999"}),
        ),
        // Choi's credit card has a 100,000 won limit; the set costs 150,000.
        Kind::OverLimit => (
            json!([{"menu_id": "m-hanwoo", "qty": 1}]),
            json!({"method": "appcard", "user_id": "u-choi", "card_id": "c-choi-4", "pin": "1111"}),
        ),
    }
}

/// One scenario; returns its outcome (`paid`, `cancelled`, a decline code, or an error label).
async fn scenario(shared: &Shared, kind: Kind) -> String {
    let (items, pay) = plan(kind);
    let base = &shared.config.target;
    let table = fastrand::i64(1..=30);
    let order = match call(
        shared,
        &format!("{base}/orders"),
        json!({"table_no": table, "items": items}),
    )
    .await
    {
        Ok((201, body)) => body,
        Ok((status, body)) => return format!("order_refused_{status}_{}", code(&body)),
        Err(e) => return e,
    };
    let Some(id) = order["id"].as_str().map(str::to_string) else {
        return "order_unreadable".into();
    };
    shared.summary.lock().await.orders.push((id.clone(), kind));
    let pay_url = format!("{base}/orders/{id}/pay");
    let pay_key = crate::common::new_id("traffic");
    let answer = if fastrand::u32(0..100) < shared.config.duplicate_pay_percent {
        let (a, b) = tokio::join!(
            call_with_key(shared, &pay_url, &pay_key, pay.clone()),
            call_with_key(shared, &pay_url, &pay_key, pay)
        );
        match (&a, &b) {
            (Ok((sa, ba)), Ok((sb, bb))) if sa != sb || ba != bb => {
                return format!("duplicate_pay_disagreed_{sa}_{sb}");
            }
            _ => a,
        }
    } else {
        call_with_key(shared, &pay_url, &pay_key, pay).await
    };
    let paid = match answer {
        Ok((200, body)) if body["status"] == "PAID" => true,
        Ok((402, body)) => return code(&body),
        Ok((status, body)) => return format!("pay_{status}_{}", code(&body)),
        Err(e) => return e,
    };
    if paid && kind == Kind::Cancellation {
        return match call(shared, &format!("{base}/orders/{id}/cancel"), json!({})).await {
            Ok((200, body)) if body["status"] == "CANCELLED" => "cancelled".into(),
            Ok((status, body)) => format!("cancel_{status}_{}", code(&body)),
            Err(e) => e,
        };
    }
    "paid".into()
}

fn code(body: &Value) -> String {
    body["code"].as_str().unwrap_or("unknown").to_string()
}

/// POSTs with a fresh idempotency key (see [`call_with_key`]).
async fn call(shared: &Shared, url: &str, body: Value) -> Result<(u16, Value), String> {
    call_with_key(shared, url, &crate::common::new_id("traffic"), body).await
}

/// POSTs with one idempotency key, retrying 5xx and connection failures with the same key.
async fn call_with_key(
    shared: &Shared,
    url: &str,
    key: &str,
    body: Value,
) -> Result<(u16, Value), String> {
    let deadline = Instant::now() + shared.config.retry_for;
    let mut backoff = Duration::from_millis(50);
    loop {
        let result = shared
            .http
            .post(url)
            .header(crate::common::api::IDEMPOTENCY_KEY, key)
            .json(&body)
            .send()
            .await;
        let failure = match result {
            Ok(r) if !r.status().is_server_error() => {
                let status = r.status().as_u16();
                let body = r.json::<Value>().await.unwrap_or(Value::Null);
                return Ok((status, body));
            }
            Ok(r) => format!("server_error_{}", r.status().as_u16()),
            Err(e) if e.is_timeout() => "timeout".to_string(),
            Err(_) => "connection_failed".to_string(),
        };
        if Instant::now() + backoff > deadline {
            return Err(failure);
        }
        shared.summary.lock().await.retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// A printable summary: one line per kind with its outcomes.
pub fn render(summary: &TrafficSummary) -> String {
    let mut out = format!(
        "attempts: {}  unexpected: {}  retries: {}  elapsed: {:.1}s\n",
        summary.attempts, summary.unexpected, summary.retries, summary.elapsed_s
    );
    for (kind, outcomes) in &summary.outcomes {
        let parts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
        out.push_str(&format!(
            "  {:<20} {}\n",
            format!("{kind:?}"),
            parts.join(" ")
        ));
    }
    out
}
