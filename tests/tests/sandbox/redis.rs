//! The workers' Redis credential is worth nothing to an attacker who steals it from a
//! worker's memory: it is a Redis ACL user of its own that may read the module cache's
//! keys and nothing else. And a service whose workers were handed a URL that can write
//! refuses to start.

use warden::testing::user_name;
use warden::Status;
use warden_tests::serve::TestServe;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_redis_user_reads_module_keys_and_nothing_else() {
    let mut s = TestServe::start(|_| {}).await;
    // A workflow that imports a workspace module: the workers' user is good for that.
    s.push("hello", "def run():\n    return 'hi'\n", None).await;
    assert_eq!(s.run("h1", "hello", "{}").await.status, Status::Success);

    let mut db = s.db.connection().await;
    let password: String =
        sqlx::query_scalar("SELECT value FROM settings WHERE name = 'worker_redis_password'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let user = user_name(&s.redis.prefix);
    let url = warden_tests::redis::redis_url().replacen(
        "redis://",
        &format!("redis://{user}:{password}@"),
        1,
    );
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the workers' user can log in");
    let k = s.redis.keys();
    // Allowed: what the worker does.
    let g: Option<u64> = redis::cmd("GET")
        .arg(k.module_generation())
        .query_async(&mut con)
        .await
        .expect("GET of the generation");
    assert!(g.is_some());
    let _: Vec<String> = redis::cmd("SMEMBERS")
        .arg(k.module_index())
        .query_async(&mut con)
        .await
        .expect("SMEMBERS of the index");
    // Denied: everything an attacker would do with it.
    let stream = format!("{}warden:executions", s.redis.prefix);
    let denied: Vec<(&str, redis::Cmd)> = vec![
        ("HSET a module", {
            let mut c = redis::cmd("HSET");
            c.arg(k.module("evil.py")).arg("content").arg("pwned");
            c
        }),
        ("bump the generation", {
            let mut c = redis::cmd("INCR");
            c.arg(k.module_generation());
            c
        }),
        ("XADD an execution", {
            let mut c = redis::cmd("XADD");
            c.arg(&stream)
                .arg("*")
                .arg("id")
                .arg("x")
                .arg("workflow")
                .arg("hello");
            c
        }),
        ("read the stream", {
            let mut c = redis::cmd("XRANGE");
            c.arg(&stream).arg("-").arg("+");
            c
        }),
        ("read a completion", {
            let mut c = redis::cmd("GET");
            c.arg(format!("{}warden:execution:h1:completion", s.redis.prefix));
            c
        }),
        ("list keys", {
            let mut c = redis::cmd("KEYS");
            c.arg("*");
            c
        }),
        ("FLUSHALL", redis::cmd("FLUSHALL")),
        ("CONFIG GET", {
            let mut c = redis::cmd("CONFIG");
            c.arg("GET").arg("*");
            c
        }),
        ("ACL LIST", {
            let mut c = redis::cmd("ACL");
            c.arg("LIST");
            c
        }),
        ("PUBLISH a cancel", {
            let mut c = redis::cmd("PUBLISH");
            c.arg(format!("{}warden:cancel", s.redis.prefix)).arg("h1");
            c
        }),
    ];
    for (what, cmd) in denied {
        let r: Result<redis::Value, _> = cmd.query_async(&mut con).await;
        let err = r.expect_err(what);
        assert_eq!(
            err.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "{what}: {err}"
        );
    }
    s.stop().await;
    // A prefix used once (each `warden bench` run's) has its user deleted afterwards:
    // it logs in no more.
    warden::testing::remove_user(&warden_tests::redis::redis_url(), &s.redis.prefix)
        .await
        .expect("ACL DELUSER");
    let gone = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    assert!(gone.is_err(), "the deleted user still logs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_never_given_a_url_that_can_write() {
    // The supervisor's own (full-access) URL handed to the workers: refused at start.
    let mut s = TestServe::start(|cfg| cfg.pool.redis_url = Some(cfg.redis_url.clone())).await;
    let report = s.stop_result().await;
    let err = report.expect_err("the service must not start");
    assert!(err.to_string().contains("can write to Redis"), "{err}");
}
