//! One SQLite database per service: opening it (WAL, a busy timeout), applying numbered
//! migrations tracked in `schema_migrations`, and running blocking work off the async runtime.
//!
//! One connection behind a mutex is enough for these services and makes every write transaction
//! serial, which is what the idempotency check-then-store relies on. `synchronous=NORMAL` in WAL
//! mode keeps every committed transaction across a process crash (a killed service loses
//! nothing it answered); only a power loss could drop the last commits.
//!
//! The databases hold customer data (card tokens, balances, PIN hashes): the data directory is
//! made (or tightened to) 0700 and the database file created 0600 before SQLite opens it, so that
//! SQLite gives its `-wal` and `-shm` files the same mode; files left looser by an earlier run are
//! tightened too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// A named schema step; steps are applied once each, in list order.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Unique, ordered name such as `0001_accounts`.
    pub name: &'static str,
    /// SQL run in one transaction (may hold several statements, including seed inserts).
    pub sql: &'static str,
}

/// The table every service has: stored responses by idempotency key.
pub const BASE_MIGRATIONS: &[Migration] = &[Migration {
    name: "0000_idempotency",
    sql: "CREATE TABLE idempotency (
              scope TEXT NOT NULL,
              key TEXT NOT NULL,
              request_hash TEXT NOT NULL,
              status INTEGER NOT NULL,
              body TEXT NOT NULL,
              created_ms INTEGER NOT NULL,
              PRIMARY KEY (scope, key)
          );",
}];

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The worker running the query panicked or was cancelled.
    #[error("database worker failed: {0}")]
    Worker(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}; check the path and its permissions")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database file (or its `-wal`/`-shm`) could not be created or made private (0600).
    #[error(
        "cannot create {path} readable by this user only: {source}; check that this user owns it"
    )]
    DataFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A shared handle to a service's database.
#[derive(Clone, Debug)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) `<dir>/<service>.db` and applies the migrations.
    pub fn open_in_dir(dir: &Path, service: &str, migrations: &[Migration]) -> Result<Db, DbError> {
        private_dir(dir).map_err(|source| DbError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{service}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            private_file(&file, suffix.is_empty()).map_err(|source| DbError::DataFile {
                path: file.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(&path)?;
        Db::from_connection(conn, migrations)
    }

    /// An in-memory database with the migrations applied (for tests).
    pub fn open_in_memory(migrations: &[Migration]) -> Result<Db, DbError> {
        Db::from_connection(Connection::open_in_memory()?, migrations)
    }

    fn from_connection(mut conn: Connection, migrations: &[Migration]) -> Result<Db, DbError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // In-memory databases answer "memory"; that is fine.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        migrate(&mut conn, BASE_MIGRATIONS.iter().chain(migrations))?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn run<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| DbError::Worker("database mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| E::from(DbError::Worker(e.to_string())))?
    }
}

/// Creates `dir` (and missing parents) as 0700, or tightens an existing one to 0700.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes `path` mode 0600: creates it empty with that mode when `create` and it is missing (SQLite
/// then copies the mode to its `-wal`/`-shm`), and tightens it when it exists.
fn private_file(path: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if create {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
    } else if !path.exists() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Applies every migration not yet recorded in `schema_migrations`, each in its own transaction.
fn migrate<'a>(
    conn: &mut Connection,
    migrations: impl Iterator<Item = &'a Migration>,
) -> Result<(), DbError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             name TEXT PRIMARY KEY,
             applied_ms INTEGER NOT NULL
         );",
    )?;
    for m in migrations {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
            [m.name],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(m.sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_ms) VALUES (?1, ?2)",
                rusqlite::params![m.name, super::now_ms()],
            )?;
            tracing::info!(migration = m.name, "applied migration");
        }
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: &[Migration] = &[
        Migration {
            name: "0001_t",
            sql: "CREATE TABLE t (x INTEGER);",
        },
        Migration {
            name: "0002_seed",
            sql: "INSERT INTO t VALUES (1);",
        },
    ];

    #[test]
    fn migrations_apply_once_across_reopen() {
        let dir = std::env::temp_dir().join(format!("onemesh-db-test-{}", fastrand::u64(..)));
        for _ in 0..2 {
            let db = Db::open_in_dir(&dir, "t", TEST).unwrap();
            let conn = db.conn.lock().unwrap();
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1, "seed must run exactly once");
            let m: i64 = conn
                .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
                .unwrap();
            assert_eq!(m, 3);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_database_and_its_wal_are_private_and_loose_ones_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("onemesh-db-mode-{}", fastrand::u64(..)));
        let data = dir.join("data");
        {
            let db = Db::open_in_dir(&data, "t", TEST).unwrap();
            let conn = db.conn.lock().unwrap();
            conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
            assert_eq!(mode(&data), 0o700);
            for f in ["t.db", "t.db-wal", "t.db-shm"] {
                assert_eq!(mode(&data.join(f)), 0o600, "{f}");
            }
        }
        // An earlier run (or an older onemesh) left them readable by everyone.
        let loose = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&data, loose.clone()).unwrap();
        for f in ["t.db", "t.db-wal", "t.db-shm"] {
            if data.join(f).exists() {
                std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644))
                    .unwrap();
            }
        }
        let db = Db::open_in_dir(&data, "t", TEST).unwrap();
        drop(db);
        assert_eq!(mode(&data), 0o700);
        for f in ["t.db", "t.db-wal", "t.db-shm"] {
            if data.join(f).exists() {
                assert_eq!(mode(&data.join(f)), 0o600, "{f}");
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
