//! A `serve` with a package root of its own, and the waits the tests share.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use warden_protocol::Isolation;
use warden_tests::cli::{ok, warden};
use warden_tests::serve::TestServe;

/// Where the tests' package roots go (each test its own, removed after it).
pub const TEST_ROOT: &str = "/var/lib/warden-tests/packages";

pub struct Fixture {
    pub serve: TestServe,
    pub root: PathBuf,
    pub cwd: tempfile::TempDir,
    _packages: tempfile::TempDir,
}

/// What a supervisor recorded (`package_installs`).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub state: String,
    pub generation: Option<i64>,
    pub attempt_generation: Option<i64>,
    pub directory: Option<String>,
    pub error: Option<String>,
}

impl Fixture {
    pub async fn start(isolation: Isolation) -> Fixture {
        Fixture::start_with(isolation, &[]).await
    }

    /// With `--preload` of these packages.
    pub async fn start_with(isolation: Isolation, preload: &[&str]) -> Fixture {
        let preload: Vec<String> = preload.iter().map(|p| p.to_string()).collect();
        // Not under /tmp: templates get a private /tmp, where it would not be. Workers
        // (other uids) must traverse every directory down to the set.
        std::fs::create_dir_all(TEST_ROOT).unwrap();
        std::fs::set_permissions(TEST_ROOT, std::fs::Permissions::from_mode(0o755)).unwrap();
        let packages = tempfile::Builder::new()
            .prefix("t-")
            .tempdir_in(TEST_ROOT)
            .unwrap();
        std::fs::set_permissions(packages.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = packages.path().join("sets");
        let r = root.clone();
        let serve = TestServe::start(move |cfg| {
            cfg.packages_root = r;
            cfg.pool.isolation = isolation;
            cfg.pool.preload = preload;
        })
        .await;
        Fixture {
            serve,
            root,
            cwd: tempfile::tempdir().unwrap(),
            _packages: packages,
        }
    }

    /// `warden ARGS` against this fixture's database: its stdout (it must succeed).
    pub fn warden(&self, args: &[&str]) -> String {
        ok(self.cli(args))
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        warden(&self.serve.db, &self.serve.redis, self.cwd.path(), args)
    }

    pub async fn generation(&self) -> i64 {
        warden_tests::db::scalar(&self.serve.db, "SELECT generation FROM package_generation").await
    }

    pub async fn recorded(&self) -> Option<Recorded> {
        let mut conn = self.serve.db.connection().await;
        sqlx::query_as::<
            _,
            (
                String,
                Option<i64>,
                Option<i64>,
                Option<String>,
                Option<String>,
            ),
        >(
            "SELECT state, generation, attempt_generation, directory, error
               FROM package_installs WHERE consumer = 's1'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap()
        .map(
            |(state, generation, attempt_generation, directory, error)| Recorded {
                state,
                generation,
                attempt_generation,
                directory,
                error,
            },
        )
    }

    /// Waits until the supervisor recorded `check` true (pip may download: up to 5 min).
    pub async fn wait_recorded(&self, what: &str, check: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(r) = self.recorded().await {
                if check(&r) {
                    return r;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never recorded; last {:?}",
                self.recorded().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Adds requirements and waits until every template uses the new set.
    pub async fn install(&self, requirements: &[&str]) -> Recorded {
        let mut args = vec!["package", "add"];
        args.extend_from_slice(requirements);
        self.warden(&args);
        let g = self.generation().await;
        self.wait_recorded("the new set in use", |r| {
            r.state == "installed" && r.generation == Some(g)
        })
        .await
    }
}
