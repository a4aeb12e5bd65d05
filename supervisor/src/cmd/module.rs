//! `warden module push|list|rm`: the workspace's shared Python modules, which workflows
//! import (`from shared.tickets import open_ticket`).
//!
//! The database is the source of truth; a push or a removal also brings the Redis
//! module cache up to date before the command returns, so an execution that starts
//! after it always sees the new code. (Every running supervisor also hears of the
//! change through PostgreSQL's NOTIFY and updates the cache itself, which covers a
//! Redis that the command cannot reach.)
//!
//! A push first compiles every file (`ast.parse` in a `python3` subprocess, see
//! [`crate::pycheck`]; the code never runs): one that does not compile, and nothing is
//! stored. `--dry-run` stops there and prints the import name of each module.
//!
//! A push checks the Redis copy of every path it names, unchanged ones included, by
//! content as well as hash: no notification fires for an unchanged module, so a copy
//! someone altered in Redis would otherwise stay wrong (and run) for as long as nobody
//! changes the source. Such a copy is rewritten, the generation moves so workers reload
//! it, and the command says so.

use std::path::PathBuf;

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::modules::{files, store, ModuleCache, ModuleFile, ModuleSync, PushAction};
use crate::pycheck;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum ModuleCmd {
    /// Store `.py` files, or whole directories of them.
    ///
    /// Paths stay relative to the current directory: `warden module push shared` stores
    /// `shared/__init__.py`, `shared/tickets.py`, ... Unchanged files (same content
    /// hash) are not stored again. The Redis module cache is updated before the command
    /// returns, and the Redis copy of every file pushed, unchanged ones included, is
    /// rewritten if it differs from the database's.
    ///
    /// Every file is compiled first (never run): if one does not compile, nothing is
    /// stored. Module names follow the paths: `shared/tickets.py` is `shared.tickets`,
    /// `shared/__init__.py` the package `shared`.
    Push {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Store everything under this package path (`--prefix lib` → `lib/shared/...`).
        #[arg(long)]
        prefix: Option<String>,
        /// Check the files and print the module names they would be stored as; store
        /// nothing (needs no database or Redis).
        #[arg(long)]
        dry_run: bool,
    },
    /// List stored modules.
    List {
        /// One JSON array of objects (`path`, `module`, `size_bytes`, `content_hash`,
        /// `updated_at`) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Remove modules.
    ///
    /// A path (`shared/tickets.py`), or a directory (`shared`) for everything under it.
    Rm {
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

pub async fn run(conn: ConnArgs, cmd: ModuleCmd) -> Result<i32, CliError> {
    // Every file is read and compiled before the database is even reached.
    let checked = match &cmd {
        ModuleCmd::Push { paths, prefix, .. } => Some(collect_checked(paths, prefix.as_deref())?),
        _ => None,
    };
    if let (ModuleCmd::Push { dry_run: true, .. }, Some(files)) = (&cmd, &checked) {
        print_dry_run(files);
        return Ok(0);
    }
    let store = conn.store().await?;
    let code = match cmd {
        ModuleCmd::Push { .. } => push(&conn, &store, &checked.unwrap_or_default()).await,
        ModuleCmd::List { json } => list(&store, json).await,
        ModuleCmd::Rm { paths } => remove(&conn, &store, &paths).await,
    };
    store.close().await;
    code
}

/// The modules the arguments name, each compiled (`ast.parse`, never run): one that
/// does not compile, and the push stores nothing. Skipped files are warned about.
fn collect_checked(paths: &[PathBuf], prefix: Option<&str>) -> Result<Vec<ModuleFile>, CliError> {
    let cwd = std::env::current_dir().map_err(|source| CliError::Local {
        what: "read the current directory",
        source,
    })?;
    let collected = files::collect(paths, prefix, &cwd)?;
    for (file, why) in &collected.skipped {
        eprintln!("warning: skipped {}: {why}", file.display());
    }
    if collected.files.is_empty() {
        return Err(CliError::InvalidInput("no .py files to push".into()));
    }
    let sources: Vec<&str> = collected.files.iter().map(|f| f.content.as_str()).collect();
    let issues = pycheck::compile_errors(&sources)
        .map_err(|e| CliError::InvalidInput(format!("{e}; nothing stored")))?;
    if !issues.is_empty() {
        let lines: Vec<String> = issues
            .iter()
            .map(|i| {
                format!(
                    "{}:{}: syntax error: {}",
                    collected.files[i.index].path, i.line, i.message
                )
            })
            .collect();
        return Err(CliError::InvalidInput(format!(
            "{}\n{} of {} files do not compile; nothing stored",
            lines.join("\n"),
            issues.len(),
            collected.files.len()
        )));
    }
    Ok(collected.files)
}

/// `--dry-run`: each module's import name and workspace path.
fn print_dry_run(modules: &[ModuleFile]) {
    let rows: Vec<Vec<String>> = modules
        .iter()
        .map(|m| vec![files::module_name(&m.path), m.path.clone()])
        .collect();
    print!("{}", super::table::render(&["module", "path"], &rows));
    println!("dry run: {} modules compile; nothing stored", modules.len());
}

async fn push(conn: &ConnArgs, store: &Store, modules: &[ModuleFile]) -> Result<i32, CliError> {
    let results = store::push(store, modules).await?;
    for (path, action) in &results {
        let what = match action {
            PushAction::Created => "created",
            PushAction::Updated => "updated",
            PushAction::Unchanged => "unchanged",
        };
        println!("{what:<9} {path}");
    }
    let n = |a: PushAction| results.iter().filter(|(_, x)| *x == a).count();
    println!(
        "{} created, {} updated, {} unchanged",
        n(PushAction::Created),
        n(PushAction::Updated),
        n(PushAction::Unchanged)
    );
    repair_cache(conn, store, &results).await;
    Ok(0)
}

async fn list(store: &Store, json: bool) -> Result<i32, CliError> {
    let all = store::list(store).await?;
    if json {
        let items = all.iter().map(|m| {
            serde_json::json!({
                "path": m.path,
                "module": files::module_name(&m.path),
                "size_bytes": m.size_bytes,
                "content_hash": m.content_hash,
                "updated_at": super::json::time(m.updated_at),
            })
        });
        super::json::print(&serde_json::Value::Array(items.collect()));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|m| {
            vec![
                m.path.clone(),
                m.size_bytes.to_string(),
                m.content_hash[..m.content_hash.len().min(12)].to_string(),
                m.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table::render_aligned(&["path", "bytes", "hash", "updated"], &rows, &[1])
    );
    Ok(0)
}

async fn remove(conn: &ConnArgs, store: &Store, paths: &[String]) -> Result<i32, CliError> {
    let mut removed = Vec::new();
    let mut missing = Vec::new();
    for path in paths {
        let gone = store::remove(store, path).await?;
        if gone.is_empty() {
            missing.push(path.as_str());
        }
        for p in gone {
            println!("removed {p}");
            removed.push(p);
        }
    }
    update_cache(conn, store, &removed).await;
    if !missing.is_empty() {
        eprintln!(
            "error: no module at {} in the workspace",
            missing.join(", ")
        );
        return Ok(1);
    }
    Ok(0)
}

/// Brings the Redis cache in line with the database for every pushed path now, by
/// content and hash, and names each unchanged module whose Redis copy had to be
/// rewritten (a created or updated one is rewritten as a matter of course). A failure is
/// only a warning, as in [`update_cache`].
async fn repair_cache(conn: &ConnArgs, store: &Store, pushed: &[(String, PushAction)]) {
    let paths: Vec<String> = pushed.iter().map(|(p, _)| p.clone()).collect();
    let repaired = async {
        let cache = ModuleCache::connect(&conn.redis_url, conn.keys()).await?;
        ModuleSync::new(store.clone(), cache)
            .repair_paths(&paths)
            .await
    }
    .await;
    match repaired {
        Ok(r) => {
            for (path, action) in pushed {
                if *action == PushAction::Unchanged && r.rewritten.contains(path) {
                    println!("repaired the Redis copy of {path} (it differed from the database)");
                }
            }
        }
        Err(e) => eprintln!(
            "warning: the module cache in Redis was not updated ({e}); running supervisors \
             will update it from the database"
        ),
    }
}

/// Brings the Redis cache in line with the database for `paths` now. A failure is only
/// a warning: the database has the change, and running supervisors apply it from the
/// notification.
async fn update_cache(conn: &ConnArgs, store: &Store, paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    let synced = async {
        let cache = ModuleCache::connect(&conn.redis_url, conn.keys()).await?;
        ModuleSync::new(store.clone(), cache)
            .sync_paths(paths)
            .await
    }
    .await;
    if let Err(e) = synced {
        eprintln!(
            "warning: the module cache in Redis was not updated ({e}); running supervisors \
             will update it from the database"
        );
    }
}
