//! bank — accounts and a double-entry ledger.
//!
//! Every movement of money is a ledger transaction with two entries that sum to zero (a debit
//! of one account and a credit of another), so the sum of all balances never changes. Opening
//! balances come from the `bank-equity` account, the only one allowed below zero; no request may
//! post to or from it, so the customer and settlement accounts together always hold the same sum.
//! Every posting runs under an `Idempotency-Key`: the key, the entries and the stored response
//! commit in one SQLite transaction, so a retried posting is replayed, never booked twice.
//!
//! Not here: interest, overdrafts, currencies other than KRW (amounts are integer won).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::common::api::{
    ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, IdemHeader, IdemKey, Reply, RequestError,
    check_amount, check_text, error_response,
};
use crate::common::db::{Db, DbError, Migration};
use crate::common::{idem, new_id, now_ms, request_hash};

#[cfg(test)]
mod tests;

/// The account that funds opening balances (may be negative).
pub const EQUITY_ACCOUNT: &str = "bank-equity";

/// Schema and seed data, applied in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_ledger",
        sql: "CREATE TABLE accounts (
                  id TEXT PRIMARY KEY,
                  owner TEXT NOT NULL,
                  kind TEXT NOT NULL CHECK (kind IN ('customer', 'settlement', 'equity')),
                  balance INTEGER NOT NULL,
                  created_ms INTEGER NOT NULL
              );
              CREATE TABLE ledger_transactions (
                  id TEXT PRIMARY KEY,
                  kind TEXT NOT NULL,
                  reference TEXT NOT NULL,
                  created_ms INTEGER NOT NULL
              );
              CREATE INDEX ledger_transactions_reference ON ledger_transactions (reference);
              CREATE TABLE entries (
                  id INTEGER PRIMARY KEY AUTOINCREMENT,
                  txn_id TEXT NOT NULL REFERENCES ledger_transactions (id),
                  account_id TEXT NOT NULL REFERENCES accounts (id),
                  amount INTEGER NOT NULL,
                  balance_after INTEGER NOT NULL
              );
              CREATE INDEX entries_account ON entries (account_id);",
    },
    Migration {
        name: "0002_seed",
        sql: "INSERT INTO accounts (id, owner, kind, balance, created_ms) VALUES
                  ('bank-equity', 'the bank', 'equity', 0, 0),
                  ('acc-kim', 'Kim Minji', 'customer', 0, 0),
                  ('acc-lee', 'Lee Junho', 'customer', 0, 0),
                  ('acc-park', 'Park Seoyeon', 'customer', 0, 0),
                  ('acc-choi', 'Choi Yuna', 'customer', 0, 0),
                  ('acc-card-settlement', 'card issuer settlement', 'settlement', 0, 0);
              INSERT INTO ledger_transactions (id, kind, reference, created_ms)
                  VALUES ('txn-opening', 'opening', 'opening-balances', 0);
              INSERT INTO entries (txn_id, account_id, amount, balance_after) VALUES
                  ('txn-opening', 'acc-kim', 1000000000, 1000000000),
                  ('txn-opening', 'acc-lee', 500000000, 500000000),
                  ('txn-opening', 'acc-park', 20000, 20000),
                  ('txn-opening', 'acc-choi', 300000000, 300000000),
                  ('txn-opening', 'bank-equity', -1800020000, -1800020000);
              UPDATE accounts SET balance = 1000000000 WHERE id = 'acc-kim';
              UPDATE accounts SET balance = 500000000 WHERE id = 'acc-lee';
              UPDATE accounts SET balance = 20000 WHERE id = 'acc-park';
              UPDATE accounts SET balance = 300000000 WHERE id = 'acc-choi';
              UPDATE accounts SET balance = -1800020000 WHERE id = 'bank-equity';",
    },
];

/// What the bank refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The request was malformed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// No such account.
    #[error("account {0} does not exist; list accounts with GET /accounts")]
    NoAccount(String),
    /// The debited account would go below zero.
    #[error("insufficient funds in account {account}: balance {balance} won, needed {needed} won")]
    InsufficientFunds {
        /// The account.
        account: String,
        /// Its balance.
        balance: i64,
        /// The amount asked.
        needed: i64,
    },
    /// Both sides of a posting are the same account.
    #[error("a posting needs two different accounts, got {0} twice")]
    SameAccount(String),
    /// A posting names the equity account, which only funded the opening balances.
    #[error(
        "account {0} only funded the opening balances and cannot be posted to or from; use a customer or settlement account"
    )]
    EquityAccount(String),
    /// An idempotency key was reused for another request.
    #[error(transparent)]
    Conflict(#[from] idem::Conflict),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for BankError {
    fn from(e: rusqlite::Error) -> Self {
        BankError::Db(DbError::Sqlite(e))
    }
}

impl ApiError for BankError {
    fn status(&self) -> StatusCode {
        match self {
            BankError::Request(e) => e.status(),
            BankError::NoAccount(_) => StatusCode::NOT_FOUND,
            BankError::InsufficientFunds { .. }
            | BankError::SameAccount(_)
            | BankError::EquityAccount(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BankError::Conflict(_) => StatusCode::CONFLICT,
            BankError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> String {
        match self {
            BankError::Request(e) => return e.code(),
            BankError::NoAccount(_) => "no_account",
            BankError::InsufficientFunds { .. } => "insufficient_funds",
            BankError::SameAccount(_) => "same_account",
            BankError::EquityAccount(_) => "equity_account",
            BankError::Conflict(_) => "idempotency_conflict",
            BankError::Db(_) => "internal",
        }
        .to_string()
    }
}

impl IntoResponse for BankError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The bank's shared state.
#[derive(Debug, Clone)]
pub struct BankState {
    /// Its database.
    pub db: Db,
}

/// A bank account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// Account id, e.g. `acc-kim`.
    pub id: String,
    /// Holder's name.
    pub owner: String,
    /// `customer`, `settlement` or `equity`.
    pub kind: String,
    /// Balance in won.
    pub balance: i64,
}

/// One side of a ledger transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    /// The account.
    pub account: String,
    /// Signed amount: negative is a debit (money out), positive a credit (money in).
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// The account's balance after this entry.
    pub balance_after: i64,
}

/// A balanced ledger transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerTransaction {
    /// Transaction id.
    pub id: String,
    /// `opening`, `transfer`, `debit` or `credit`.
    pub kind: String,
    /// The caller's reference (e.g. the payment id).
    pub reference: String,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Its entries; they sum to zero.
    pub entries: Vec<Entry>,
}

/// Move money between two accounts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferRequest {
    /// Account debited.
    #[schema(min_length = 1, max_length = 64, example = "acc-kim")]
    pub from: String,
    /// Account credited.
    #[schema(min_length = 1, max_length = 64, example = "acc-lee")]
    pub to: String,
    /// Amount in won.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 12000)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// Caller's reference, e.g. a payment id.
    #[schema(min_length = 1, max_length = 128, example = "pay_example")]
    pub reference: String,
}

/// Debit or credit one account against a counterparty account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PostingRequest {
    /// Amount in won.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64, example = 12000)]
    #[serde(deserialize_with = "crate::common::api::int::deserialize")]
    pub amount: i64,
    /// The other side of the posting (e.g. `acc-card-settlement`).
    #[schema(min_length = 1, max_length = 64, example = "acc-card-settlement")]
    pub counterparty: String,
    /// Caller's reference, e.g. a payment id.
    #[schema(min_length = 1, max_length = 128, example = "pay_example")]
    pub reference: String,
}

/// Filter for listing transactions.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionQuery {
    /// Only transactions with this reference.
    pub reference: Option<String>,
}

/// Totals that show the ledger balances.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerSummary {
    /// Number of accounts.
    pub accounts: i64,
    /// Sum of every account balance including equity: always 0.
    pub total_balance: i64,
    /// Sum of every entry ever booked: always 0.
    pub entries_sum: i64,
    /// Sum of customer and settlement balances: constant over time.
    pub customer_and_settlement_total: i64,
    /// Number of ledger transactions.
    pub transactions: i64,
}

/// The bank's routes (without `/healthz` and `/openapi.json`, which `with_common` adds).
pub fn routes(state: BankState) -> Router {
    Router::new()
        .route("/accounts", get(list_accounts))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/statement", get(statement))
        .route("/accounts/{id}/debit", post(debit))
        .route("/accounts/{id}/credit", post(credit))
        .route("/transfers", post(transfer))
        .route("/transactions", get(list_transactions))
        .route("/ledger/summary", get(summary))
        .with_state(state)
}

/// The whole bank service: routes, `/healthz`, `/openapi.json`, logging.
pub fn app(state: BankState) -> Router {
    crate::common::serve::with_common("bank", routes(state), ApiDoc::openapi())
}

/// The bank's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bank",
        description = "Accounts and a double-entry ledger; postings idempotent by key."
    ),
    paths(
        list_accounts,
        get_account,
        statement,
        debit,
        credit,
        transfer,
        list_transactions,
        summary,
        crate::common::serve::healthz
    ),
    components(schemas(
        Account,
        Entry,
        LedgerTransaction,
        TransferRequest,
        PostingRequest,
        LedgerSummary,
        ErrorBody
    ))
)]
pub struct ApiDoc;

fn read_account(conn: &Connection, id: &str) -> Result<Account, BankError> {
    conn.query_row(
        "SELECT id, owner, kind, balance FROM accounts WHERE id = ?1",
        [id],
        |r| {
            Ok(Account {
                id: r.get(0)?,
                owner: r.get(1)?,
                kind: r.get(2)?,
                balance: r.get(3)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| BankError::NoAccount(id.to_string()))
}

fn read_transaction(conn: &Connection, id: &str) -> Result<LedgerTransaction, BankError> {
    let (kind, reference, created_ms) = conn.query_row(
        "SELECT kind, reference, created_ms FROM ledger_transactions WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut stmt = conn.prepare_cached(
        "SELECT account_id, amount, balance_after FROM entries WHERE txn_id = ?1 ORDER BY id",
    )?;
    let entries = stmt
        .query_map([id], |r| {
            Ok(Entry {
                account: r.get(0)?,
                amount: r.get(1)?,
                balance_after: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LedgerTransaction {
        id: id.to_string(),
        kind,
        reference,
        created_ms,
        entries,
    })
}

/// Books `amount` from `from` to `to` as one balanced transaction.
fn post_transfer(
    conn: &Connection,
    kind: &str,
    from: &str,
    to: &str,
    amount: i64,
    reference: &str,
) -> Result<LedgerTransaction, BankError> {
    if from == to {
        return Err(BankError::SameAccount(from.to_string()));
    }
    let source = read_account(conn, from)?;
    let target = read_account(conn, to)?;
    // Equity may go below zero: a posting from it would make money out of nothing.
    if let Some(equity) = [&source, &target].into_iter().find(|a| a.kind == "equity") {
        return Err(BankError::EquityAccount(equity.id.clone()));
    }
    if source.balance < amount {
        return Err(BankError::InsufficientFunds {
            account: source.id,
            balance: source.balance,
            needed: amount,
        });
    }
    let id = new_id("txn");
    conn.execute(
        "INSERT INTO ledger_transactions (id, kind, reference, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![id, kind, reference, now_ms()],
    )?;
    for (account, delta, balance) in [
        (&source.id, -amount, source.balance - amount),
        (&target.id, amount, target.balance + amount),
    ] {
        conn.execute(
            "UPDATE accounts SET balance = ?2 WHERE id = ?1",
            params![account, balance],
        )?;
        conn.execute(
            "INSERT INTO entries (txn_id, account_id, amount, balance_after) VALUES (?1, ?2, ?3, ?4)",
            params![id, account, delta, balance],
        )?;
    }
    read_transaction(conn, &id)
}

/// One balanced posting to book under an idempotency key.
struct Posting {
    scope: &'static str,
    kind: &'static str,
    from: String,
    to: String,
    amount: i64,
    reference: String,
}

async fn posting(
    state: &BankState,
    key: IdemKey,
    hash: String,
    p: Posting,
) -> Result<Reply, BankError> {
    state
        .db
        .run(move |conn| {
            idem::execute(conn, p.scope, &key.0, &hash, StatusCode::CREATED, |c| {
                let txn = post_transfer(c, p.kind, &p.from, &p.to, p.amount, &p.reference)?;
                Ok(serde_json::to_value(txn).unwrap_or_default())
            })
        })
        .await
}

fn validate_posting(amount: i64, other: &str, reference: &str) -> Result<(), BankError> {
    check_amount("amount", amount)?;
    check_text("account", other, 64)?;
    check_text("reference", reference, 128)?;
    Ok(())
}

/// Move money from one account to another.
#[utoipa::path(post, path = "/transfers", tag = "ledger", request_body = TransferRequest,
    params(IdemHeader),
    responses(
        (status = 201, description = "booked (or replayed)", body = LedgerTransaction),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "no such account", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data or insufficient funds", body = ErrorBody)))]
pub async fn transfer(
    State(state): State<BankState>,
    key: IdemKey,
    ApiJson(req): ApiJson<TransferRequest>,
) -> Result<Reply, BankError> {
    validate_posting(req.amount, &req.from, &req.reference)?;
    check_text("to", &req.to, 64)?;
    let hash = request_hash(&req);
    posting(
        &state,
        key,
        hash,
        Posting {
            scope: "transfer",
            kind: "transfer",
            from: req.from,
            to: req.to,
            amount: req.amount,
            reference: req.reference,
        },
    )
    .await
}

/// Take money out of an account (into the counterparty).
#[utoipa::path(post, path = "/accounts/{id}/debit", tag = "ledger", request_body = PostingRequest,
    params(("id" = String, Path, description = "account debited"),
           IdemHeader),
    responses(
        (status = 201, description = "booked (or replayed)", body = LedgerTransaction),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "no such account", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data or insufficient funds", body = ErrorBody)))]
pub async fn debit(
    State(state): State<BankState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
    ApiJson(req): ApiJson<PostingRequest>,
) -> Result<Reply, BankError> {
    validate_posting(req.amount, &req.counterparty, &req.reference)?;
    let hash = request_hash(&(&id, &req));
    posting(
        &state,
        key,
        hash,
        Posting {
            scope: "debit",
            kind: "debit",
            from: id,
            to: req.counterparty,
            amount: req.amount,
            reference: req.reference,
        },
    )
    .await
}

/// Put money into an account (out of the counterparty).
#[utoipa::path(post, path = "/accounts/{id}/credit", tag = "ledger", request_body = PostingRequest,
    params(("id" = String, Path, description = "account credited"),
           IdemHeader),
    responses(
        (status = 201, description = "booked (or replayed)", body = LedgerTransaction),
        (status = 400, description = "malformed request", body = ErrorBody),
        (status = 404, description = "no such account", body = ErrorBody),
        (status = 409, description = "key reused for another request", body = ErrorBody),
        (status = 422, description = "invalid data or insufficient funds", body = ErrorBody)))]
pub async fn credit(
    State(state): State<BankState>,
    ApiPath(id): ApiPath<String>,
    key: IdemKey,
    ApiJson(req): ApiJson<PostingRequest>,
) -> Result<Reply, BankError> {
    validate_posting(req.amount, &req.counterparty, &req.reference)?;
    let hash = request_hash(&(&id, &req));
    posting(
        &state,
        key,
        hash,
        Posting {
            scope: "credit",
            kind: "credit",
            from: req.counterparty,
            to: id,
            amount: req.amount,
            reference: req.reference,
        },
    )
    .await
}

/// All accounts with their balances.
#[utoipa::path(get, path = "/accounts", tag = "accounts",
    responses((status = 200, description = "accounts", body = [Account])))]
pub async fn list_accounts(
    State(state): State<BankState>,
) -> Result<Json<Vec<Account>>, BankError> {
    state
        .db
        .run(|conn| {
            let mut stmt =
                conn.prepare("SELECT id, owner, kind, balance FROM accounts ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Account {
                        id: r.get(0)?,
                        owner: r.get(1)?,
                        kind: r.get(2)?,
                        balance: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(rows))
        })
        .await
}

/// One account and its balance.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, description = "the account", body = Account),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such account", body = ErrorBody)))]
pub async fn get_account(
    State(state): State<BankState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Account>, BankError> {
    state
        .db
        .run(move |conn| read_account(conn, &id).map(Json))
        .await
}

/// An account's entries, oldest first.
#[utoipa::path(get, path = "/accounts/{id}/statement", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, description = "the account's transactions", body = [LedgerTransaction]),
              (status = 400, description = "malformed path", body = ErrorBody),
              (status = 404, description = "no such account", body = ErrorBody)))]
pub async fn statement(
    State(state): State<BankState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<LedgerTransaction>>, BankError> {
    state
        .db
        .run(move |conn| {
            read_account(conn, &id)?;
            let mut stmt = conn
                .prepare("SELECT DISTINCT txn_id FROM entries WHERE account_id = ?1 ORDER BY id")?;
            let ids = stmt
                .query_map([&id], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let txns = ids
                .iter()
                .map(|t| read_transaction(conn, t))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(txns))
        })
        .await
}

/// Ledger transactions, optionally only those with one reference.
#[utoipa::path(get, path = "/transactions", tag = "ledger", params(TransactionQuery),
    responses((status = 200, description = "transactions", body = [LedgerTransaction]),
              (status = 400, description = "malformed query", body = ErrorBody)))]
pub async fn list_transactions(
    State(state): State<BankState>,
    ApiQuery(q): ApiQuery<TransactionQuery>,
) -> Result<Json<Vec<LedgerTransaction>>, BankError> {
    state
        .db
        .run(move |conn| {
            let ids = match &q.reference {
                Some(reference) => {
                    let mut stmt = conn.prepare(
                        "SELECT id FROM ledger_transactions WHERE reference = ?1 ORDER BY created_ms, id",
                    )?;
                    stmt.query_map([reference], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?
                }
                None => {
                    let mut stmt =
                        conn.prepare("SELECT id FROM ledger_transactions ORDER BY created_ms, id")?;
                    stmt.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?
                }
            };
            let txns = ids
                .iter()
                .map(|t| read_transaction(conn, t))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Json(txns))
        })
        .await
}

/// Ledger totals: balances and entries always sum to zero.
#[utoipa::path(get, path = "/ledger/summary", tag = "ledger",
    responses((status = 200, description = "totals", body = LedgerSummary)))]
pub async fn summary(State(state): State<BankState>) -> Result<Json<LedgerSummary>, BankError> {
    state
        .db
        .run(|conn| {
            let (accounts, total_balance, customer_and_settlement_total) = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(balance), 0),
                        COALESCE(SUM(CASE WHEN kind != 'equity' THEN balance ELSE 0 END), 0)
                 FROM accounts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let entries_sum =
                conn.query_row("SELECT COALESCE(SUM(amount), 0) FROM entries", [], |r| {
                    r.get(0)
                })?;
            let transactions =
                conn.query_row("SELECT COUNT(*) FROM ledger_transactions", [], |r| r.get(0))?;
            Ok(Json(LedgerSummary {
                accounts,
                total_balance,
                entries_sum,
                customer_and_settlement_total,
                transactions,
            }))
        })
        .await
}
