//! Checks at push time, through the real binary against a test database and Redis
//! prefix: `warden workflow push` refuses what is not Python, does not parse or lacks
//! the function (without running it), and stores nothing when it refuses; `warden
//! module push` compiles every file first and `--dry-run` names the modules; `warden
//! submit` checks that the workflow exists (naming where it does) and warns when no
//! live supervisor consumes the stream.

use std::time::Duration;

use warden_tests::cli::{ok, refused, warden, warden_env, write};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

#[tokio::test]
async fn workflow_push_checks_the_source_without_running_it() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    let marker = root.join("ran");
    write(root, "notes.txt", "def run(): pass\n");
    write(root, "broken.py", "x = 1\ndef run(:\n    pass\n");
    write(
        root,
        "nofunc.py",
        &format!(
            "open({:?}, 'w').write('x')\ndef main():\n    def run(): pass\nclass C:\n    def run(self): pass\n",
            marker.display().to_string()
        ),
    );
    write(root, "flows/a_good.py", "def run(): return 1\n");
    write(root, "flows/b_bad.py", "def run(\n");

    let err = refused(warden(
        &db,
        &redis,
        root,
        &["workflow", "push", "notes.txt"],
    ));
    assert!(err.contains("notes.txt is not a Python file"), "{err}");

    let err = refused(warden(
        &db,
        &redis,
        root,
        &["workflow", "push", "broken.py"],
    ));
    assert!(err.contains("broken.py:2: syntax error: "), "{err}");

    // `run` only nested or as a method: not a top-level function; and the file's
    // top-level statement was never run.
    let err = refused(warden(
        &db,
        &redis,
        root,
        &["workflow", "push", "nofunc.py"],
    ));
    assert!(
        err.contains(
            "nofunc.py: no top-level function `run` (it defines main); pass --function NAME"
        ),
        "{err}"
    );
    assert!(!marker.exists(), "the source was run");
    let out = ok(warden(
        &db,
        &redis,
        root,
        &["workflow", "push", "nofunc.py", "--function", "main"],
    ));
    assert!(out.contains("workflow nofunc created"), "{out}");
    assert!(!marker.exists(), "the source was run");

    // One bad file in a directory: nothing stored, not even the good one.
    let err = refused(warden(&db, &redis, root, &["workflow", "push", "flows"]));
    assert!(err.contains("b_bad.py:1: syntax error"), "{err}");
    let listed = ok(warden(&db, &redis, root, &["workflow", "list"]));
    assert!(!listed.contains("a_good"), "{listed}");
    assert!(!listed.contains("broken"), "{listed}");

    // No interpreter to check with: refused, and said so.
    let err = refused(warden_env(
        &db,
        &redis,
        root,
        &[("WARDEN_PYTHON", "/nonexistent/python3")],
        &["workflow", "push", "flows/a_good.py"],
    ));
    assert!(
        err.contains("cannot check Python source: /nonexistent/python3 cannot be started"),
        "{err}"
    );
    let listed = ok(warden(&db, &redis, root, &["workflow", "list"]));
    assert!(!listed.contains("a_good"), "{listed}");
}

#[tokio::test]
async fn module_push_compiles_every_file_and_dry_run_stores_nothing() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(root, "shared/__init__.py", "");
    write(root, "shared/tickets.py", "def open_ticket(): return 1\n");
    write(root, "shared/util/text.py", "S = 1\n");
    write(root, "shared/.hidden.py", "S = 1\n");
    write(root, "shared/bad-name.py", "S = 1\n");
    write(root, "shared/notes.txt", "not code");

    // --dry-run: the names, nothing stored.
    let out = ok(warden(
        &db,
        &redis,
        root,
        &["module", "push", "shared", "--dry-run"],
    ));
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert_eq!(
        lines,
        [
            "module            path",
            "shared            shared/__init__.py",
            "shared.tickets    shared/tickets.py",
            "shared.util.text  shared/util/text.py",
            "dry run: 3 modules compile; nothing stored",
        ],
        "{out}"
    );
    let listed = ok(warden(&db, &redis, root, &["module", "list"]));
    assert!(!listed.contains("shared/"), "{listed}");

    // One file that does not compile: named with its line, and nothing stored.
    write(
        root,
        "shared/util/broken.py",
        "x = 1\n\ndef f(:\n    pass\n",
    );
    let err = refused(warden(&db, &redis, root, &["module", "push", "shared"]));
    assert!(
        err.contains("shared/util/broken.py:3: syntax error: ")
            && err.contains("1 of 4 files do not compile; nothing stored"),
        "{err}"
    );
    let listed = ok(warden(&db, &redis, root, &["module", "list"]));
    assert!(!listed.contains("shared/"), "{listed}");
    // --dry-run checks as well.
    let err = refused(warden(
        &db,
        &redis,
        root,
        &["module", "push", "shared", "--dry-run"],
    ));
    assert!(err.contains("shared/util/broken.py:3"), "{err}");

    std::fs::remove_file(root.join("shared/util/broken.py")).unwrap();
    let out = ok(warden(&db, &redis, root, &["module", "push", "shared"]));
    assert!(out.contains("3 created, 0 updated, 0 unchanged"), "{out}");
}

/// The stream's length.
/// Requests submitted and not yet finished: in the stream, or waiting in a lane.
async fn stream_len(redis: &TestRedis) -> u64 {
    let overview = redis.client().await.status().await.unwrap();
    overview.backlog.length + overview.lanes.iter().map(|l| l.waiting).sum::<u64>()
}

#[tokio::test]
async fn submit_checks_the_workflow_and_warns_without_a_live_supervisor() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(root, "billing.py", "def run(): return 1\n");
    write(root, "hello.py", "def run(): return 2\n");
    ok(warden(
        &db,
        &redis,
        root,
        &["workflow", "push", "billing.py", "--org", "acme"],
    ));
    ok(warden(&db, &redis, root, &["workflow", "push", "hello.py"]));

    // The caller forgot --org: refused, naming the organization; nothing submitted.
    let err = refused(warden(&db, &redis, root, &["submit", "billing"]));
    assert!(
        err.contains(
            "workflow billing does not exist globally; it exists in organization acme: \
             pass --org acme"
        ),
        "{err}"
    );
    let err = refused(warden(
        &db,
        &redis,
        root,
        &["submit", "hello", "--org", "acme"],
    ));
    assert!(
        err.contains(
            "workflow hello does not exist in organization acme; it exists globally: \
             leave out --org"
        ),
        "{err}"
    );
    let err = refused(warden(&db, &redis, root, &["submit", "nosuch"]));
    assert!(
        err.contains("workflow nosuch does not exist globally (nor anywhere else)"),
        "{err}"
    );
    let err = refused(warden(&db, &redis, root, &["submit", "999999"]));
    assert!(err.contains("there is no workflow with id 999999"), "{err}");
    assert_eq!(stream_len(&redis).await, 0);

    // No supervisor: one warning line, and submitted all the same.
    let warning = "warning: no live supervisor is consuming";
    let out = warden(&db, &redis, root, &["submit", "billing", "--org", "acme"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(err.contains(warning), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(stream_len(&redis).await, 1);

    // A consumer with a live heartbeat: no warning.
    let intake = warden::Intake::connect(&redis.url, redis.keys(), "push-checks-a")
        .await
        .unwrap();
    intake.ensure_group().await.unwrap();
    intake.read(10, Duration::from_millis(10)).await.unwrap();
    let beat = warden::Heartbeat::start(&intake, Duration::from_secs(5))
        .await
        .unwrap();
    let out = warden(&db, &redis, root, &["submit", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(!err.contains(warning), "{err}");

    // Its heartbeat gone (a clean stop deletes it): the consumer is dead, and the
    // warning is back.
    beat.stop().await;
    let out = warden(&db, &redis, root, &["submit", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(err.contains(warning), "{err}");
    assert_eq!(stream_len(&redis).await, 3);
}
