//! `warden package add|rm|list|sync` through the real binary: lines are checked before
//! anything is stored (each bad one named), names are normalised, every change moves
//! the generation.

use warden_tests::cli::{ok, refused, warden, write};
use warden_tests::db::TestDb;
use warden_tests::redis::TestRedis;

#[tokio::test]
async fn add_rm_list_and_sync() {
    let db = TestDb::new().await;
    let redis = TestRedis::new();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let run = |args: &[&str]| warden(&db, &redis, cwd, args);
    let generation = || warden_tests::db::scalar(&db, "SELECT generation FROM package_generation");

    let listed = ok(run(&["package", "list"]));
    assert!(listed.contains("generation 0 (0 requirements)"), "{listed}");

    // One bad line: nothing stored, and the error names the line and why.
    let err = refused(run(&["package", "add", "requests>=2", "six 1.16"]));
    assert!(err.contains("\"six 1.16\" is not a requirement"), "{err}");
    assert!(err.contains("nothing stored"), "{err}");
    let err = refused(run(&["package", "add", "--", "--index-url=https://x"]));
    assert!(err.contains("pip options"), "{err}");
    assert_eq!(generation().await, 0);

    let out = ok(run(&[
        "package",
        "add",
        "requests>=2",
        "Charset_Normalizer",
    ]));
    assert!(out.contains("added     requests>=2"), "{out}");
    let g1 = generation().await;
    assert!(g1 > 0 && out.contains(&format!("generation {g1}")), "{out}");
    let out = ok(run(&["package", "add", "requests>=2.31"]));
    assert!(out.contains("changed   requests>=2.31"), "{out}");
    assert!(generation().await > g1);
    let listed = ok(run(&["package", "list"]));
    assert!(
        listed.contains("  Charset_Normalizer\n  requests>=2.31\n"),
        "{listed}"
    );
    assert!(listed.contains("no supervisor has reported"), "{listed}");

    // Removal by any spelling of the name.
    let out = ok(run(&["package", "rm", "charset-normalizer"]));
    assert!(out.contains("removed charset-normalizer"), "{out}");
    let out = run(&["package", "rm", "nothing-here"]);
    assert_eq!(out.status.code(), Some(1));

    // sync: exactly the file's requirements; a bad line is named with its number.
    write(
        cwd,
        "bad.txt",
        "# deps\nrequests\n-e git+https://x\nsix==1.16.0\n",
    );
    let err = refused(run(&["package", "sync", "-r", "bad.txt"]));
    assert!(err.contains("bad.txt:3:"), "{err}");
    assert!(!err.contains("bad.txt:2:"), "{err}");
    let before = generation().await;
    write(cwd, "req.txt", "# deps\nsix==1.16.0  # pinned\nidna\n");
    let out = ok(run(&["package", "sync", "-r", "req.txt"]));
    assert!(out.contains("2 requirements: 2 set, 1 removed"), "{out}");
    assert!(generation().await > before);
    let listed = ok(run(&["package", "list"]));
    assert!(
        listed.contains("(2 requirements)\n  idna\n  six==1.16.0\n"),
        "{listed}"
    );
}
