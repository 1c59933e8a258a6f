//! What a replacement is asked to do: [`Request`] (which service, which image, how traffic
//! moves, when the new container counts as healthy), and [`Traffic`], the command-line flags
//! for the traffic and health settings that swap and restore share.
//!
//! Stable for other tools: fields are only ever added (the types are `#[non_exhaustive]`;
//! build them with their `new` functions).

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use clap::ValueEnum;
use kit::health::StatusSet;
use kit::{Error, Result};

/// The label every container swap creates carries: `io.deploykit.service=<service>`.
pub const SERVICE_LABEL: &str = "io.deploykit.service";

/// One replacement: which service, with which image, switched how, judged healthy how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The service: names the deploy lock and the `io.deploykit.service` label.
    pub service: String,
    /// The live container's stable name (default: the service name). The new container takes
    /// this name once it serves; the old one is renamed `<container>-old-<short id>`.
    pub container: String,
    /// The image to run: a tag, a digest reference or an image id.
    pub image: String,
    /// A recorded configuration (a `docker inspect` of an earlier container) to create the new
    /// container from, instead of the running one's. Used by `restore`.
    pub template: Option<ContainerInspectResponse>,
    /// Settings for a first deploy, and overrides applied on top of the copied configuration.
    pub spec: Spec,
    /// How traffic moves from the old container to the new one.
    pub strategy: Strategy,
    /// When the new container counts as healthy.
    pub health: Health,
    /// The port the app listens on inside the container (upstream and health port); default:
    /// the image's only exposed port.
    pub port: Option<u16>,
    /// nginx: the longest wait for the old nginx workers to finish (default 30 s); alias: the
    /// window during which the old container still serves (default 3 s).
    pub drain: Option<Duration>,
    /// How many stopped old containers to keep for rollback (renamed `<name>-old-<short id>`).
    pub keep: usize,
    /// Where the per-service lock files live, and how long to wait for a held lock.
    pub lock_dir: PathBuf,
    pub lock_wait: Duration,
    /// Pull the image when it is not present locally.
    pub pull: bool,
    /// Plan only: inspect everything, change nothing, return the plan in the report's `plan`.
    pub dry_run: bool,
}

impl Request {
    /// A request with the defaults: the container named as the service, health by the image's
    /// HEALTHCHECK within 60 s, the default drain, keep one old container, the default lock
    /// directory, no lock wait, no pull.
    pub fn new(service: &str, image: &str, strategy: Strategy) -> Request {
        Request {
            service: service.to_string(),
            container: service.to_string(),
            image: image.to_string(),
            template: None,
            spec: Spec::default(),
            strategy,
            health: Health::default(),
            port: None,
            drain: None,
            keep: 1,
            lock_dir: crate::lock::default_dir(),
            lock_wait: Duration::ZERO,
            pull: false,
            dry_run: false,
        }
    }
}

/// Settings for a first deploy (nothing runs yet), also applied on top of a copied
/// configuration (an `env` entry replaces the old value of that key).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Spec {
    /// The Docker network to join (first deploy; later ones copy the old container's).
    pub network: Option<String>,
    /// `KEY=VALUE` environment entries.
    pub env: Vec<(String, String)>,
    /// Host port bindings `[IP:]HOST:CONTAINER[/proto]` (the `recreate` strategy only).
    pub ports: Vec<String>,
    /// Extra labels.
    pub labels: Vec<(String, String)>,
    /// Restart policy for a first deploy (default `unless-stopped`).
    pub restart: Option<String>,
}

impl Spec {
    pub fn new() -> Spec {
        Spec::default()
    }
}

/// How traffic moves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Strategy {
    /// Rewrite an nginx upstream include file, `nginx -t`, graceful reload, wait for the old
    /// workers, then stop the old container.
    Nginx(Nginx),
    /// A Docker network alias the proxy resolves (tested with nginx resolving per request).
    Alias(Alias),
    /// Stop the old container, then start the new one (it owns host ports); reports the gap.
    Recreate,
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Nginx(_) => "nginx",
            Strategy::Alias(_) => "alias",
            Strategy::Recreate => "recreate",
        }
    }
}

/// The nginx switch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Nginx {
    /// The upstream include file on this host, e.g. /srv/nginx/conf.d/upstream-backend.conf.
    /// Bind-mount its DIRECTORY into an nginx container (a single-file mount does not see the
    /// atomic rename).
    pub upstream_file: PathBuf,
    /// The upstream block's name (default: the service name).
    pub upstream: Option<String>,
    /// The nginx container to run `nginx -t` and `nginx -s reload` in; `None`: nginx on the host.
    pub container: Option<String>,
    /// The service's URL through nginx (`http://127.0.0.1:8080`), recorded as the health URL.
    pub service_url: Option<String>,
    /// Refuse (nothing changed) when the upstream does not point at the live container: the
    /// file may be another service's (restore's settings apply to every container).
    pub must_point_at_old: bool,
}

impl Nginx {
    pub fn new(upstream_file: impl Into<PathBuf>) -> Nginx {
        Nginx {
            upstream_file: upstream_file.into(),
            upstream: None,
            container: None,
            service_url: None,
            must_point_at_old: false,
        }
    }
}

/// The alias switch.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Alias {
    /// The network alias the proxy resolves (default: the service name).
    pub alias: Option<String>,
    /// The network carrying the alias (default: the old container's only network).
    pub network: Option<String>,
}

impl Alias {
    pub fn new() -> Alias {
        Alias::default()
    }
}

/// When the new container counts as healthy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Health {
    /// HTTP path probed on the new container's address inside its Docker network
    /// (`/api/v1/health`); `None`: the image's HEALTHCHECK (or just running, without one).
    pub path: Option<String>,
    pub expect_status: StatusSet,
    /// The whole budget.
    pub timeout: Duration,
    /// Pause between probes (default: 25 ms doubling up to 200 ms).
    pub interval: Option<Duration>,
    pub attempt_timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: None,
            expect_status: StatusSet::default(),
            timeout: kit::health::DEFAULT_TIMEOUT,
            interval: None,
            attempt_timeout: kit::health::DEFAULT_ATTEMPT_TIMEOUT,
        }
    }
}

/// The strategies by name, as the flags spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyName {
    /// Rewrite an nginx upstream file, nginx -t, graceful reload
    Nginx,
    /// A Docker network alias the proxy resolves
    Alias,
    /// Stop first, then start (a container that owns host ports)
    Recreate,
}

/// How traffic reaches a service and when a new container of it counts as healthy: the flags
/// swap and restore share. Each tool reads them from its own environment variables
/// ([`Traffic::env_prefix`]): `SWAP_UPSTREAM_FILE` for swap, `RESTORE_UPSTREAM_FILE` for
/// restore, because restore's settings apply to every container it restores.
#[derive(Debug, Clone, clap::Args)]
pub struct Traffic {
    /// How traffic moves (default: nginx with --upstream-file)
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyName>,

    /// nginx: the upstream include file to rewrite (bind-mount its directory into nginx)
    #[arg(long, value_name = "PATH")]
    pub upstream_file: Option<PathBuf>,

    /// nginx: the upstream block's name (default: the service name)
    #[arg(long, value_name = "NAME")]
    pub upstream: Option<String>,

    /// nginx: the container nginx runs in (nginx -t and reload run there); default: this host
    #[arg(long, value_name = "NAME")]
    pub nginx_container: Option<String>,

    /// The service's URL through the proxy, e.g. http://127.0.0.1:8080 (recorded health URL)
    #[arg(long, value_name = "URL")]
    pub service_url: Option<String>,

    /// alias: the network alias the proxy resolves (default: the service name)
    #[arg(long, value_name = "NAME")]
    pub alias: Option<String>,

    /// alias: the network carrying the alias (default: the container's first network)
    #[arg(long, value_name = "NETWORK")]
    pub alias_network: Option<String>,

    /// The port the app listens on inside the container (default: the image's only exposed port)
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// HTTP path probed on the new container, e.g. /api/v1/health (default: its HEALTHCHECK)
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,

    /// Accepted HTTP statuses for the health path: 200, 2xx, 200,204 or 200-299
    #[arg(long, default_value = "200", value_name = "STATUSES", value_parser = StatusSet::parse)]
    pub expect_status: StatusSet,

    /// How long the new container may take to become healthy
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = kit::parse_duration)]
    pub health_timeout: Duration,

    /// Pause between health probes (default: 25 ms doubling up to the cap)
    #[arg(long, value_name = "DURATION", value_parser = kit::parse_duration)]
    pub health_interval: Option<Duration>,

    /// Timeout of one health probe
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = kit::parse_duration)]
    pub attempt_timeout: Duration,

    /// nginx: the longest wait for the old nginx workers (default 30s); alias: how long both
    /// answer on the alias before the old one stops (default 3s)
    #[arg(long, value_name = "DURATION", value_parser = kit::parse_duration)]
    pub drain: Option<Duration>,
}

impl Traffic {
    /// Gives each of these flags its environment variable, `<PREFIX>_<FLAG>` in upper snake
    /// case (`SWAP_UPSTREAM_FILE`), shown in `--help` like every other flag's.
    pub fn env_prefix(cmd: clap::Command, prefix: &str) -> clap::Command {
        let ids: Vec<String> = <Traffic as clap::Args>::augment_args(clap::Command::new("traffic"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        ids.into_iter().fold(cmd, |cmd, id| {
            let var = format!("{prefix}_{}", id.to_uppercase());
            cmd.mut_arg(id, |arg| arg.env(var))
        })
    }

    /// The strategy these flags describe: `--strategy`, or nginx when an upstream file is
    /// given. `None` when neither says.
    pub fn strategy(&self) -> Result<Option<Strategy>> {
        Ok(Some(match (self.strategy, &self.upstream_file) {
            (Some(StrategyName::Nginx) | None, Some(file)) => {
                let mut n = Nginx::new(absolute(file, "--upstream-file")?);
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
            (Some(StrategyName::Alias), _) => Strategy::Alias(Alias {
                alias: self.alias.clone(),
                network: self.alias_network.clone(),
            }),
            (Some(StrategyName::Recreate), _) => Strategy::Recreate,
            (None, None) => return Ok(None),
        }))
    }

    /// The health settings these flags describe; a path must start with `/`.
    pub fn health(&self) -> Result<Health> {
        if let Some(path) = &self.health_path {
            if !path.starts_with('/') {
                return Err(Error::input(
                    "--health-path",
                    format!("'{path}' must start with /"),
                ));
            }
        }
        Ok(Health {
            path: self.health_path.clone(),
            expect_status: self.expect_status.clone(),
            timeout: self.health_timeout,
            interval: self.health_interval,
            attempt_timeout: self.attempt_timeout,
        })
    }
}

/// A path made absolute against the current directory (the upstream file is written later,
/// perhaps from another directory).
fn absolute(path: &std::path::Path, flag: &str) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::input(flag, format!("cannot resolve it: {e}")))
}
