//! The module cache, supervisor side, against real PostgreSQL and Redis: `module push`
//! semantics, the full sync, the per-batch generation check (one GET; a wiped cache is
//! refilled), LISTEN/NOTIFY incremental updates, and `module_miss` answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use warden::testing::module_store as store;
use warden::{ModuleCache, ModuleFile, ModulePushAction, ModuleSync};
use warden_protocol::{ReplyOutcome, Request};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

fn files(list: &[(&str, &str)]) -> Vec<ModuleFile> {
    list.iter().map(|(p, c)| ModuleFile::new(*p, *c)).collect()
}

const WS: &[(&str, &str)] = &[
    ("shared/__init__.py", "from .tickets import open_ticket\n"),
    ("shared/tickets.py", "def open_ticket(t):\n    return t\n"),
    ("tools/text.py", "X = 1\n"),
];

async fn sync_for(db: &TestDb, redis: &TestRedis) -> ModuleSync {
    let cache = ModuleCache::connect(&redis.url, redis.keys())
        .await
        .expect("connect the module cache");
    ModuleSync::new(db.store.clone(), cache)
}

/// `path → (content, hash)` of every cached module, the index, and the generation.
async fn cached(
    redis: &TestRedis,
) -> (
    BTreeMap<String, (String, String)>,
    BTreeSet<String>,
    Option<u64>,
) {
    let k = redis.keys();
    let mut conn = redis.conn().await;
    let index: BTreeSet<String> = conn.smembers(k.module_index()).await.unwrap();
    let generation: Option<u64> = conn.get(k.module_generation()).await.unwrap();
    let mut modules = BTreeMap::new();
    for key in redis.scan_keys() {
        let Some(path) = key.strip_prefix(&k.module("")) else {
            continue;
        };
        if key == k.module_index() || key == k.module_generation() {
            continue;
        }
        // The key may vanish between SCAN and HMGET while a sync runs: skip it then.
        let (content, hash): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("content")
            .arg("hash")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let (Some(content), Some(hash)) = (content, hash) {
            modules.insert(path.to_string(), (content, hash));
        }
    }
    (modules, index, generation)
}

async fn wipe(redis: &TestRedis) {
    let keys = redis.scan_keys();
    if !keys.is_empty() {
        let _: () = redis.conn().await.del(keys).await.unwrap();
    }
}

#[tokio::test]
async fn push_skips_unchanged_files_and_rm_takes_files_or_directories() {
    let db = TestDb::new().await;
    let got = store::push(&db.store, &files(WS)).await.unwrap();
    assert!(
        got.iter().all(|(_, a)| *a == ModulePushAction::Created),
        "{got:?}"
    );
    let mut changed = files(WS);
    changed[1] = ModuleFile::new("shared/tickets.py", "def open_ticket(t):\n    return [t]\n");
    let got = store::push(&db.store, &changed).await.unwrap();
    assert_eq!(
        got.iter().map(|(_, a)| *a).collect::<Vec<_>>(),
        [
            ModulePushAction::Unchanged,
            ModulePushAction::Updated,
            ModulePushAction::Unchanged
        ]
    );
    let listed = store::list(&db.store).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[1].path, "shared/tickets.py");
    assert_eq!(listed[1].content_hash, changed[1].hash);
    assert_eq!(listed[1].size_bytes as usize, changed[1].content.len());

    // A directory; `_` in `__init__` must not act as a LIKE wildcard.
    store::push(&db.store, &files(&[("sharedXinit.py", "")]))
        .await
        .unwrap();
    let mut gone = store::remove(&db.store, "shared").await.unwrap();
    gone.sort();
    assert_eq!(gone, ["shared/__init__.py", "shared/tickets.py"]);
    assert_eq!(
        store::remove(&db.store, "tools/text.py").await.unwrap(),
        ["tools/text.py"]
    );
    assert!(store::remove(&db.store, "nothing.py")
        .await
        .unwrap()
        .is_empty());
    let left: Vec<String> = store::list(&db.store)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(left, ["sharedXinit.py"]);
}

#[tokio::test]
async fn a_full_sync_makes_redis_hold_exactly_the_database_in_two_round_trips() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("pkg/m{i}.py"), format!("V = {i}\n")))
        .collect();
    let list: Vec<ModuleFile> = many
        .iter()
        .map(|(p, c)| ModuleFile::new(p.clone(), c.clone()))
        .collect();
    store::push(&db.store, &list).await.unwrap();
    let sync = sync_for(&db, &redis).await;

    // Something stale, as if from an earlier workspace.
    let mut conn = redis.conn().await;
    let _: () = conn
        .sadd(redis.keys().module_index(), "old.py")
        .await
        .unwrap();
    let _: () = conn
        .hset(redis.keys().module("old.py"), "content", "x")
        .await
        .unwrap();

    let before = sync.cache().calls();
    let s = sync.full_sync().await.unwrap();
    let used = sync.cache().calls() - before;
    assert_eq!(
        used.round_trips, 2,
        "one read pipeline, one write script: {used:?}"
    );
    assert_eq!((s.written, s.removed), (200, 1));
    let (modules, index, generation) = cached(&redis).await;
    assert_eq!(modules.len(), 200);
    assert_eq!(index.len(), 200);
    assert!(!index.contains("old.py"));
    assert_eq!(modules["pkg/m7.py"].0, "V = 7\n");
    assert_eq!(modules["pkg/m7.py"].1, warden::content_hash("V = 7\n"));
    assert_eq!(generation, Some(s.generation));

    // Nothing changed: one round trip, no write, same generation.
    let before = sync.cache().calls();
    let again = sync.full_sync().await.unwrap();
    assert_eq!((sync.cache().calls() - before).round_trips, 1);
    assert_eq!(again.generation, s.generation);
    assert_eq!((again.written, again.removed), (0, 0));
}

#[tokio::test]
async fn the_batch_check_is_one_get_and_refills_a_wiped_cache_with_a_new_generation() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    store::push(&db.store, &files(WS)).await.unwrap();
    let sync = sync_for(&db, &redis).await;
    let g1 = sync.full_sync().await.unwrap().generation;

    let before = sync.cache().calls();
    for _ in 0..10 {
        assert_eq!(sync.check().await, g1);
    }
    let used = sync.cache().calls() - before;
    assert_eq!(
        (used.round_trips, used.commands),
        (10, 10),
        "one GET per check"
    );

    // "FLUSHALL": every key of this test gone.
    wipe(&redis).await;
    let g2 = sync.check().await;
    assert_ne!(g2, g1, "a refilled cache never reuses a generation");
    let (modules, index, generation) = cached(&redis).await;
    assert_eq!(modules.len(), 3);
    assert_eq!(index.len(), 3);
    assert_eq!(generation, Some(g2));
}

#[tokio::test]
async fn an_incremental_write_never_lands_on_a_wiped_cache() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    store::push(&db.store, &files(WS)).await.unwrap();
    let sync = sync_for(&db, &redis).await;
    sync.full_sync().await.unwrap();
    wipe(&redis).await;
    let present = store::load(&db.store, &["tools/text.py".to_string()])
        .await
        .unwrap();
    let applied = sync
        .cache()
        .apply(&["tools/text.py".to_string()], &present)
        .await
        .unwrap();
    assert_eq!(applied, warden::Applied::Wiped);
    assert!(
        redis.scan_keys().is_empty(),
        "nothing half-written: {:?}",
        redis.scan_keys()
    );
    // sync_paths falls back to a full sync instead.
    let s = sync
        .sync_paths(&["tools/text.py".to_string()])
        .await
        .unwrap();
    assert_eq!(s.written, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_changes_reach_redis_through_listen_notify() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    store::push(&db.store, &files(WS)).await.unwrap();
    let sync = sync_for(&db, &redis).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let follower = sync.start(&db.url, stop).await.unwrap();
    let g1 = cached(&redis).await.2.unwrap();

    // Changes made straight in SQL, as another host's push would.
    let mut conn = db.connection().await;
    sqlx::query("UPDATE workspace_modules SET content = 'X = 2\n', content_hash = 'h2' WHERE path = 'tools/text.py'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM workspace_modules WHERE path = 'shared/tickets.py'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO workspace_modules (path, content, content_hash) VALUES ('new.py', 'N = 1\n', 'hn')")
        .execute(&mut conn)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (modules, index, generation) = cached(&redis).await;
        let done = modules.get("tools/text.py").map(|m| m.1.as_str()) == Some("h2")
            && !modules.contains_key("shared/tickets.py")
            && !index.contains("shared/tickets.py")
            && modules.get("new.py").map(|m| m.0.as_str()) == Some("N = 1\n")
            && index.contains("new.py");
        if done {
            assert_ne!(generation, Some(g1), "each change bumps the generation");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "changes did not reach Redis: {modules:?} {index:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower stops")
        .unwrap();
}

#[tokio::test]
async fn a_miss_is_recached_from_the_database() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    store::push(&db.store, &files(WS)).await.unwrap();
    let sync = sync_for(&db, &redis).await;
    let g1 = sync.full_sync().await.unwrap().generation;
    let miss = |args: &str| Request {
        execution_id: "e1".into(),
        request_id: 3,
        op: "module_miss".into(),
        args_json: args.into(),
    };

    // Partial eviction: the content key is gone, the index still lists it.
    let _: () = redis
        .conn()
        .await
        .del(redis.keys().module("shared/tickets.py"))
        .await
        .unwrap();
    let reply = sync.answer(&miss(r#"{"path": "shared/tickets.py"}"#)).await;
    assert_eq!((reply.execution_id.as_str(), reply.request_id), ("e1", 3));
    let ReplyOutcome::Ok { value_json } = reply.outcome else {
        panic!("{:?}", reply.outcome)
    };
    let v: serde_json::Value = serde_json::from_str(&value_json).unwrap();
    assert!(v["generation"].as_u64().unwrap() > g1, "{v}");
    assert_eq!(cached(&redis).await.0["shared/tickets.py"].0, WS[1].1);
    // The answer carries the module itself: a sandboxed child cannot read Redis.
    assert_eq!(v["content"], WS[1].1, "{v}");
    assert_eq!(
        v["hash"],
        cached(&redis).await.0["shared/tickets.py"].1,
        "{v}"
    );

    // Already cached (another child refilled it): answered from Redis alone, in two
    // round trips (is it there; read it).
    let before = sync.cache().calls();
    assert!(matches!(
        sync.answer(&miss(r#"{"path": "shared/tickets.py"}"#))
            .await
            .outcome,
        ReplyOutcome::Ok { .. }
    ));
    assert_eq!((sync.cache().calls() - before).round_trips, 2);

    // Not in the workspace (any more).
    let reply = sync.answer(&miss(r#"{"path": "gone/away.py"}"#)).await;
    let ReplyOutcome::Err { message } = reply.outcome else {
        panic!("{:?}", reply.outcome)
    };
    assert!(message.contains("gone/away.py"), "{message}");

    // The whole cache gone (the template asks before forking).
    wipe(&redis).await;
    assert!(matches!(
        sync.answer(&miss("{}")).await.outcome,
        ReplyOutcome::Ok { .. }
    ));
    assert_eq!(cached(&redis).await.0.len(), 3);

    // Garbage arguments get a reason, not a panic.
    assert!(matches!(
        sync.answer(&miss("not json")).await.outcome,
        ReplyOutcome::Err { .. }
    ));
    assert!(matches!(
        sync.answer(&miss(r#"{"path": "../etc/passwd"}"#))
            .await
            .outcome,
        ReplyOutcome::Err { .. }
    ));
}
