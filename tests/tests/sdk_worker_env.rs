//! Workers hold neither the database URL nor the secret key: not in their environment,
//! not on their command line, even when the supervisor got both from its own
//! environment. Checked from inside an execution (its own `os.environ` and
//! `/proc/self/cmdline`) and from outside (the template's `/proc/<pid>/environ` and
//! `cmdline`).
//!
//! One test in its own binary: it sets process environment variables, which no other
//! test may see.

use std::time::Duration;

use serde_json::Value;
use warden::Status;
use warden::{SecretKey, SecretKeyArgs};
use warden_tests::serve::TestServe;

#[tokio::test]
async fn workers_see_neither_the_database_url_nor_the_secret_key() {
    let key_hex = SecretKey::generate_hex().unwrap();
    // The supervisor takes its key from the environment, as `warden serve` would, and
    // like `warden serve` it may read DATABASE_URL from its environment too.
    let env_url = "postgres://warden:pw-in-env@127.0.0.1:5432/warden_env_probe";
    // Safe to set here: a single-threaded runtime, before anything reads the environment.
    std::env::set_var("WARDEN_SECRET_KEY", &key_hex);
    std::env::set_var("DATABASE_URL", env_url);
    let key = SecretKeyArgs::default()
        .load()
        .unwrap()
        .expect("key from env");
    // Workers are spawned by this start, with both variables in the supervisor's env.
    let mut s = TestServe::start(move |c| c.secret_key = Some(key)).await;
    s.push(
        "inspect",
        r#"
import os, sys
def run():
    cmdline = open("/proc/self/cmdline", "rb").read().decode(errors="replace")
    return {"environ": dict(os.environ), "argv": sys.argv, "cmdline": cmdline,
            "pid": os.getpid(), "ppid": os.getppid()}
"#,
        None,
    )
    .await;
    let c = s.run("env-1", "inspect", "{}").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    let r: Value = serde_json::from_str(c.result.as_ref().unwrap().get()).unwrap();
    let inside = r.to_string();

    // The template (the child's parent) is still alive: read it from outside.
    let template = r["ppid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{template}/environ")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{template}/cmdline")).unwrap_or_default();
    assert!(
        !cmdline.is_empty(),
        "the template's command line is readable"
    );
    let outside = format!(
        "{}\n{}",
        String::from_utf8_lossy(&environ),
        String::from_utf8_lossy(&cmdline)
    );

    let db_name = s.db.name.clone();
    for (what, text) in [
        ("inside the execution", &inside),
        ("the template", &outside),
    ] {
        for secret in [&key_hex, &s.db.url, &db_name, &env_url.to_string()] {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds {secret}: {text}"
            );
        }
        for var in ["WARDEN_SECRET_KEY", "DATABASE_URL", "postgres://"] {
            assert!(!text.contains(var), "{what} holds {var}: {text}");
        }
    }
    assert!(
        r["environ"].get("PATH").is_some(),
        "the allow-list still applies"
    );
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("stops");
}
