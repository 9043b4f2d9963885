//! appcard — the app-card wallet: users with a PIN, their registered cards (as tokens issued by
//! the card issuer — the wallet never stores a card number), payment confirmation with the PIN,
//! and authorization at the issuer with the token.
//!
//! A wrong PIN is refused here, before the issuer is asked, and stored under the caller's key
//! like any final outcome. The call to the issuer uses the key `appcard:{payment_ref}:authorize`
//! so a retried confirmation reaches the same authorization.
//!
//! Not here: PIN lockout after repeated failures (the traffic generator sends wrong PINs on
//! purpose), PIN change, user deletion. PINs are kept as a SHA-256 of `user:pin` — enough for a
//! demo, not a production PIN store.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::common::api::value;
use crate::common::api::{
    ApiError, ApiJson, ApiPath, ErrorBody, IdemHeader, IdemKey, Reply, RequestError, check_amount,
    check_text, error_response,
};
use crate::common::client::{Upstream, UpstreamError};
use crate::common::db::{Db, DbError, Migration};
use crate::common::idem::{self, Begin};
use crate::common::{derive_key, new_id, now_ms, request_hash, sha256_hex};

#[cfg(test)]
mod tests;

/// Schema and seed data, applied in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_wallet",
        sql: "CREATE TABLE users (
                  id TEXT PRIMARY KEY,
                  name TEXT NOT NULL,
                  pin_hash TEXT NOT NULL,
                  created_ms INTEGER NOT NULL
              );
              CREATE TABLE cards (
                  id TEXT PRIMARY KEY,
                  user_id TEXT NOT NULL REFERENCES users (id),
                  token TEXT NOT NULL,
                  last4 TEXT NOT NULL,
                  kind TEXT NOT NULL,
                  created_ms INTEGER NOT NULL
              );
              CREATE TABLE payments (
                  payment_ref TEXT PRIMARY KEY,
                  user_id TEXT NOT NULL,
                  card_id TEXT NOT NULL,
                  amount INTEGER NOT NULL,
                  merchant TEXT NOT NULL,
                  status TEXT NOT NULL CHECK (status IN ('APPROVED', 'CANCELLED')),
                  authorization_id TEXT NOT NULL,
                  approval_no TEXT NOT NULL,
                  created_ms INTEGER NOT NULL
              );",
    },
    Migration {
        name: "0002_seed",
        sql: "INSERT INTO users (id, name, pin_hash, created_ms) VALUES
                  ('u-kim', 'Kim Minji', '6ca711e4272e618e9caf0d4b9ddc57434a7bed332bf0e320ca37e8115736bb32', 0),
                  ('u-lee', 'Lee Junho', 'e2cc50169e04a1ebac504ec57d30ab8c471404f8bec63cadf8f9ac2aa18f378e', 0),
                  ('u-park', 'Park Seoyeon', 'dc4ec10476ec3925d368d8c348da75c8c3f4f280807b1518685a714c128322b7', 0),
                  ('u-choi', 'Choi Yuna', '18be4c43b87fc8023287795d12facc23925d89d729c1c2449a43ec0b043bdc3b', 0);
              INSERT INTO cards (id, user_id, token, last4, kind, created_ms) VALUES
                  ('c-kim-1', 'u-kim', 'tok_kim_1', '0001', 'check', 0),
                  ('c-lee-2', 'u-lee', 'tok_lee_2', '0002', 'credit', 0),
                  ('c-park-3', 'u-park', 'tok_park_3', '0003', 'check', 0),
                  ('c-choi-4', 'u-choi', 'tok_choi_4', '0004', 'credit', 0);",
    },
];

/// What the wallet refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum AppcardError {
    /// The request was malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No such user.
    #[error("user {0} does not exist")]
    NoUser(String),
    /// No such card for this user.
    #[error("card {0} is not registered to this user; list cards with GET /users/{{id}}/cards")]
    NoCard(String),
    /// No such payment.
    #[error("payment {0} does not exist")]
    NoPayment(String),
    /// The PIN does not match.
    #[error("wrong PIN; ask the customer to enter the PIN again")]
    WrongPin,
    /// The issuer declined or refused.
    #[error("the card issuer refused: {message}")]
    Declined {
        /// The issuer's status.
        status: u16,
        /// The issuer's code.
        code: String,
        /// The issuer's message.
        message: String,
    },
    /// The issuer could not be reached.
    #[error(transparent)]
    Card(UpstreamError),
    /// An idempotency key was reused for another request.
    #[error(transparent)]
    Conflict(#[from] idem::Conflict),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for AppcardError {
    fn from(e: rusqlite::Error) -> Self {
        AppcardError::Db(DbError::Sqlite(e))
    }
}

impl ApiError for AppcardError {
    fn status(&self) -> StatusCode {
        match self {
            AppcardError::Request(e) => e.status(),
            AppcardError::NoUser(_) | AppcardError::NoCard(_) | AppcardError::NoPayment(_) => {
                StatusCode::NOT_FOUND
            }
            AppcardError::WrongPin => StatusCode::FORBIDDEN,
            AppcardError::Declined { status, .. } => match *status {
                404 => StatusCode::NOT_FOUND,
                409 => StatusCode::CONFLICT,
                422 | 400 => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::PAYMENT_REQUIRED,
            },
            AppcardError::Conflict(_) => StatusCode::CONFLICT,
            AppcardError::Card(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppcardError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> String {
        match self {
            AppcardError::Request(e) => return e.code(),
            AppcardError::Declined { code, .. } => return code.clone(),
            AppcardError::NoUser(_) => "no_user",
            AppcardError::NoCard(_) => "no_card",
            AppcardError::NoPayment(_) => "no_payment",
            AppcardError::WrongPin => "wrong_pin",
            AppcardError::Conflict(_) => "idempotency_conflict",
            AppcardError::Card(_) => "card_unavailable",
            AppcardError::Db(_) => "internal",
        }
        .to_string()
    }
}

impl IntoResponse for AppcardError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

fn upstream_refusal(e: UpstreamError) -> AppcardError {
    match e {
        UpstreamError::Rejected { status, body, .. } => AppcardError::Declined {
            status,
            code: body.code,
            message: body.error,
        },
        other => AppcardError::Card(other),
    }
}

/// The wallet's shared state.
#[derive(Debug, Clone)]
pub struct AppcardState {
    /// Its database.
    pub db: Db,
    /// The card issuer.
    pub card: Upstream,
}

/// A wallet user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// User id.
    pub id: String,
    /// Name.
    pub name: String,
}

/// Sign up a user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewUser {
    /// Name.
    #[schema(min_length = 1, max_length = 64, example = "Jung Hoseok")]
    pub name: String,
    /// 4 to 6 digits.
    #[schema(pattern = "^[0-9]{4,6}$", example = "1234")]
    pub pin: String,
}

/// A registered card (token only).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WalletCard {
    /// Card id in the wallet.
    pub id: String,
    /// Last four digits.
    pub last4: String,
    /// `credit` or `check`.
    pub kind: String,
}

/// Register a card: the number goes to the issuer, only the token is kept.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterCard {
    /// The 16-digit card number.
    #[schema(pattern = "^[0-9]{16}$", example = "9410000000000001")]
    pub card_number: String,
}

/// Confirm a payment with the PIN.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfirmPayment {
    /// The gateway's payment id.
    #[schema(min_length = 1, max_length = 128, example = "pay_example")]
    pub payment_ref: String,
    /// The paying user.
    #[schema(min_length = 1, max_length = 64, example = "u-kim")]
    pub user_id: String,
    /// The user's card in the wallet.
    #[schema(min_length = 1, max_length = 64, example = "c-kim-1")]
    pub card_id: String,
    /// The user's PIN.
    #[schema(pattern = "^[0-9]{4,6}$", example = "1234")]
    pub pin: String,
    /// Amount in won.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 12000)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// Merchant id.
    #[schema(min_length = 1, max_length = 64, example = "tableshop")]
    pub merchant: String,
}

/// A confirmed app-card payment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WalletPayment {
    /// The gateway's payment id.
    pub payment_ref: String,
    /// The paying user.
    pub user_id: String,
    /// The card used.
    pub card_id: String,
    /// Amount in won.
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// Merchant id.
    pub merchant: String,
    /// `APPROVED` or `CANCELLED`.
    pub status: String,
    /// The issuer's authorization id.
    pub authorization_id: String,
    /// The issuer's approval number.
    pub approval_no: String,
}

/// The wallet's routes.
pub fn routes(state: AppcardState) -> Router {
    Router::new()
        .route("/users", post(create_user))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/cards", get(list_cards).post(register_card))
        .route("/payments", post(confirm).get(list_payments))
        .route("/payments/{payment_ref}", get(get_payment))
        .route("/payments/{payment_ref}/cancel", post(cancel))
        .with_state(state)
}

/// The whole wallet service.
pub fn app(state: AppcardState) -> Router {
    crate::common::serve::with_common("appcard", routes(state), ApiDoc::openapi())
}

/// The wallet's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "appcard",
        description = "App-card wallet: users, card tokens, PIN-confirmed payments."
    ),
    paths(
        create_user,
        get_user,
        list_cards,
        register_card,
        confirm,
        list_payments,
        get_payment,
        cancel,
        crate::common::serve::healthz
    ),
    components(schemas(
        User,
        NewUser,
        WalletCard,
        RegisterCard,
        ConfirmPayment,
        WalletPayment,
        ErrorBody
    ))
)]
pub struct ApiDoc;

fn pin_hash(user: &str, pin: &str) -> String {
    sha256_hex(format!("{user}:{pin}").as_bytes())
}

fn check_pin_format(pin: &str) -> Result<(), RequestError> {
    if !(4..=6).contains(&pin.len()) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::InvalidData(
            "pin must be 4 to 6 digits".into(),
        ));
    }
    Ok(())
}

fn read_user(c: &Connection, id: &str) -> Result<(User, String), AppcardError> {
    c.query_row(
        "SELECT id, name, pin_hash FROM users WHERE id = ?1",
        [id],
        |r| {
            Ok((
                User {
                    id: r.get(0)?,
                    name: r.get(1)?,
                },
                r.get(2)?,
            ))
        },
    )
    .optional()?
    .ok_or_else(|| AppcardError::NoUser(id.to_string()))
}

fn read_cards(c: &Connection, user: &str) -> Result<Vec<WalletCard>, AppcardError> {
    let mut stmt =
        c.prepare("SELECT id, last4, kind FROM cards WHERE user_id = ?1 ORDER BY created_ms, id")?;
    let cards = stmt
        .query_map([user], |r| {
            Ok(WalletCard {
                id: r.get(0)?,
                last4: r.get(1)?,
                kind: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cards)
}

const PAYMENT_COLUMNS: &str =
    "payment_ref, user_id, card_id, amount, merchant, status, authorization_id, approval_no";

fn payment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WalletPayment> {
    Ok(WalletPayment {
        payment_ref: r.get(0)?,
        user_id: r.get(1)?,
        card_id: r.get(2)?,
        amount: r.get(3)?,
        merchant: r.get(4)?,
        status: r.get(5)?,
        authorization_id: r.get(6)?,
        approval_no: r.get(7)?,
    })
}

fn read_payment(c: &Connection, payment_ref: &str) -> Result<WalletPayment, AppcardError> {
    c.query_row(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_ref = ?1"),
        [payment_ref],
        payment_row,
    )
    .optional()?
    .ok_or_else(|| AppcardError::NoPayment(payment_ref.to_string()))
}

/// Sign up a user with a PIN.
#[utoipa::path(post, path = "/users", tag = "users", request_body = NewUser,
    params(IdemHeader),
    responses(
        (status = 201, description = "created (or replayed)", body = User),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data", body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppcardState>,
    key: IdemKey,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<Reply, AppcardError> {
    check_text("name", &req.name, 64)?;
    check_pin_format(&req.pin)?;
    let hash = request_hash(&req);
    state
        .db
        .run(move |c| {
            idem::execute(c, "user", &key.0, &hash, StatusCode::CREATED, |c| {
                let id = new_id("u");
                c.execute(
                    "INSERT INTO users (id, name, pin_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![id, req.name, pin_hash(&id, &req.pin), now_ms()],
                )?;
                Ok(value(&User { id, name: req.name }))
            })
        })
        .await
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, description = "the user", body = User),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such user", body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppcardState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<User>, AppcardError> {
    state
        .db
        .run(move |c| read_user(c, &id).map(|(u, _)| Json(u)))
        .await
}

/// A user's registered cards.
#[utoipa::path(get, path = "/users/{id}/cards", tag = "users",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, description = "cards", body = [WalletCard]),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such user", body = ErrorBody)))]
pub async fn list_cards(
    State(state): State<AppcardState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<WalletCard>>, AppcardError> {
    state
        .db
        .run(move |c| {
            read_user(c, &id)?;
            read_cards(c, &id).map(Json)
        })
        .await
}

/// Register a card: the issuer issues a token, the wallet keeps only the token.
#[utoipa::path(post, path = "/users/{id}/cards", tag = "users", request_body = RegisterCard,
    params(("id" = String, Path, description = "user id"),
           IdemHeader),
    responses(
        (status = 201, description = "registered (or replayed)", body = WalletCard),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 402, description = "the issuer refused the card", body = ErrorBody),
        (status = 404, description = "no such user or card", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data", body = ErrorBody),
        (status = 503, description = "the issuer is unavailable; retry with the same key", body = ErrorBody)))]
pub async fn register_card(
    State(state): State<AppcardState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
    ApiJson(req): ApiJson<RegisterCard>,
) -> Result<Reply, AppcardError> {
    if req.card_number.len() != 16 || !req.card_number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            RequestError::InvalidData("card_number must be exactly 16 digits".into()).into(),
        );
    }
    let hash = request_hash(&(&id, &req));
    const SCOPE: &str = "register";
    let (k, h, i) = (key.0.clone(), hash.clone(), id.clone());
    if let Begin::Done(reply) = state
        .db
        .run(move |c| idem::begin(c, SCOPE, &k, &h, |c| read_user(c, &i).map(|_| ())))
        .await?
    {
        return Ok(reply);
    }
    #[derive(Deserialize)]
    struct Token {
        token: String,
        last4: String,
        kind: String,
    }
    let issued = state
        .card
        .post::<_, Token>(
            "/tokens",
            &format!(
                "appcard:register:{}",
                sha256_hex(format!("{id}:{}", key.0).as_bytes())
            ),
            &[],
            &serde_json::json!({"card_number": req.card_number}),
        )
        .await;
    let issued = match issued {
        Ok(t) => Ok(t),
        Err(e @ UpstreamError::Rejected { .. }) => Err(upstream_refusal(e)),
        Err(e) => return Err(AppcardError::Card(e)),
    };
    state
        .db
        .run(move |c| {
            idem::execute(c, SCOPE, &key.0, &hash, StatusCode::CREATED, |c| {
                let token = issued?;
                let card_id = new_id("c");
                c.execute(
                    "INSERT INTO cards (id, user_id, token, last4, kind, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![card_id, id, token.token, token.last4, token.kind, now_ms()],
                )?;
                Ok(value(&WalletCard {
                    id: card_id,
                    last4: token.last4,
                    kind: token.kind,
                }))
            })
        })
        .await
}

#[derive(Deserialize)]
struct IssuerAuthorization {
    id: String,
    approval_no: String,
}

/// Confirm a payment with the user's PIN and authorize it at the issuer with the card's token.
#[utoipa::path(post, path = "/payments", tag = "payments", request_body = ConfirmPayment,
    params(IdemHeader),
    responses(
        (status = 201, description = "approved (or replayed)", body = WalletPayment),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 402, description = "declined by the issuer (code says why)", body = ErrorBody),
        (status = 403, description = "wrong PIN", body = ErrorBody),
        (status = 404, description = "no such user or card", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data", body = ErrorBody),
        (status = 503, description = "the issuer is unavailable; retry with the same key", body = ErrorBody)))]
pub async fn confirm(
    State(state): State<AppcardState>,
    key: IdemKey,
    ApiJson(req): ApiJson<ConfirmPayment>,
) -> Result<Reply, AppcardError> {
    check_text("payment_ref", &req.payment_ref, 128)?;
    check_text("user_id", &req.user_id, 64)?;
    check_text("card_id", &req.card_id, 64)?;
    check_text("merchant", &req.merchant, 64)?;
    check_pin_format(&req.pin)?;
    check_amount("amount", req.amount)?;
    let hash = request_hash(&req);
    const SCOPE: &str = "confirm";
    let (k, h, r) = (key.0.clone(), hash.clone(), req.clone());
    let token = match state
        .db
        .run(move |c| {
            idem::begin(c, SCOPE, &k, &h, |c| {
                let (_, stored) = read_user(c, &r.user_id)?;
                let token: Option<String> = c
                    .query_row(
                        "SELECT token FROM cards WHERE id = ?1 AND user_id = ?2",
                        [&r.card_id, &r.user_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                let token = token.ok_or_else(|| AppcardError::NoCard(r.card_id.clone()))?;
                if stored != pin_hash(&r.user_id, &r.pin) {
                    return Err(AppcardError::WrongPin);
                }
                Ok(token)
            })
        })
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(token) => token,
    };
    let body = serde_json::json!({
        "token": token,
        "amount": req.amount,
        "merchant": req.merchant,
        "payment_ref": req.payment_ref,
    });
    let outcome = match state
        .card
        .post::<_, IssuerAuthorization>(
            "/authorizations",
            &derive_key("appcard", &req.payment_ref, "authorize"),
            &[],
            &body,
        )
        .await
    {
        Ok(a) => Ok(a),
        Err(e @ UpstreamError::Rejected { .. }) => Err(upstream_refusal(e)),
        Err(e) => return Err(AppcardError::Card(e)),
    };
    state
        .db
        .run(move |c| {
            idem::execute(c, SCOPE, &key.0, &hash, StatusCode::CREATED, |c| {
                let auth = outcome?;
                if let Ok(existing) = read_payment(c, &req.payment_ref) {
                    return Ok(value(&existing));
                }
                c.execute(
                    "INSERT INTO payments (payment_ref, user_id, card_id, amount, merchant, status, authorization_id, approval_no, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'APPROVED', ?6, ?7, ?8)",
                    params![req.payment_ref, req.user_id, req.card_id, req.amount, req.merchant, auth.id, auth.approval_no, now_ms()],
                )?;
                Ok(value(&read_payment(c, &req.payment_ref)?))
            })
        })
        .await
}

/// Cancel an approved app-card payment (the issuer refunds or releases limit).
#[utoipa::path(post, path = "/payments/{payment_ref}/cancel", tag = "payments",
    params(("payment_ref" = String, Path, description = "the gateway's payment id"),
           IdemHeader),
    responses(
        (status = 200, description = "cancelled (or already cancelled)", body = WalletPayment),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "no such payment", body = ErrorBody),
        (status = 409, description = "key reused, or the issuer refused", body = ErrorBody),
        (status = 503, description = "the issuer is unavailable; retry with the same key", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppcardState>,
    ApiPath(payment_ref): ApiPath<String>,
    key: IdemKey,
) -> Result<Reply, AppcardError> {
    let hash = request_hash(&payment_ref);
    const SCOPE: &str = "cancel";
    let (k, h, p) = (key.0.clone(), hash.clone(), payment_ref.clone());
    let payment = match state
        .db
        .run(move |c| idem::begin(c, SCOPE, &k, &h, |c| read_payment(c, &p)))
        .await?
    {
        Begin::Done(reply) => return Ok(reply),
        Begin::Proceed(p) => p,
    };
    let outcome = if payment.status == "APPROVED" {
        match state
            .card
            .post::<_, serde_json::Value>(
                &format!("/authorizations/{}/cancel", payment.authorization_id),
                &derive_key("appcard", &payment_ref, "cancel"),
                &[],
                &serde_json::json!({}),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(UpstreamError::Rejected { body, .. }) => Err(AppcardError::Declined {
                status: 409,
                code: body.code,
                message: body.error,
            }),
            Err(e) => return Err(AppcardError::Card(e)),
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
                    "UPDATE payments SET status = 'CANCELLED' WHERE payment_ref = ?1",
                    [&payment_ref],
                )?;
                Ok(value(&read_payment(c, &payment_ref)?))
            })
        })
        .await
}

/// All app-card payments.
#[utoipa::path(get, path = "/payments", tag = "payments",
    responses((status = 200, description = "payments", body = [WalletPayment])))]
pub async fn list_payments(
    State(state): State<AppcardState>,
) -> Result<Json<Vec<WalletPayment>>, AppcardError> {
    state
        .db
        .run(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments ORDER BY created_ms, payment_ref"
            ))?;
            let rows = stmt
                .query_map([], payment_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(rows))
        })
        .await
}

/// One app-card payment.
#[utoipa::path(get, path = "/payments/{payment_ref}", tag = "payments",
    params(("payment_ref" = String, Path, description = "the gateway's payment id")),
    responses((status = 200, description = "the payment", body = WalletPayment),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such payment", body = ErrorBody)))]
pub async fn get_payment(
    State(state): State<AppcardState>,
    ApiPath(payment_ref): ApiPath<String>,
) -> Result<Json<WalletPayment>, AppcardError> {
    state
        .db
        .run(move |c| read_payment(c, &payment_ref).map(Json))
        .await
}
