//! Stopping cleanly: Ctrl-C (SIGINT), and SIGTERM/SIGHUP as batch
//! schedulers send before a kill, record the signal; the training loop
//! polls it between steps, saves a checkpoint and returns, and the process
//! then exits with 128 + the signal's number (130 for SIGINT, 143 for
//! SIGTERM), as a shell reports a process the signal killed. A second
//! signal exits at once with that status: checkpoints are atomic, so even
//! that loses only the steps since the last one.

use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

/// The first signal received, 0 before any.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

const FIRST: &[u8] = b"kilobyte: interrupted: saving a checkpoint, then stopping (interrupt again to stop at once)\n";
const AGAIN: &[u8] = b"kilobyte: interrupted again: stopping now\n";

/// Installs the handlers (once per process; later calls return the first
/// call's result).
pub fn install_interrupt_handler() -> Result<()> {
    let installed = INSTALLED.get_or_init(install);
    installed
        .clone()
        .map_err(|e| anyhow!("cannot install the interrupt handler: {e}"))
}

/// Whether an interrupt has arrived.
pub fn interrupted() -> bool {
    interrupt_signal().is_some()
}

/// The number of the first stopping signal received, if any.
pub fn interrupt_signal() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status after an interrupt: 128 + the signal's number.
pub fn interrupt_status() -> Option<u8> {
    interrupt_signal().map(|s| (128 + s).clamp(0, 255) as u8)
}

// Our own handler, not the ctrlc crate's: the exit status needs to know
// which signal arrived, and ctrlc reports SIGINT, SIGTERM and SIGHUP alike.
#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: an atomic, write(2) and _exit(2).
    let first = SIGNAL
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    let msg = if first { FIRST } else { AGAIN };
    // SAFETY: writes a static buffer to stderr; _exit ends the process
    // without running anything that could take a lock.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        if !first {
            libc::_exit(128 + SIGNAL.load(Ordering::SeqCst));
        }
    }
}

#[cfg(unix)]
fn install() -> Result<(), String> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only does
        // async-signal-safe work.
        let ok = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // Interrupted reads and writes restart instead of failing.
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut()) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn install() -> Result<(), String> {
    // Elsewhere Ctrl-C is the one stopping signal there is: SIGINT's 2.
    ctrlc::set_handler(|| {
        if SIGNAL.swap(2, Ordering::SeqCst) != 0 {
            eprint!("{}", String::from_utf8_lossy(AGAIN));
            std::process::exit(130);
        }
        eprint!("{}", String::from_utf8_lossy(FIRST));
    })
    .map_err(|e| e.to_string())
}
