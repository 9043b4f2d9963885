//! Idempotent effects: a mutating request runs under its `Idempotency-Key` inside one SQLite
//! transaction that also stores the response, so a retry (by a client, by the mesh, after a
//! crash) replays the stored response instead of repeating the effect.
//!
//! Final outcomes (2xx and 4xx except 409) are stored; server-side failures (5xx: an upstream that could
//! not be reached, a database fault) are not, so a retry with the same key tries again. The
//! same key with a different request body is refused with [`Conflict`] (409). Keys are scoped per
//! operation, so `bank.transfer` and `bank.debit` never share a key space.

use axum::http::StatusCode;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::api::{ApiError, Reply};

/// The same idempotency key was used earlier with a different request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "idempotency key {key:?} was already used for a different request to {scope}; use a new key for a new request"
)]
pub struct Conflict {
    /// The operation.
    pub scope: String,
    /// The key.
    pub key: String,
}

/// Whether an error is a final outcome to store under its key: a 4xx other than 409. A conflict
/// depends on what else is in flight (another key, another body), so it is answered but not
/// stored — storing it would poison the key for the request that legitimately owns it.
pub fn is_final<E: ApiError>(err: &E) -> bool {
    let status = err.status();
    status.is_client_error() && status != StatusCode::CONFLICT
}

/// Looks up a stored response; `Err(Conflict)` if the key was used with another request.
pub fn lookup(
    conn: &Connection,
    scope: &str,
    key: &str,
    request_hash: &str,
) -> Result<Result<Option<Reply>, Conflict>, rusqlite::Error> {
    let row: Option<(String, u16, String)> = conn
        .query_row(
            "SELECT request_hash, status, body FROM idempotency WHERE scope = ?1 AND key = ?2",
            [scope, key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((hash, status, body)) = row else {
        return Ok(Ok(None));
    };
    if hash != request_hash {
        return Ok(Err(Conflict {
            scope: scope.to_string(),
            key: key.to_string(),
        }));
    }
    Ok(Ok(Some(Reply {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        replayed: true,
    })))
}

/// Stores a response under a key (in the caller's transaction).
pub fn store(
    conn: &Connection,
    scope: &str,
    key: &str,
    request_hash: &str,
    reply: &Reply,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO idempotency (scope, key, request_hash, status, body, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            scope,
            key,
            request_hash,
            reply.status.as_u16(),
            reply.body.to_string(),
            super::now_ms()
        ],
    )?;
    Ok(())
}

/// Runs `effect` exactly once per (scope, key): replays a stored reply, or runs the effect in a
/// savepoint, stores its final outcome and commits both together.
///
/// An `Err` from `effect` with a 4xx status is a final outcome: its writes are rolled back and
/// the error is stored and returned as a reply. A 5xx error is returned as `Err` and nothing is
/// stored.
pub fn execute<E, F>(
    conn: &mut Connection,
    scope: &str,
    key: &str,
    request_hash: &str,
    ok_status: StatusCode,
    effect: F,
) -> Result<Reply, E>
where
    F: FnOnce(&Connection) -> Result<serde_json::Value, E>,
    E: ApiError + From<rusqlite::Error> + From<Conflict>,
{
    execute_with(conn, scope, key, request_hash, |c| {
        effect(c).map(|body| Reply {
            status: ok_status,
            body,
            replayed: false,
        })
    })
}

/// Like [`execute`], but the effect chooses the reply itself; use it when a refusal must still
/// write something (a payment marked declined) and be stored with a 4xx status.
pub fn execute_with<E, F>(
    conn: &mut Connection,
    scope: &str,
    key: &str,
    request_hash: &str,
    effect: F,
) -> Result<Reply, E>
where
    F: FnOnce(&Connection) -> Result<Reply, E>,
    E: ApiError + From<rusqlite::Error> + From<Conflict>,
{
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(reply) = lookup(&tx, scope, key, request_hash)?? {
        return Ok(reply);
    }
    let sp = tx.savepoint()?;
    let reply = match effect(&sp) {
        Ok(reply) => {
            sp.commit()?;
            reply
        }
        Err(err) if is_final(&err) => {
            drop(sp); // rolls the effect's writes back
            Reply::from_error(&err)
        }
        Err(err) => return Err(err),
    };
    store(&tx, scope, key, request_hash, &reply)?;
    tx.commit()?;
    Ok(reply)
}

/// Stores a final refusal under a key unless one is stored already; returns what is stored.
pub fn refuse<E>(
    conn: &mut Connection,
    scope: &str,
    key: &str,
    request_hash: &str,
    err: E,
) -> Result<Reply, E>
where
    E: ApiError + From<rusqlite::Error> + From<Conflict>,
{
    execute_with(conn, scope, key, request_hash, |_| Err(err))
}

/// The first step of a call that must ask an upstream before its effect.
#[derive(Debug)]
pub enum Begin<T> {
    /// Finished already: a replay, or a refusal that was just stored.
    Done(Reply),
    /// Checks passed; call the upstream, then finish with [`execute_with`] under the same key.
    Proceed(T),
}

/// Replays a stored reply, or runs `check` (which may write, e.g. a pending row) and commits.
/// A 4xx from `check` is stored as the final reply for the key.
pub fn begin<T, E, F>(
    conn: &mut Connection,
    scope: &str,
    key: &str,
    request_hash: &str,
    check: F,
) -> Result<Begin<T>, E>
where
    F: FnOnce(&Connection) -> Result<T, E>,
    E: ApiError + From<rusqlite::Error> + From<Conflict>,
{
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(reply) = lookup(&tx, scope, key, request_hash)?? {
        return Ok(Begin::Done(reply));
    }
    match check(&tx) {
        Ok(value) => {
            tx.commit()?;
            Ok(Begin::Proceed(value))
        }
        Err(err) if is_final(&err) => {
            drop(tx);
            refuse(conn, scope, key, request_hash, err).map(Begin::Done)
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::db::BASE_MIGRATIONS;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("refused")]
        Refused,
        #[error("broken")]
        Broken,
        #[error(transparent)]
        Db(#[from] rusqlite::Error),
        #[error(transparent)]
        Conflict(#[from] Conflict),
    }

    impl ApiError for TestError {
        fn status(&self) -> StatusCode {
            match self {
                TestError::Refused => StatusCode::UNPROCESSABLE_ENTITY,
                TestError::Conflict(_) => StatusCode::CONFLICT,
                TestError::Broken | TestError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
            }
        }
        fn code(&self) -> String {
            "test".into()
        }
    }

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(BASE_MIGRATIONS[0].sql).unwrap();
        c.execute_batch("CREATE TABLE effects (n INTEGER);")
            .unwrap();
        c
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT COUNT(*) FROM effects", [], |r| r.get(0))
            .unwrap()
    }

    fn effect(c: &Connection) -> Result<serde_json::Value, TestError> {
        c.execute("INSERT INTO effects VALUES (1)", [])?;
        Ok(serde_json::json!({"n": count(c)}))
    }

    #[test]
    fn replays_and_runs_once() {
        let mut c = conn();
        let first = execute(&mut c, "s", "k", "h", StatusCode::CREATED, effect).unwrap();
        let second = execute(&mut c, "s", "k", "h", StatusCode::CREATED, effect).unwrap();
        assert!(!first.replayed && second.replayed);
        assert_eq!(first.body, second.body);
        assert_eq!(second.status, StatusCode::CREATED);
        assert_eq!(count(&c), 1);
        let err = execute(&mut c, "s", "k", "other", StatusCode::CREATED, effect).unwrap_err();
        assert!(matches!(err, TestError::Conflict(_)));
        // Another scope is another key space.
        execute(&mut c, "t", "k", "other", StatusCode::CREATED, effect).unwrap();
        assert_eq!(count(&c), 2);
    }

    #[test]
    fn final_errors_are_stored_and_rolled_back_server_errors_are_not() {
        let mut c = conn();
        let refused = execute(&mut c, "s", "a", "h", StatusCode::OK, |c| {
            effect(c)?;
            Err::<serde_json::Value, _>(TestError::Refused)
        })
        .unwrap();
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(count(&c), 0, "a refused effect leaves no writes");
        let replay = execute(&mut c, "s", "a", "h", StatusCode::OK, effect).unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.status, StatusCode::UNPROCESSABLE_ENTITY);

        let broken = execute(&mut c, "s", "b", "h", StatusCode::OK, |_| {
            Err::<serde_json::Value, _>(TestError::Broken)
        });
        assert!(broken.is_err());
        let retried = execute(&mut c, "s", "b", "h", StatusCode::OK, effect).unwrap();
        assert!(
            !retried.replayed,
            "a server error is not stored, so the retry runs"
        );
        assert_eq!(count(&c), 1);
    }
}
