//! swap: replace a running service's container with zero failed requests.
//!
//! Reads from the record: the image to deploy when `--image` is not given
//! (`img-push.pushed.0.tag`, else `img-build.tags.0`, else `img-build.image_id`). Adds `swap`:
//! the old and new containers (id, name, image, ip), the image, the strategy, the health
//! outcome and the service's `health_url`, what the switch, drain and stop did, and each
//! step's time in ms. The library API ([`replace`]) does the same for other tools (`restore`).

mod api;
mod config;
mod engine;
pub mod lock;
mod nginx;

pub use api::{
    replace, Alias, Container, Health, Nginx, Report, Request, Spec, Strategy, SERVICE_LABEL,
};
pub use engine::PAUSE_ENV;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kit::docker::Engine;
use kit::health::StatusSet;
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

    /// How traffic moves (default: nginx with --upstream-file, else required)
    #[arg(long, env = "SWAP_STRATEGY", value_enum)]
    pub strategy: Option<StrategyName>,

    /// nginx: the upstream include file to rewrite (bind-mount its directory into nginx)
    #[arg(long, env = "SWAP_UPSTREAM_FILE", value_name = "PATH")]
    pub upstream_file: Option<PathBuf>,

    /// nginx: the upstream block's name (default: the service name)
    #[arg(long, env = "SWAP_UPSTREAM", value_name = "NAME")]
    pub upstream: Option<String>,

    /// nginx: the container nginx runs in (nginx -t and reload run there); default: this host
    #[arg(long, env = "SWAP_NGINX_CONTAINER", value_name = "NAME")]
    pub nginx_container: Option<String>,

    /// The service's URL through the proxy, e.g. http://127.0.0.1:8080 (recorded health URL)
    #[arg(long, env = "SWAP_SERVICE_URL", value_name = "URL")]
    pub service_url: Option<String>,

    /// alias: the network alias the proxy resolves (default: the service name)
    #[arg(long, env = "SWAP_ALIAS", value_name = "NAME")]
    pub alias: Option<String>,

    /// alias: the network carrying the alias (default: the container's first network)
    #[arg(long, env = "SWAP_ALIAS_NETWORK", value_name = "NETWORK")]
    pub alias_network: Option<String>,

    /// The port the app listens on inside the container (default: the image's only exposed port)
    #[arg(long, env = "SWAP_PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// HTTP path probed on the new container, e.g. /api/v1/health (default: its HEALTHCHECK)
    #[arg(long, env = "SWAP_HEALTH_PATH", value_name = "PATH")]
    pub health_path: Option<String>,

    /// Accepted HTTP statuses for the health path: 200, 2xx, 200,204 or 200-299
    #[arg(long, default_value = "200", value_name = "STATUSES", value_parser = StatusSet::parse)]
    pub expect_status: StatusSet,

    /// How long the new container may take to become healthy
    #[arg(long, env = "SWAP_HEALTH_TIMEOUT", default_value = "60s", value_name = "DURATION",
          value_parser = kit::parse_duration)]
    pub health_timeout: Duration,

    /// Pause between health probes (default: 25 ms doubling up to the cap)
    #[arg(long, value_name = "DURATION", value_parser = kit::parse_duration)]
    pub health_interval: Option<Duration>,

    /// Timeout of one health probe
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = kit::parse_duration)]
    pub attempt_timeout: Duration,

    /// nginx: the longest wait for old nginx workers (default 30s); alias: the window (default 3s)
    #[arg(long, env = "SWAP_DRAIN", value_name = "DURATION", value_parser = kit::parse_duration)]
    pub drain: Option<Duration>,

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyName {
    /// Rewrite an nginx upstream file, nginx -t, graceful reload
    Nginx,
    /// A Docker network alias (Traefik, Caddy, nginx-proxy)
    Alias,
    /// Stop first, then start (a container that owns host ports)
    Recreate,
}

impl Tool for Args {
    const NAME: &'static str = "swap";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let req = self.request(record)?;
        signals::install();
        let engine = Engine::connect("preflight")?;
        let mut report = Report::default();
        let result = engine::run(&engine, &req, &signals::received, &mut report);
        match result {
            Ok(()) => {
                if !req.dry_run {
                    kit::log::info(&format!(
                        "{} now runs {} ({}), in {}",
                        req.container,
                        req.image,
                        report
                            .new
                            .as_ref()
                            .map(|n| short_id(&n.id))
                            .unwrap_or_default(),
                        kit::human(Duration::from_millis(
                            report.ms.get("total").and_then(|v| v.as_u64()).unwrap_or(0)
                        ))
                    ));
                }
                Ok(Done::ok(with_earlier(record, &report)))
            }
            Err(err) => {
                record.set(Self::NAME, with_earlier(record, &report));
                Err(err)
            }
        }
    }
}

/// The report, with the swaps made earlier in this deploy (several services, one record) kept
/// under `earlier`, oldest first: so restore knows how each service's traffic moved.
fn with_earlier(record: &Record, report: &Report) -> serde_json::Value {
    use serde_json::Value;
    let mut value = serde_json::to_value(report).unwrap_or_default();
    if let (Some(Value::Object(previous)), Value::Object(map)) =
        (record.get(<Args as Tool>::NAME), &mut value)
    {
        let mut previous = previous.clone();
        let mut earlier = match previous.remove("earlier") {
            Some(Value::Array(list)) => list,
            _ => Vec::new(),
        };
        earlier.push(Value::Object(previous));
        map.insert("earlier".into(), Value::Array(earlier));
    }
    value
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
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
        let strategy = match (self.strategy, &self.upstream_file) {
            (Some(StrategyName::Nginx) | None, Some(file)) => {
                let mut n = Nginx::new(absolute(file)?);
                n.upstream.clone_from(&self.upstream);
                n.container.clone_from(&self.nginx_container);
                n.service_url.clone_from(&self.service_url);
                Strategy::Nginx(n)
            }
            (Some(StrategyName::Nginx), None) => {
                return Err(Error::input(
                    "--upstream-file",
                    "the nginx strategy needs the upstream include file to rewrite",
                ))
            }
            (Some(StrategyName::Alias), _) => {
                let mut a = Alias::new();
                a.alias.clone_from(&self.alias);
                a.network.clone_from(&self.alias_network);
                Strategy::Alias(a)
            }
            (Some(StrategyName::Recreate), _) => Strategy::Recreate,
            (None, None) => {
                return Err(Error::input(
                    "--strategy",
                    "choose how traffic moves: nginx (with --upstream-file), alias or recreate",
                ))
            }
        };
        if !self.publish.is_empty() && !matches!(strategy, Strategy::Recreate) {
            return Err(Error::input(
                "--publish",
                "host ports cannot be bound by two containers at once; --publish needs --strategy recreate",
            ));
        }
        for p in &self.publish {
            if config::parse_publish(p).is_none() {
                return Err(Error::input(
                    "--publish",
                    format!("'{p}' is not [IP:]HOST:CONTAINER[/proto]"),
                ));
            }
        }
        if let Some(r) = &self.restart {
            config::restart_policy(r)?;
        }
        if let Some(path) = &self.health_path {
            if !path.starts_with('/') {
                return Err(Error::input(
                    "--health-path",
                    format!("'{path}' must start with /"),
                ));
            }
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
        req.port = self.port;
        req.health.path.clone_from(&self.health_path);
        req.health.expect_status = self.expect_status.clone();
        req.health.timeout = self.health_timeout;
        req.health.interval = self.health_interval;
        req.health.attempt_timeout = self.attempt_timeout;
        req.drain = self.drain;
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

fn absolute(path: &PathBuf) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.clone());
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .map_err(|e| Error::io("preflight", "cannot read the current directory", e))
}

/// SIGINT and SIGTERM set a flag that every step checks; the swap then cleans up and exits 1.
mod signals {
    use super::*;

    static RECEIVED: AtomicUsize = AtomicUsize::new(0);

    pub fn install() {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGINT, SIGTERM] {
            if let Err(e) = signal_hook::flag::register_usize(sig, &RECEIVED, sig as usize) {
                kit::log::warn(&format!("cannot handle signal {sig}: {e}"));
            }
        }
        let _ = engine::SIGNAL_NAME.set(name);
    }

    pub fn received() -> bool {
        RECEIVED.load(Ordering::SeqCst) != 0
    }

    fn name() -> Option<&'static str> {
        match RECEIVED.load(Ordering::SeqCst) as i32 {
            0 => None,
            signal_hook::consts::SIGINT => Some("SIGINT"),
            signal_hook::consts::SIGTERM => Some("SIGTERM"),
            _ => Some("a signal"),
        }
    }
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
