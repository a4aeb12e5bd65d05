//! Workflows: push creates then updates in place; `load_for_batch` resolves ids, names
//! and organization-scoped names in a single query.

use warden::{Store, WorkflowKey, WorkflowPushAction, WorkflowSpec};
use warden_tests::db::{xact_commit, TestDb};

fn spec(org: Option<&str>, name: &str, source: &str) -> WorkflowSpec {
    WorkflowSpec {
        org: org.map(str::to_string),
        name: name.to_string(),
        path: format!("workflows/{name}.py"),
        function_name: "run".to_string(),
        source: source.to_string(),
        default_timeout_ms: Some(30_000),
        time_saved_seconds: Some(60.0),
        value: None,
        retry_policy: None,
    }
}

#[tokio::test]
async fn push_creates_then_updates_keeping_the_id() {
    let db = TestDb::new().await;
    let s = &db.store;

    let first = s
        .push_workflow(&spec(None, "report", "def run(): return 1"))
        .await
        .unwrap();
    assert_eq!(first.action, WorkflowPushAction::Created);
    assert_eq!(first.org_id, None);

    let same = s
        .push_workflow(&spec(None, "report", "def run(): return 1"))
        .await
        .unwrap();
    assert_eq!(
        (same.id, same.action),
        (first.id, WorkflowPushAction::Unchanged)
    );

    let updated = s
        .push_workflow(&spec(None, "report", "def run(): return 2"))
        .await
        .unwrap();
    assert_eq!(
        (updated.id, updated.action),
        (first.id, WorkflowPushAction::Updated)
    );

    // The same name in an organization is another workflow; the org is created once.
    let in_org = s
        .push_workflow(&spec(Some("acme"), "report", "def run(): return 3"))
        .await
        .unwrap();
    assert_eq!(in_org.action, WorkflowPushAction::Created);
    assert_ne!(in_org.id, first.id);
    let again = s
        .push_workflow(&spec(Some("acme"), "other", "x = 1"))
        .await
        .unwrap();
    assert_eq!(again.org_id, in_org.org_id);

    let list = s.list_workflows().await.unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0].org, None);
    assert_eq!(list[0].name, "report");
    assert_eq!(list[0].time_saved_seconds, 60.0);

    // Bad specs are refused before any statement.
    assert!(s.push_workflow(&spec(None, "", "x")).await.is_err());
    assert!(s.push_workflow(&spec(None, "123", "x")).await.is_err());
}

#[tokio::test]
async fn load_for_batch_resolves_ids_names_and_org_names_in_one_query() {
    let db = TestDb::new().await;
    let global = db
        .store
        .push_workflow(&spec(None, "report", "g"))
        .await
        .unwrap();
    let acme = db
        .store
        .push_workflow(&spec(Some("acme"), "report", "a"))
        .await
        .unwrap();
    let other = db
        .store
        .push_workflow(&spec(Some("acme"), "sync", "s"))
        .await
        .unwrap();

    let refs = vec![
        WorkflowKey::parse(&global.id.to_string(), None),
        WorkflowKey::parse("report", None),
        WorkflowKey::parse("report", Some("acme")),
        WorkflowKey::parse(&other.id.to_string(), Some("acme")),
        WorkflowKey::parse("sync", None), // only exists in acme
        WorkflowKey::parse("missing", Some("acme")), // does not exist
        WorkflowKey::parse("report", Some("nobody")), // no such org
        WorkflowKey::parse("999999", None), // no such id
        WorkflowKey::parse("report", None), // repeated
    ];

    // A store with ONE connection, so the statistics below are all this backend's.
    let store = Store::connect(&db.url, 1).await.unwrap();
    let warm = store.load_for_batch(&refs).await.unwrap(); // prepares the statement
    let mut conn = store.pool().acquire().await.unwrap();
    // Baseline: what two measurements cost with nothing in between (after one to
    // prepare the measuring statements, whose preparation counts too).
    xact_commit(&mut conn).await;
    let a = xact_commit(&mut conn).await;
    let b = xact_commit(&mut conn).await;
    let overhead = b - a;
    drop(conn);
    let found = store.load_for_batch(&refs).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let c = xact_commit(&mut conn).await;
    let statements = c - b - overhead;
    println!(
        "load_for_batch: {} refs, {statements} transactions (a={a} b={b} c={c})",
        refs.len(),
    );
    assert_eq!(statements, 1, "load_for_batch must be one statement");
    drop(conn);
    assert_eq!(found, warm);

    assert_eq!(found.len(), 4, "{found:#?}");
    assert_eq!(found[&WorkflowKey::Id(global.id)].source, "g");
    let by_name = &found[&WorkflowKey::parse("report", None)];
    assert_eq!((by_name.id, by_name.org.as_deref()), (global.id, None));
    let by_org = &found[&WorkflowKey::parse("report", Some("acme"))];
    assert_eq!((by_org.id, by_org.org.as_deref()), (acme.id, Some("acme")));
    assert_eq!(by_org.default_timeout_ms, Some(30_000));
    assert_eq!(found[&WorkflowKey::Id(other.id)].name, "sync");
    for absent in ["sync", "999999"] {
        assert!(
            !found.contains_key(&WorkflowKey::parse(absent, None)),
            "{absent}"
        );
    }
    assert!(!found.contains_key(&WorkflowKey::parse("missing", Some("acme"))));
    assert!(!found.contains_key(&WorkflowKey::parse("report", Some("nobody"))));

    // Inactive workflows are not loaded.
    sqlx::query("UPDATE workflows SET active = false WHERE id = $1")
        .bind(acme.id)
        .execute(db.store.pool())
        .await
        .unwrap();
    let found = store.load_for_batch(&refs).await.unwrap();
    assert!(!found.contains_key(&WorkflowKey::parse("report", Some("acme"))));
    assert!(store.load_for_batch(&[]).await.unwrap().is_empty());
    // A name PostgreSQL could not even hold finds nothing, and fails nothing.
    let odd = [
        WorkflowKey::parse("re\0port", None),
        WorkflowKey::parse("report", Some("a\0")),
    ];
    assert!(store.load_for_batch(&odd).await.unwrap().is_empty());
}
