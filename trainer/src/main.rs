//! The `kilobyte` command-line tool.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kilobyte_trainer::cli::Cli::parse();
    match kilobyte_trainer::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain on one line: "file.kbm: truncated at byte N ...".
            eprintln!("kilobyte: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
