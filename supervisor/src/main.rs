//! The `warden` binary: parses the command line and hands off to the library. Every
//! user mistake ends here as one `error:` line and exit code 2.

use clap::Parser;
use warden::cli::Cli;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let level = cli
        .log_level
        .as_deref()
        .unwrap_or(cli.command.default_log_level());
    warden::telemetry::init(level, cli.log_format);
    let result = cli.command.run().await;
    match result {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            eprintln!("error: {msg}");
            std::process::exit(warden::exec_cmd::EXIT_USAGE);
        }
    }
}
