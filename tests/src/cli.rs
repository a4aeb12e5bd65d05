//! The `warden` binary as a user runs it, against a test's own database and Redis key
//! prefix: one command, its output, and the two ways a test reads that output (it
//! succeeded: its stdout; it was refused: its stderr).

use std::path::Path;
use std::process::{Command, Output};

use crate::db::TestDb;
use crate::pool::warden_bin;
use crate::redis::TestRedis;

/// Runs `warden ARGS` in `cwd` with the test's `DATABASE_URL`, `REDIS_URL` and key
/// prefix, plus `env`. Log-level variables of the test's own environment are removed,
/// so what the command prints does not depend on how the suite was started.
pub fn warden_env(
    db: &TestDb,
    redis: &TestRedis,
    cwd: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(warden_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis.url)
        .env("WARDEN_KEY_PREFIX", &redis.prefix)
        .env_remove("RUST_LOG")
        .env_remove("WARDEN_LOG_LEVEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run warden")
}

/// [`warden_env`] with no extra variables.
pub fn warden(db: &TestDb, redis: &TestRedis, cwd: &Path, args: &[&str]) -> Output {
    warden_env(db, redis, cwd, &[], args)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command succeeded (else the test fails, showing both streams): its stdout.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

/// The command failed (else the test fails, showing both streams): its stderr.
pub fn refused(out: Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// Writes `text` to `root/rel`, creating its directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}
