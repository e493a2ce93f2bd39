//! The `operator` binary: parses the command line and hands over to [`rstore_operator::cli`].

use std::process::ExitCode;

use clap::Parser;
use rstore_operator::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.execute(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
