//! The start-up persistence check against the real test Redis, which runs without
//! persistence (`appendonly no`, `save ""`, as `scripts/services` used to start it and CI
//! runs it): [`check`] must report it. And a Redis user that may not run `CONFIG` makes
//! the check fail (so `serve` only logs at debug level) instead of reporting anything.
//!
//! If the server does persist, the first test checks that nothing is reported instead.
//!
//! [`check`]: warden::testing::persistence::check

use warden::testing::persistence::{check, warning};
use warden_tests::redis::{random_hex, TestRedis};

async fn config_get(t: &TestRedis, name: &str) -> String {
    let reply: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(&mut t.conn().await)
        .await
        .expect("CONFIG GET");
    reply
        .get(name)
        .cloned()
        .expect("the parameter in the reply")
}

#[tokio::test]
async fn a_redis_without_persistence_is_reported() {
    let t = TestRedis::new();
    let appendonly = config_get(&t, "appendonly").await;
    let save = config_get(&t, "save").await;
    let reported = check(&t.client).await.expect("the check runs");
    if appendonly == "no" && save.is_empty() {
        let text = reported
            .as_deref()
            .expect("a Redis without persistence is reported");
        assert!(text.contains("persists nothing"), "{text}");
    } else {
        // A test Redis that persists: the check agrees with the pure decision.
        assert_eq!(reported, None, "appendonly {appendonly:?}, save {save:?}");
    }
    assert_eq!(reported, warning(&appendonly, &save));
}

#[tokio::test]
async fn a_user_without_config_cannot_check() {
    let t = TestRedis::new();
    let user = format!("warden-test-noconfig-{}", random_hex());
    let password = random_hex();
    let mut admin = t.conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all")
        .arg("-config")
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let url = t
        .url
        .replacen("redis://", &format!("redis://{user}:{password}@"), 1);
    let limited = redis::Client::open(url.as_str()).expect("client");
    let result = check(&limited).await;
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .expect("ACL DELUSER");
    let err = result.expect_err("CONFIG is refused to this user");
    assert!(err.to_string().contains("CONFIG GET"), "{err}");
}
