//! Installing one set of requirements with pip into a directory of its own, atomically,
//! and removing the sets no template uses any more.
//!
//! ```text
//! <root>/.tmp-<generation>-<hash>   pip install --target here (never imported from)
//!        │ pip succeeded: chown root, dirs 0755, files 0644 (0755 if executable)
//!        ▼ rename (atomic, same file system)
//! <root>/<generation>-<hash>        what templates import from, read-only to workers
//! ```
//!
//! `<hash>` is the SHA-256 (16 hex digits) of the requirement lines, so a supervisor that
//! restarts, or sees a generation whose lines did not change, reuses the directory it
//! already has instead of running pip again. A set that pip fails on never gets a
//! final name: its temporary directory is removed, and the error says what pip said.
//!
//! The interpreter is `/usr/bin/python3` (or `WARDEN_PYTHON`): the one the worker
//! embeds, so compiled extensions pip picks match its ABI. pip's own configuration
//! (`/etc/pip.conf`, `PIP_INDEX_URL`, `PIP_CACHE_DIR`, proxies) applies: the supervisor's
//! environment is passed to it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The most pip may take for one set.
pub const PIP_TIMEOUT: Duration = Duration::from_secs(600);
/// Lines of pip's output kept in an error.
const ERROR_LINES: usize = 12;

/// Why a set could not be installed, for the log, `package list` and `status`.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "pip is not available for {python} ({why}): install it with `apt-get install \
         python3-pip python3-venv` (scripts/setup does), or point WARDEN_PYTHON at an \
         interpreter of the workers' Python version that has pip"
    )]
    NoPip { python: String, why: String },
    #[error("pip could not install the requirements ({status}): {output}")]
    Pip { status: String, output: String },
    #[error("pip took longer than {0:?}; the previous set stays in use")]
    Timeout(Duration),
    #[error("cannot prepare the package directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The content hash of a set of requirement lines (16 hex digits).
pub fn content_hash(lines: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (_, line) in lines {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A completed directory of this content hash under `root`, if there is one.
pub fn find_installed(root: &Path, hash: &str) -> Option<PathBuf> {
    let suffix = format!("-{hash}");
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && n.ends_with(&suffix))
        })
}

/// Installs `lines` with pip into `<root>/<generation>-<hash>` (see the module comment).
pub async fn install(
    python: &str,
    root: &Path,
    generation: i64,
    hash: &str,
    lines: &[(String, String)],
) -> Result<PathBuf, InstallError> {
    check_pip(python).await?;
    // A root supervisor's templates get private tmp directories (pool::spawn).
    let private_tmp = nix::unistd::geteuid().is_root();
    if let Some(hidden) = warden_protocol::limits::PRIVATE_TMP_DIRS
        .iter()
        .find(|d| private_tmp && root.starts_with(d))
    {
        return Err(InstallError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::other(format!(
                "workers get a private {hidden} and would not see a package set there; \
                 choose another --packages-dir"
            )),
        });
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    // Workers traverse it to reach their set (its parents must let them, too).
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).map_err(io(root))?;
    let fin = root.join(format!("{generation}-{hash}"));
    let tmp = root.join(format!(".tmp-{generation}-{hash}-{}", std::process::id()));
    let req_file = root.join(format!(
        ".tmp-{generation}-{hash}-{}.txt",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&req_file, text).map_err(io(&req_file))?;
    let result = run_pip(python, &tmp, &req_file).await;
    let _ = std::fs::remove_file(&req_file);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let sealed = {
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || seal(&tmp))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    };
    if let Err(e) = sealed {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(InstallError::Io {
            path: tmp,
            source: e,
        });
    }
    if fin.exists() {
        let _ = std::fs::remove_dir_all(&fin);
    }
    std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
    Ok(fin)
}

async fn check_pip(python: &str) -> Result<(), InstallError> {
    let out = tokio::process::Command::new(python)
        .args(["-m", "pip", "--version"])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let why = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => last_lines(&String::from_utf8_lossy(&o.stderr), 2),
        Err(e) => e.to_string(),
    };
    Err(InstallError::NoPip {
        python: python.to_string(),
        why,
    })
}

async fn run_pip(python: &str, target: &Path, req_file: &Path) -> Result<(), InstallError> {
    let child = tokio::process::Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--root-user-action=ignore",
            "--target",
        ])
        .arg(target)
        .arg("-r")
        .arg(req_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(PIP_TIMEOUT, child).await {
        Err(_) => return Err(InstallError::Timeout(PIP_TIMEOUT)),
        Ok(Err(e)) => {
            return Err(InstallError::NoPip {
                python: python.to_string(),
                why: e.to_string(),
            })
        }
        Ok(Ok(o)) => o,
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    Err(InstallError::Pip {
        status: out.status.to_string(),
        output: last_lines(&text, ERROR_LINES),
    })
}

/// The last `n` non-empty lines of `text`, joined with " | ".
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Makes a tree read-only to everyone but root: owned by root when we are root, dirs
/// 0755, files 0644 (0755 when the owner could execute it); symlinks are left alone.
pub fn seal(dir: &Path) -> std::io::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if root {
            std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        }
        let mode = if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
            0o755
        } else if meta.permissions().mode() & 0o100 != 0 {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Removes everything under `root` but `keep` and the lock file: older sets, and
/// temporary directories a crash left behind. Returns what was removed.
pub fn remove_others(root: &Path, keep: Option<&Path>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if Some(path.as_path()) == keep || entry.file_name() == super::LOCK_FILE {
            continue;
        }
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old package set")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &[&str]) -> Vec<(String, String)> {
        l.iter().map(|s| (s.to_string(), s.to_string())).collect()
    }

    #[tokio::test]
    async fn without_pip_the_error_says_what_to_install_and_nothing_is_left() {
        let root = tempfile::tempdir().unwrap();
        let sets = root.path().join("sets");
        let e = install("/nonexistent/python3", &sets, 1, "abc", &lines(&["six"]))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("apt-get install python3-pip"), "{msg}");
        assert!(!sets.exists());
    }

    #[test]
    fn the_hash_follows_the_lines() {
        let a = content_hash(&lines(&["requests", "six==1.16.0"]));
        assert_eq!(a.len(), 16);
        assert_eq!(a, content_hash(&lines(&["requests", "six==1.16.0"])));
        assert_ne!(a, content_hash(&lines(&["requests", "six==1.17.0"])));
    }

    #[test]
    fn sealing_makes_a_tree_read_only_and_others_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let set = root.path().join("3-abc");
        std::fs::create_dir_all(set.join("pkg")).unwrap();
        std::fs::write(set.join("pkg/__init__.py"), "x = 1").unwrap();
        std::fs::set_permissions(set.join("pkg"), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(
            set.join("pkg/__init__.py"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        seal(&set).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&set.join("pkg")), 0o755);
        assert_eq!(mode(&set.join("pkg/__init__.py")), 0o644);
        assert_eq!(find_installed(root.path(), "abc"), Some(set.clone()));
        assert_eq!(find_installed(root.path(), "abd"), None);

        std::fs::create_dir_all(root.path().join("2-old")).unwrap();
        std::fs::create_dir_all(root.path().join(".tmp-4-def-1")).unwrap();
        std::fs::write(root.path().join(super::super::LOCK_FILE), "").unwrap();
        let removed = remove_others(root.path(), Some(&set));
        assert_eq!(removed.len(), 2);
        assert!(set.exists() && root.path().join(super::super::LOCK_FILE).exists());
    }
}
