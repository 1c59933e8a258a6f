//! swap: replace a running service's container with zero failed requests.
//!
//! Reads from the record: the image to deploy when `--image` is not given
//! (`img-push.pushed.0.tag`, else `img-build.tags.0`, else `img-build.image_id`). Adds `swap`:
//! the old and new containers (id, name, image, ip), the image, the strategy, the health
//! outcome and the service's `health_url`, what the switch, drain and stop did, and each
//! step's time in ms. The library API ([`replace`]) does the same for other tools (`restore`).
//!
//! Where each part lives: this file is the command line; [`replace`] (replace.rs) the step
//! order and its undo; leftovers.rs what an interrupted swap left; preflight.rs what is
//! checked before anything changes, and the switch plan; blueprint.rs the new container's
//! configuration; containers.rs the Docker primitives (create, start, stop, retention);
//! health.rs the wait for the new container; switch.rs moving traffic (nginx, alias) and the
//! drain; nginx.rs the upstream file and nginx's processes; plan.rs `--dry-run`; lock.rs the
//! deploy lock; request.rs and report.rs what goes in and what comes out.

mod blueprint;
mod containers;
mod health;
mod leftovers;
pub mod lock;
mod nginx;
mod plan;
mod preflight;
mod replace;
mod report;
mod request;
mod switch;

pub use replace::{replace, PAUSE_ENV};
pub use report::{
    AliasSwitch, Container, Drain, Failed, LockInfo, NginxSwitch, Report, Stopped, Switch,
};
pub use request::{
    Alias, Health, Nginx, Request, Spec, Strategy, StrategyName, Traffic, SERVICE_LABEL,
};

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use kit::docker::Engine;
use kit::{Common, Done, Error, Record, Result, Tool};

/// Replace a running service's container with a new image, with zero failed requests.
///
/// Starts the new container next to the old one (same configuration, new image), waits until
/// it is healthy, switches traffic (nginx upstream file + graceful reload, or a network alias),
/// lets the old one drain, stops it gracefully and gives the new one the stable name. Anything
/// that fails before the switch leaves the old container serving and the proxy untouched.
///
/// Example: swap --service backend --image registry.example.com/app:1.4.2
///   --upstream-file /srv/nginx/conf.d/upstream-backend.conf --nginx-container nginx
///   --health-path /api/v1/health
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// The service: the live container's stable name, its deploy lock and its label
    #[arg(long, env = "SWAP_SERVICE", value_name = "NAME")]
    pub service: String,

    /// The live container's name, if not the service name (e.g. compose's app-backend-1)
    #[arg(long, env = "SWAP_CONTAINER", value_name = "NAME")]
    pub container: Option<String>,

    /// The image to deploy (default: from the record: img-push, else img-build)
    #[arg(long, env = "SWAP_IMAGE", value_name = "REF")]
    pub image: Option<String>,

    #[command(flatten)]
    pub traffic: Traffic,

    /// How many stopped old containers to keep for rollback (named <name>-old-<id>)
    #[arg(long, env = "SWAP_KEEP", default_value_t = 1, value_name = "N")]
    pub keep: usize,

    /// Directory of the deploy lock files (default: $XDG_RUNTIME_DIR/deploykit or /tmp/deploykit-locks)
    #[arg(long, env = "SWAP_LOCK_DIR", value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,

    /// Wait this long for another swap of the service to finish (default: fail at once)
    #[arg(long, env = "SWAP_LOCK_WAIT", default_value = "0s", value_name = "DURATION",
          value_parser = kit::parse_duration)]
    pub lock_wait: Duration,

    /// Pull the image if it is not on the engine
    #[arg(long, env = "SWAP_PULL")]
    pub pull: bool,

    /// Print the plan (what would be created, switched, stopped) and change nothing
    #[arg(long, env = "SWAP_DRY_RUN")]
    pub dry_run: bool,

    /// First deploy: the network to join (later deploys copy the old container's)
    #[arg(long, env = "SWAP_NETWORK", value_name = "NETWORK")]
    pub network: Option<String>,

    /// Environment entry KEY=VALUE, repeatable; replaces the old value of KEY
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// File of KEY=VALUE lines (like .env.production); values that may be secrets are never printed
    #[arg(long, env = "SWAP_ENV_FILE", value_name = "PATH")]
    pub env_file: Vec<PathBuf>,

    /// recreate only: host port binding [IP:]HOST:CONTAINER[/proto], repeatable
    #[arg(long, value_name = "PORTS")]
    pub publish: Vec<String>,

    /// Extra label KEY=VALUE, repeatable
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,

    /// Restart policy: no, always, unless-stopped (first deploy default), on-failure[:N]
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,

    #[command(flatten)]
    pub common: Common,
}

impl Tool for Args {
    const NAME: &'static str = "swap";

    fn common(&self) -> &Common {
        &self.common
    }

    fn cli() -> clap::Command {
        Traffic::env_prefix(Self::command(), "SWAP")
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let req = self.request(record)?;
        let earlier = earlier_swaps(record)?;
        kit::signals::install();
        let engine = Engine::connect("preflight")?;
        match replace(&engine, &req, &kit::signals::received) {
            Ok(mut report) => {
                if !req.dry_run {
                    kit::log::info(&format!(
                        "{} now runs {} ({}), in {}",
                        req.container,
                        req.image,
                        report
                            .new
                            .as_ref()
                            .map(|n| kit::docker::short_id(&n.id))
                            .unwrap_or_default(),
                        kit::human(Duration::from_millis(report.step_ms("total")))
                    ));
                }
                report.earlier = earlier;
                Ok(Done::ok(report))
            }
            Err(Failed { mut report, error }) => {
                report.earlier = earlier;
                record.set(Self::NAME, &report);
                Err(error)
            }
        }
    }
}

/// The swaps made earlier in this deploy (several services, one record), oldest first: the
/// record's `swap` and the ones before it, so restore knows how each service's traffic moved.
fn earlier_swaps(record: &Record) -> Result<Vec<Report>> {
    let Some(mut previous) = record.typed::<Report>(<Args as Tool>::NAME)? else {
        return Ok(Vec::new());
    };
    let mut earlier = std::mem::take(&mut previous.earlier);
    earlier.push(previous);
    Ok(earlier)
}

impl Args {
    /// The request the flags and the record describe; bad input fails here, before anything.
    fn request(&self, record: &Record) -> Result<Request> {
        let image = match &self.image {
            Some(i) => i.clone(),
            None => image_from_record(record)?.ok_or_else(|| {
                Error::input(
                    "--image",
                    "no image given, and the record has none (img-push.pushed, img-build.tags)",
                )
            })?,
        };
        let strategy = self.traffic.strategy()?.ok_or_else(|| {
            Error::input(
                "--strategy",
                "choose how traffic moves: nginx (with --upstream-file), alias or recreate",
            )
        })?;
        if !self.publish.is_empty() && !matches!(strategy, Strategy::Recreate) {
            return Err(Error::input(
                "--publish",
                "host ports cannot be bound by two containers at once; --publish needs --strategy recreate",
            ));
        }
        for p in &self.publish {
            if blueprint::parse_publish(p).is_none() {
                return Err(Error::input(
                    "--publish",
                    format!("'{p}' is not [IP:]HOST:CONTAINER[/proto]"),
                ));
            }
        }
        if let Some(r) = &self.restart {
            blueprint::restart_policy(r)?;
        }
        let container = self
            .container
            .clone()
            .unwrap_or_else(|| self.service.clone());
        if container.is_empty() || self.service.is_empty() {
            return Err(Error::input("--service", "must not be empty"));
        }
        let mut req = Request::new(&self.service, &image, strategy);
        req.container = container;
        req.port = self.traffic.port;
        req.health = self.traffic.health()?;
        req.drain = self.traffic.drain;
        req.keep = self.keep;
        if let Some(dir) = &self.lock_dir {
            req.lock_dir.clone_from(dir);
        }
        req.lock_wait = self.lock_wait;
        req.pull = self.pull;
        req.dry_run = self.dry_run;
        req.spec.network.clone_from(&self.network);
        req.spec.ports.clone_from(&self.publish);
        req.spec.restart.clone_from(&self.restart);
        for file in &self.env_file {
            req.spec.env.extend(read_env_file(file)?);
        }
        for e in &self.env {
            let (key, value) = key_value("--env", e)?;
            if kit::envfile::may_be_secret(&key, &value) {
                kit::log::secret(&value);
            }
            req.spec.env.push((key, value));
        }
        for l in &self.label {
            req.spec.labels.push(key_value("--label", l)?);
        }
        Ok(req)
    }
}

/// The image the record says to deploy: what img-push pushed, else what img-build tagged.
fn image_from_record(record: &Record) -> Result<Option<String>> {
    if let Some(tag) = record.string("img-push.pushed.0.tag")? {
        return Ok(Some(tag));
    }
    if let Some(tag) = record.strings("img-build.tags")?.into_iter().next() {
        return Ok(Some(tag));
    }
    record.string("img-build.image_id")
}

fn key_value(flag: &str, text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(Error::input(flag, format!("'{text}' is not KEY=VALUE"))),
    }
}

/// KEY=VALUE lines ([`kit::envfile`]); the values that may be secrets are hidden at once.
fn read_env_file(path: &PathBuf) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input("--env-file", format!("cannot read {}: {e}", path.display())))?;
    kit::envfile::hide_secrets(&text);
    kit::envfile::entries(&text)
        .map(|(n, pair)| match pair {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(Error::input(
                "--env-file",
                format!("{}:{n}: not KEY=VALUE", path.display()),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_comes_from_push_then_build() {
        let r = Record::parse(
            r#"{"img-build":{"image_id":"sha256:abc","tags":["app:1"]},"img-push":{"pushed":[{"tag":"reg/app:1"}]}}"#,
        )
        .unwrap();
        assert_eq!(image_from_record(&r).unwrap().as_deref(), Some("reg/app:1"));
        let r = Record::parse(r#"{"img-build":{"image_id":"sha256:abc","tags":[]}}"#).unwrap();
        assert_eq!(
            image_from_record(&r).unwrap().as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(image_from_record(&Record::fresh()).unwrap(), None);
    }
}
