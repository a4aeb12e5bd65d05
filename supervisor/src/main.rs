//! The `warden` binary: parses the command line and hands off to the library. Every
//! user mistake ends here as one `error:` line and exit code 2.

use clap::Parser;
use warden::cli::{Cli, Command};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    warden::telemetry::init(&cli.log_level, cli.log_format);
    let result = match cli.command {
        Command::Exec(args) => warden::exec_cmd::run(args).await,
        Command::Bench(args) => warden::bench::run(args).await,
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            eprintln!("error: {msg}");
            std::process::exit(warden::exec_cmd::EXIT_USAGE);
        }
    }
}
