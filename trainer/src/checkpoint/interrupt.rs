//! Stopping cleanly: Ctrl-C (SIGINT), and SIGTERM/SIGHUP as batch
//! schedulers send before a kill, set a flag the training loop polls
//! between steps; it then saves a checkpoint and returns. A second signal
//! exits at once (status 130): checkpoints are atomic, so even that loses
//! only the steps since the last one.

use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the handler (once per process; later calls return the same
/// flag) and returns the flag it sets.
pub fn interrupt_flag() -> Result<&'static AtomicBool> {
    let installed = INSTALLED.get_or_init(|| {
        // ctrlc runs this on its own thread, not in signal context, so
        // printing is safe.
        ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("kilobyte: interrupted again: stopping now");
                std::process::exit(130);
            }
            eprintln!("kilobyte: interrupted: saving a checkpoint, then stopping (interrupt again to stop at once)");
        })
        .map_err(|e| e.to_string())
    });
    match installed {
        Ok(()) => Ok(&INTERRUPTED),
        Err(e) => Err(anyhow!("cannot install the Ctrl-C handler: {e}")),
    }
}

/// Whether an interrupt has arrived (false if no handler is installed).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
