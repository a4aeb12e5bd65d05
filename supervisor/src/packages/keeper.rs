//! [`PackageKeeper`]: `serve`'s side of the workspace's packages. At start-up it makes
//! sure the current requirements are installed (pip runs before the pool starts, so the
//! first templates already import them); then it follows the requirements' generation
//! (NOTIFY `warden_packages`, heard on the module cache's LISTEN connection, so no new
//! database session) and, when their content changed, installs the new set and rolls
//! the pool over to it ([`crate::pool::Pool::set_packages`]). Once no template of an
//! older set is left, the older directories are removed.
//!
//! ```text
//! NOTIFY ─▶ read requirements (1 query) ─ same content hash ─▶ record, done
//!                    │ new content
//!                    ▼
//!            pip install (install.rs) ─ fails ─▶ previous set stays; error recorded + logged
//!                    │ ok
//!                    ▼
//!            pool.set_packages(dir) ─▶ templates replaced one at a time as they go idle
//!                    ▼
//!            no stale template left ─▶ older sets removed; `installed` recorded
//! ```
//!
//! What it records (`package_installs`, one row per consumer) is what `warden package
//! list` and `warden status` show.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::install::{self, InstallError};
use super::store::{self, InstallState};
use super::LOCK_FILE;
use crate::pool::Pool;
use crate::store::Store;

/// How often the rollover's progress is looked at.
const ROLLOVER_POLL: Duration = Duration::from_millis(50);

/// See the module comment.
pub struct PackageKeeper {
    store: Store,
    root: PathBuf,
    python: String,
    consumer: String,
    in_use: Option<InUse>,
    /// Sets given to the pool so far (what `PoolStats::packages_version` counts).
    sent: u64,
    /// The last failure, until a set installs or the content goes back to the one in use.
    failed: Option<(i64, String)>,
    /// Held while this supervisor installs under `root`.
    lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

struct InUse {
    /// The requirements' generation this content was last seen at.
    generation: i64,
    hash: String,
    dir: PathBuf,
}

/// What the requirements now ask of the pool.
enum Next {
    /// Nothing to change (same content, or the new set could not be installed).
    Keep,
    /// Roll over to this set (`None`: no packages any more).
    Use(Option<PathBuf>),
}

impl PackageKeeper {
    pub fn new(store: Store, root: PathBuf, consumer: String) -> PackageKeeper {
        PackageKeeper {
            store,
            root,
            python: crate::pycheck::python(),
            consumer,
            in_use: None,
            sent: 0,
            failed: None,
            lock: None,
        }
    }

    /// Start-up: installs the current requirements if this host has no set of their
    /// content yet (pip runs now, before the pool starts). Returns the directory the
    /// first templates import from. A failure is logged and recorded; the pool then
    /// starts without packages, and the next change tries again.
    pub async fn prepare(&mut self) -> Option<PathBuf> {
        let dir = match self.next().await {
            Next::Use(dir) => dir,
            Next::Keep => None,
        };
        if self.lock.is_some() {
            install::remove_others(&self.root, dir.as_deref());
        }
        self.record().await;
        dir
    }

    /// Follows the requirements until `stop` (see the module comment).
    pub async fn follow(
        mut self,
        pool: Pool,
        mut changes: mpsc::UnboundedReceiver<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                c = changes.recv() => if c.is_none() { return },
                _ = stop.changed() => return,
            }
            // A burst of notifications is one read.
            while changes.try_recv().is_ok() {}
            let next = tokio::select! {
                n = self.next() => n,
                _ = stop.changed() => return,
            };
            let Next::Use(dir) = next else { continue };
            pool.set_packages(dir.clone());
            self.sent += 1;
            loop {
                let s = pool.stats();
                if s.packages_version >= self.sent && s.packages_stale == 0 {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(ROLLOVER_POLL) => {}
                    _ = stop.changed() => return,
                }
            }
            let removed = if self.lock.is_some() {
                install::remove_others(&self.root, dir.as_deref())
            } else {
                Vec::new()
            };
            tracing::info!(
                directory = ?dir,
                removed = removed.len(),
                "every template now imports the new package set"
            );
            self.record().await;
        }
    }

    /// Reads the requirements and decides; installs a new content with pip.
    async fn next(&mut self) -> Next {
        let reqs = match store::current(&self.store).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the workspace's requirements");
                return Next::Keep;
            }
        };
        let hash = (!reqs.lines.is_empty()).then(|| install::content_hash(&reqs.lines));
        if hash.as_deref() == self.in_use.as_ref().map(|u| u.hash.as_str()) {
            if let Some(u) = &mut self.in_use {
                u.generation = reqs.generation;
            }
            if self.failed.take().is_some() {
                self.record().await;
            }
            return Next::Keep;
        }
        let Some(hash) = hash else {
            tracing::info!(generation = reqs.generation, "no requirements any more");
            self.in_use = None;
            self.failed = None;
            return Next::Use(None);
        };
        match self.install(reqs.generation, &hash, &reqs.lines).await {
            Ok(dir) => {
                self.in_use = Some(InUse {
                    generation: reqs.generation,
                    hash,
                    dir: dir.clone(),
                });
                self.failed = None;
                Next::Use(Some(dir))
            }
            Err(e) => {
                tracing::error!(
                    generation = reqs.generation,
                    error = %e,
                    "cannot install the workspace's packages; the previous set stays in use"
                );
                self.failed = Some((reqs.generation, e.to_string()));
                self.record().await;
                Next::Keep
            }
        }
    }

    async fn install(
        &mut self,
        generation: i64,
        hash: &str,
        lines: &[(String, String)],
    ) -> Result<PathBuf, InstallError> {
        self.lock_root()?;
        if let Some(dir) = install::find_installed(&self.root, hash) {
            tracing::info!(directory = %dir.display(), "the package set is already installed");
            return Ok(dir);
        }
        tracing::info!(
            generation,
            requirements = lines.len(),
            root = %self.root.display(),
            "installing the workspace's packages with pip"
        );
        self.record_installing(generation).await;
        let started = std::time::Instant::now();
        let dir = install::install(&self.python, &self.root, generation, hash, lines).await?;
        tracing::info!(directory = %dir.display(), took = ?started.elapsed(), "packages installed");
        Ok(dir)
    }

    /// Takes the root's lock (once): two supervisors installing into and cleaning the
    /// same directory would remove each other's sets.
    fn lock_root(&mut self) -> Result<(), InstallError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let io = |source| InstallError::Io {
            path: self.root.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let path = self.root.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                self.lock = Some(lock);
                Ok(())
            }
            Err((_, errno)) => Err(InstallError::Io {
                path,
                source: std::io::Error::other(format!(
                    "another supervisor on this host installs packages under {} ({errno}); \
                     give each supervisor its own --packages-dir",
                    self.root.display()
                )),
            }),
        }
    }

    async fn record_installing(&self, generation: i64) {
        let mut s = self.state();
        s.state = "installing".into();
        s.attempt_generation = Some(generation);
        s.error = None;
        self.write(s).await;
    }

    async fn record(&self) {
        let s = self.state();
        self.write(s).await;
    }

    fn state(&self) -> InstallState {
        InstallState {
            consumer: self.consumer.clone(),
            generation: self.in_use.as_ref().map(|u| u.generation),
            content_hash: self.in_use.as_ref().map(|u| u.hash.clone()),
            directory: self.in_use.as_ref().map(|u| u.dir.display().to_string()),
            state: if self.failed.is_some() {
                "failed"
            } else {
                "installed"
            }
            .into(),
            attempt_generation: self.failed.as_ref().map(|f| f.0),
            error: self.failed.as_ref().map(|f| f.1.clone()),
            updated_at: chrono::Utc::now(),
        }
    }

    async fn write(&self, s: InstallState) {
        if let Err(e) = store::record(&self.store, &s).await {
            tracing::warn!(error = %e, "cannot record the package install state");
        }
    }
}
