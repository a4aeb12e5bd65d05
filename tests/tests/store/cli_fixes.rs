//! The CLI fixes of issue 13, through the real `warden` binary against the test's own
//! database and Redis prefix: `migrate` says what it applied, `config set --string`
//! keeps the text, `cancel` refuses unknown and finished ids, `kv list` and
//! `executions list` fit their columns (and the latter shows times and organization and
//! filters by it), and a missing DATABASE_URL is warned about.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use warden_tests::cli::{ok, stderr, stdout, warden};
use warden_tests::db::TestDb;
use warden_tests::pool::warden_bin;
use warden_tests::redis::TestRedis;

/// `warden ARGS` from the current directory (none of these commands reads files).
fn run(db: &TestDb, redis: &TestRedis, args: &[&str]) -> Output {
    warden(db, redis, Path::new("."), args)
}

/// This build's migrations as `migrate` names them (`0003_sdk`), and the newest version.
fn migrations() -> (Vec<String>, i64) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../supervisor/migrations");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".sql").map(str::to_string))
        .collect();
    names.sort();
    let version = names
        .iter()
        .map(|n| n.split('_').next().unwrap().parse::<i64>().unwrap())
        .max()
        .unwrap();
    (names, version)
}

async fn exec(db: &TestDb, sql: &str) {
    sqlx::raw_sql(sql).execute(db.store.pool()).await.unwrap();
}

#[tokio::test]
async fn migrate_says_what_it_applied() {
    let db = TestDb::empty().await;
    let redis = TestRedis::new();
    let (names, version) = migrations();
    let first = ok(run(&db, &redis, &["migrate"]));
    assert_eq!(
        first,
        format!(
            "applied {} migrations ({}); the schema is at version {version}\n",
            names.len(),
            names.join(", ")
        )
    );
    let again = ok(run(&db, &redis, &["migrate"]));
    assert_eq!(
        again,
        format!("the schema is already up to date (version {version})\n")
    );
}

#[tokio::test]
async fn config_set_string_keeps_the_text() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let value = |key: &'static str| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, serde_json::Value>(
                "SELECT value FROM configs WHERE key = $1 AND org_id IS NULL",
            )
            .bind(key)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };

    // Without --string, JSON-looking text is JSON (as before).
    ok(run(&db, &redis, &["config", "set", "plain", "1.10"]));
    assert_eq!(value("plain").await, json!(1.1));

    let out = ok(run(
        &db,
        &redis,
        &["config", "set", "ver", "1.10", "--string"],
    ));
    assert_eq!(out, "global: ver set\n");
    assert_eq!(value("ver").await, json!("1.10"));
    ok(run(
        &db,
        &redis,
        &["config", "set", "flag", "true", "--string"],
    ));
    assert_eq!(value("flag").await, json!("true"));
    ok(run(
        &db,
        &redis,
        &["config", "set", "quoted", "\"x\"", "--string"],
    ));
    assert_eq!(value("quoted").await, json!("\"x\""));

    let help = ok(run(&db, &redis, &["config", "set", "--help"]));
    assert!(help.contains("--string"), "{help}");
    assert!(help.contains("verbatim"), "{help}");
}

#[tokio::test]
async fn cancel_refuses_unknown_and_finished_ids() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    exec(
        &db,
        "INSERT INTO executions (id, workflow_name, status, completed_at)
             VALUES ('done-1', 'wf', 'success', now());
         INSERT INTO executions (id, workflow_name, status) VALUES ('run-1', 'wf', 'running');",
    )
    .await;

    let unknown = run(&db, &redis, &["cancel", "nope"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert_eq!(stdout(&unknown), "");
    assert_eq!(stderr(&unknown), "error: no execution with id `nope`\n");

    let done = run(&db, &redis, &["cancel", "done-1"]);
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    assert_eq!(
        stderr(&done),
        "error: execution `done-1` already ended (success); there is nothing to cancel\n"
    );

    // Running (recorded) and queued (only in the stream) are cancelled as before.
    let running = ok(run(&db, &redis, &["cancel", "run-1"]));
    assert_eq!(running, "cancel requested for run-1\n");
    redis
        .add_to_stream(&[("id", "queued-1"), ("workflow", "wf"), ("params", "{}")])
        .await;
    let queued = ok(run(&db, &redis, &["cancel", "queued-1"]));
    let mut conn = redis.conn().await;
    assert_eq!(queued, "cancel requested for queued-1\n");
    let flagged: Option<String> = redis::cmd("GET")
        .arg(redis.keys().cancelled("queued-1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(flagged.is_some());
}

#[tokio::test]
async fn kv_list_columns_fit_their_values() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    exec(
        &db,
        "INSERT INTO organizations (name) VALUES ('a-long-organization-name');
         INSERT INTO kv (org_id, key, value, updated_by)
             SELECT id, 'a-key-longer-than-thirty-two-characters', '{\"n\": 1}', 'exec-1'
             FROM organizations;
         INSERT INTO kv (org_id, key, value) VALUES (NULL, 'k', '2');",
    )
    .await;
    let out = ok(run(&db, &redis, &["kv", "list"]));
    let expected = "\
org                       key                                      updated by  value
-                         k                                        -           2
a-long-organization-name  a-key-longer-than-thirty-two-characters  exec-1      {\"n\":1}
";
    let mut lines: Vec<&str> = out.lines().collect();
    lines[1..].sort();
    assert_eq!(lines.join("\n") + "\n", expected, "{out}");
}

#[tokio::test]
async fn executions_list_shows_times_and_organization_and_filters_by_it() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    exec(
        &db,
        "INSERT INTO organizations (name) VALUES ('acme'), ('globex');
         INSERT INTO executions (id, workflow_name, org_id, status, queued_at, started_at,
                                 completed_at, duration_ms)
             SELECT 'e-acme', 'report', id, 'success', '2026-12-01 10:00:00+00',
                    '2026-12-01 10:00:01+00', '2026-12-01 10:00:02+00', 1000.0
             FROM organizations WHERE name = 'acme';
         INSERT INTO executions (id, workflow_name, org_id, status, queued_at)
             SELECT 'e-globex', 'a-long-workflow-name', id, 'pending', '2026-12-01 11:00:00+00'
             FROM organizations WHERE name = 'globex';",
    )
    .await;

    let all = ok(run(&db, &redis, &["executions", "list"]));
    assert_eq!(
        all,
        "\
id        org     workflow              status   attempt  queued (UTC)         started (UTC)        ms      error
e-globex  globex  a-long-workflow-name  pending  1        2026-12-01 11:00:00  -
e-acme    acme    report                success  1        2026-12-01 10:00:00  2026-12-01 10:00:01  1000.0
"
    );
    let acme = ok(run(&db, &redis, &["executions", "list", "--org", "acme"]));
    assert_eq!(
        acme,
        "\
id      org   workflow  status   attempt  queued (UTC)         started (UTC)        ms      error
e-acme  acme  report    success  1        2026-12-01 10:00:00  2026-12-01 10:00:01  1000.0
"
    );
    let missing = run(&db, &redis, &["executions", "list", "--org", "nobody"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(stderr(&missing), "error: there is no organization nobody\n");
}

#[tokio::test]
async fn a_default_database_url_is_warned_about() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let set = ok(run(&db, &redis, &["kv", "list"]));
    assert_eq!(set, "org  key  updated by  value\n");

    // Without DATABASE_URL the command goes to the built-in default (whatever is there)
    // and says so on stderr, once, before anything else.
    let out = Command::new(warden_bin())
        .args(["kv", "list"])
        .env_remove("DATABASE_URL")
        .env("REDIS_URL", &redis.url)
        .env("WARDEN_KEY_PREFIX", &redis.prefix)
        .env_remove("RUST_LOG")
        .env_remove("WARDEN_LOG_LEVEL")
        .output()
        .unwrap();
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].ends_with(
            "DATABASE_URL is not set: using the built-in default \
             postgres://postgres@127.0.0.1:5432/warden; set DATABASE_URL or pass \
             --database-url to use another database"
        ),
        "{err}"
    );

    // Set, no warning.
    let with = run(&db, &redis, &["kv", "list"]);
    assert!(!stderr(&with).contains("DATABASE_URL"), "{}", stderr(&with));
}
