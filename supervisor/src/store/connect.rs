//! [`Store`]: the supervisor's whole PostgreSQL connection budget, opened once.
//!
//! The pool holds exactly `connections` connections (min = max), all opened before
//! [`Store::connect`] returns, with no idle timeout and no maximum lifetime: once the
//! daemon is up, `pg_stat_database.sessions` stops growing. An acquire pings a connection
//! that has been idle for more than [`PING_IF_IDLE`], so a connection killed by a
//! database restart or `pg_terminate_backend` while quiet is discarded and re-opened
//! (the pool keeps `min_connections` topped up) instead of failing a statement. A busy
//! connection is not pinged on every acquire (that was a round trip per statement); if it
//! dies under load, the statement fails, sqlx drops the connection, and the caller
//! retries. Callers that hit a connectivity error in
//! the middle of a statement wait with [`crate::store::Backoff`] and try again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections idle at least this long are pinged before use.
pub const PING_IF_IDLE: Duration = Duration::from_secs(1);

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::store::StoreError;

/// How long an acquire (or the start-up connect) waits for a connection. Long enough to
/// ride out a busy pool or a server that is still starting; short enough that a dead
/// server is reported (and retried by the caller with back-off) rather than hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATE `invalid_catalog_name`: the database does not exist.
const DATABASE_MISSING: &str = "3D000";
/// SQLSTATE `duplicate_database`: someone created it first.
const DATABASE_EXISTS: &str = "42P04";

/// The supervisor's connection pool. Cheap to clone (clones share the pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    url_redacted: Arc<str>,
    counters: Arc<Counters>,
}

/// What `/metrics` reports about the connections (crate::ops::metrics).
#[derive(Debug, Default)]
struct Counters {
    /// Connections opened in all, the start-up ones included.
    opened: AtomicU64,
    /// Failed statements or transactions the reader and the writer counted.
    errors: AtomicU64,
}

impl Store {
    /// Open exactly `connections` connections to `url` (at least 1) and keep them.
    ///
    /// Fails with [`StoreError::DatabaseMissing`] when the server is up but the database
    /// is not (run `warden migrate`), and [`StoreError::Connect`] when the server cannot
    /// be reached; both name the URL with its password redacted.
    pub async fn connect(url: &str, connections: u32) -> Result<Store, StoreError> {
        let connections = connections.max(1);
        let options = parse_url(url)?;
        let url_redacted = redact_url(url);
        let counters = Arc::new(Counters::default());
        let opened = Arc::clone(&counters);
        let pool = PgPoolOptions::new()
            .min_connections(connections)
            .max_connections(connections)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .after_connect(move |_, _| {
                opened.opened.fetch_add(1, Ordering::Relaxed);
                Box::pin(async { Ok(()) })
            })
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < PING_IF_IDLE {
                        return Ok(true);
                    }
                    // A failed ping discards this connection and opens another.
                    Ok(conn.ping().await.is_ok())
                })
            })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await;
        let pool = match pool {
            Ok(pool) => pool,
            // The pool retries refused connections until its deadline and then only says
            // it timed out; one direct attempt recovers the actual reason for the message.
            Err(sqlx::Error::PoolTimedOut) => {
                let source = match PgConnection::connect_with(&options).await {
                    Ok(conn) => {
                        let _ = conn.close().await;
                        sqlx::Error::PoolTimedOut
                    }
                    Err(e) => e,
                };
                return Err(connect_error(&options, &url_redacted, source));
            }
            Err(source) => return Err(connect_error(&options, &url_redacted, source)),
        };
        // `connect_with` opens one connection and leaves the rest of `min_connections` to
        // a background task: open the whole budget now, so that it is all there when this
        // returns (nothing is opened later, in the middle of the work) or its failure said.
        let mut held = Vec::with_capacity(connections as usize);
        for _ in 0..connections {
            match pool.acquire().await {
                Ok(conn) => held.push(conn),
                Err(source) => return Err(connect_error(&options, &url_redacted, source)),
            }
        }
        drop(held);
        tracing::info!(url = %url_redacted, connections, "database pool opened");
        Ok(Store {
            pool,
            url_redacted: url_redacted.into(),
            counters,
        })
    }

    /// Create the database named in `url` if it does not exist, connecting to the
    /// server's `postgres` database to do it. Returns whether it was created.
    pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
        let options = parse_url(url)?;
        let url_redacted = redact_url(url);
        let database = target_database(&options);
        let admin = options.clone().database("postgres");
        let mut conn =
            PgConnection::connect_with(&admin)
                .await
                .map_err(|source| StoreError::Connect {
                    url_redacted: url_redacted.clone(),
                    source,
                })?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&database)
                .fetch_one(&mut conn)
                .await
                .map_err(StoreError::query("look up the database"))?;
        let created = if exists {
            false
        } else {
            let statement = format!("CREATE DATABASE {}", quote_ident(&database));
            match sqlx::query(&statement).execute(&mut conn).await {
                Ok(_) => true,
                Err(e) if has_sqlstate(&e, DATABASE_EXISTS) => false,
                Err(source) => {
                    return Err(StoreError::Query {
                        what: "create the database",
                        source,
                    })
                }
            }
        };
        let _ = conn.close().await;
        if created {
            tracing::info!(url = %url_redacted, "database created");
        }
        Ok(created)
    }

    /// The underlying pool, for statements this module does not wrap (tests, tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL this store was opened with, password redacted (for messages).
    pub fn url_redacted(&self) -> &str {
        &self.url_redacted
    }

    /// The fixed number of connections this store was opened with.
    pub fn connections(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// `SELECT 1` on one of the pool's connections (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::query("answer SELECT 1"))
    }

    /// Connections opened after start-up to replace lost ones (a database restart, a
    /// killed backend, a network cut).
    pub fn reconnects(&self) -> u64 {
        let opened = self.counters.opened.load(Ordering::Relaxed);
        opened.saturating_sub(u64::from(self.connections()))
    }

    /// Counts a failed statement or transaction (for `/metrics`).
    pub fn count_error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed statements or transactions counted with [`Store::count_error`].
    pub fn errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// Close every connection, waiting for checked-out ones to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Parse a `postgres://` URL, tagging the whole connection with `application_name =
/// warden` so its sessions are easy to find in `pg_stat_activity`.
fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.parse().map_err(|source| StoreError::InvalidUrl {
        url_redacted: redact_url(url),
        source,
    })?;
    Ok(if options.get_application_name().is_none() {
        options.application_name("warden")
    } else {
        options
    })
}

/// The database a URL names (PostgreSQL defaults it to the user name).
fn target_database(options: &PgConnectOptions) -> String {
    options
        .get_database()
        .unwrap_or_else(|| options.get_username())
        .to_string()
}

fn connect_error(
    options: &PgConnectOptions,
    url_redacted: &str,
    source: sqlx::Error,
) -> StoreError {
    if has_sqlstate(&source, DATABASE_MISSING) {
        StoreError::DatabaseMissing {
            url_redacted: url_redacted.to_string(),
            database: target_database(options),
        }
    } else {
        StoreError::Connect {
            url_redacted: url_redacted.to_string(),
            source,
        }
    }
}

fn has_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|c| c == code)
}

/// A PostgreSQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `url` with its password replaced by `***` (warden_protocol::url).
pub use warden_protocol::redact_url;
