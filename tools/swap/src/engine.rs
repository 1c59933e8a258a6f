//! The swap itself, step by step.

use kit::docker::Engine;
use kit::{Error, Result};

use crate::api::{Report, Request};

pub(crate) fn run(
    _engine: &Engine,
    _req: &Request,
    _stop: &dyn Fn() -> bool,
    _report: &mut Report,
) -> Result<()> {
    Err(Error::step("preflight", "not implemented yet"))
}
