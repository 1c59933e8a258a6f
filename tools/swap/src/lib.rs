//! swap: replace a running service's container with zero failed requests.
//!
//! Reads from the record: the image to deploy when `--image` is not given
//! (`img-push.pushed.0.tag`, else `img-build.tags.0`, else `img-build.image_id`). Adds `swap`:
//! the old and new containers (id, name, image, ip), the image, the strategy, the health
//! outcome and the service's `health_url`, what the switch, drain and stop did, and each
//! step's time in ms. The library API ([`replace`]) does the same for other tools (`restore`).

mod api;
mod engine;
pub mod lock;

pub use api::{
    replace, Alias, Container, Health, Nginx, Report, Request, Spec, Strategy, SERVICE_LABEL,
};

use clap::Parser;
use kit::{Common, Done, Record, Result, Tool};

/// Replace a running service's container with a new image, with zero failed requests.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// The service to replace (its container's stable name and its deploy lock)
    #[arg(long, env = "SWAP_SERVICE", value_name = "NAME")]
    pub service: String,

    /// The image to deploy (default: from the record: img-push, else img-build)
    #[arg(long, env = "SWAP_IMAGE", value_name = "REF")]
    pub image: Option<String>,

    #[command(flatten)]
    pub common: Common,
}

impl Tool for Args {
    const NAME: &'static str = "swap";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, _record: &mut Record) -> Result<Done> {
        Err(kit::Error::step("preflight", "not implemented yet"))
    }
}
