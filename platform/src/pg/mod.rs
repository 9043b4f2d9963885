//! pg — the payment gateway: merchants with API keys, one payment transaction per order
//! (amount, method, status), approval routed to `appcard` (app-card payments) or straight to
//! `card` (card-number payments), cancel/refund, and a daily settlement report per merchant.
//!
//! A payment is written as `REQUESTED` before the upstream is asked and becomes `APPROVED`,
//! `DECLINED` (a final 4xx from upstream) or, later, `CANCELLED`. When the upstream cannot be
//! reached the payment stays `REQUESTED` and the caller gets 503; its retry with the same key
//! asks again with the same derived key (`pg:{payment}:approve`), so nothing is charged twice.
//!
//! Not here: partial refunds, payouts to merchants' bank accounts, multiple currencies.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::common::api::value;
use crate::common::api::{
    ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, IdemHeader, IdemKey, Reply, RequestError,
    check_amount, check_text, error_response,
};
use crate::common::client::{Upstream, UpstreamError};
use crate::common::db::{Db, DbError, Migration};
use crate::common::idem::{self, Begin};
use crate::common::{day_range_ms, derive_key, new_id, now_ms, request_hash};

#[cfg(test)]
mod tests;

/// Header carrying a merchant's API key.
pub const MERCHANT_KEY: &str = "x-merchant-key";

/// Schema and seed data, applied in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_payments",
        sql: "CREATE TABLE merchants (
                  id TEXT PRIMARY KEY,
                  name TEXT NOT NULL,
                  api_key TEXT NOT NULL UNIQUE,
                  fee_bps INTEGER NOT NULL
              );
              CREATE TABLE payments (
                  id TEXT PRIMARY KEY,
                  merchant_id TEXT NOT NULL REFERENCES merchants (id),
                  order_id TEXT NOT NULL,
                  amount INTEGER NOT NULL,
                  method TEXT NOT NULL CHECK (method IN ('appcard', 'card')),
                  status TEXT NOT NULL CHECK (status IN ('REQUESTED', 'APPROVED', 'DECLINED', 'CANCELLED')),
                  idempotency_key TEXT NOT NULL,
                  request_hash TEXT NOT NULL,
                  decline_code TEXT,
                  decline_message TEXT,
                  authorization_id TEXT,
                  approval_no TEXT,
                  created_ms INTEGER NOT NULL,
                  approved_ms INTEGER,
                  cancelled_ms INTEGER,
                  UNIQUE (merchant_id, order_id)
              );",
    },
    Migration {
        name: "0002_seed",
        sql: "INSERT INTO merchants (id, name, api_key, fee_bps) VALUES
                  ('tableshop', 'Table Order Shop', 'sk_test_tableshop', 250),
                  ('cafe', 'Corner Cafe', 'sk_test_cafe', 300);",
    },
];

/// What the gateway refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The request was malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The merchant key is missing or unknown.
    #[error("missing or unknown X-Merchant-Key; use the key issued to your merchant")]
    Unauthorized,
    /// The key belongs to another merchant.
    #[error("this merchant key may not read merchant {0}")]
    Forbidden(String),
    /// No such payment for this merchant.
    #[error("payment {0} does not exist for this merchant")]
    NoPayment(String),
    /// A method's details are missing.
    #[error("{0}")]
    MissingDetails(&'static str),
    /// The order already has a payment under another key.
    #[error(
        "order {0} already has a payment; retry with the same Idempotency-Key or use a new order"
    )]
    DuplicateOrder(String),
    /// The payment is not in a state that can be cancelled.
    #[error("payment {id} is {status} and cannot be cancelled")]
    NotCancellable {
        /// Payment id.
        id: String,
        /// Its status.
        status: String,
    },
    /// The upstream refused to cancel.
    #[error("the card side refused the cancel: {0}")]
    CancelRefused(String),
    /// appcard or card could not be reached; the payment's outcome is not known yet.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// An idempotency key was reused for another request.
    #[error(transparent)]
    Conflict(#[from] idem::Conflict),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for PgError {
    fn from(e: rusqlite::Error) -> Self {
        PgError::Db(DbError::Sqlite(e))
    }
}

impl ApiError for PgError {
    fn status(&self) -> StatusCode {
        match self {
            PgError::Request(e) => e.status(),
            PgError::Unauthorized => StatusCode::UNAUTHORIZED,
            PgError::Forbidden(_) => StatusCode::FORBIDDEN,
            PgError::NoPayment(_) => StatusCode::NOT_FOUND,
            PgError::MissingDetails(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PgError::DuplicateOrder(_)
            | PgError::NotCancellable { .. }
            | PgError::CancelRefused(_)
            | PgError::Conflict(_) => StatusCode::CONFLICT,
            PgError::Upstream(_) => StatusCode::SERVICE_UNAVAILABLE,
            PgError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> String {
        match self {
            PgError::Request(e) => return e.code(),
            PgError::Unauthorized => "unauthorized",
            PgError::Forbidden(_) => "forbidden",
            PgError::NoPayment(_) => "no_payment",
            PgError::MissingDetails(_) => "missing_details",
            PgError::DuplicateOrder(_) => "duplicate_order",
            PgError::NotCancellable { .. } => "not_cancellable",
            PgError::CancelRefused(_) => "cancel_refused",
            PgError::Upstream(_) => "upstream_unavailable",
            PgError::Conflict(_) => "idempotency_conflict",
            PgError::Db(_) => "internal",
        }
        .to_string()
    }
}

impl IntoResponse for PgError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The gateway's shared state.
#[derive(Debug, Clone)]
pub struct PgState {
    /// Its database.
    pub db: Db,
    /// The app-card wallet.
    pub appcard: Upstream,
    /// The card issuer.
    pub card: Upstream,
}

/// How the customer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// App-card wallet, confirmed with a PIN.
    Appcard,
    /// Card number.
    Card,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Appcard => "appcard",
            Method::Card => "card",
        }
    }
}

/// Ask for a payment of an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentRequest {
    /// The merchant's order id (one payment per order).
    #[schema(min_length = 1, max_length = 64, example = "ord_example")]
    pub order_id: String,
    /// Amount in won.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 12000)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// `appcard` or `card`.
    pub method: Method,
    /// App-card: the wallet user.
    #[schema(min_length = 1, max_length = 64, example = "u-kim")]
    pub user_id: Option<String>,
    /// App-card: the card in the wallet.
    #[schema(min_length = 1, max_length = 64, example = "c-kim-1")]
    pub card_id: Option<String>,
    /// App-card: the user's PIN.
    #[schema(pattern = "^[0-9]{4,6}$", example = "1234")]
    pub pin: Option<String>,
    /// Card: the 16-digit card number.
    #[schema(pattern = "^[0-9]{16}$", example = "9410000000000001")]
    pub card_number: Option<String>,
}

/// A payment transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    /// Payment id (the reference every later hop carries).
    pub id: String,
    /// Merchant id.
    pub merchant_id: String,
    /// The merchant's order id.
    pub order_id: String,
    /// Amount in won.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// `appcard` or `card`.
    pub method: String,
    /// `REQUESTED`, `APPROVED`, `DECLINED` or `CANCELLED`.
    pub status: String,
    /// Why it was declined.
    pub decline_code: Option<String>,
    /// The decline in words.
    pub decline_message: Option<String>,
    /// The issuer's authorization id.
    pub authorization_id: Option<String>,
    /// The issuer's approval number.
    pub approval_no: Option<String>,
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

/// Filter for listing payments.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PaymentQuery {
    /// Only the payment of this order.
    pub order_id: Option<String>,
}

/// Which day to report.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SettlementQuery {
    /// UTC day, `YYYY-MM-DD`.
    #[param(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    pub date: String,
}

/// A merchant's settlement for one day.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Settlement {
    /// Merchant id.
    pub merchant_id: String,
    /// UTC day.
    pub date: String,
    /// Payments approved that day.
    pub approved_count: i64,
    /// Their total, won.
    pub gross: i64,
    /// Payments cancelled that day.
    pub cancelled_count: i64,
    /// Their total, won (refunded).
    pub refunds: i64,
    /// The merchant's fee rate in basis points.
    pub fee_bps: i64,
    /// Fees on gross minus refunds, rounded down.
    pub fees: i64,
    /// Gross minus refunds minus fees: what the merchant is paid.
    pub net: i64,
}

/// The gateway's routes.
pub fn routes(state: PgState) -> Router {
    Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .route("/payments/{id}", get(get_payment))
        .route("/payments/{id}/cancel", post(cancel_payment))
        .route("/merchants/{id}/settlement", get(settlement))
        .with_state(state)
}

/// The whole gateway service.
pub fn app(state: PgState) -> Router {
    crate::common::serve::with_common("pg", routes(state), ApiDoc::openapi())
}

/// The gateway's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pg",
        description = "Payment gateway: payments per order, routing, cancel, settlement."
    ),
    paths(
        create_payment,
        list_payments,
        get_payment,
        cancel_payment,
        settlement,
        crate::common::serve::healthz
    ),
    components(schemas(Method, PaymentRequest, Payment, Settlement, ErrorBody))
)]
pub struct ApiDoc;

const PAYMENT_COLUMNS: &str = "id, merchant_id, order_id, amount, method, status, decline_code, \
     decline_message, authorization_id, approval_no, created_ms";

fn payment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Payment> {
    Ok(Payment {
        id: r.get(0)?,
        merchant_id: r.get(1)?,
        order_id: r.get(2)?,
        amount: r.get(3)?,
        method: r.get(4)?,
        status: r.get(5)?,
        decline_code: r.get(6)?,
        decline_message: r.get(7)?,
        authorization_id: r.get(8)?,
        approval_no: r.get(9)?,
        created_ms: r.get(10)?,
    })
}

fn read_payment(c: &Connection, merchant: &str, id: &str) -> Result<Payment, PgError> {
    c.query_row(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1 AND merchant_id = ?2"),
        [id, merchant],
        payment_row,
    )
    .optional()?
    .ok_or_else(|| PgError::NoPayment(id.to_string()))
}

/// Resolves the merchant from the `X-Merchant-Key` header.
async fn merchant(state: &PgState, headers: &HeaderMap) -> Result<String, PgError> {
    let key = headers
        .get(MERCHANT_KEY)
        .and_then(|v| v.to_str().ok())
        .ok_or(PgError::Unauthorized)?
        .to_string();
    state
        .db
        .run(move |c| {
            c.query_row("SELECT id FROM merchants WHERE api_key = ?1", [&key], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(PgError::Unauthorized)
        })
        .await
}

#[derive(Deserialize)]
struct Approval {
    #[serde(alias = "authorization_id")]
    id: String,
    approval_no: String,
}

fn validate(req: &PaymentRequest) -> Result<(), PgError> {
    check_text("order_id", &req.order_id, 64)?;
    check_amount("amount", req.amount)?;
    for (name, field) in [("user_id", &req.user_id), ("card_id", &req.card_id)] {
        if let Some(v) = field {
            check_text(name, v, 64)?;
        }
    }
    if let Some(pin) = &req.pin
        && (!(4..=6).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(RequestError::InvalidData("pin must be 4 to 6 digits".into()).into());
    }
    if let Some(n) = &req.card_number
        && (n.len() != 16 || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            RequestError::InvalidData("card_number must be exactly 16 digits".into()).into(),
        );
    }
    match req.method {
        Method::Appcard if req.user_id.is_none() || req.card_id.is_none() || req.pin.is_none() => {
            Err(PgError::MissingDetails(
                "an appcard payment needs user_id, card_id and pin",
            ))
        }
        Method::Card if req.card_number.is_none() => {
            Err(PgError::MissingDetails("a card payment needs card_number"))
        }
        _ => Ok(()),
    }
}

/// Ask for the payment of an order: routed to appcard (PIN) or card (number); one payment per
/// order.
#[utoipa::path(post, path = "/payments", tag = "payments", request_body = PaymentRequest,
    params(IdemHeader,
           ("X-Merchant-Key" = String, Header, description = "the merchant's API key")),
    responses(
        (status = 201, description = "approved (or replayed)", body = Payment),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 401, description = "missing or unknown merchant key", body = ErrorBody),
        (status = 402, description = "declined; code says why (wrong_pin, insufficient_funds, over_limit, ...)", body = ErrorBody),
        (status = 409, description = "key reused, or the order already has a payment", body = ErrorBody),
        (status = 422, description = "invalid data or missing method details", body = ErrorBody),
        (status = 503, description = "outcome unknown: upstream unavailable; retry with the same key", body = ErrorBody)))]
pub async fn create_payment(
    State(state): State<PgState>,
    headers: HeaderMap,
    key: IdemKey,
    ApiJson(req): ApiJson<PaymentRequest>,
) -> Result<Reply, PgError> {
    let merchant_id = merchant(&state, &headers).await?;
    validate(&req)?;
    let hash = request_hash(&(&merchant_id, &req));
    const SCOPE: &str = "payment";
    let (k, h, r, m) = (
        key.0.clone(),
        hash.clone(),
        req.clone(),
        merchant_id.clone(),
    );
    let payment_id = match state
        .db
        .run(move |c| {
            idem::begin(c, SCOPE, &k, &h, |c| {
                let existing: Option<(String, String, String, String)> = c
                    .query_row(
                        "SELECT id, status, idempotency_key, request_hash FROM payments
                         WHERE merchant_id = ?1 AND order_id = ?2",
                        [&m, &r.order_id],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                    )
                    .optional()?;
                match existing {
                    Some((id, status, existing_key, existing_hash))
                        if existing_key == k && existing_hash == h && status == "REQUESTED" =>
                    {
                        Ok(id)
                    }
                    Some((_, _, existing_key, _)) if existing_key == k => Err(idem::Conflict {
                        scope: SCOPE.into(),
                        key: k.clone(),
                    }
                    .into()),
                    Some(_) => Err(PgError::DuplicateOrder(r.order_id.clone())),
                    None => {
                        let id = new_id("pay");
                        c.execute(
                            "INSERT INTO payments (id, merchant_id, order_id, amount, method, status, idempotency_key, request_hash, created_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, 'REQUESTED', ?6, ?7, ?8)",
                            params![id, m, r.order_id, r.amount, r.method.as_str(), k, h, now_ms()],
                        )?;
                        Ok(id)
                    }
                }
            })
        })
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(id) => id,
    };

    let outcome = match req.method {
        Method::Appcard => {
            let body = serde_json::json!({
                "payment_ref": payment_id,
                "user_id": req.user_id,
                "card_id": req.card_id,
                "pin": req.pin,
                "amount": req.amount,
                "merchant": merchant_id,
            });
            let key = derive_key("pg", &payment_id, "approve");
            state
                .appcard
                .post::<_, Approval>("/payments", &key, &[], &body)
                .await
        }
        Method::Card => {
            let body = serde_json::json!({
                "card_number": req.card_number,
                "amount": req.amount,
                "merchant": merchant_id,
                "payment_ref": payment_id,
            });
            let key = derive_key("pg", &payment_id, "authorize");
            state
                .card
                .post::<_, Approval>("/authorizations", &key, &[], &body)
                .await
        }
    };
    if let Err(e @ (UpstreamError::Unavailable { .. } | UpstreamError::BadResponse { .. })) =
        outcome
    {
        return Err(PgError::Upstream(e));
    }

    state
        .db
        .run(move |c| {
            idem::execute_with(c, SCOPE, &key.0, &hash, |c| match outcome {
                Ok(approval) => {
                    c.execute(
                        "UPDATE payments SET status = 'APPROVED', authorization_id = ?2, approval_no = ?3, approved_ms = ?4
                         WHERE id = ?1 AND status = 'REQUESTED'",
                        params![payment_id, approval.id, approval.approval_no, now_ms()],
                    )?;
                    Ok(Reply::new(StatusCode::CREATED, &read_payment(c, &merchant_id, &payment_id)?))
                }
                Err(UpstreamError::Rejected { body, .. }) => {
                    c.execute(
                        "UPDATE payments SET status = 'DECLINED', decline_code = ?2, decline_message = ?3
                         WHERE id = ?1 AND status = 'REQUESTED'",
                        params![payment_id, body.code, body.error],
                    )?;
                    Ok(Reply::new(StatusCode::PAYMENT_REQUIRED, &ErrorBody {
                        error: format!("payment declined: {}", body.error),
                        code: body.code,
                    }))
                }
                Err(e) => Err(PgError::Upstream(e)),
            })
        })
        .await
}

/// Cancel (refund) an approved payment through the chain.
#[utoipa::path(post, path = "/payments/{id}/cancel", tag = "payments",
    params(("id" = String, Path, description = "payment id"),
           IdemHeader,
           ("X-Merchant-Key" = String, Header, description = "the merchant's API key")),
    responses(
        (status = 200, description = "cancelled (or already cancelled)", body = Payment),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 401, description = "missing or unknown merchant key", body = ErrorBody),
        (status = 404, description = "no such payment", body = ErrorBody),
        (status = 409, description = "key reused, or the payment cannot be cancelled", body = ErrorBody),
        (status = 503, description = "upstream unavailable; retry with the same key", body = ErrorBody)))]
pub async fn cancel_payment(
    State(state): State<PgState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
) -> Result<Reply, PgError> {
    let merchant_id = merchant(&state, &headers).await?;
    let hash = request_hash(&(&merchant_id, &id));
    const SCOPE: &str = "cancel";
    let (k, h, m, i) = (key.0.clone(), hash.clone(), merchant_id.clone(), id.clone());
    let payment = match state
        .db
        .run(move |c| {
            idem::begin(c, SCOPE, &k, &h, |c| {
                let p = read_payment(c, &m, &i)?;
                if p.status != "APPROVED" && p.status != "CANCELLED" {
                    return Err(PgError::NotCancellable {
                        id: p.id,
                        status: p.status,
                    });
                }
                Ok(p)
            })
        })
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(p) => p,
    };
    let outcome = if payment.status == "APPROVED" {
        let key = derive_key("pg", &id, "cancel");
        let result = match payment.method.as_str() {
            "appcard" => {
                state
                    .appcard
                    .post::<_, serde_json::Value>(
                        &format!("/payments/{id}/cancel"),
                        &key,
                        &[],
                        &serde_json::json!({}),
                    )
                    .await
            }
            _ => {
                let auth = payment.authorization_id.clone().unwrap_or_default();
                state
                    .card
                    .post::<_, serde_json::Value>(
                        &format!("/authorizations/{auth}/cancel"),
                        &key,
                        &[],
                        &serde_json::json!({}),
                    )
                    .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(UpstreamError::Rejected { body, .. }) => Err(PgError::CancelRefused(body.error)),
            Err(e) => return Err(PgError::Upstream(e)),
        }
    } else {
        Ok(())
    };
    state
        .db
        .run(move |c| {
            idem::execute(c, SCOPE, &key.0, &hash, StatusCode::OK, |c| {
                outcome?;
                c.execute(
                    "UPDATE payments SET status = 'CANCELLED', cancelled_ms = ?2 WHERE id = ?1 AND status = 'APPROVED'",
                    params![id, now_ms()],
                )?;
                Ok(value(&read_payment(c, &merchant_id, &id)?))
            })
        })
        .await
}

/// The merchant's payments, optionally the one of an order.
#[utoipa::path(get, path = "/payments", tag = "payments", params(PaymentQuery,
        ("X-Merchant-Key" = String, Header, description = "the merchant's API key")),
    responses((status = 200, description = "payments", body = [Payment]),
              (status = 400, description = "malformed query", body = ErrorBody),
              (status = 401, description = "missing or unknown merchant key", body = ErrorBody)))]
pub async fn list_payments(
    State(state): State<PgState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<PaymentQuery>,
) -> Result<Json<Vec<Payment>>, PgError> {
    let merchant_id = merchant(&state, &headers).await?;
    state
        .db
        .run(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE merchant_id = ?1 AND (?2 IS NULL OR order_id = ?2)
                 ORDER BY created_ms, id"
            ))?;
            let rows = stmt
                .query_map(params![merchant_id, q.order_id], payment_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(rows))
        })
        .await
}

/// One payment of the merchant.
#[utoipa::path(get, path = "/payments/{id}", tag = "payments",
    params(("id" = String, Path, description = "payment id"),
           ("X-Merchant-Key" = String, Header, description = "the merchant's API key")),
    responses((status = 200, description = "the payment", body = Payment),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 401, description = "missing or unknown merchant key", body = ErrorBody),
              (status = 404, description = "no such payment", body = ErrorBody)))]
pub async fn get_payment(
    State(state): State<PgState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Payment>, PgError> {
    let merchant_id = merchant(&state, &headers).await?;
    state
        .db
        .run(move |c| read_payment(c, &merchant_id, &id).map(Json))
        .await
}

/// A merchant's settlement for one UTC day: gross, refunds, fees, net.
#[utoipa::path(get, path = "/merchants/{id}/settlement", tag = "settlement",
    params(("id" = String, Path, description = "merchant id"), SettlementQuery,
           ("X-Merchant-Key" = String, Header, description = "the merchant's API key")),
    responses((status = 200, description = "the day's settlement", body = Settlement),
              (status = 400, description = "malformed query", body = ErrorBody),
              (status = 401, description = "missing or unknown merchant key", body = ErrorBody),
              (status = 403, description = "the key belongs to another merchant", body = ErrorBody)))]
pub async fn settlement(
    State(state): State<PgState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<SettlementQuery>,
) -> Result<Json<Settlement>, PgError> {
    let merchant_id = merchant(&state, &headers).await?;
    let (start, end) = day_range_ms(&q.date)
        .ok_or_else(|| RequestError::InvalidQuery("date must be a day as YYYY-MM-DD".into()))?;
    if merchant_id != id {
        return Err(PgError::Forbidden(id));
    }
    state
        .db
        .run(move |c| {
            let fee_bps: i64 =
                c.query_row("SELECT fee_bps FROM merchants WHERE id = ?1", [&id], |r| r.get(0))?;
            let (approved_count, gross): (i64, i64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM payments
                 WHERE merchant_id = ?1 AND approved_ms >= ?2 AND approved_ms < ?3",
                params![id, start, end],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (cancelled_count, refunds): (i64, i64) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM payments
                 WHERE merchant_id = ?1 AND status = 'CANCELLED' AND cancelled_ms >= ?2 AND cancelled_ms < ?3",
                params![id, start, end],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let sales = gross - refunds;
            let fees = (sales * fee_bps).div_euclid(10_000);
            Ok(Json(Settlement {
                merchant_id: id,
                date: q.date,
                approved_count,
                gross,
                cancelled_count,
                refunds,
                fee_bps,
                fees,
                net: sales - fees,
            }))
        })
        .await
}
