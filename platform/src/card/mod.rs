//! card — the card issuer: cards (credit with a limit, or check linked to a bank account),
//! tokens for wallets, authorizations with approval numbers, and cancellations.
//!
//! A check-card authorization debits the linked account at the bank (key `card:{ref}:debit`)
//! before the approval is recorded; a credit-card authorization holds limit in one local
//! transaction. A crash between the bank debit and the approval is healed by the caller's retry:
//! the same incoming key reaches the same bank key, which replays the debit instead of repeating
//! it. At most one authorization exists per payment reference.
//!
//! Fraud rules are deliberately simple: a per-transaction amount ceiling and card status.

use axum::extract::State;
use axum::http::StatusCode;
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
use crate::common::{derive_key, new_id, now_ms, request_hash};

#[cfg(test)]
mod tests;

/// The bank account that receives check-card debits.
pub const SETTLEMENT_ACCOUNT: &str = "acc-card-settlement";
/// Fraud rule: no single authorization above this many won.
pub const FRAUD_CEILING: i64 = 2_000_000;

/// Schema and seed data, applied in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_cards",
        sql: "CREATE TABLE cards (
                  number TEXT PRIMARY KEY,
                  holder TEXT NOT NULL,
                  kind TEXT NOT NULL CHECK (kind IN ('credit', 'check')),
                  status TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
                  credit_limit INTEGER NOT NULL DEFAULT 0,
                  used INTEGER NOT NULL DEFAULT 0,
                  bank_account TEXT
              );
              CREATE TABLE tokens (
                  token TEXT PRIMARY KEY,
                  card_number TEXT NOT NULL REFERENCES cards (number),
                  created_ms INTEGER NOT NULL
              );
              CREATE TABLE authorizations (
                  id TEXT PRIMARY KEY,
                  approval_no TEXT NOT NULL,
                  payment_ref TEXT NOT NULL UNIQUE,
                  card_number TEXT NOT NULL REFERENCES cards (number),
                  kind TEXT NOT NULL,
                  amount INTEGER NOT NULL,
                  merchant TEXT NOT NULL,
                  status TEXT NOT NULL CHECK (status IN ('APPROVED', 'CANCELLED')),
                  created_ms INTEGER NOT NULL,
                  cancelled_ms INTEGER
              );",
    },
    Migration {
        name: "0002_seed",
        sql: "INSERT INTO cards (number, holder, kind, status, credit_limit, used, bank_account) VALUES
                  ('9410000000000001', 'Kim Minji', 'check', 'active', 0, 0, 'acc-kim'),
                  ('9410000000000002', 'Lee Junho', 'credit', 'active', 50000000, 0, NULL),
                  ('9410000000000003', 'Park Seoyeon', 'check', 'active', 0, 0, 'acc-park'),
                  ('9410000000000004', 'Choi Yuna', 'credit', 'active', 100000, 0, NULL),
                  ('9410000000000005', 'Choi Yuna', 'check', 'suspended', 0, 0, 'acc-choi'),
                  ('9410000000000006', 'Choi Yuna', 'check', 'active', 0, 0, 'acc-choi');
              INSERT INTO tokens (token, card_number, created_ms) VALUES
                  ('tok_kim_1', '9410000000000001', 0),
                  ('tok_lee_2', '9410000000000002', 0),
                  ('tok_park_3', '9410000000000003', 0),
                  ('tok_choi_4', '9410000000000004', 0);",
    },
];

/// What the issuer refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The request was malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Neither or both of card number and token were given.
    #[error("give exactly one of card_number or token")]
    CardChoice,
    /// No such card or token.
    #[error("unknown card {0}; check the number or register the card again")]
    UnknownCard(String),
    /// No such authorization.
    #[error("authorization {0} does not exist")]
    NoAuthorization(String),
    /// The card is not active.
    #[error("card ending {0} is suspended; use another card")]
    CardInactive(String),
    /// Over the fraud ceiling.
    #[error("amount {amount} won is over the single-payment ceiling of {ceiling} won")]
    FraudCeiling {
        /// Asked amount.
        amount: i64,
        /// The ceiling.
        ceiling: i64,
    },
    /// Credit limit would be exceeded.
    #[error("over the credit limit: {available} won available, {amount} won asked")]
    OverLimit {
        /// Remaining limit.
        available: i64,
        /// Asked amount.
        amount: i64,
    },
    /// The bank refused the debit (insufficient funds, closed account).
    #[error("declined by the bank: {message}")]
    BankDeclined {
        /// The bank's code, e.g. `insufficient_funds`.
        code: String,
        /// The bank's message.
        message: String,
    },
    /// The payment reference already has an authorization under another key.
    #[error("payment {0} already has an authorization")]
    DuplicatePayment(String),
    /// The authorization cannot be cancelled in its state.
    #[error("authorization {0} is not approved, so it cannot be cancelled")]
    NotCancellable(String),
    /// The bank could not be reached.
    #[error(transparent)]
    Bank(UpstreamError),
    /// An idempotency key was reused for another request.
    #[error(transparent)]
    Conflict(#[from] idem::Conflict),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for CardError {
    fn from(e: rusqlite::Error) -> Self {
        CardError::Db(DbError::Sqlite(e))
    }
}

impl ApiError for CardError {
    fn status(&self) -> StatusCode {
        match self {
            CardError::Request(e) => e.status(),
            CardError::CardChoice => StatusCode::UNPROCESSABLE_ENTITY,
            CardError::UnknownCard(_) | CardError::NoAuthorization(_) => StatusCode::NOT_FOUND,
            CardError::CardInactive(_)
            | CardError::FraudCeiling { .. }
            | CardError::OverLimit { .. }
            | CardError::BankDeclined { .. } => StatusCode::PAYMENT_REQUIRED,
            CardError::DuplicatePayment(_)
            | CardError::NotCancellable(_)
            | CardError::Conflict(_) => StatusCode::CONFLICT,
            CardError::Bank(_) => StatusCode::SERVICE_UNAVAILABLE,
            CardError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> String {
        match self {
            CardError::Request(e) => return e.code(),
            CardError::BankDeclined { code, .. } => return code.clone(),
            CardError::CardChoice => "card_choice",
            CardError::UnknownCard(_) => "unknown_card",
            CardError::NoAuthorization(_) => "no_authorization",
            CardError::CardInactive(_) => "card_inactive",
            CardError::FraudCeiling { .. } => "fraud_amount_ceiling",
            CardError::OverLimit { .. } => "over_limit",
            CardError::DuplicatePayment(_) => "duplicate_payment",
            CardError::NotCancellable(_) => "not_cancellable",
            CardError::Bank(_) => "bank_unavailable",
            CardError::Conflict(_) => "idempotency_conflict",
            CardError::Db(_) => "internal",
        }
        .to_string()
    }
}

impl IntoResponse for CardError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The issuer's shared state.
#[derive(Debug, Clone)]
pub struct CardState {
    /// Its database.
    pub db: Db,
    /// The bank, for check-card debits and refunds.
    pub bank: Upstream,
}

/// A card as the issuer shows it (number masked).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CardView {
    /// Masked number, e.g. `9410-****-****-0001`.
    pub masked_number: String,
    /// Last four digits.
    pub last4: String,
    /// Holder's name.
    pub holder: String,
    /// `credit` or `check`.
    pub kind: String,
    /// `active` or `suspended`.
    pub status: String,
    /// Credit limit (0 for check cards).
    pub credit_limit: i64,
    /// Limit in use by approved authorizations (0 for check cards).
    pub used: i64,
    /// Linked bank account (check cards).
    pub bank_account: Option<String>,
}

/// Ask for a wallet token for a card.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The 16-digit card number.
    #[schema(pattern = "^[0-9]{16}$", example = "9410000000000001")]
    pub card_number: String,
}

/// A wallet token (the wallet keeps this, never the number).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The token.
    pub token: String,
    /// Last four digits of the card.
    pub last4: String,
    /// `credit` or `check`.
    pub kind: String,
}

/// Ask to authorize a payment on a card (by number or by token).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuthorizeRequest {
    /// The 16-digit card number (card-number payments).
    #[schema(pattern = "^[0-9]{16}$", example = "9410000000000001")]
    pub card_number: Option<String>,
    /// A wallet token (app-card payments).
    #[schema(min_length = 1, max_length = 64, example = "tok_kim_1")]
    pub token: Option<String>,
    /// Amount in won.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 12000)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// Merchant id.
    #[schema(min_length = 1, max_length = 64, example = "tableshop")]
    pub merchant: String,
    /// The payment's reference at the gateway; one authorization per reference.
    #[schema(min_length = 1, max_length = 128, example = "pay_example")]
    pub payment_ref: String,
}

/// An authorization.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Authorization {
    /// Authorization id.
    pub id: String,
    /// The approval number given to the merchant.
    pub approval_no: String,
    /// The payment's reference at the gateway.
    pub payment_ref: String,
    /// Last four digits of the card.
    pub card_last4: String,
    /// `credit` or `check`.
    pub kind: String,
    /// Amount in won.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// Merchant id.
    pub merchant: String,
    /// `APPROVED` or `CANCELLED`.
    pub status: String,
    /// Creation time, Unix ms.
    pub created_ms: i64,
}

/// Filter for listing authorizations.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuthorizationQuery {
    /// Only the authorization of this payment reference.
    pub payment_ref: Option<String>,
}

/// The issuer's routes.
pub fn routes(state: CardState) -> Router {
    Router::new()
        .route("/cards", get(list_cards))
        .route("/cards/{number}", get(get_card))
        .route("/tokens", post(issue_token))
        .route("/authorizations", post(authorize).get(list_authorizations))
        .route("/authorizations/{id}", get(get_authorization))
        .route("/authorizations/{id}/cancel", post(cancel))
        .with_state(state)
}

/// The whole issuer service.
pub fn app(state: CardState) -> Router {
    crate::common::serve::with_common("card", routes(state), ApiDoc::openapi())
}

/// The issuer's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "card",
        description = "Card issuer: cards, tokens, authorizations, cancellations."
    ),
    paths(
        list_cards,
        get_card,
        issue_token,
        authorize,
        list_authorizations,
        get_authorization,
        cancel,
        crate::common::serve::healthz
    ),
    components(schemas(
        CardView,
        TokenRequest,
        TokenView,
        AuthorizeRequest,
        Authorization,
        ErrorBody
    ))
)]
pub struct ApiDoc;

struct Card {
    number: String,
    holder: String,
    kind: String,
    status: String,
    credit_limit: i64,
    used: i64,
    bank_account: Option<String>,
}

impl Card {
    fn last4(&self) -> String {
        self.number.chars().skip(12).collect()
    }

    fn view(&self) -> CardView {
        CardView {
            masked_number: format!(
                "{}-****-****-{}",
                &self.number[..4.min(self.number.len())],
                self.last4()
            ),
            last4: self.last4(),
            holder: self.holder.clone(),
            kind: self.kind.clone(),
            status: self.status.clone(),
            credit_limit: self.credit_limit,
            used: self.used,
            bank_account: self.bank_account.clone(),
        }
    }
}

const CARD_COLUMNS: &str = "number, holder, kind, status, credit_limit, used, bank_account";

fn card_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Card> {
    Ok(Card {
        number: r.get(0)?,
        holder: r.get(1)?,
        kind: r.get(2)?,
        status: r.get(3)?,
        credit_limit: r.get(4)?,
        used: r.get(5)?,
        bank_account: r.get(6)?,
    })
}

fn read_card(conn: &Connection, number: &str) -> Result<Card, CardError> {
    conn.query_row(
        &format!("SELECT {CARD_COLUMNS} FROM cards WHERE number = ?1"),
        [number],
        card_row,
    )
    .optional()?
    .ok_or_else(|| CardError::UnknownCard(mask(number)))
}

fn mask(number: &str) -> String {
    if number.len() >= 4 && number.is_ascii() {
        format!("ending {}", &number[number.len() - 4..])
    } else {
        "(malformed)".into()
    }
}

fn resolve_card(conn: &Connection, req: &AuthorizeRequest) -> Result<Card, CardError> {
    match (&req.card_number, &req.token) {
        (Some(number), None) => read_card(conn, number),
        (None, Some(token)) => {
            let number: Option<String> = conn
                .query_row(
                    "SELECT card_number FROM tokens WHERE token = ?1",
                    [token],
                    |r| r.get(0),
                )
                .optional()?;
            match number {
                Some(n) => read_card(conn, &n),
                None => Err(CardError::UnknownCard(format!("token {token}"))),
            }
        }
        _ => Err(CardError::CardChoice),
    }
}

const AUTH_COLUMNS: &str =
    "id, approval_no, payment_ref, card_number, kind, amount, merchant, status, created_ms";

fn auth_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Authorization> {
    let number: String = r.get(3)?;
    Ok(Authorization {
        id: r.get(0)?,
        approval_no: r.get(1)?,
        payment_ref: r.get(2)?,
        card_last4: number.chars().skip(12).collect(),
        kind: r.get(4)?,
        amount: r.get(5)?,
        merchant: r.get(6)?,
        status: r.get(7)?,
        created_ms: r.get(8)?,
    })
}

fn read_authorization(conn: &Connection, id: &str) -> Result<(Authorization, String), CardError> {
    let auth = conn
        .query_row(
            &format!("SELECT {AUTH_COLUMNS} FROM authorizations WHERE id = ?1"),
            [id],
            auth_row,
        )
        .optional()?
        .ok_or_else(|| CardError::NoAuthorization(id.to_string()))?;
    let number: String = conn.query_row(
        "SELECT card_number FROM authorizations WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok((auth, number))
}

fn validate_number(number: &str) -> Result<(), RequestError> {
    if number.len() != 16 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::InvalidData(
            "card_number must be exactly 16 digits".into(),
        ));
    }
    Ok(())
}

/// Records an approved authorization (and, for credit, holds limit).
fn record_approval(
    conn: &Connection,
    card: &Card,
    req: &AuthorizeRequest,
) -> Result<Authorization, CardError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM authorizations WHERE payment_ref = ?1)",
        [&req.payment_ref],
        |r| r.get(0),
    )?;
    if exists {
        return Err(CardError::DuplicatePayment(req.payment_ref.clone()));
    }
    if card.kind == "credit" {
        conn.execute(
            "UPDATE cards SET used = used + ?2 WHERE number = ?1",
            params![card.number, req.amount],
        )?;
    }
    let id = new_id("auth");
    let approval_no = format!("{:08}", fastrand::u32(0..100_000_000));
    conn.execute(
        "INSERT INTO authorizations (id, approval_no, payment_ref, card_number, kind, amount, merchant, status, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'APPROVED', ?8)",
        params![id, approval_no, req.payment_ref, card.number, card.kind, req.amount, req.merchant, now_ms()],
    )?;
    Ok(read_authorization(conn, &id)?.0)
}

/// Checks that do not need the bank: card known and active, fraud ceiling, credit limit,
/// duplicate reference.
fn precheck(conn: &Connection, req: &AuthorizeRequest) -> Result<Card, CardError> {
    let card = resolve_card(conn, req)?;
    if card.status != "active" {
        return Err(CardError::CardInactive(card.last4()));
    }
    if req.amount > FRAUD_CEILING {
        return Err(CardError::FraudCeiling {
            amount: req.amount,
            ceiling: FRAUD_CEILING,
        });
    }
    if card.kind == "credit" && card.credit_limit - card.used < req.amount {
        return Err(CardError::OverLimit {
            available: card.credit_limit - card.used,
            amount: req.amount,
        });
    }
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM authorizations WHERE payment_ref = ?1)",
        [&req.payment_ref],
        |r| r.get(0),
    )?;
    if exists {
        return Err(CardError::DuplicatePayment(req.payment_ref.clone()));
    }
    Ok(card)
}

#[derive(Serialize)]
struct BankPosting<'a> {
    amount: i64,
    counterparty: &'a str,
    reference: &'a str,
}

/// Authorize a payment: check card, fraud rules and limit; debit the linked account for check
/// cards; record an approval number.
#[utoipa::path(post, path = "/authorizations", tag = "authorizations", request_body = AuthorizeRequest,
    params(IdemHeader),
    responses(
        (status = 201, description = "approved (or replayed)", body = Authorization),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 402, description = "declined: card_inactive, fraud_amount_ceiling, over_limit, insufficient_funds", body = ErrorBody),
        (status = 404, description = "unknown card or token", body = ErrorBody),
        (status = 409, description = "key reused, or reference already authorized", body = ErrorBody),
        (status = 422, description = "invalid data", body = ErrorBody),
        (status = 503, description = "the bank is unavailable; retry with the same key", body = ErrorBody)))]
pub async fn authorize(
    State(state): State<CardState>,
    key: IdemKey,
    ApiJson(req): ApiJson<AuthorizeRequest>,
) -> Result<Reply, CardError> {
    check_amount("amount", req.amount)?;
    check_text("merchant", &req.merchant, 64)?;
    check_text("payment_ref", &req.payment_ref, 128)?;
    if let Some(n) = &req.card_number {
        validate_number(n)?;
    }
    if let Some(t) = &req.token {
        check_text("token", t, 64)?;
    }
    let hash = request_hash(&req);
    const SCOPE: &str = "authorize";

    let (k, h, r) = (key.0.clone(), hash.clone(), req.clone());
    let card = match state
        .db
        .run(move |c| idem::begin(c, SCOPE, &k, &h, |c| precheck(c, &r)))
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(card) => card,
    };

    // Check cards: the bank debit first, under a key derived from the payment.
    let bank_outcome = match (&card.kind[..], &card.bank_account) {
        ("check", Some(account)) => {
            let posting = BankPosting {
                amount: req.amount,
                counterparty: SETTLEMENT_ACCOUNT,
                reference: &req.payment_ref,
            };
            let path = format!("/accounts/{account}/debit");
            let bank_key = derive_key("card", &req.payment_ref, "debit");
            match state
                .bank
                .post::<_, serde_json::Value>(&path, &bank_key, &[], &posting)
                .await
            {
                Ok(_) => Ok(()),
                Err(UpstreamError::Rejected { body, .. }) => Err(CardError::BankDeclined {
                    code: body.code,
                    message: body.error,
                }),
                Err(e) => return Err(CardError::Bank(e)),
            }
        }
        _ => Ok(()),
    };

    state
        .db
        .run(move |c| {
            idem::execute(c, SCOPE, &key.0, &hash, StatusCode::CREATED, |c| {
                bank_outcome?;
                // Re-read: the limit may have moved since the precheck.
                let card = read_card(c, &card.number)?;
                if card.kind == "credit" && card.credit_limit - card.used < req.amount {
                    return Err(CardError::OverLimit {
                        available: card.credit_limit - card.used,
                        amount: req.amount,
                    });
                }
                Ok(value(&record_approval(c, &card, &req)?))
            })
        })
        .await
}

/// Cancel an approved authorization: refund the linked account (check) or release the limit
/// (credit).
#[utoipa::path(post, path = "/authorizations/{id}/cancel", tag = "authorizations",
    params(("id" = String, Path, description = "authorization id"),
           IdemHeader),
    responses(
        (status = 200, description = "cancelled (or already cancelled)", body = Authorization),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "no such authorization", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 503, description = "the bank is unavailable; retry with the same key", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<CardState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
) -> Result<Reply, CardError> {
    let hash = request_hash(&id);
    const SCOPE: &str = "cancel";
    let (k, h, i) = (key.0.clone(), hash.clone(), id.clone());
    let (auth, number) = match state
        .db
        .run(move |c| idem::begin(c, SCOPE, &k, &h, |c| read_authorization(c, &i)))
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(found) => found,
    };
    if auth.status == "APPROVED" && auth.kind == "check" {
        let account: Option<String> = {
            let n = number.clone();
            state
                .db
                .run(move |c| {
                    c.query_row(
                        "SELECT bank_account FROM cards WHERE number = ?1",
                        [&n],
                        |r| r.get(0),
                    )
                    .map_err(CardError::from)
                })
                .await?
        };
        if let Some(account) = account {
            let posting = BankPosting {
                amount: auth.amount,
                counterparty: SETTLEMENT_ACCOUNT,
                reference: &auth.payment_ref,
            };
            let path = format!("/accounts/{account}/credit");
            let bank_key = derive_key("card", &auth.payment_ref, "refund");
            state
                .bank
                .post::<_, serde_json::Value>(&path, &bank_key, &[], &posting)
                .await
                .map_err(CardError::Bank)?;
        }
    }
    state
        .db
        .run(move |c| {
            idem::execute(c, SCOPE, &key.0, &hash, StatusCode::OK, |c| {
                let (current, number) = read_authorization(c, &id)?;
                if current.status == "APPROVED" {
                    if current.kind == "credit" {
                        c.execute(
                            "UPDATE cards SET used = used - ?2 WHERE number = ?1",
                            params![number, current.amount],
                        )?;
                    }
                    c.execute(
                        "UPDATE authorizations SET status = 'CANCELLED', cancelled_ms = ?2 WHERE id = ?1",
                        params![id, now_ms()],
                    )?;
                }
                Ok(value(&read_authorization(c, &id)?.0))
            })
        })
        .await
}

/// Issue a wallet token for a card.
#[utoipa::path(post, path = "/tokens", tag = "cards", request_body = TokenRequest,
    params(IdemHeader),
    responses(
        (status = 201, description = "token issued (or replayed)", body = TokenView),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 402, description = "card suspended", body = ErrorBody),
        (status = 404, description = "unknown card", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data", body = ErrorBody)))]
pub async fn issue_token(
    State(state): State<CardState>,
    key: IdemKey,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Reply, CardError> {
    validate_number(&req.card_number)?;
    let hash = request_hash(&req);
    state
        .db
        .run(move |c| {
            idem::execute(c, "token", &key.0, &hash, StatusCode::CREATED, |c| {
                let card = read_card(c, &req.card_number)?;
                if card.status != "active" {
                    return Err(CardError::CardInactive(card.last4()));
                }
                let token = new_id("tok");
                c.execute(
                    "INSERT INTO tokens (token, card_number, created_ms) VALUES (?1, ?2, ?3)",
                    params![token, card.number, now_ms()],
                )?;
                Ok(value(&TokenView {
                    token,
                    last4: card.last4(),
                    kind: card.kind,
                }))
            })
        })
        .await
}

/// All cards (numbers masked).
#[utoipa::path(get, path = "/cards", tag = "cards",
    responses((status = 200, description = "cards", body = [CardView])))]
pub async fn list_cards(State(state): State<CardState>) -> Result<Json<Vec<CardView>>, CardError> {
    state
        .db
        .run(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {CARD_COLUMNS} FROM cards ORDER BY number"))?;
            let cards = stmt
                .query_map([], card_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(cards.iter().map(Card::view).collect()))
        })
        .await
}

/// One card by number.
#[utoipa::path(get, path = "/cards/{number}", tag = "cards",
    params(("number" = String, Path, description = "16-digit card number")),
    responses((status = 200, description = "the card", body = CardView),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "unknown card", body = ErrorBody)))]
pub async fn get_card(
    State(state): State<CardState>,
    ApiPath(number): ApiPath<String>,
) -> Result<Json<CardView>, CardError> {
    state
        .db
        .run(move |c| read_card(c, &number).map(|card| Json(card.view())))
        .await
}

/// Authorizations, optionally the one of a payment reference.
#[utoipa::path(get, path = "/authorizations", tag = "authorizations", params(AuthorizationQuery),
    responses((status = 200, description = "authorizations", body = [Authorization]),
              (status = 400, description = "malformed query", body = ErrorBody)))]
pub async fn list_authorizations(
    State(state): State<CardState>,
    ApiQuery(q): ApiQuery<AuthorizationQuery>,
) -> Result<Json<Vec<Authorization>>, CardError> {
    state
        .db
        .run(move |c| {
            let sql = format!(
                "SELECT {AUTH_COLUMNS} FROM authorizations WHERE (?1 IS NULL OR payment_ref = ?1) ORDER BY created_ms, id"
            );
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt
                .query_map([&q.payment_ref], auth_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(rows))
        })
        .await
}

/// One authorization.
#[utoipa::path(get, path = "/authorizations/{id}", tag = "authorizations",
    params(("id" = String, Path, description = "authorization id")),
    responses((status = 200, description = "the authorization", body = Authorization),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such authorization", body = ErrorBody)))]
pub async fn get_authorization(
    State(state): State<CardState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Authorization>, CardError> {
    state
        .db
        .run(move |c| read_authorization(c, &id).map(|(a, _)| Json(a)))
        .await
}
