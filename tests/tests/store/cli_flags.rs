//! Shell completions and man pages generated from the clap definitions, and the
//! connection flags accepted after a subcommand as well as before it, through the real
//! `warden` binary.

use std::path::Path;
use std::process::{Command, Stdio};

use warden_tests::cli::{ok, refused, warden, warden_env};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

/// A database URL nothing listens on: a command that used it would fail.
const NOWHERE_DB: &str = "postgres://postgres@127.0.0.1:1/nowhere";
const NOWHERE_REDIS: &str = "redis://127.0.0.1:1";

#[tokio::test]
async fn connection_flags_work_before_and_after_the_subcommand_and_its_subcommand() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let cwd = Path::new(".");
    sqlx::raw_sql(
        "INSERT INTO executions (id, workflow_name, status, queued_at)
             VALUES ('e-1', 'report', 'pending', '2026-12-01 11:00:00+00');",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    // The environment points nowhere: only the flag can reach the test's database.
    let env = [("DATABASE_URL", NOWHERE_DB), ("REDIS_URL", NOWHERE_REDIS)];
    let url = db.url.as_str();
    let before = ok(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &["executions", "--database-url", url, "list", "--json"],
    ));
    let after = ok(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &["executions", "list", "--json", "--database-url", url],
    ));
    let top = ok(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &["--database-url", url, "executions", "list", "--json"],
    ));
    assert!(before.contains("\"id\":\"e-1\""), "{before}");
    assert_eq!(before, after);
    assert_eq!(before, top);
    // And without the flag the environment's URL is used (and fails), so the flag is
    // what made the difference.
    refused(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &["executions", "list", "--json"],
    ));

    // Redis URL and key prefix after a nested subcommand too.
    let shown = ok(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &[
            "executions",
            "show",
            "e-1",
            "--database-url",
            url,
            "--redis-url",
            &redis.url,
            "--key-prefix",
            &redis.prefix,
        ],
    ));
    assert!(shown.contains("status:    pending"), "{shown}");
    let status = ok(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &[
            "status",
            "--json",
            "--redis-url",
            &redis.url,
            "--key-prefix",
            &redis.prefix,
        ],
    ));
    assert!(status.starts_with("{\"consumers\""), "{status}");
    let top = ok(warden_env(
        &db,
        &redis,
        cwd,
        &env,
        &[
            "--redis-url",
            &redis.url,
            "--key-prefix",
            &redis.prefix,
            "status",
            "--json",
        ],
    ));
    assert_eq!(status, top);
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_command_definitions() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let cwd = Path::new(".");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(warden(&db, &redis, cwd, &["completions", shell]));
        for word in ["executions", "logs", "database-url", "follow", "json"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    // The bash script is valid bash.
    let bash = ok(warden(&db, &redis, cwd, &["completions", "bash"]));
    let mut check = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), bash.as_bytes()).unwrap();
    drop(check.stdin.take());
    assert!(check.wait().unwrap().success());
    refused(warden(&db, &redis, cwd, &["completions", "tcsh"]));

    let page = ok(warden(&db, &redis, cwd, &["man"]));
    assert!(page.contains(".TH warden 1"), "{page}");
    assert!(page.contains("executions"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let listed = ok(warden(
        &db,
        &redis,
        cwd,
        &["man", "--dir", dir.path().to_str().unwrap()],
    ));
    for page in ["warden.1", "warden-logs.1", "warden-executions-list.1"] {
        let path = dir.path().join(page);
        assert!(path.exists(), "no {page}: {listed}");
        assert!(listed.contains(&path.display().to_string()), "{listed}");
    }
    let list_page = std::fs::read_to_string(dir.path().join("warden-executions-list.1")).unwrap();
    assert!(list_page.contains("json"), "{list_page}");
}
