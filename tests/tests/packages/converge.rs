//! Several supervisors on one database converge on the same requirements: each hears
//! the change (NOTIFY on the LISTEN connection it already holds for the module cache),
//! installs the set into its own directory and rolls its own templates over.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use warden::Shutdown;
use warden_protocol::Isolation;
use warden_tests::serve::{config, spawn, value};

use crate::fixture::{Fixture, TEST_ROOT};

#[tokio::test]
async fn two_supervisors_install_the_same_set_each_in_its_own_directory() {
    let f = Fixture::start(Isolation::Fork).await;
    f.serve
        .push(
            "version",
            "import six\n\ndef run():\n    return {'six': six.__version__}\n",
            None,
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let second_root = tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in(TEST_ROOT)
        .unwrap();
    std::fs::set_permissions(second_root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config(&f.serve.db, &f.serve.redis, &dir, "s2");
    cfg.packages_root = second_root.path().join("sets");
    let (sig, handle) = spawn(cfg);

    let first = f.install(&["six==1.16.0"]).await;
    let g = f.generation().await;
    let mut conn = f.serve.db.connection().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let second: String = loop {
        let row: Option<(String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT state, generation, directory FROM package_installs WHERE consumer = 's2'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some((state, Some(gen), Some(d))) = row {
            if state == "installed" && gen == g {
                break d;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "s2 never installed generation {g}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(first.directory.as_deref(), Some(second.as_str()));
    assert!(
        second.starts_with(second_root.path().to_str().unwrap()),
        "{second}"
    );

    // Whichever supervisor runs them, executions see the set.
    for i in 0..6 {
        let c = f.serve.run(&format!("both-{i}"), "version", "{}").await;
        assert_eq!(c.status, warden::Status::Success, "{c:?}");
        assert_eq!(value(&c)["six"], "1.16.0");
    }
    let status = f.warden(&["status"]);
    assert_eq!(status.matches("uses generation").count(), 2, "{status}");
    let _ = sig.send(Some(Shutdown::Drain));
    let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
}
