//! The module cache through `warden serve`, end to end: a thousand executions that
//! import workspace modules survive a FLUSHALL (every key of the test's prefix deleted)
//! and evicted content keys; a `warden module push` between two executions is seen by
//! the second; a change made straight in SQL reaches the executions after it.

use std::process::Command;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use warden::testing::module_store as store;
use warden::{ModuleCache, ModuleFile, ModuleSync};
use warden_tests::pool::warden_bin;
use warden_tests::serve::{value, TestServe};

/// Ten modules in a package, each adding its own number.
fn workspace(version: u32) -> Vec<ModuleFile> {
    let mut files = vec![ModuleFile::new(
        "shared/__init__.py",
        format!("VERSION = {version}\n"),
    )];
    for i in 0..10 {
        files.push(ModuleFile::new(
            format!("shared/m{i}.py"),
            format!("from . import VERSION\n\ndef f(x):\n    return x + {i}\n"),
        ));
    }
    files
}

const WORKFLOW: &str = r#"
import importlib
import shared

def run(x):
    total = sum(importlib.import_module(f"shared.m{i}").f(x) for i in range(10))
    return {"total": total, "version": shared.VERSION}
"#;

/// Deletes every key under the test's prefix: what FLUSHALL does to this test.
async fn flushall(s: &TestServe) -> usize {
    let keys = s.redis.scan_keys();
    if !keys.is_empty() {
        let _: () = s.redis.conn().await.del(&keys).await.unwrap();
    }
    keys.len()
}

async fn count(s: &TestServe, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(s.db.store.pool())
        .await
        .unwrap()
}

/// Submits `ids`, and once every one of them was read and recorded `running` or
/// finished (none left unread in the stream, which a real FLUSHALL would lose too),
/// runs `during` while they run; then waits for all of them to finish.
async fn wave(s: &TestServe, from: usize, n: usize, during: impl std::future::Future<Output = ()>) {
    let requests: Vec<_> = (from..from + n)
        .map(|i| TestServe::request(&format!("e{i}"), "mods", &format!("{{\"x\": {i}}}")))
        .collect();
    s.client.submit_many(&requests).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(s, "SELECT count(*) FROM executions").await < (from + n) as i64 {
        assert!(Instant::now() < deadline, "the wave was not read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    during.await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(
        s,
        "SELECT count(*) FROM executions WHERE status NOT IN ('pending', 'running')",
    )
    .await
        < (from + n) as i64
    {
        assert!(Instant::now() < deadline, "the wave did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_executions_survive_a_flushall_and_evicted_modules() {
    let mut s = TestServe::start(|cfg| cfg.pool.workers = 2).await;
    store::push(&s.db.store, &workspace(1)).await.unwrap();
    // What `warden module push` does after storing: bring the cache up to date now.
    let cache = ModuleCache::connect(&s.redis.url, s.redis.keys())
        .await
        .unwrap();
    let sync = ModuleSync::new(s.db.store.clone(), cache);
    let paths: Vec<String> = workspace(1).into_iter().map(|f| f.path).collect();
    sync.sync_paths(&paths).await.unwrap();
    s.push("mods", WORKFLOW, None).await;

    let mut done = 0;
    for _ in 0..3 {
        wave(&s, done, 100, async {}).await;
        done += 100;
    }
    // FLUSHALL while executions are running.
    wave(&s, done, 100, async {
        assert!(flushall(&s).await > 0);
    })
    .await;
    done += 100;
    for _ in 0..2 {
        wave(&s, done, 100, async {}).await;
        done += 100;
    }
    // Evict three modules' content (the index still lists them), then a push of
    // another module moves the generation, so templates reload and find the holes.
    wave(&s, done, 100, async {
        let k = s.redis.keys();
        let _: () = s
            .redis
            .conn()
            .await
            .del(&[
                k.module("shared/m3.py"),
                k.module("shared/m4.py"),
                k.module("shared/m5.py"),
            ])
            .await
            .unwrap();
        let mut v2 = workspace(2);
        v2.truncate(1);
        store::push(&s.db.store, &v2).await.unwrap();
        sync.sync_paths(&["shared/__init__.py".to_string()])
            .await
            .unwrap();
    })
    .await;
    done += 100;
    while done < 1000 {
        wave(&s, done, 100, async {}).await;
        done += 100;
    }

    let report = s.stop().await;
    assert_eq!(report.executions, 1000);
    assert_eq!(
        report.by_status.get("success"),
        Some(&1000),
        "{:?}",
        report.by_status
    );
    // Every result is the right sum, whichever version of `shared` it ran with.
    let rows: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT id, result FROM executions ORDER BY id")
            .fetch_all(s.db.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1000);
    for (id, result) in rows {
        let x: i64 = id[1..].parse().unwrap();
        assert_eq!(
            result["total"],
            serde_json::json!(10 * x + 45),
            "{id}: {result}"
        );
    }
    // The evicted modules were re-cached from the database.
    let mut conn = s.redis.conn().await;
    for p in ["shared/m3.py", "shared/m4.py", "shared/m5.py"] {
        let exists: bool = conn
            .hexists(s.redis.keys().module(p), "content")
            .await
            .unwrap();
        assert!(exists, "{p} was refilled");
    }
    // One GET per batch in the steady state: far fewer module-cache commands than
    // executions (start-up, the refill after the wipe and the syncs included).
    assert!(
        report.module_cache_redis.commands < 1000,
        "{:?}",
        report.module_cache_redis
    );
}

fn cli(s: &TestServe, dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(warden_bin())
        .args(["module"])
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", &s.db.url)
        .env("REDIS_URL", &s.redis.url)
        .env("WARDEN_KEY_PREFIX", &s.redis.prefix)
        .output()
        .expect("run warden module");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "warden module {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_between_two_executions_is_seen_by_the_second() {
    for isolation in [
        warden_protocol::Isolation::Fork,
        warden_protocol::Isolation::Reuse,
    ] {
        let s = TestServe::start(|cfg| cfg.pool.isolation = isolation).await;
        let ws = tempfile::tempdir().unwrap();
        let pkg = ws.path().join("shared");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("__init__.py"), "").unwrap();
        std::fs::write(
            pkg.join("tickets.py"),
            "def open_ticket(t):\n    return 'v1:' + t\n",
        )
        .unwrap();
        let out = cli(&s, ws.path(), &["push", "shared"]);
        assert!(out.contains("created   shared/tickets.py"), "{out}");
        s.push(
            "tickets",
            "from shared.tickets import open_ticket\n\ndef run(t):\n    return open_ticket(t)\n",
            None,
        )
        .await;

        let first = s.run("first", "tickets", r#"{"t": "a"}"#).await;
        assert_eq!(value(&first), serde_json::json!("v1:a"), "{first:?}");

        std::fs::write(
            pkg.join("tickets.py"),
            "def open_ticket(t):\n    return 'v2:' + t\n",
        )
        .unwrap();
        let out = cli(&s, ws.path(), &["push", "shared"]);
        assert!(out.contains("updated   shared/tickets.py"), "{out}");
        assert!(out.contains("unchanged shared/__init__.py"), "{out}");
        let second = s.run("second", "tickets", r#"{"t": "b"}"#).await;
        assert_eq!(
            value(&second),
            serde_json::json!("v2:b"),
            "{isolation:?}: {second:?}"
        );

        let listed = cli(&s, ws.path(), &["list"]);
        assert!(listed.contains("shared/tickets.py"), "{listed}");
        cli(&s, ws.path(), &["rm", "shared/tickets.py"]);
        let third = s.run("third", "tickets", r#"{"t": "c"}"#).await;
        assert_eq!(third.status.as_str(), "failed", "{third:?}");
        assert_eq!(
            third.error_type.as_deref(),
            Some("ModuleNotFoundError"),
            "{third:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_in_sql_reaches_redis_and_the_next_executions() {
    let s = TestServe::start(|_| {}).await;
    store::push(&s.db.store, &[ModuleFile::new("conf.py", "LEVEL = 1\n")])
        .await
        .unwrap();
    s.push(
        "level",
        "import conf\n\ndef run():\n    return conf.LEVEL\n",
        None,
    )
    .await;
    let generation = |s: &TestServe| {
        let k = s.redis.keys().module_generation();
        let client = s.redis.client.clone();
        async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("GET")
                .arg(k)
                .query_async::<Option<u64>>(&mut c)
                .await
                .unwrap()
        }
    };
    // The push above reached Redis through NOTIFY alone (no CLI).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = s.redis.conn().await;
    loop {
        let cached: bool = conn
            .sismember(s.redis.keys().module_index(), "conf.py")
            .await
            .unwrap();
        if cached {
            break;
        }
        assert!(Instant::now() < deadline, "the push never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        value(&s.run("l1", "level", "{}").await),
        serde_json::json!(1)
    );

    let g1 = generation(&s).await;
    sqlx::query("UPDATE workspace_modules SET content = 'LEVEL = 2\n', content_hash = 'x2' WHERE path = 'conf.py'")
        .execute(s.db.store.pool())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while generation(&s).await == g1 {
        assert!(Instant::now() < deadline, "the change never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        value(&s.run("l2", "level", "{}").await),
        serde_json::json!(2)
    );
}
