//! `warden completions SHELL` and `warden man [--dir DIR]`: shell completion scripts
//! (`clap_complete`) and man pages (`clap_mangen`), generated from the same clap
//! definitions as the parser, so they cannot fall out of step with the flags.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::cli_error::CliError;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<i32, CliError> {
    // Generated into memory first: `clap_complete` panics on a write error (a closed
    // pipe), this reports it.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "warden", &mut script);
    print_bytes(&script, "write the completion script")
}

/// `bytes` on stdout; a reader that went away early (`| head`) is not an error.
fn print_bytes(bytes: &[u8], what: &'static str) -> Result<i32, CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(source) => Err(CliError::Local { what, source }),
    }
}

/// Prints the `warden(1)` page on stdout, or with `dir` writes one page per command
/// into it (`warden.1`, `warden-serve.1`, `warden-executions-list.1`, ...) and names
/// them on stdout.
pub fn man(dir: Option<&Path>) -> Result<i32, CliError> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut page)
            .map_err(|source| CliError::Local {
                what: "render the man page",
                source,
            })?;
        return print_bytes(&page, "write the man page");
    };
    clap_mangen::generate_to(cmd, dir).map_err(|source| CliError::Local {
        what: "write the man pages",
        source,
    })?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("warden") && n.ends_with(".1"))
        .map(|n| format!("{}\n", dir.join(n).display()))
        .collect();
    pages.sort();
    print_bytes(pages.concat().as_bytes(), "name the man pages")
}
