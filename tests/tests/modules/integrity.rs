//! Module integrity does not depend on Redis: an attacker who can write Redis rewrites a
//! cached module's content *and* its `hash` field and bumps the generation, exactly as
//! the supervisor would. Through a real `serve` (real workers, PostgreSQL, Redis), in
//! both isolation modes, the next execution that imports the module must not run the
//! attacker's code: it fails with a clear `ImportError`; the supervisor rewrites the
//! Redis copy from the database; and a later execution imports the real module.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use warden::testing::module_store as store;
use warden::{content_hash, ModuleFile};
use warden_protocol::Isolation;
use warden_tests::serve::{value, TestServe};

const REAL: &str = "def open_ticket(t):\n    return 'real:' + t\n";
/// What the attacker wants run: any effect at import, and a different answer.
const EVIL: &str =
    "import os\nos.environ['WARDEN_PWNED'] = '1'\n\ndef open_ticket(t):\n    return 'pwned'\n";

const WORKFLOW: &str =
    "from shared.tickets import open_ticket\n\ndef run(t):\n    return open_ticket(t)\n";

/// What an attacker with write access to Redis does: new content under a matching hash
/// field, and a new generation so that every template reloads.
async fn tamper(s: &TestServe, path: &str, content: &str) {
    let k = s.redis.keys();
    let mut conn = s.redis.conn().await;
    let _: () = conn
        .hset_multiple(
            k.module(path),
            &[("content", content), ("hash", &content_hash(content))],
        )
        .await
        .unwrap();
    let _: u64 = conn.incr(k.module_generation(), 1).await.unwrap();
}

async fn cached_content(s: &TestServe, path: &str) -> Option<String> {
    let mut conn = s.redis.conn().await;
    conn.hget(s.redis.keys().module(path), "content")
        .await
        .unwrap()
}

async fn scenario(isolation: Isolation) {
    let s = TestServe::start(|cfg| cfg.pool.isolation = isolation).await;
    let files = [
        ModuleFile::new("shared/__init__.py", ""),
        ModuleFile::new("shared/tickets.py", REAL),
    ];
    store::push(&s.db.store, &files).await.unwrap();
    s.push("tickets", WORKFLOW, None).await;
    // The push reaches Redis through NOTIFY; wait for it rather than race it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cached_content(&s, "shared/tickets.py").await.as_deref() != Some(REAL) {
        assert!(Instant::now() < deadline, "the push never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let first = s.run("before", "tickets", r#"{"t": "a"}"#).await;
    assert_eq!(
        value(&first),
        serde_json::json!("real:a"),
        "{isolation:?}: {first:?}"
    );

    tamper(&s, "shared/tickets.py", EVIL).await;
    let attacked = s.run("attacked", "tickets", r#"{"t": "b"}"#).await;
    assert_eq!(
        attacked.status.as_str(),
        "failed",
        "{isolation:?}: {attacked:?}"
    );
    assert_eq!(
        attacked.error_type.as_deref(),
        Some("ImportError"),
        "{isolation:?}: {attacked:?}"
    );
    let message = attacked.error_message.clone().unwrap_or_default();
    assert!(
        message.contains("the cached copy of shared/tickets.py does not match the workspace")
            && message.contains("it was not run")
            && message.contains("the supervisor was asked to repair it"),
        "{isolation:?}: {message}"
    );
    assert!(!message.contains("pwned"), "{message}");

    // Repaired from the database shortly after.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (content, hash): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(s.redis.keys().module("shared/tickets.py"))
            .arg("content")
            .arg("hash")
            .query_async(&mut s.redis.conn().await)
            .await
            .unwrap();
        if content.as_deref() == Some(REAL) {
            assert_eq!(hash, Some(content_hash(REAL)));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{isolation:?}: Redis still holds {content:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let after = s.run("after", "tickets", r#"{"t": "c"}"#).await;
    assert_eq!(
        value(&after),
        serde_json::json!("real:c"),
        "{isolation:?}: {after:?}"
    );

    // The same attack without touching the hash field (the content alone) and without
    // a generation bump is never run either: a template that holds a checked copy runs
    // it, one that must read the module finds the mismatch (and has it repaired).
    let k = s.redis.keys();
    let _: () = s
        .redis
        .conn()
        .await
        .hset(k.module("shared/tickets.py"), "content", EVIL)
        .await
        .unwrap();
    for i in 0..4 {
        let id = format!("quiet{i}");
        let quiet = s.run(&id, "tickets", r#"{"t": "d"}"#).await;
        match quiet.error_type.as_deref() {
            None => assert_eq!(value(&quiet), serde_json::json!("real:d"), "{quiet:?}"),
            Some(t) => {
                assert_eq!(t, "ImportError", "{isolation:?}: {quiet:?}");
                let m = quiet.error_message.unwrap_or_default();
                assert!(m.contains("does not match the workspace"), "{m}");
            }
        }
    }

    // A module the database does not hold, written into Redis's index, is not importable.
    tamper(&s, "injected.py", "X = 'pwned'\n").await;
    let _: () = s
        .redis
        .conn()
        .await
        .sadd(k.module_index(), "injected.py")
        .await
        .unwrap();
    s.push(
        "inject",
        "def run():\n    try:\n        import injected\n    except ImportError as e:\n        return type(e).__name__\n    return injected.X\n",
        None,
    )
    .await;
    let injected = s.run("injected", "inject", "{}").await;
    assert_eq!(
        value(&injected),
        serde_json::json!("ModuleNotFoundError"),
        "{isolation:?}: {injected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_rewritten_in_redis_is_never_run_in_fork_mode() {
    scenario(Isolation::Fork).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_rewritten_in_redis_is_never_run_in_reuse_mode() {
    scenario(Isolation::Reuse).await;
}
