//! The schema: migrations apply to an empty database, `check_schema` refuses an
//! unmigrated one (pointing at `warden migrate`), and connection failures say which URL
//! and what to do.

use warden::{Store, StoreError, MIGRATOR};
use warden_tests::db::{server_url, TestDb};

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_check_schema_guards_serve() {
    let db = TestDb::empty().await;

    let err = db
        .store
        .check_schema()
        .await
        .expect_err("an empty database is out of date");
    assert!(matches!(err, StoreError::SchemaOutOfDate { .. }), "{err:?}");
    assert!(err.to_string().contains("warden migrate"), "{err}");
    assert!(err.to_string().contains("applied: none"), "{err}");

    db.store.migrate().await.expect("migrate");
    let status = db
        .store
        .check_schema()
        .await
        .expect("schema is current after migrate");
    assert_eq!(status.applied, status.expected);
    assert_eq!(status.expected.len(), MIGRATOR.iter().count());

    // Migrating again is a no-op.
    db.store.migrate().await.expect("migrate twice");

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    for t in [
        "configs",
        "daily_metrics",
        "execution_logs",
        "executions",
        "organizations",
        "workflows",
        "workspace_modules",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t}: {tables:?}"
        );
    }

    // A migration this build does not know (a newer supervisor migrated) is refused too.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let err = db
        .store
        .check_schema()
        .await
        .expect_err("unknown migration");
    assert!(err.to_string().contains("unknown to this build"), "{err}");
}

#[tokio::test]
async fn connect_names_the_url_and_what_to_do() {
    // The server is up, the database is not.
    let url = format!("{}/warden_t_does_not_exist", server_url());
    let err = Store::connect(&url, 1).await.expect_err("no such database");
    assert!(matches!(err, StoreError::DatabaseMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("warden_t_does_not_exist") && msg.contains("warden migrate"),
        "{msg}"
    );

    // Nothing listens there; the password never appears in the message.
    let err = Store::connect("postgres://postgres:hunter2@127.0.0.1:1/x", 1)
        .await
        .expect_err("nothing listens on port 1");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(msg.contains("127.0.0.1:1") && msg.contains("***"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");

    // create_database_if_missing creates once.
    let db = TestDb::empty().await;
    assert!(!Store::create_database_if_missing(&db.url).await.unwrap());
}
