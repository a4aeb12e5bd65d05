//! The `warden` binary: parses the command line and hands off to the library. Every
//! failed command ends here, printed once as one `error:` line, with its exit code
//! (2: [`warden::CliError::exit_code`]).

use clap::Parser;
use warden::Cli;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let level = cli
        .log_level
        .as_deref()
        .unwrap_or(cli.command.default_log_level());
    warden::init_telemetry(level, cli.log_format);
    let result = cli.command.run(cli.conn).await;
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
