//! Config and secrets on the supervisor's side, against real PostgreSQL and Redis: the
//! org-over-global precedence, secrets sealed at rest and opened only with the right
//! key, the Redis cache (one round trip per load, the database only on a miss,
//! generations that make a stale fill a miss), and the answers to the SDK's reads.

use serde_json::json;
use warden::testing::sdk_admin as admin;
use warden::testing::sdk_handler::{self as handler, Asker, Sources};
use warden::testing::ConfigCache;
use warden::Scope;
use warden::Store;
use warden::{Redactions, Sdk, SdkError, SecretKey};
use warden_protocol::{ReplyOutcome, Request};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

fn key() -> SecretKey {
    SecretKey::parse(&SecretKey::generate_hex().unwrap(), "test").unwrap()
}

async fn cache(db: &TestDb, redis: &TestRedis) -> ConfigCache {
    ConfigCache::connect(&redis.client, redis.keys(), db.store.clone())
        .await
        .unwrap()
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_listed_as_stars_and_need_the_right_key() {
    let db = TestDb::new().await;
    let k = key();
    admin::set(
        &db.store,
        Some("acme"),
        "api_token",
        "tok-hunter2-xyz",
        true,
        Some(&k),
    )
    .await
    .unwrap();
    let mut conn = db.connection().await;
    let (stored, kind): (String, String) =
        sqlx::query_as("SELECT value::text, kind FROM configs WHERE key = 'api_token'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(kind, "secret");
    assert!(
        !stored.contains("hunter2"),
        "no plaintext at rest: {stored}"
    );
    assert!(stored.contains("xchacha20poly1305"));

    let listed = db.store.list_configs().await.unwrap();
    assert_eq!(admin::display_value(&listed[0]), "***");
    assert!(!format!("{listed:?}").contains("hunter2"));

    // Without a key a secret cannot be set; a plaintext secret is refused by the store.
    let err = admin::set(&db.store, None, "t", "abcdefgh", true, None)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::NoKey), "{err}");
    assert!(err.to_string().contains("--secret-key-file"));
    let err = db
        .store
        .set_config(None, "t", &json!("plain"), warden::ConfigKind::Secret)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stored only encrypted"), "{err}");

    // A supervisor with the wrong key refuses to start, saying why; with none it starts.
    let redis = TestRedis::new();
    let err = Sdk::start(db.store.clone(), &redis.client, redis.keys(), Some(key()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not the one it was sealed with"),
        "{err}"
    );
    Sdk::start(db.store.clone(), &redis.client, redis.keys(), None)
        .await
        .unwrap();
    Sdk::start(db.store.clone(), &redis.client, redis.keys(), Some(k))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_cache_reads_redis_once_per_load_and_the_database_only_on_a_miss() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    admin::set(&db.store, None, "region", "eu", false, None)
        .await
        .unwrap();
    admin::set(&db.store, None, "retries", "3", false, None)
        .await
        .unwrap();
    let acme = admin::set(&db.store, Some("acme"), "region", "us", false, None)
        .await
        .unwrap();
    let c = cache(&db, &redis).await;
    let scopes = [Scope::Global, acme, Scope::Org(999)];

    let snap = c.load(&scopes).await.unwrap();
    assert_eq!(snap.get(Scope::Global).values["region"], json!("eu"));
    assert_eq!(snap.get(Scope::Global).values["retries"], json!(3));
    assert_eq!(snap.get(acme).values["region"], json!("us"));
    assert!(snap.get(Scope::Org(999)).values.is_empty());
    let s1 = c.stats();
    assert_eq!((s1.db_fills, s1.misses, s1.hits), (1, 3, 0));

    // Warm: one round trip, no query.
    let _ = c.load(&scopes).await.unwrap();
    let s2 = c.stats();
    assert_eq!(s2.db_fills, 1);
    assert_eq!(s2.redis_round_trips - s1.redis_round_trips, 1);
    assert_eq!(s2.hits, 3);

    // A change is seen once its scope is invalidated, and only that scope is re-read.
    admin::set(&db.store, Some("acme"), "region", "ap", false, None)
        .await
        .unwrap();
    admin::invalidate(&redis.url, &redis.keys(), acme)
        .await
        .unwrap();
    let snap = c.load(&scopes).await.unwrap();
    assert_eq!(snap.get(acme).values["region"], json!("ap"));
    let s3 = c.stats();
    assert_eq!((s3.db_fills - s2.db_fills, s3.misses - s2.misses), (1, 1));

    // A filler that read the database before a change stores its values under the old
    // generation; readers see the newer generation and treat them as a miss.
    let mut conn = redis.conn().await;
    let stale = json!({"gen": 0, "values": {"region": "STALE"}, "secrets": {}}).to_string();
    let _: () = redis::cmd("SET")
        .arg(redis.keys().config_cache(&acme.to_string()))
        .arg(stale)
        .query_async(&mut conn)
        .await
        .unwrap();
    let snap = c.load(&[acme]).await.unwrap();
    assert_eq!(snap.get(acme).values["region"], json!("ap"));
}

#[tokio::test]
async fn the_context_carries_both_layers_so_org_wins_and_global_shows_through() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let k = key();
    admin::set(&db.store, None, "region", "eu", false, None)
        .await
        .unwrap();
    admin::set(&db.store, None, "only_global", "g", false, None)
        .await
        .unwrap();
    let acme = admin::set(&db.store, Some("acme"), "region", "us", false, None)
        .await
        .unwrap();
    admin::set(
        &db.store,
        Some("acme"),
        "api_token",
        "tok-secret-1",
        true,
        Some(&k),
    )
    .await
    .unwrap();
    let sdk = Sdk::start(db.store.clone(), &redis.client, redis.keys(), Some(k))
        .await
        .unwrap();
    let snap = sdk.configs_for_batch([acme.org_id()]).await;
    let ctx = Sdk::context_json(r#"{"execution_id":"e"}"#, &snap, acme.org_id(), 30.0, 1.5);
    let v: serde_json::Value = serde_json::from_str(&ctx).unwrap();
    assert_eq!(v["config"]["org"]["values"], json!({"region": "us"}));
    assert_eq!(v["config"]["org"]["secrets"], json!(["api_token"]));
    assert_eq!(
        v["config"]["global"]["values"],
        json!({"region": "eu", "only_global": "g"})
    );
    assert_eq!(v["roi"], json!({"time_saved": 30.0, "value": 1.5}));
    assert!(!ctx.contains("tok-secret-1") && !ctx.contains("ciphertext"));
}

fn request(id: &str, op: &str, args: serde_json::Value) -> Request {
    Request {
        execution_id: id.into(),
        request_id: 1,
        op: op.into(),
        args_json: args.to_string(),
    }
}

fn ok(outcome: ReplyOutcome) -> serde_json::Value {
    match outcome {
        ReplyOutcome::Ok { value_json } => serde_json::from_str(&value_json).unwrap(),
        ReplyOutcome::Err { message } => panic!("refused: {message}"),
    }
}

fn refused(outcome: ReplyOutcome) -> String {
    match outcome {
        ReplyOutcome::Err { message } => message,
        ReplyOutcome::Ok { value_json } => panic!("answered {value_json}"),
    }
}

async fn seed_kv(store: &Store, org: i64) {
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO kv (org_id, key, value) VALUES
         ($1, 'user:1', '{\"n\": 1}'), ($1, 'user:2', '2'), ($1, 'user_x', '3'), (NULL, 'user:9', '9')",
    )
    .bind(org)
    .execute(&mut *conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_supervisor_answers_kv_and_secret_reads_for_the_asking_org_only() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let k = key();
    let acme = admin::set(
        &db.store,
        Some("acme"),
        "api_token",
        "tok-acme-123",
        true,
        Some(&k),
    )
    .await
    .unwrap();
    admin::set(
        &db.store,
        None,
        "api_token",
        "tok-global-456",
        true,
        Some(&k),
    )
    .await
    .unwrap();
    let other = admin::set(&db.store, Some("other"), "x", "1", false, None)
        .await
        .unwrap();
    seed_kv(&db.store, acme.org_id().unwrap()).await;
    let redactions = Redactions::default();
    let src = Sources {
        store: db.store.clone(),
        cache: cache(&db, &redis).await,
        key: Some(k),
        redactions: redactions.clone(),
    };
    for id in ["e1", "e2", "e3"] {
        redactions.open(id); // as the daemon does for a running execution
    }
    let as_acme = Asker {
        org_id: acme.org_id(),
    };
    let as_other = Asker {
        org_id: other.org_id(),
    };

    let r = handler::answer(
        &src,
        &request("e1", "kv_get", json!({"key": "user:1"})),
        as_acme,
    )
    .await;
    assert_eq!((r.execution_id.as_str(), r.request_id), ("e1", 1));
    assert_eq!(ok(r.outcome), json!({"found": true, "value": {"n": 1}}));
    let r = handler::answer(
        &src,
        &request("e1", "kv_get", json!({"key": "user:1"})),
        as_other,
    )
    .await;
    assert_eq!(
        ok(r.outcome),
        json!({"found": false}),
        "another org's store is not visible"
    );
    let r = handler::answer(
        &src,
        &request("e1", "kv_list", json!({"prefix": "user:"})),
        as_acme,
    )
    .await;
    assert_eq!(
        ok(r.outcome),
        json!({"keys": ["user:1", "user:2"]}),
        "`_` is not a wildcard"
    );
    let r = handler::answer(
        &src,
        &request("e1", "kv_list", json!({"prefix": "user"})),
        Asker { org_id: None },
    )
    .await;
    assert_eq!(ok(r.outcome), json!({"keys": ["user:9"]}));

    let r = handler::answer(
        &src,
        &request(
            "e1",
            "config_secret",
            json!({"key": "api_token", "scope": "org"}),
        ),
        as_acme,
    )
    .await;
    assert_eq!(ok(r.outcome), json!({"value": "tok-acme-123"}));
    let r = handler::answer(
        &src,
        &request(
            "e2",
            "config_secret",
            json!({"key": "api_token", "scope": "global"}),
        ),
        as_acme,
    )
    .await;
    assert_eq!(ok(r.outcome), json!({"value": "tok-global-456"}));
    let r = handler::answer(
        &src,
        &request("e3", "config_secret", json!({"key": "api_token"})),
        as_other,
    )
    .await;
    assert_eq!(
        ok(r.outcome),
        json!({"value": "tok-global-456"}),
        "another org falls back to global"
    );
    let r = handler::answer(
        &src,
        &request(
            "e1",
            "config_secret",
            json!({"key": "nope", "scope": "org"}),
        ),
        as_acme,
    )
    .await;
    assert_eq!(
        refused(r.outcome),
        "there is no secret `nope` in this execution's configuration"
    );
    assert_eq!(
        redactions.len(),
        3,
        "each execution that received a secret is tracked"
    );

    let r = handler::answer(&src, &request("e1", "kv_drop", json!({})), as_acme).await;
    assert_eq!(refused(r.outcome), "unknown SDK operation `kv_drop`");
    let r = handler::answer(&src, &request("e1", "kv_get", json!({"nokey": 1})), as_acme).await;
    assert!(refused(r.outcome).starts_with("the arguments of `kv_get` are malformed"));

    // An execution that ended while its request waited is sent no plaintext.
    let r = handler::answer(
        &src,
        &request("gone", "config_secret", json!({"key": "api_token"})),
        as_acme,
    )
    .await;
    assert_eq!(refused(r.outcome), "the execution is no longer running");

    let keyless = Sources {
        key: None,
        ..src.clone()
    };
    let r = handler::answer(
        &keyless,
        &request("e1", "config_secret", json!({"key": "api_token"})),
        as_acme,
    )
    .await;
    assert!(refused(r.outcome).contains("this supervisor has no secret key"));
}

#[tokio::test]
async fn a_success_whose_writes_cannot_be_applied_is_recorded_failed_without_its_result() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let sdk = Sdk::start(db.store.clone(), &redis.client, redis.keys(), None)
        .await
        .unwrap();
    let mut out = warden_tests::db::fixtures::outcome("w1", warden::Status::Success);
    out.sdk_writes_json = r#"[{"op":"kv.set","key":"","value":1}]"#.into();
    sdk.on_finished(&mut out, None);
    assert_eq!(out.status, warden::Status::Failed);
    assert_eq!(out.result_json, None);
    assert!(out.sdk_writes_json.is_empty());
    let e = out.error.unwrap();
    assert_eq!(e.error_type, warden::SDK_WRITE_ERROR);
    assert_eq!(
        e.message,
        "the execution returned, but its SDK writes cannot be applied: \
         invalid SDK writes: a key may not be empty"
    );
}
