//! Config values: set per organization or globally, typed, listed whole for the cache.

use serde_json::json;
use warden::ConfigKind;
use warden_tests::db::TestDb;

#[tokio::test]
async fn configs_are_set_typed_listed_and_deleted() {
    let db = TestDb::new().await;
    let s = &db.store;
    s.set_config(None, "region", &json!("eu"), ConfigKind::String)
        .await
        .unwrap();
    s.set_config(Some("acme"), "region", &json!("us"), ConfigKind::String)
        .await
        .unwrap();
    // Secrets are stored sealed (see sdk/config.rs); the store only checks the shape.
    let key = warden::SecretKey::parse(&"ab".repeat(32), "test").unwrap();
    let sealed =
        serde_json::to_value(key.seal(warden::Scope::Org(1), "token", "hunter2").unwrap()).unwrap();
    s.set_config(Some("acme"), "token", &sealed, ConfigKind::Secret)
        .await
        .unwrap();
    assert!(s
        .set_config(Some("acme"), "token", &json!("hunter2"), ConfigKind::Secret)
        .await
        .is_err());
    s.set_config(Some("acme"), "region", &json!("ap"), ConfigKind::String)
        .await
        .unwrap();
    assert!(s
        .set_config(None, "n", &json!("x"), ConfigKind::Number)
        .await
        .is_err());

    let all = s.list_configs().await.unwrap();
    let view: Vec<(Option<&str>, &str, &serde_json::Value)> = all
        .iter()
        .map(|c| (c.org.as_deref(), c.key.as_str(), &c.value))
        .collect();
    assert_eq!(
        view,
        vec![
            (None, "region", &json!("eu")),
            (Some("acme"), "region", &json!("ap")),
            (Some("acme"), "token", &sealed),
        ]
    );
    assert!(
        !format!("{:?}", all[2]).contains("hunter2"),
        "secrets are not printed"
    );

    // Deleting for an unknown organization does not touch the global key.
    assert!(!s.delete_config(Some("nobody"), "region").await.unwrap());
    assert!(s.delete_config(Some("acme"), "region").await.unwrap());
    assert!(s.delete_config(None, "region").await.unwrap());
    assert_eq!(s.list_configs().await.unwrap().len(), 1);
    let orgs = s.list_organizations().await.unwrap();
    assert_eq!(
        orgs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        vec!["acme"]
    );
}
