//! SIGINT and SIGTERM, for every tool that changes things: [`install`] turns them into a flag
//! that each step checks ([`received`]), so the tool cleans up what it made and ends with
//! [`interrupted`], an error naming the signal and the step it arrived in.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Error;

/// The last signal that arrived (0: none).
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

/// From now on SIGINT and SIGTERM no longer end the process: they are recorded for
/// [`received`] to report. Idempotent.
pub fn install() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        if let Err(e) = signal_hook::flag::register_usize(sig, &RECEIVED, sig as usize) {
            crate::log::warn(&format!("cannot handle signal {sig}: {e}"));
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install`].
pub fn received() -> bool {
    RECEIVED.load(Ordering::SeqCst) != 0
}

/// The name of the signal that arrived (`SIGTERM`), if one did.
pub fn name() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) as i32 {
        0 => None,
        signal_hook::consts::SIGINT => Some("SIGINT"),
        signal_hook::consts::SIGTERM => Some("SIGTERM"),
        _ => Some("a signal"),
    }
}

/// The error a tool ends with when a signal stopped it during `step`.
pub fn interrupted(step: &str) -> Error {
    Error::Interrupted {
        step: step.to_string(),
        signal: name().unwrap_or("a stop request").to_string(),
    }
}
