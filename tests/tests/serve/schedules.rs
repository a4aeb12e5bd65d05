//! Cron schedules (supervisor/src/schedule.rs, supervisor/src/store/schedules.rs): each
//! tick becomes exactly one execution whatever the number of supervisors, and ticks
//! missed while no supervisor ran follow the schedule's catch-up policy.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use warden_tests::cli::{ok, warden};
use warden_tests::db::{scalar, TestDb};
use warden_tests::redis::TestRedis;
use warden_tests::serve::{config, spawn, TestServe};

const QUICK: &str = "def run():\n    return 1\n";

/// The ticks (Unix seconds) of `schedule`'s executions, from their ids.
async fn ticks(db: &TestDb, schedule: &str) -> Vec<i64> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM executions WHERE id LIKE 'schedule:' || $1 || ':2%' ORDER BY id",
    )
    .bind(schedule)
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    ids.iter()
        .map(|id| {
            let t = id.rsplit(':').next().unwrap();
            chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ")
                .unwrap()
                .and_utc()
                .timestamp()
        })
        .collect()
}

fn consecutive(t: &[i64]) -> bool {
    t.windows(2).all(|w| w[1] == w[0] + 1)
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn unfinished(db: &TestDb) -> i64 {
    scalar(
        db,
        "SELECT count(*) FROM executions WHERE status NOT IN ('success', 'failed', 'timeout', 'cancelled', 'crashed')",
    )
    .await
}

/// Two supervisors and one schedule ticking every second for 30 ticks: exactly one
/// execution per tick, no tick missed, each run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_supervisors_run_each_tick_of_a_one_second_schedule_once() {
    let mut s1 = TestServe::start(|_| {}).await;
    s1.push("quick", QUICK, None).await;
    let dir = tempfile::Builder::new()
        .prefix("warden-sched-")
        .tempdir()
        .unwrap();
    let (sig2, s2) = spawn(config(&s1.db, &s1.redis, &dir, "s2"));
    ok(warden(
        &s1.db,
        &s1.redis,
        Path::new("."),
        &[
            "schedule",
            "add",
            "every-second",
            "--workflow",
            "quick",
            "--cron",
            "* * * * * *",
            "--catch-up",
            "all",
        ],
    ));
    let list = ok(warden(
        &s1.db,
        &s1.redis,
        Path::new("."),
        &["schedule", "list"],
    ));
    assert!(
        list.contains("every-second") && list.contains("active"),
        "{list}"
    );
    wait_for("30 ticks", Duration::from_secs(60), async || {
        ticks(&s1.db, "every-second").await.len() >= 30
    })
    .await;
    ok(warden(
        &s1.db,
        &s1.redis,
        Path::new("."),
        &["schedule", "pause", "every-second"],
    ));
    wait_for(
        "every tick's execution finished",
        Duration::from_secs(30),
        async || unfinished(&s1.db).await == 0,
    )
    .await;
    let t = ticks(&s1.db, "every-second").await;
    assert!(t.len() >= 30, "{t:?}");
    assert!(
        consecutive(&t),
        "one execution per tick, none missed: {t:?}"
    );
    let _ = sig2.send(Some(warden::Shutdown::Drain));
    let r2 = tokio::time::timeout(Duration::from_secs(30), s2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let r1 = s1.stop().await;
    assert_eq!(
        (r1.executions + r2.executions) as usize,
        t.len(),
        "each ran once: {r1:?} {r2:?}"
    );
    assert_eq!(
        scalar(
            &s1.db,
            "SELECT count(*) FROM executions WHERE status <> 'success' OR attempt <> 1"
        )
        .await,
        0
    );
}

/// No supervisor for 10 ticks, then one starts: `all` runs every missed tick (once),
/// `latest` only the latest; `schedule run` runs one now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_follow_the_catch_up_policy() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    db.push_workflow("quick", QUICK).await;
    for (name, policy) in [("all-of-them", "all"), ("latest-only", "latest")] {
        ok(warden(
            &db,
            &redis,
            Path::new("."),
            &[
                "schedule",
                "add",
                name,
                "--workflow",
                "quick",
                "--cron",
                "* * * * * *",
                "--catch-up",
                policy,
            ],
        ));
    }
    let down_since = chrono::Utc::now().timestamp();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let dir = tempfile::Builder::new()
        .prefix("warden-sched-")
        .tempdir()
        .unwrap();
    let (sig, handle) = spawn(config(&db, &redis, &dir, "late"));
    wait_for(
        "the missed ticks fired",
        Duration::from_secs(30),
        async || {
            ticks(&db, "all-of-them").await.len() >= 10
                && !ticks(&db, "latest-only").await.is_empty()
        },
    )
    .await;
    for name in ["all-of-them", "latest-only"] {
        ok(warden(
            &db,
            &redis,
            Path::new("."),
            &["schedule", "pause", name],
        ));
    }
    let id = ok(warden(
        &db,
        &redis,
        Path::new("."),
        &["schedule", "run", "latest-only"],
    ));
    assert!(id.trim().starts_with("schedule:latest-only:run-"), "{id}");
    wait_for("all finished", Duration::from_secs(30), async || {
        unfinished(&db).await == 0
    })
    .await;

    let all = ticks(&db, "all-of-them").await;
    assert!(consecutive(&all), "{all:?}");
    assert!(
        all[0] <= down_since + 1,
        "from the first missed tick: {all:?} (down since {down_since})"
    );
    assert!(all.len() >= 10, "{all:?}");
    let latest = ticks(&db, "latest-only").await;
    assert!(
        latest[0] >= down_since + 9,
        "only the latest missed tick, not the early ones: {latest:?} (down since {down_since})"
    );
    let unique: BTreeSet<i64> = latest.iter().copied().collect();
    assert_eq!(unique.len(), latest.len());
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM executions WHERE id LIKE 'schedule:latest-only:run-%' AND status = 'success'").await,
        1
    );
    let _ = sig.send(Some(warden::Shutdown::Drain));
    let report = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        report.executions as usize,
        all.len() + latest.len() + 1,
        "{report:?}"
    );
}
