//! A new package set rolled out under load: no execution fails, and every execution
//! submitted after the supervisor recorded the rollout runs on the new set; the old
//! set's directory is removed. A requirement pip cannot install leaves the previous set
//! in use, reported by `package list`, `status` and the recorded state.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use warden_protocol::Isolation;
use warden_tests::serve::TestServe;

use crate::fixture::Fixture;

const VERSION: &str =
    "import six\n\ndef run():\n    return {'six': six.__version__, 'file': six.__file__}\n";
/// The load's workflow: in flight for 20 ms, so templates are busy while they roll over.
const SLOW_VERSION: &str =
    "import time, six\n\ndef run():\n    time.sleep(0.02)\n    return {'six': six.__version__}\n";

/// `(id, status, six version)` of every execution whose id starts with `prefix`, once
/// all `n` are terminal.
async fn results(f: &Fixture, prefix: &str, n: usize) -> Vec<(String, String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut conn = f.serve.db.connection().await;
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT id::text, status::text, result->>'six' FROM executions
              WHERE id::text LIKE $1 AND status::text NOT IN ('pending', 'running')",
        )
        .bind(format!("{prefix}%"))
        .fetch_all(&mut conn)
        .await
        .unwrap();
        if rows.len() == n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} executions ended",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_upgrade_under_load_fails_nothing_and_later_executions_see_the_new_version() {
    let f = Fixture::start(Isolation::Fork).await;
    f.serve.push("version", SLOW_VERSION, None).await;
    let old = f.install(&["six==1.16.0"]).await;
    let old_dir = old.directory.clone().unwrap();

    // Continuous load: one submission every 15 ms until told to stop (2 workers, 20 ms
    // each: both mostly busy).
    let client = f.serve.redis.client().await;
    let (stop, stopped) = watch::channel(false);
    let load = tokio::spawn(async move {
        let mut sent = Vec::new();
        while !*stopped.borrow() {
            let id = format!("load-{}", sent.len());
            client
                .submit(&TestServe::request(&id, "version", "{}"))
                .await
                .unwrap();
            sent.push((id, Instant::now()));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.warden(&["package", "add", "six==1.17.0"]);
    let g = f.generation().await;
    let new = f
        .wait_recorded("the upgrade rolled out", |r| {
            r.state == "installed" && r.generation == Some(g)
        })
        .await;
    let rolled_out = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(true).unwrap();
    let sent = load.await.unwrap();

    let rows = results(&f, "load-", sent.len()).await;
    let version: std::collections::HashMap<_, _> = rows
        .iter()
        .map(|(id, s, v)| (id.clone(), (s.clone(), v.clone())))
        .collect();
    let failed: Vec<_> = rows.iter().filter(|r| r.1 != "success").collect();
    assert!(failed.is_empty(), "failed during the rollout: {failed:?}");
    let mut after = 0;
    for (id, at) in &sent {
        if *at > rolled_out {
            after += 1;
            assert_eq!(
                version[id].1.as_deref(),
                Some("1.17.0"),
                "{id} was submitted after the rollout"
            );
        }
    }
    let old_seen = rows
        .iter()
        .filter(|r| r.2.as_deref() == Some("1.16.0"))
        .count();
    eprintln!(
        "{} executions, {old_seen} on the old set, {after} submitted after the rollout",
        rows.len()
    );
    assert!(old_seen > 0 && after > 0, "old {old_seen}, after {after}");
    // The old set is gone once no template uses it; the new one stays.
    assert!(
        !std::path::Path::new(&old_dir).exists(),
        "{old_dir} removed"
    );
    assert!(std::path::Path::new(new.directory.as_deref().unwrap()).exists());
}

#[tokio::test]
async fn a_requirement_pip_cannot_install_leaves_the_previous_set_in_use() {
    let f = Fixture::start(Isolation::Fork).await;
    f.serve.push("version", VERSION, None).await;
    let old = f.install(&["six==1.16.0"]).await;

    f.warden(&["package", "add", "warden-no-such-package-3c1f9==1.0"]);
    let g = f.generation().await;
    let rec = f
        .wait_recorded("the failure", |r| {
            r.state == "failed" && r.attempt_generation == Some(g)
        })
        .await;
    assert_eq!(
        rec.directory, old.directory,
        "the previous set stays in use"
    );
    let error = rec.error.unwrap();
    assert!(
        error.contains("pip could not install") && error.contains("warden-no-such-package-3c1f9"),
        "{error}"
    );

    let c = f.serve.run("still-works", "version", "{}").await;
    assert_eq!(c.status, warden::Status::Success, "{c:?}");
    let v = warden_tests::serve::value(&c);
    assert_eq!(v["six"], "1.16.0");
    // From the set, not the host's own six (Debian ships one).
    let in_use = old.directory.clone().unwrap();
    assert!(v["file"].as_str().unwrap().starts_with(&in_use), "{v}");

    let listed = f.warden(&["package", "list"]);
    assert!(
        listed.contains(&format!("FAILED to install generation {g}")),
        "{listed}"
    );
    let status = f.warden(&["status"]);
    assert!(status.contains("FAILED to install"), "{status}");
    // Nothing half-installed is left: the set in use and the lock only.
    let mut left: Vec<String> = std::fs::read_dir(&f.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let in_use = std::path::Path::new(old.directory.as_deref().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(left, [".lock".to_string(), in_use]);

    // Taking the bad line back returns to the set in use, without pip.
    f.warden(&["package", "rm", "warden-no-such-package-3c1f9"]);
    let g = f.generation().await;
    let rec = f
        .wait_recorded("back to normal", |r| {
            r.state == "installed" && r.generation == Some(g)
        })
        .await;
    assert_eq!(rec.directory, old.directory);
}
