//! `warden package add|rm|list|sync`: the workspace's third-party Python packages
//! (docs/packages.md). The requirements live in PostgreSQL; every change moves their
//! generation and notifies the running supervisors, which install the new set with pip
//! and roll their templates over to it. Lines are checked before anything is stored
//! ([`crate::packages::spec`]): one bad line, and nothing is stored.

use std::path::PathBuf;

use clap::Subcommand;

use crate::args::ConnArgs;
use crate::cli_error::CliError;
use crate::packages::spec::{self, Requirement};
use crate::packages::store::{self, Added};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum PackageCmd {
    /// Add requirements, or change them (`requests`, `requests>=2.31`,
    /// `pydantic[email]==2.9.2`); a name already required is replaced.
    Add {
        #[arg(required = true)]
        requirements: Vec<String>,
    },
    /// Remove requirements by name.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The requirements, their generation, and what each supervisor has installed.
    List,
    /// Make the requirements exactly those of a requirements file (blank lines and `#`
    /// comments skipped; pip options are refused).
    Sync {
        /// The file (`-` for stdin).
        #[arg(short = 'r', long = "requirement", required = true)]
        file: PathBuf,
    },
}

pub async fn run(conn: ConnArgs, cmd: PackageCmd) -> Result<i32, CliError> {
    // Every line is checked before the database is reached.
    let checked = match &cmd {
        PackageCmd::Add { requirements } => Some(check_lines(requirements)?),
        PackageCmd::Sync { file } => Some(check_file(file)?),
        _ => None,
    };
    let store = conn.store().await?;
    let code = match cmd {
        PackageCmd::Add { .. } => add(&store, &checked.unwrap_or_default()).await,
        PackageCmd::Rm { names } => remove(&store, &names).await,
        PackageCmd::List => list(&conn, &store).await,
        PackageCmd::Sync { .. } => sync(&store, &checked.unwrap_or_default()).await,
    };
    store.close().await;
    code
}

fn check_lines(lines: &[String]) -> Result<Vec<Requirement>, CliError> {
    let mut good: Vec<Requirement> = Vec::new();
    let mut bad = Vec::new();
    for line in lines {
        match spec::parse(line) {
            Ok(r) => match good.iter_mut().find(|g| g.name == r.name) {
                Some(g) => *g = r,
                None => good.push(r),
            },
            Err(e) => bad.push(e.to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(CliError::InvalidInput(format!(
            "{}\nnothing stored",
            bad.join("\n")
        )));
    }
    Ok(good)
}

fn check_file(file: &PathBuf) -> Result<Vec<Requirement>, CliError> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|source| CliError::Local {
        what: "read the requirements file",
        source,
    })?;
    spec::parse_file(&text).map_err(|bad| {
        let lines: Vec<String> = bad
            .iter()
            .map(|(n, e)| format!("{}:{n}: {e}", file.display()))
            .collect();
        CliError::InvalidInput(format!("{}\nnothing stored", lines.join("\n")))
    })
}

async fn add(store: &Store, reqs: &[Requirement]) -> Result<i32, CliError> {
    let actions = store::add(store, reqs).await?;
    for (r, a) in reqs.iter().zip(&actions) {
        let what = match a {
            Added::Created => "added",
            Added::Updated => "changed",
            Added::Unchanged => "unchanged",
        };
        println!("{what:<9} {}", r.line);
    }
    print_generation(store).await?;
    Ok(0)
}

async fn remove(store: &Store, names: &[String]) -> Result<i32, CliError> {
    let normalised: Vec<String> = names.iter().map(|n| spec::normalise(n.trim())).collect();
    let gone = store::remove(store, &normalised).await?;
    for n in &gone {
        println!("removed {n}");
    }
    let missing: Vec<&str> = normalised
        .iter()
        .filter(|n| !gone.contains(n))
        .map(String::as_str)
        .collect();
    print_generation(store).await?;
    if !missing.is_empty() {
        eprintln!("error: no requirement named {}", missing.join(", "));
        return Ok(1);
    }
    Ok(0)
}

async fn sync(store: &Store, reqs: &[Requirement]) -> Result<i32, CliError> {
    let (changed, removed) = store::replace_all(store, reqs).await?;
    for r in reqs.iter().filter(|r| changed.contains(&r.name)) {
        println!("set     {}", r.line);
    }
    for n in &removed {
        println!("removed {n}");
    }
    println!(
        "{} requirements: {} set, {} removed",
        reqs.len(),
        changed.len(),
        removed.len()
    );
    print_generation(store).await?;
    Ok(0)
}

async fn print_generation(store: &Store) -> Result<(), CliError> {
    let current = store::current(store).await?;
    println!(
        "generation {}: running supervisors install it and roll their workers over",
        current.generation
    );
    Ok(())
}

async fn list(conn: &ConnArgs, store: &Store) -> Result<i32, CliError> {
    let current = store::current(store).await?;
    println!(
        "generation {} ({} requirements)",
        current.generation,
        current.lines.len()
    );
    for (_, line) in &current.lines {
        println!("  {line}");
    }
    let installs = store::installs(store).await?;
    if installs.is_empty() {
        println!("no supervisor has reported installing packages");
    }
    // Which supervisors are live (their status in Redis); without Redis, all are shown
    // unmarked.
    let live: Option<Vec<String>> = match conn.intake().await {
        Ok(client) => client
            .list_supervisors()
            .await
            .ok()
            .map(|l| l.into_iter().map(|s| s.consumer).collect()),
        Err(_) => None,
    };
    for s in &installs {
        let gone = match &live {
            Some(l) if !l.contains(&s.consumer) => " (not running)",
            _ => "",
        };
        println!(
            "supervisor {}{gone}: {}",
            s.consumer,
            install_line(s, current.generation)
        );
    }
    Ok(0)
}

/// One supervisor's state, as `package list` and `status` show it.
pub fn install_line(s: &store::InstallState, generation: i64) -> String {
    let in_use = match (&s.generation, &s.directory) {
        (Some(g), Some(d)) => format!("uses generation {g} ({d})"),
        _ => "uses no packages".to_string(),
    };
    let behind = match s.generation {
        Some(g) if g < generation && s.state == "installed" => " (behind: updating)",
        _ => "",
    };
    let at = s.updated_at.format("%Y-%m-%d %H:%M:%S");
    match s.state.as_str() {
        "failed" => format!(
            "{in_use}; FAILED to install generation {}: {} [{at}]",
            s.attempt_generation.unwrap_or_default(),
            s.error.as_deref().unwrap_or("unknown error")
        ),
        "installing" => format!(
            "{in_use}; installing generation {} [{at}]",
            s.attempt_generation.unwrap_or_default()
        ),
        _ => format!("{in_use}{behind} [{at}]"),
    }
}
