//! The `warden` binary: parses the command line and hands off to the library. Every
//! user mistake ends here as one `error:` line and exit code 2.

use clap::Parser;
use warden::cli::{Cli, Command};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let level = cli.log_level.as_deref().unwrap_or(default_level);
    warden::telemetry::init(level, cli.log_format);
    let result = match cli.command {
        Command::Exec(args) => warden::exec_cmd::run(args).await,
        Command::Bench(args) => warden::bench::run(args).await,
        Command::Serve(args) => warden::cmd::serve::run(args).await,
        Command::Migrate { conn } => warden::cmd::migrate::run(conn).await,
        Command::Module { cmd, conn } => warden::cmd::module::run(conn, cmd).await,
        Command::Workflow { cmd, conn } => warden::cmd::workflow::run(conn, cmd).await,
        Command::Submit(args) => warden::cmd::submit::run(args).await,
        Command::Executions { cmd, conn } => warden::cmd::executions::run(conn, cmd).await,
        Command::Cancel { id, conn } => warden::cmd::cancel::run(conn, id).await,
        Command::Status { conn } => warden::cmd::status::run(conn).await,
        Command::Config { cmd, conn } => warden::cmd::config::run(conn, cmd).await,
        Command::Kv { cmd, conn } => warden::cmd::kv::run(conn, cmd).await,
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            eprintln!("error: {msg}");
            std::process::exit(warden::exec_cmd::EXIT_USAGE);
        }
    }
}
