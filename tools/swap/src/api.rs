//! The library API: what `swap` does, callable from other tools (`restore` recreates a service
//! from a recorded configuration through [`replace`]). Stable: fields are only ever added
//! (the types are `#[non_exhaustive]`; build them with their `new` functions).

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use kit::docker::Engine;
use kit::health::{Outcome, StatusSet};
use serde::Serialize;
use serde_json::Value;

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
    /// Plan only: inspect everything, change nothing, return the plan in [`Report::plan`].
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
    /// A Docker network alias the proxy resolves (Traefik, Caddy, nginx-proxy).
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
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Alias {
    /// The network alias the proxy resolves (default: the service name).
    pub alias: Option<String>,
    /// The network carrying the alias (default: the old container's only network).
    pub network: Option<String>,
}

impl Alias {
    pub fn new() -> Alias {
        Alias {
            alias: None,
            network: None,
        }
    }
}

impl Default for Alias {
    fn default() -> Self {
        Alias::new()
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

/// A container as the report names it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// What a replacement did; stored under `swap` in the record (docs/tools.md describes it).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct Report {
    pub service: String,
    pub strategy: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The container that served before (absent on a first deploy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Container>,
    /// The container that serves now (or would have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Outcome>,
    /// The service's health URL: through the proxy when known, else the container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    /// What the switch changed (upstream file and server, alias, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<Value>,
    /// How the old side drained (nginx workers waited for, window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<Value>,
    /// How the old container was stopped, and what retention removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// recreate: the time nothing served, from stopping the old to the new being healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
    /// Each step's wall time, in order, and `total`.
    pub ms: serde_json::Map<String, Value>,
    /// total - time to healthy - drain: what swap itself costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_ms: Option<u64>,
    /// The lock file and, when its last holder had died, who that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<Value>,
    /// `--dry-run`: what would be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    pub dry_run: bool,
}

/// Replaces the service's container with one running `req.image` (or created from
/// `req.template`), with zero downtime for the `nginx` and `alias` strategies: takes the
/// service's deploy lock, checks everything it can first, starts the new container under a
/// temporary name, waits until it is healthy, switches traffic, drains, stops the old one
/// gracefully and gives the new one the stable name.
///
/// On any failure, or when `stop()` turns true (a signal), before the switch: the new container
/// is removed, the proxy configuration and the old container are left as they were, and the
/// error names the step. After the switch the swap is finished rather than undone.
/// Progress goes to stderr through `kit::log`.
pub fn replace(engine: &Engine, req: &Request, stop: &dyn Fn() -> bool) -> kit::Result<Report> {
    let mut report = Report::default();
    crate::engine::run(engine, req, stop, &mut report)?;
    Ok(report)
}
