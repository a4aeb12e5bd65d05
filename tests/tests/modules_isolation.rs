//! Workers hold no database credentials, even though they now read the module cache:
//! with `DATABASE_URL` in the supervisor's environment, neither the execution nor its
//! template sees a database URL (environment or command line), while the template does
//! get the Redis URL it needs (in its environment, which no child can read). (That the worker binary links no database client is
//! `worker/tests/no_database.rs`.)
//!
//! One test in its own binary: it sets `DATABASE_URL` in the process environment, which
//! no other test may see (every process another test spawned would inherit it).

use std::time::Duration;

use warden::Status;
use warden_tests::pool::{job, TestPool};
use warden_tests::redis::TestRedis;

const PEEK: &str = r#"
import os

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<{e}>"

def run():
    template = os.getppid()
    return {
        "env": sorted(os.environ),
        "cmdline": read("/proc/self/cmdline"),
        "template_env": read(f"/proc/{template}/environ"),
        "template_cmdline": read(f"/proc/{template}/cmdline"),
    }
"#;

#[tokio::test]
async fn no_database_url_reaches_a_worker() {
    let secret = "postgres://warden:s3cret@db.internal:5432/warden";
    // The supervisor's own environment has it (that is how `warden serve` gets it).
    std::env::set_var("DATABASE_URL", secret);
    let redis = TestRedis::new();
    let (url, prefix) = (redis.url.clone(), redis.prefix.clone());
    let mut p = TestPool::start(|cfg| {
        cfg.redis_url = Some(url);
        cfg.key_prefix = prefix;
    })
    .await;
    assert!(p
        .pool
        .submit(job("peek", PEEK, "{}", Some(Duration::from_secs(30))))
        .is_ok());
    let out = p.finished().await.outcome;
    assert_eq!(out.status, Status::Success, "{:?}", out.error);
    let v: serde_json::Value = serde_json::from_str(out.result_json.as_deref().unwrap()).unwrap();
    // The template is non-dumpable: its environment is not readable at all.
    assert!(
        v["template_env"]
            .as_str()
            .unwrap()
            .starts_with("<[Errno 13]"),
        "the template's environment was read: {v}"
    );
    let all = v.to_string();
    assert!(!all.contains("DATABASE_URL"), "{all}");
    assert!(
        !all.contains("s3cret") && !all.contains("postgres://"),
        "{all}"
    );
    // The template was given the module cache's Redis (in its environment, not on its
    // world-readable command line), and nothing else to connect to.
    let template_cmdline = v["template_cmdline"].as_str().unwrap();
    assert!(
        template_cmdline.contains("--key-prefix") && template_cmdline.contains(&redis.prefix),
        "{template_cmdline:?}"
    );
    assert!(
        !template_cmdline.contains("redis://"),
        "{template_cmdline:?}"
    );
}
