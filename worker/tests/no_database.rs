//! The worker holds no database client: `cargo tree` of `warden-worker` lists no sqlx
//! (nor any other PostgreSQL client) and no async runtime. Its only store is Redis, and
//! only the blocking client. (That its environment carries no database URL is checked
//! end to end, through a pool started with `DATABASE_URL` set: `tests/tests/modules_isolation.rs`.)

use std::process::Command;

#[test]
fn the_worker_links_no_database_client_and_no_async_runtime() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "warden-worker",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"warden-worker"), "{tree}");
    assert!(crates.contains(&"redis"), "{tree}");
    for banned in [
        "sqlx",
        "sqlx-core",
        "sqlx-postgres",
        "postgres",
        "tokio-postgres",
        "tokio",
        "async-std",
    ] {
        assert!(
            !crates.contains(&banned),
            "warden-worker must not depend on {banned}:\n{tree}"
        );
    }
}
