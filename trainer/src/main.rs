//! The `kilobyte` command-line tool.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kilobyte_trainer::cli::Cli::parse();
    // KILOBYTE_KERNELS=scalar runs the runtime's scalar reference kernels,
    // which compute what a Cortex-M does bit for bit (the firmware test
    // compares against it).
    if std::env::var("KILOBYTE_KERNELS").is_ok_and(|v| v == "scalar") {
        let _ = kilobyte_runtime::kernels::set_isa(kilobyte_runtime::kernels::Isa::Scalar);
    }
    match kilobyte_trainer::cli::run(cli) {
        // A run stopped by a signal saved its checkpoint and returned; the
        // status still says it was stopped (130 SIGINT, 143 SIGTERM).
        Ok(()) => match kilobyte_trainer::checkpoint::interrupt_status() {
            Some(status) => ExitCode::from(status),
            None => ExitCode::SUCCESS,
        },
        Err(e) => {
            // `{:#}` joins the context chain on one line: "file.kbm: truncated at byte N ...".
            eprintln!("kilobyte: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
