//! The service while one of its servers is away, and how it shuts down then: results
//! still commit to PostgreSQL while Redis is away (their acknowledgements wait and go
//! out when it returns); SIGTERM is honoured within the drain timeout during an outage
//! of either server, and a second SIGTERM ends the process within a second or two; a
//! drain gives back what it did not start (to run elsewhere at the same attempt) and
//! what its deadline cut off (attempt + 1), never cancelling either.
//!
//! Outages are made with a TCP proxy in front of the shared servers
//! (warden_tests::proxy): the supervisor connects through it, the test directly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden::Status;
use warden_tests::db::{scalar, TestDb};
use warden_tests::pool::{unique_uid_base, warden_bin, worker_bin};
use warden_tests::proxy::{target_of, Proxy};
use warden_tests::redis::TestRedis;
use warden_tests::serve::{config, sigterm, spawn, TestServe};

const SLEEP: &str =
    "import time\ndef run(i, s):\n    print('working on', i)\n    time.sleep(s)\n    return i\n";

async fn push(db: &TestDb, source: &str) {
    db.push_workflow("sleep", source).await;
}

async fn submit(redis: &TestRedis, prefix: &str, n: usize, seconds: f64) -> Vec<String> {
    let client = redis.client().await;
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:02}")).collect();
    let requests: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| TestServe::request(id, "sleep", &format!(r#"{{"i": {i}, "s": {seconds}}}"#)))
        .collect();
    client.submit_many(&requests).await.unwrap();
    ids
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    scalar(db, sql).await
}

/// Polls `sql` (a count) until it reaches `n`, failing after `within`.
async fn wait_count(db: &TestDb, sql: &str, n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let c = count(db, sql).await;
        if c == n {
            return;
        }
        assert!(Instant::now() < deadline, "`{sql}`: {c}, waited for {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries read and not acknowledged, seen directly on the shared Redis.
async fn stream_pending(redis: &TestRedis) -> u64 {
    let mut conn = redis.conn().await;
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(redis.keys().stream())
        .arg(redis.keys().group())
        .query_async(&mut conn)
        .await
        .unwrap();
    match reply {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

async fn wait_pending(redis: &TestRedis, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let p = stream_pending(redis).await;
        if p == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{p} entries pending, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_commit_while_redis_is_away_and_are_acknowledged_when_it_returns() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let proxy = Proxy::start(&target_of(&redis.url, 6379)).await;
    push(&db, SLEEP).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &redis, &dir, "away");
    cfg.redis_url = proxy.url_for(&redis.url);
    let (signals, handle) = spawn(cfg);
    let ids = submit(&redis, "r", 20, 0.3).await;
    // Every entry read and begun before Redis goes.
    wait_count(
        &db,
        "SELECT count(*) FROM executions",
        20,
        Duration::from_secs(60),
    )
    .await;
    proxy.cut();
    let cut_at = Instant::now();
    // 20 × 0.3 s on 2 workers: all commit while Redis is away.
    wait_count(
        &db,
        "SELECT count(*) FROM executions WHERE status = 'success'",
        20,
        Duration::from_secs(60),
    )
    .await;
    let committed_after = cut_at.elapsed();
    eprintln!("all committed {committed_after:?} after Redis went away");
    assert_eq!(
        stream_pending(&redis).await,
        20,
        "nothing acknowledged while Redis is away"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    wait_pending(&redis, 0, Duration::from_secs(30)).await;
    let mut conn = redis.conn().await;
    for id in &ids {
        let done: Option<String> = redis::cmd("GET")
            .arg(redis.keys().completion_key(id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(done.is_some(), "{id}'s completion was published");
    }
    signals.send(Some(warden::Shutdown::Drain)).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
    assert_eq!(report.executions, 20, "{report:?}");
    assert_eq!(report.by_status.get("success"), Some(&20));
    assert_eq!(report.places_free_at_stop, report.places, "{report:?}");
    // The work takes 3 s; a main loop waiting on Redis (live logs, status) took that
    // long per call and committed nothing meanwhile.
    assert!(
        committed_after < Duration::from_secs(10),
        "committed {committed_after:?} after the cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_away_intake_stops_and_results_wait_until_it_returns() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let proxy = Proxy::start(&target_of(&db.url, 5432)).await;
    push(&db, SLEEP).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&db, &redis, &dir, "pg-away");
    cfg.database_url = proxy.url_for(&db.url);
    let (signals, handle) = spawn(cfg);
    submit(&redis, "a", 6, 0.5).await;
    wait_count(
        &db,
        "SELECT count(*) FROM executions WHERE status = 'running'",
        6,
        Duration::from_secs(60),
    )
    .await;
    proxy.cut();
    // One more batch may be read (and held: it cannot be recorded), then nothing.
    submit(&redis, "b", 10, 0.1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = stream_pending(&redis).await;
    assert!((6..=16).contains(&held), "{held} entries pending");
    submit(&redis, "c", 5, 0.1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stream_pending(&redis).await,
        held,
        "nothing more is read while PostgreSQL is away"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM executions").await, 6);
    proxy.restore();
    wait_count(
        &db,
        "SELECT count(*) FROM executions WHERE status = 'success'",
        21,
        Duration::from_secs(60),
    )
    .await;
    wait_pending(&redis, 0, Duration::from_secs(30)).await;
    signals.send(Some(warden::Shutdown::Drain)).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
    assert_eq!(report.executions, 21, "each once: {report:?}");
    assert_eq!(report.places_free_at_stop, report.places, "{report:?}");
}

/// Drain returns queued work: never-started executions go back `pending` at the same
/// attempt, running ones the deadline cuts off are interrupted (attempt + 1 next time);
/// a second supervisor then runs each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_gives_back_what_it_did_not_finish_and_another_supervisor_runs_it() {
    let mut first = TestServe::start(|c| c.drain_timeout = Duration::from_millis(800)).await;
    push(&first.db, SLEEP).await;
    let ids = submit(&first.redis, "d", 20, 30.0).await;
    wait_count(
        &first.db,
        "SELECT count(*) FROM executions WHERE status = 'running'",
        20,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // two of them are running
    let t = Instant::now();
    let report = first.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "stopped after {:?}",
        t.elapsed()
    );
    assert_eq!(report.executions, 0, "nothing ended here: {report:?}");
    assert_eq!((report.returned, report.interrupted), (18, 2), "{report:?}");
    assert_eq!(report.handed_back, 20, "{report:?}");
    assert_eq!(report.places_free_at_stop, report.places, "{report:?}");
    let db = &first.db;
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM executions WHERE status = 'cancelled'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM executions WHERE status = 'pending' AND started_at IS NULL
               AND supervisor IS NULL AND attempt = 1 AND error_type IS NULL"
        )
        .await,
        18,
        "never started: back to pending, same attempt"
    );
    let mut conn = db.connection().await;
    let notes: Vec<String> = sqlx::query_scalar(
        "SELECT error_message FROM executions WHERE status = 'pending'
           AND started_at IS NOT NULL AND error_type = 'Interrupted' AND attempt = 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(notes.len(), 2, "interrupted: {notes:?}");
    assert!(notes[0].contains("supervisor s1"), "{notes:?}");
    assert_eq!(
        stream_pending(&first.redis).await,
        20,
        "nothing acknowledged"
    );
    let s1_live: bool = redis::cmd("EXISTS")
        .arg(first.redis.keys().heartbeat("s1"))
        .query_async(&mut first.redis.conn().await)
        .await
        .unwrap();
    assert!(
        !s1_live,
        "a clean stop deletes the heartbeat, after the hand-back"
    );

    // s1 deleted its heartbeat last, after the rows went back: a second supervisor
    // takes the entries over at once (not after the TTL) and runs them, quickly this
    // time.
    push(
        db,
        SLEEP.replace("time.sleep(s)", "time.sleep(0.01)").as_str(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(db, &first.redis, &dir, "s2");
    let (signals, handle) = spawn(cfg);
    wait_count(
        db,
        "SELECT count(*) FROM executions WHERE status = 'success'",
        20,
        Duration::from_secs(90),
    )
    .await;
    wait_pending(&first.redis, 0, Duration::from_secs(30)).await;
    signals.send(Some(warden::Shutdown::Drain)).unwrap();
    let second = handle.await.unwrap().unwrap();
    assert_eq!(second.executions, 20, "each exactly once: {second:?}");
    assert_eq!(second.taken_over, 20, "{second:?}");
    assert_eq!(second.places_free_at_stop, second.places);
    let attempts: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT attempt, count(*) FROM executions WHERE supervisor = 's2' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(attempts, vec![(1, 18), (2, 2)]);
    let metrics: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(success + failed + timeout + cancelled + crashed), 0)::bigint
         FROM daily_metrics WHERE workflow_id <> 0",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(metrics, 20, "each counted once");
    for id in &ids {
        let c = first
            .client
            .wait_for_completion(id, Duration::from_secs(5))
            .await
            .unwrap()
            .completion()
            .await
            .unwrap();
        assert_eq!(c.status, Status::Success, "{id}");
    }
}

/// `warden serve` through proxies, its log in `log`.
fn serve_process(
    db_url: &str,
    redis_url: &str,
    prefix: &str,
    consumer: &str,
    drain: &str,
    log: &Path,
) -> Child {
    let mut cmd = Command::new(warden_bin());
    cmd.args(["serve", "--workers", "2", "--consumer", consumer])
        .args(["--drain-timeout", drain])
        .arg("--worker-bin")
        .arg(worker_bin())
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url)
        .env("WARDEN_KEY_PREFIX", prefix)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    match unique_uid_base() {
        Some(b) => cmd.arg("--worker-uid-base").arg(b.to_string()),
        None => cmd.arg("--worker-uid-base").arg("0"),
    };
    cmd.spawn().expect("start warden serve")
}

/// Waits for the process to exit; returns how long that took, failing after `within`.
async fn exits_within(child: &mut Child, within: Duration, log: &Path) -> Duration {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "exit {status}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return t.elapsed();
        }
        if t.elapsed() > within {
            let _ = child.kill();
            panic!(
                "still running {within:?} later; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Away {
    Redis,
    Postgres,
}

/// Starts a supervisor whose `away` server goes through a proxy, lets it begin long
/// executions, takes that server away, then sends SIGTERM (and a second one after
/// `second_after`, if given). Returns the process, its log, the time from the last
/// signal to exit, and the fixtures.
async fn signal_during_outage(away: Away, second_after: Option<Duration>) -> Duration {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    push(&db, SLEEP).await;
    let (proxy, db_url, redis_url) = match away {
        Away::Redis => {
            let p = Proxy::start(&target_of(&redis.url, 6379)).await;
            let url = p.url_for(&redis.url);
            (p, db.url.clone(), url)
        }
        Away::Postgres => {
            let p = Proxy::start(&target_of(&db.url, 5432)).await;
            let url = p.url_for(&db.url);
            (p, url, redis.url.clone())
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut child = serve_process(&db_url, &redis_url, &redis.prefix, "sig", "2s", &log);
    submit(&redis, "s", 10, 30.0).await;
    wait_count(
        &db,
        "SELECT count(*) FROM executions WHERE status = 'running'",
        10,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(&child);
    let elapsed = match second_after {
        None => exits_within(&mut child, Duration::from_secs(15), &log).await,
        Some(after) => {
            tokio::time::sleep(after).await;
            sigterm(&child);
            exits_within(&mut child, Duration::from_secs(15), &log).await
        }
    };
    eprintln!("{away:?}, second signal {second_after:?}: exited {elapsed:?} after the last signal");
    if away == Away::Redis {
        // PostgreSQL was there: nothing left `running`, nothing cancelled.
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM executions WHERE status = 'pending'"
            )
            .await,
            10,
            "handed back; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM executions WHERE error_type = 'Interrupted'"
            )
            .await,
            2
        );
    }
    if away == Away::Postgres {
        // Redis was there: even on an exit the deadline cut short, the heartbeat is
        // deleted (last, once the writer and the hand-back were stopped), so a peer
        // takes the entries over at once; the rows it could not give back stay
        // `running` at their attempt, and nothing of them was written.
        let live: bool = redis::cmd("EXISTS")
            .arg(redis.keys().heartbeat("sig"))
            .query_async(&mut redis.conn().await)
            .await
            .unwrap();
        assert!(!live, "heartbeat deleted on exit");
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM executions
                  WHERE status = 'running' AND supervisor = 'sig' AND attempt = 1"
            )
            .await,
            10,
            "left as they were; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_redis_outage_exits_within_the_drain_timeout() {
    let took = signal_during_outage(Away::Redis, None).await;
    // --drain-timeout 2s, then the kill grace (2 s) and a second at most (the process
    // must be gone by then), plus a second for a loaded machine.
    assert!(
        took < Duration::from_secs(2 + 4),
        "exited {took:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_postgres_outage_exits_within_the_drain_timeout() {
    let took = signal_during_outage(Away::Postgres, None).await;
    // As above: the writer and the hand-back give up at the deadline.
    assert!(
        took < Duration::from_secs(2 + 4),
        "exited {took:?} after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_redis_outage_stops_at_once() {
    let took = signal_during_outage(Away::Redis, Some(Duration::from_millis(300))).await;
    assert!(
        took < Duration::from_millis(2500),
        "exited {took:?} after the second SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_postgres_outage_stops_at_once() {
    let took = signal_during_outage(Away::Postgres, Some(Duration::from_millis(300))).await;
    assert!(
        took < Duration::from_millis(2500),
        "exited {took:?} after the second SIGTERM"
    );
}
