//! A fresh PostgreSQL database per test: [`TestDb::new`] creates `warden_t_<hex>` on the
//! server named by `WARDEN_TEST_PG` (default `postgres://postgres@127.0.0.1:5432`),
//! migrates it, and drops it (forcefully) when the `TestDb` is dropped. Tests therefore
//! run in parallel without seeing each other's rows or statistics. Side connections and
//! the statistics readers use `sqlx` directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use warden::Store;

/// The server tests use, without a database name.
pub fn server_url() -> String {
    std::env::var("WARDEN_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

const SIDE_APPLICATION: &str = "warden_test_side";

/// A migrated database of its own, dropped on drop.
pub struct TestDb {
    pub name: String,
    /// `postgres://…/<name>`.
    pub url: String,
    /// A small store (2 connections) on the database.
    pub store: Store,
}

impl TestDb {
    /// Create and migrate a fresh database.
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        db.store.migrate().await.expect("migrate the test database");
        db
    }

    /// Create a fresh database without running the migrations.
    pub async fn empty() -> TestDb {
        let name = format!("warden_t_{}", random_hex());
        let url = format!("{}/{}", server_url(), name);
        let created = Store::create_database_if_missing(&url)
            .await
            .expect("create the test database (is PostgreSQL running? see scripts/)");
        assert!(created, "database {name} already existed");
        let store = Store::connect(&url, 2)
            .await
            .expect("connect to the test database");
        TestDb { name, url, store }
    }

    /// A side connection (not from any store) for measuring: tagged so that
    /// [`TestDb::terminate_backends`] spares it.
    pub async fn connection(&self) -> PgConnection {
        PgConnection::connect(&format!("{}?application_name={SIDE_APPLICATION}", self.url))
            .await
            .expect("open a side connection to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime; do the async work on a thread of its own.
        let url = format!("{}/postgres", server_url());
        let name = self.name.clone();
        let store = self.store.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                drop(store);
                let Ok(mut conn) = PgConnection::connect(&url).await else {
                    return;
                };
                let statement = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                if let Err(e) = sqlx::query(&statement).execute(&mut conn).await {
                    eprintln!("could not drop test database {name}: {e}");
                }
                let _ = conn.close().await;
            });
        })
        .join();
    }
}

/// `xact_commit` of the current database, read on `conn` after flushing `conn`'s own
/// pending statistics. Other backends' statistics appear once they flush (at least
/// every second while busy, and when they exit).
pub async fn xact_commit(conn: &mut PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .expect("flush statistics");
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("read xact_commit")
}

/// `sessions` (connections ever established) of the current database.
pub async fn sessions(conn: &mut PgConnection) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .expect("flush statistics");
    sqlx::query_scalar("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&mut *conn)
        .await
        .expect("read sessions")
}

impl TestDb {
    /// Stores a global workflow `name` (path `workflows/<name>.py`) whose function is
    /// `run`, with no default timeout.
    pub async fn push_workflow(&self, name: &str, source: &str) {
        self.push_workflow_for(None, name, source).await
    }

    /// [`TestDb::push_workflow`] in organization `org` (`None`: global).
    pub async fn push_workflow_for(&self, org: Option<&str>, name: &str, source: &str) {
        self.store
            .push_workflow(&warden::WorkflowSpec {
                org: org.map(str::to_owned),
                name: name.into(),
                path: format!("workflows/{name}.py"),
                function_name: "run".into(),
                source: source.into(),
                default_timeout_ms: None,
                time_saved_seconds: None,
                value: None,
                retry_policy: None,
            })
            .await
            .expect("push workflow");
    }

    /// A connection to the server's `postgres` database: watching and killing this
    /// database's backends from there adds no transactions to its statistics.
    async fn admin(&self) -> PgConnection {
        PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .expect("open an admin connection")
    }

    /// Run `sql` on the `postgres` database, with `{db}` replaced by this database's
    /// quoted name (e.g. `ALTER DATABASE {db} ALLOW_CONNECTIONS false`).
    pub async fn admin_execute(&self, sql: &str) {
        let mut admin = self.admin().await;
        let sql = sql.replace("{db}", &format!("\"{}\"", self.name));
        sqlx::query(&sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = admin.close().await;
    }

    /// Client connections to this database now, not counting side connections
    /// ([`TestDb::connection`]) or autovacuum workers.
    pub async fn backends(&self) -> i64 {
        self.over_client_backends("count(*)", "count backends")
            .await
    }

    /// Kill every client connection to this database except side connections; returns
    /// how many. Their statistics are flushed as they exit.
    pub async fn terminate_backends(&self) -> i64 {
        self.over_client_backends(
            "count(*) FILTER (WHERE pg_terminate_backend(pid))",
            "terminate backends",
        )
        .await
    }

    /// `SELECT aggregate` over this database's client connections other than side ones,
    /// from an admin connection.
    async fn over_client_backends(&self, aggregate: &str, what: &str) -> i64 {
        let mut admin = self.admin().await;
        let sql = format!(
            "SELECT {aggregate} FROM pg_stat_activity
             WHERE datname = $1 AND backend_type = 'client backend'
               AND application_name IS DISTINCT FROM $2"
        );
        let n = sqlx::query_scalar(&sql)
            .bind(&self.name)
            .bind(SIDE_APPLICATION)
            .fetch_one(&mut admin)
            .await
            .expect(what);
        let _ = admin.close().await;
        n
    }

    /// Wait until at most `n` client connections (other than side ones) remain.
    pub async fn wait_for_backends_at_most(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.backends().await;
            if now <= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{now} backends still connected, wanted {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:016x}", h.finish())
}

/// Fixtures for store tests: outcomes, logs and new executions with plausible values.
pub mod fixtures {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use warden::{Completed, NewExecution};
    use warden::{ExecutionOutcome, Status};
    use warden_protocol::{ErrorInfo, Log, LogLevel};

    /// The five terminal states, for spreading a batch over all of them.
    pub const STATUSES: [Status; 5] = [
        Status::Success,
        Status::Failed,
        Status::Timeout,
        Status::Cancelled,
        Status::Crashed,
    ];

    pub fn outcome(id: &str, status: Status) -> ExecutionOutcome {
        let finished_at = SystemTime::now();
        let duration = Duration::from_millis(12);
        ExecutionOutcome {
            execution_id: id.into(),
            status,
            result_json: (status == Status::Success)
                .then(|| format!(r#"{{"id":"{id}","ok":true}}"#)),
            error: (status != Status::Success).then(|| ErrorInfo {
                error_type: match status {
                    Status::Timeout => "Timeout",
                    Status::Cancelled => "Cancelled",
                    Status::Crashed => "Crashed",
                    _ => "ValueError",
                }
                .to_string(),
                message: format!("{id} did not succeed"),
                traceback: if status == Status::Failed {
                    "Traceback (most recent call last):\n  ...\nValueError".to_string()
                } else {
                    String::new()
                },
            }),
            started_at: Some(finished_at - duration),
            finished_at,
            duration,
            peak_memory_bytes: 20 << 20,
            cpu_seconds: 0.01,
            exit_code: (status == Status::Crashed).then_some(1),
            exit_signal: (status == Status::Timeout).then_some(9),
            logs_dropped: 0,
            sdk_writes_json: String::new(),
        }
    }

    /// `n` log lines for `id`, seq 0..n, produced in reverse order (to show the store
    /// orders them by seq).
    pub fn logs(id: &str, n: u32) -> Vec<Log> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        (0..n)
            .rev()
            .map(|seq| Log {
                execution_id: id.to_string(),
                seq,
                timestamp_us: now_us + seq as i64,
                level: if seq % 2 == 0 {
                    LogLevel::Info
                } else {
                    LogLevel::Warning
                },
                message: format!("{id} line {seq}"),
            })
            .collect()
    }

    /// An outcome with `n_logs` logs, attributed to a workflow and organization.
    pub fn completed(
        id: &str,
        status: Status,
        n_logs: u32,
        workflow_id: Option<i64>,
        org_id: Option<i64>,
    ) -> Completed {
        Completed {
            logs: logs(id, n_logs),
            workflow_id,
            org_id,
            time_saved_seconds: 30.0,
            value: 1.5,
            stream_id: Some(format!("1-{id}")),
            ..Completed::new(outcome(id, status))
        }
    }

    pub fn new_execution(id: &str, workflow_id: Option<i64>) -> NewExecution {
        NewExecution {
            id: id.into(),
            workflow_id,
            workflow_name: "wf".to_string(),
            org_id: None,
            caller: Some("tests".to_string()),
            params_json: r#"{"n": 1}"#.to_string(),
            queued_at: None,
            supervisor: "sup-test".to_string(),
            // The entry `completed` acknowledges: only the entry that began an
            // execution writes its result.
            stream_id: Some(format!("1-{id}")),
            delivery_id: None,
            workflow_version: None,
            workflow_hash: None,
            timeout_ms: None,
            retries: None,
            carrier_attempt: None,
            not_before: None,
            queue: None,
        }
    }
}

/// Runs a read against the test database, trying again when it fails: tests kill
/// backends on purpose, and (as in the service) the first statement on a killed
/// connection fails and the next gets a fresh one.
pub async fn retry<T, F, Fut>(what: &str, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match read().await {
            Ok(v) => return v,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("{what}: {e}; trying again");
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// One number from the test database's store connections (see [`retry`]).
pub async fn scalar(db: &TestDb, sql: &str) -> i64 {
    retry(sql, || sqlx::query_scalar(sql).fetch_one(db.store.pool())).await
}

/// Receives committed batches from a writer until `n` items have been reported.
pub async fn collect_committed(
    rx: &mut tokio::sync::mpsc::Receiver<Vec<warden::Committed>>,
    n: usize,
) -> Vec<warden::Committed> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("committed outcomes within a minute")
            .expect("writer running");
        all.extend(batch);
    }
    all
}

impl TestDb {
    /// Makes every daily_metrics write fail whose time saved reaches 4242 seconds: the last
    /// statement of the result transaction, so everything before it must roll back.
    pub async fn fail_result_transactions(&self, errcode: &str, once: bool) {
        let mut conn = self.connection().await;
        sqlx::query("CREATE SEQUENCE forced_failures")
            .execute(&mut conn)
            .await
            .unwrap();
        let condition = if once {
            "NEW.time_saved_seconds >= 4242 AND nextval('forced_failures') = 1"
        } else {
            "NEW.time_saved_seconds >= 4242 AND nextval('forced_failures') > 0"
        };
        sqlx::query(&format!(
            "CREATE FUNCTION force_failure() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF {condition} THEN
                     RAISE EXCEPTION 'forced failure of the result transaction' USING ERRCODE = '{errcode}';
                 END IF;
                 RETURN NEW;
             END $$"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "CREATE TRIGGER force_failure BEFORE INSERT OR UPDATE ON daily_metrics
             FOR EACH ROW EXECUTE FUNCTION force_failure()",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
}
