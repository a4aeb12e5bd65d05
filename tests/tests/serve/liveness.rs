//! Liveness instead of idle timers (supervisor/src/intake/liveness.rs): a supervisor's
//! entries are taken over only once its heartbeat is gone, all of them and within
//! seconds; a supervisor cut off from Redis past its TTL runs nothing twice and, if a
//! peer took its entries meanwhile, records and acknowledges none of them; and rows a
//! dead supervisor left with no stream entry end `crashed` / `SupervisorLost`, once.
//!
//! "Ran twice" is measured by the attempt numbers (every run of an entry is begun, and
//! every begin of a non-terminal row adds one) and by the supervisors' reports (every
//! end of a dispatch is counted), not by the workflows' side effects.

use std::process::Child;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use warden::ExecutionRequest;
use warden::Status;
use warden::{ServeConfig, ServeReport};
use warden_tests::db::{scalar, TestDb};
use warden_tests::pool::unique_uid_base;
use warden_tests::redis::TestRedis;
use warden_tests::serve::{config, serve_process, sigterm, spawn, TestServe};

const SLEEP: &str = "import time\ndef run(i, s):\n    time.sleep(s)\n    return i\n";
/// Slow on its first attempt only: the supervisor that is killed holds its entries for
/// long, the one that takes them over runs them at once.
const SLOW_FIRST: &str = "import time\nfrom warden import context\n\ndef run(i):\n    \
                          if context.attempt == 1:\n        time.sleep(2)\n    return i\n";
const QUICK: &str = "def run(i):\n    return i\n";

async fn push(db: &TestDb, name: &str, source: &str) {
    db.push_workflow(name, source).await;
}

fn requests(prefix: &str, n: usize, workflow: &str, extra: &str) -> Vec<ExecutionRequest> {
    (0..n)
        .map(|i| {
            TestServe::request(
                &format!("{prefix}{i}"),
                workflow,
                &format!("{{\"i\": {i}{extra}}}"),
            )
        })
        .collect()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    scalar(db, sql).await
}

/// Waits until `n` rows are terminal; fails past `within` or if more are.
async fn wait_terminal(db: &TestDb, n: i64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let t = count(
            db,
            "SELECT count(*) FROM executions WHERE status NOT IN ('pending', 'running')",
        )
        .await;
        assert!(t <= n, "{t} terminal rows for {n} executions");
        if t == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "only {t} of {n} executions finished within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Pending entries per consumer of the test's group.
async fn pending_of(redis: &TestRedis, consumer: &str) -> u64 {
    let reply: redis::RedisResult<redis::streams::StreamInfoConsumersReply> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(redis.keys().stream())
        .arg(redis.keys().group())
        .query_async(&mut redis.conn().await)
        .await;
    reply
        .map(|r| {
            r.consumers
                .iter()
                .filter(|c| c.name == consumer)
                .map(|c| c.pending as u64)
                .sum()
        })
        .unwrap_or(0)
}

async fn xlen(redis: &TestRedis) -> u64 {
    redis::cmd("XLEN")
        .arg(redis.keys().stream())
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

/// Executions counted in the daily metrics (per-workflow rows).
async fn metric_count(db: &TestDb) -> i64 {
    count(
        db,
        "SELECT COALESCE(sum(success + failed + timeout + cancelled + crashed), 0)::bigint
         FROM daily_metrics WHERE workflow_id <> 0",
    )
    .await
}

async fn stop(
    sig: watch::Sender<Option<warden::Shutdown>>,
    handle: tokio::task::JoinHandle<Result<ServeReport, warden::ServeError>>,
) -> ServeReport {
    let _ = sig.send(Some(warden::Shutdown::Drain));
    tokio::time::timeout(Duration::from_secs(60), handle)
        .await
        .expect("serve stops within 60 s")
        .expect("serve task")
        .expect("serve ran")
}

/// A TCP proxy to Redis that the test can cut: while cut, open connections are closed
/// and new ones are dropped at once, so the supervisor behind it cannot reach Redis
/// while everyone else (the test, its peers) still can.
struct Proxy {
    url: String,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn to(redis_url: &str) -> Proxy {
        let rest = redis_url
            .strip_prefix("redis://")
            .expect("a redis:// test URL");
        let (target, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
            None => (rest.to_owned(), String::new()),
        };
        assert!(
            !target.contains('@'),
            "the proxy test needs a URL without credentials"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue; // dropped: closed at once
                }
                let mut rx = cut_rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy {
            url: format!("redis://127.0.0.1:{port}{path}"),
            cut,
        }
    }

    fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

fn with_ttl(cfg: &mut ServeConfig, ttl: Duration) {
    cfg.heartbeat_ttl = ttl;
    cfg.sweep_every = Duration::from_millis(300);
}

/// One supervisor, Redis unreachable to it for three times its heartbeat TTL while
/// its executions run: it takes no new work meanwhile, finds on its return that its
/// heartbeat had expired, that nobody took its entries, and finishes them: every
/// execution runs once and ends once, and every place is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_cut_off_from_redis_past_its_ttl_runs_nothing_twice() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, "sleep", SLEEP).await;
    let proxy = Proxy::to(&redis.url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &redis, &dir, "cut");
    cfg.redis_url = proxy.url.clone();
    cfg.prefetch = 2;
    with_ttl(&mut cfg, Duration::from_secs(1));
    let (sig, handle) = spawn(cfg);
    let client = redis.client().await;
    client
        .submit_many(&requests("c", 6, "sleep", ", \"s\": 3"))
        .await
        .unwrap();
    wait_for("4 executions begun", Duration::from_secs(60), async || {
        count(
            &db,
            "SELECT count(*) FROM executions WHERE status = 'running'",
        )
        .await
            >= 4
    })
    .await;

    proxy.cut(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut(false);

    wait_terminal(&db, 6, Duration::from_secs(90)).await;
    let report = stop(sig, handle).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM executions WHERE status = 'success' AND attempt = 1"
        )
        .await,
        6,
        "every execution succeeded on its first and only attempt"
    );
    assert_eq!(report.executions, 6, "six dispatches ended: {report:?}");
    assert_eq!(report.by_status.get("success"), Some(&6), "{report:?}");
    assert!(
        report.heartbeat_lapses >= 1,
        "the cut outlived the heartbeat: {report:?}"
    );
    assert_eq!(
        (report.lost_to_peers, report.taken_over),
        (0, 0),
        "nobody took anything: {report:?}"
    );
    assert_eq!(report.places_free_at_stop, report.places, "{report:?}");
    assert_eq!(metric_count(&db).await, 6, "each counted once");
    for i in 0..6 {
        let c = client
            .completion(&format!("c{i}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("c{i} has no completion"));
        assert_eq!(c.status, Status::Success);
    }
    assert_eq!(
        xlen(&redis).await,
        0,
        "every entry acknowledged and deleted"
    );
}

/// A supervisor cut off from Redis while a live peer shares the stream: once its
/// heartbeat expires the peer takes its entries and runs them again; when Redis
/// returns, the cut-off supervisor learns which were taken, kills its own runs of them
/// and neither commits nor acknowledges anything of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_peer_took_during_a_cut_is_neither_committed_nor_acked_by_the_cut_off_one() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, "sleep", SLEEP).await;
    let proxy = Proxy::to(&redis.url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = config(&db, &redis, &dir, "a");
    a.redis_url = proxy.url.clone();
    a.prefetch = 2;
    with_ttl(&mut a, Duration::from_secs(1));
    let (sig_a, handle_a) = spawn(a);
    let client = redis.client().await;
    client
        .submit_many(&requests("t", 4, "sleep", ", \"s\": 10"))
        .await
        .unwrap();
    wait_for("a holds all 4", Duration::from_secs(60), async || {
        pending_of(&redis, "a").await == 4
            && count(
                &db,
                "SELECT count(*) FROM executions WHERE status = 'running'",
            )
            .await
                == 4
    })
    .await;
    let mut b = config(&db, &redis, &dir, "b");
    b.pool.workers = 4;
    b.prefetch = 0;
    with_ttl(&mut b, Duration::from_secs(1));
    let (sig_b, handle_b) = spawn(b);
    // Both live: b takes nothing, however long a's entries have been idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pending_of(&redis, "a").await, 4, "b took from a live a");

    proxy.cut(true);
    wait_for(
        "b takes a's entries once a's heartbeat expired",
        Duration::from_secs(30),
        async || pending_of(&redis, "b").await == 4,
    )
    .await;
    proxy.cut(false);

    wait_terminal(&db, 4, Duration::from_secs(90)).await;
    let rb = stop(sig_b, handle_b).await;
    let ra = stop(sig_a, handle_a).await;
    let mut conn = db.connection().await;
    let rows: Vec<(String, String, i32, Option<String>)> =
        sqlx::query_as("SELECT id, status::text, attempt, supervisor FROM executions ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for (id, status, attempt, supervisor) in &rows {
        assert_eq!(
            (status.as_str(), *attempt, supervisor.as_deref()),
            ("success", 2, Some("b")),
            "{id}: run again by b, recorded once, b's run: {rows:?}"
        );
    }
    assert_eq!(rows.len(), 4);
    assert!(ra.heartbeat_lapses >= 1, "{ra:?}");
    assert_eq!(ra.lost_to_peers, 4, "a gave up all four: {ra:?}");
    assert_eq!(ra.executions, 0, "a recorded none: {ra:?}");
    assert_eq!(ra.places_free_at_stop, ra.places, "{ra:?}");
    assert_eq!((rb.taken_over, rb.executions), (4, 4), "{rb:?}");
    assert_eq!(metric_count(&db).await, 4, "each counted once");
    assert_eq!(xlen(&redis).await, 0);
}

/// Starts a killable supervisor holding all of 1,000 entries (its prefetch covers them,
/// and each first attempt takes 2 s), all begun.
async fn doomed_with_a_thousand(db: &TestDb, redis: &TestRedis) -> Child {
    push(db, "slow_first", SLOW_FIRST).await;
    redis
        .client()
        .await
        .submit_many(&requests("k", 1000, "slow_first", ""))
        .await
        .unwrap();
    let doomed = serve_process(
        db,
        redis,
        "doomed",
        &["--prefetch", "2000", "--heartbeat-ttl", "1s"],
        unique_uid_base(),
    );
    wait_for(
        "the doomed supervisor holds all 1,000 entries and began them",
        Duration::from_secs(60),
        async || {
            pending_of(redis, "doomed").await == 1000
                && count(db, "SELECT count(*) FROM executions").await == 1000
        },
    )
    .await;
    doomed
}

/// SIGKILLs it; returns when, and how many executions had finished.
async fn kill(db: &TestDb, mut doomed: Child) -> (Instant, i64) {
    doomed.kill().unwrap(); // SIGKILL: no drain, no flush, nothing.
    let killed_at = Instant::now();
    doomed.wait().unwrap();
    let done = count(
        db,
        "SELECT count(*) FROM executions WHERE status NOT IN ('pending', 'running')",
    )
    .await;
    assert!(done < 100, "killed mid-run ({done} done)");
    (killed_at, done)
}

async fn assert_each_once(db: &TestDb) {
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM executions WHERE status = 'success'"
        )
        .await,
        1000
    );
    assert_eq!(
        count(db, "SELECT count(*) FROM executions WHERE attempt > 2").await,
        0,
        "each entry taken over once at most"
    );
    assert_eq!(metric_count(db).await, 1000, "each execution counted once");
}

/// A live peer finishes every entry of a SIGKILLed supervisor within 10 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_finishes_a_sigkilled_supervisors_thousand_entries_within_10s() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &redis, &dir, "peer");
    cfg.pool.isolation = warden_protocol::Isolation::Reuse;
    with_ttl(&mut cfg, Duration::from_secs(1));
    let doomed = doomed_with_a_thousand(&db, &redis).await;
    // The peer starts before the kill and finds nothing to read: the doomed one holds
    // it all.
    let (sig, handle) = spawn(cfg);
    wait_for(
        "the peer's heartbeat",
        Duration::from_secs(60),
        async || {
            let live: bool = redis::cmd("EXISTS")
                .arg(redis.keys().heartbeat("peer"))
                .query_async(&mut redis.conn().await)
                .await
                .unwrap();
            live
        },
    )
    .await;
    let (killed_at, done) = kill(&db, doomed).await;
    wait_terminal(&db, 1000, Duration::from_secs(120)).await;
    let took = killed_at.elapsed();
    eprintln!("a peer finished the dead supervisor's entries {took:?} after the kill");
    let report = stop(sig, handle).await;
    assert!(
        took < Duration::from_secs(10),
        "the peer needed {took:?} after the kill"
    );
    assert_each_once(&db).await;
    assert_eq!(
        report.taken_over,
        1000 - done as u64,
        "the peer took every unfinished entry: {report:?}"
    );
    assert_eq!(xlen(&redis).await, 0);
}

/// A supervisor started after the kill, under another consumer name, finishes every
/// entry of its predecessor within 10 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_supervisor_finishes_its_predecessors_thousand_entries_within_10s() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let doomed = doomed_with_a_thousand(&db, &redis).await;
    let (killed_at, _) = kill(&db, doomed).await;
    let mut next = serve_process(
        &db,
        &redis,
        "successor",
        &["--heartbeat-ttl", "1s", "--isolation", "reuse"],
        unique_uid_base(),
    );
    wait_terminal(&db, 1000, Duration::from_secs(120)).await;
    let took = killed_at.elapsed();
    eprintln!("a restarted supervisor finished its predecessor's entries {took:?} after the kill");
    sigterm(&next);
    assert!(next.wait().unwrap().success());
    assert!(
        took < Duration::from_secs(10),
        "the restarted supervisor needed {took:?} after the kill"
    );
    assert_each_once(&db).await;
    assert_eq!(xlen(&redis).await, 0);
    assert_eq!(
        pending_of(&redis, "doomed").await,
        0,
        "nothing left with the dead"
    );
}

/// Two live supervisors whose executions outlast the heartbeat TTL never take each
/// other's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_supervisors_never_take_each_others_long_executions() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, "sleep", SLEEP).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spawned = Vec::new();
    for name in ["one", "two"] {
        let mut cfg = config(&db, &redis, &dir, name);
        cfg.prefetch = 1;
        with_ttl(&mut cfg, Duration::from_secs(2));
        spawned.push(spawn(cfg));
    }
    redis
        .client()
        .await
        .submit_many(&requests("l", 10, "sleep", ", \"s\": 3.5"))
        .await
        .unwrap();
    wait_terminal(&db, 10, Duration::from_secs(120)).await;
    let mut reports = Vec::new();
    for (sig, handle) in spawned {
        reports.push(stop(sig, handle).await);
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM executions WHERE status = 'success' AND attempt = 1"
        )
        .await,
        10,
        "each ran once"
    );
    assert_eq!(
        reports.iter().map(|r| r.executions).sum::<u64>(),
        10,
        "{reports:?}"
    );
    for r in &reports {
        assert_eq!((r.taken_over, r.lost_to_peers), (0, 0), "{r:?}");
        assert!(r.executions > 0, "both took work: {reports:?}");
    }
}

/// Inserts a row `running` for `supervisor`, begun a minute ago from `stream_id`.
async fn running_row(db: &TestDb, id: &str, supervisor: &str, stream_id: &str) {
    let mut conn = db.connection().await;
    sqlx::query(
        "INSERT INTO executions (id, workflow_name, status, params, queued_at, started_at,
                                 supervisor, stream_id)
         VALUES ($1, 'quick', 'running', '{}', now() - interval '1 minute',
                 now() - interval '1 minute', $2, $3)",
    )
    .bind(id)
    .bind(supervisor)
    .bind(stream_id)
    .execute(&mut conn)
    .await
    .unwrap();
}

/// A row as [`warden::Store::hand_back`] leaves one that never started.
async fn handed_back_row(db: &TestDb, id: &str, stream_id: &str) {
    let mut conn = db.connection().await;
    sqlx::query(
        "INSERT INTO executions (id, workflow_name, status, params, queued_at, stream_id)
         VALUES ($1, 'quick', 'pending', '{}', now() - interval '1 minute', $2)",
    )
    .bind(id)
    .bind(stream_id)
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn row(db: &TestDb, id: &str) -> (String, i32, Option<String>, Option<String>) {
    let mut conn = db.connection().await;
    sqlx::query_as(
        "SELECT status::text, attempt, error_type, supervisor FROM executions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// The sweeper: a row left `running` by a dead supervisor whose stream entry is gone
/// ends `crashed` / `SupervisorLost`, once across two sweeping supervisors, and its
/// waiter learns it; a live supervisor's row is never swept, whatever Redis holds; a
/// dead supervisor's row whose entry is still pending is taken over and run instead.
/// Rows handed back at shutdown (no supervisor) are treated the same way: swept when
/// their entry is gone, taken over (at the same attempt) when it is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_dead_supervisors_with_no_entry_left_end_supervisor_lost_once() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, "quick", QUICK).await;
    // A dead supervisor whose entry is still pending: it read it, began it, died.
    let ghost = redis.intake("ghost-with-entry").await;
    let client = redis.client().await;
    client
        .submit(&TestServe::request("pending-1", "quick", r#"{"i": 1}"#))
        .await
        .unwrap();
    let read = ghost.read(1, Duration::ZERO).await.unwrap();
    assert_eq!(read.len(), 1);
    running_row(&db, "pending-1", "ghost-with-entry", &read[0].stream_id).await;
    // A row a supervisor handed back at shutdown (never started), its entry still
    // pending on that supervisor's consumer: taken over and run, at the same attempt.
    client
        .submit(&TestServe::request("pending-2", "quick", r#"{"i": 2}"#))
        .await
        .unwrap();
    let read = ghost.read(1, Duration::ZERO).await.unwrap();
    assert_eq!(read.len(), 1);
    handed_back_row(&db, "pending-2", &read[0].stream_id).await;
    // A dead supervisor whose entry is gone (never existed here).
    running_row(&db, "lost-1", "ghost", "1-1").await;
    // A row handed back at shutdown whose entry is gone: nothing can run it either.
    handed_back_row(&db, "lost-2", "1-3").await;
    // A live supervisor (its heartbeat is there) whose entry is gone too.
    running_row(&db, "alive-1", "alive", "1-2").await;
    let _: () = redis::cmd("SET")
        .arg(redis.keys().heartbeat("alive"))
        .arg("test")
        .arg("EX")
        .arg(600)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let waiter = client
        .wait_for_completion("lost-1", Duration::from_secs(60))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut spawned = Vec::new();
    for name in ["s1", "s2"] {
        let mut cfg = config(&db, &redis, &dir, name);
        with_ttl(&mut cfg, Duration::from_secs(1));
        spawned.push(spawn(cfg));
    }
    let started = Instant::now();
    let c = waiter.completion().await.unwrap();
    assert_eq!(c.status, Status::Crashed);
    assert_eq!(c.error_type.as_deref(), Some("SupervisorLost"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "swept after {:?}",
        started.elapsed()
    );
    let (status, _, error_type, _) = row(&db, "lost-1").await;
    assert_eq!(
        (status.as_str(), error_type.as_deref()),
        ("crashed", Some("SupervisorLost"))
    );
    wait_for("lost-2 swept", Duration::from_secs(30), async || {
        row(&db, "lost-2").await.0 == "crashed"
    })
    .await;
    let (_, attempt, error_type, _) = row(&db, "lost-2").await;
    assert_eq!(
        (attempt, error_type.as_deref()),
        (1, Some("SupervisorLost"))
    );
    // The pending entries were taken over and run, not swept.
    for (id, again_at) in [("pending-1", 2), ("pending-2", 1)] {
        wait_for(
            "pending entries run again",
            Duration::from_secs(30),
            async || row(&db, id).await.0 == "success",
        )
        .await;
        let (_, attempt, error_type, _) = row(&db, id).await;
        assert_eq!((attempt, error_type), (again_at, None), "{id}");
    }
    // Several more sweeps: the live supervisor's row stays as it is.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(row(&db, "alive-1").await.0, "running");

    let mut reports = Vec::new();
    for (sig, handle) in spawned {
        reports.push(stop(sig, handle).await);
    }
    assert_eq!(
        reports.iter().map(|r| r.swept).sum::<u64>(),
        2,
        "swept (and published) once each: {reports:?}"
    );
    assert_eq!(row(&db, "alive-1").await.0, "running");
    assert_eq!(
        count(
            &db,
            "SELECT COALESCE(sum(crashed), 0)::bigint FROM daily_metrics WHERE workflow_id = 0"
        )
        .await,
        2,
        "each swept row is counted once"
    );
}
