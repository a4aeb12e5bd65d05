//! `warden logs ID [--follow]` and Ctrl-C in `submit --wait`, through the real `warden`
//! binary against an in-process `serve`: following attached mid-execution prints every
//! line in order (the ones before it attached first) and exits with the status's code;
//! an ended execution's lines come from PostgreSQL; one still in the stream counts as
//! queued; an unknown id is refused; Ctrl-C while following leaves the execution running
//! and names the commands to follow or cancel it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use warden_tests::pool::warden_bin;
use warden_tests::serve::TestServe;

const CHATTY: &str = r#"
import time

def run(n, pause=0.1):
    for i in range(n):
        print(f"line {i}")
        time.sleep(pause)
    return {"n": n}
"#;

const FAILS: &str = r#"
def run():
    print("before the error")
    raise ValueError("bad x")
"#;

/// `warden ARGS` against the service's database and Redis prefix, stdout and stderr
/// piped.
fn spawn(s: &TestServe, args: &[&str]) -> Child {
    Command::new(warden_bin())
        .args(args)
        .env("DATABASE_URL", &s.db.url)
        .env("REDIS_URL", &s.redis.url)
        .env("WARDEN_KEY_PREFIX", &s.redis.prefix)
        .env_remove("RUST_LOG")
        .env_remove("WARDEN_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn warden")
}

/// Waits for the child to exit (within 60 s): its exit code, stdout and stderr.
async fn finish(mut child: Child) -> (Option<i32>, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        let (a, b) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err)
        );
        a.unwrap();
        b.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("warden exits within 60 s");
    (status.code(), out, err)
}

async fn status_of(s: &TestServe, id: &str) -> String {
    s.db.store
        .show_execution(id)
        .await
        .unwrap()
        .map(|d| d.execution.status.to_string())
        .unwrap_or_default()
}

/// Waits until the execution has logged at least `n` lines (its live-log stream).
async fn wait_for_lines(s: &TestServe, id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.client.live_logs(id).await.unwrap().len() < n {
        assert!(Instant::now() < deadline, "{id} never logged {n} lines");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn follow_attached_mid_execution_prints_every_line_in_order() {
    let s = TestServe::start(|_| {}).await;
    s.push("chatty", CHATTY, None).await;
    s.client
        .submit(&TestServe::request("chat-1", "chatty", r#"{"n": 30}"#))
        .await
        .unwrap();
    wait_for_lines(&s, "chat-1", 5).await;
    let child = spawn(&s, &["logs", "chat-1", "--follow"]);
    // Attached while it still runs (about 2.5 s of it remain).
    assert_eq!(status_of(&s, "chat-1").await, "running");
    let (code, out, err) = finish(child).await;
    let expected: Vec<String> = (0..30).map(|i| format!("[info] line {i}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "stderr: {err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("execution chat-1 ended success"), "{err}");

    // Without --follow, the ended execution's lines come from PostgreSQL.
    let (code, again, _) = finish(spawn(&s, &["logs", "chat-1"])).await;
    assert_eq!((code, again), (Some(0), out));
}

#[tokio::test]
async fn an_ended_execution_shows_its_stored_lines_and_exits_with_its_code() {
    let s = TestServe::start(|_| {}).await;
    s.push("fails", FAILS, None).await;
    let c = s.run("f-1", "fails", "{}").await;
    assert_eq!(c.status.as_str(), "failed");
    // Its live-log stream is gone: what follows comes from the database alone.
    let mut conn = s.redis.conn().await;
    let _: () = redis::cmd("DEL")
        .arg(s.client.keys().log_stream("f-1"))
        .query_async(&mut conn)
        .await
        .unwrap();

    for args in [&["logs", "f-1"][..], &["logs", "f-1", "--follow"][..]] {
        let (code, out, err) = finish(spawn(&s, args)).await;
        assert_eq!(out, "[info] before the error\n", "{args:?}: {err}");
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("execution f-1 ended failed: ValueError: bad x"),
            "{err}"
        );
    }

    let (code, out, err) = finish(spawn(&s, &["logs", "nope", "--follow"])).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("no execution with id `nope`"), "{err}");
}

#[tokio::test]
async fn logs_of_a_running_execution_without_follow_prints_the_lines_so_far() {
    let s = TestServe::start(|_| {}).await;
    s.push("chatty", CHATTY, None).await;
    s.client
        .submit(&TestServe::request(
            "run-1",
            "chatty",
            r#"{"n": 3, "pause": 2}"#,
        ))
        .await
        .unwrap();
    wait_for_lines(&s, "run-1", 2).await;
    let (code, out, err) = finish(spawn(&s, &["logs", "run-1"])).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "[info] line 0\n[info] line 1\n", "{err}");
    assert!(err.contains("execution run-1 is running"), "{err}");
    assert!(err.contains("warden logs run-1 --follow"), "{err}");
}

/// Reads the child's `stream` until a line contains `needle` (within 30 s).
async fn read_until<R: tokio::io::AsyncRead + Unpin>(
    lines: &mut tokio::io::Lines<BufReader<R>>,
    needle: &str,
) -> String {
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return;
            }
        }
        panic!("the output ended without `{needle}`: {seen}");
    })
    .await
    .unwrap_or_else(|_| panic!("no `{needle}` within 30 s: {seen}"));
    seen
}

/// SIGINT to the child (after giving it time to install its handler), then its exit
/// code and the rest of its stderr.
async fn interrupt<R: tokio::io::AsyncRead + Unpin>(
    mut child: Child,
    mut stderr: tokio::io::Lines<BufReader<R>>,
) -> (Option<i32>, String) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let mut rest = String::new();
    let status = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        child.wait().await.unwrap()
    })
    .await
    .expect("exits within 10 s of SIGINT");
    (status.code(), rest)
}

#[tokio::test]
async fn ctrl_c_while_following_leaves_the_execution_running_and_says_what_to_do() {
    let s = TestServe::start(|_| {}).await;
    s.push("chatty", CHATTY, None).await;

    // submit --wait
    let mut child = spawn(
        &s,
        &[
            "submit",
            "chatty",
            "--id",
            "long-1",
            "--param",
            "n=8",
            "--param",
            "pause=0.5",
            "--wait",
        ],
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    read_until(&mut stderr, "line 0").await;
    let (code, said) = interrupt(child, stderr).await;
    assert_eq!(code, Some(130), "{said}");
    assert!(said.contains("execution long-1 goes on"), "{said}");
    assert!(said.contains("warden logs long-1 --follow"), "{said}");
    assert!(said.contains("warden cancel long-1"), "{said}");
    assert_eq!(status_of(&s, "long-1").await, "running");

    // logs --follow
    let mut child = spawn(&s, &["logs", "long-1", "--follow"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    read_until(&mut stdout, "line 0").await;
    let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let (code, said) = interrupt(child, stderr).await;
    assert_eq!(code, Some(130), "{said}");
    assert!(said.contains("warden cancel long-1"), "{said}");

    // Neither stopped it.
    assert_eq!(s.wait_terminal("long-1").await, "success");
}

#[tokio::test]
async fn an_execution_still_in_the_stream_counts_as_queued_not_unknown() {
    // No supervisor: the request stays in the stream and has no row yet.
    let db = warden_tests::db::TestDb::new().await;
    let redis = warden_tests::redis::TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| warden_tests::cli::warden(&db, &redis, dir.path(), args);
    warden_tests::cli::write(dir.path(), "chatty.py", CHATTY);
    warden_tests::cli::ok(cli(&["workflow", "push", "chatty.py"]));
    warden_tests::cli::ok(cli(&["submit", "chatty", "--id", "q-1", "--param", "n=1"]));
    let out = cli(&["logs", "q-1"]);
    let err = warden_tests::cli::stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("execution q-1 is queued in the stream"),
        "{err}"
    );
    let unknown = cli(&["logs", "q-2"]);
    assert_eq!(unknown.status.code(), Some(2));

    // `executions show` says the same, in text and JSON; an unknown id is still refused.
    let shown = warden_tests::cli::ok(cli(&["executions", "show", "q-1"]));
    assert!(
        shown.contains("status:    pending (in the stream; no supervisor has taken it yet)"),
        "{shown}"
    );
    let shown: serde_json::Value = serde_json::from_str(&warden_tests::cli::ok(cli(&[
        "executions",
        "show",
        "q-1",
        "--json",
    ])))
    .unwrap();
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["in_stream"], true);
    assert_eq!(cli(&["executions", "show", "q-2"]).status.code(), Some(2));
}
