//! The swap itself, step by step.
//!
//! nginx and alias: lock → preflight → create → start → health → switch → drain → stop →
//! cleanup. recreate: lock → preflight → create → stop → start → health → cleanup.
//!
//! Until the switch has happened, any failure or signal undoes what was made (the new
//! container, a rewritten upstream file) and leaves the old container serving. After the
//! switch the new container serves, and the swap is finished rather than undone.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerInspectResponse, ImageConfig, NetworkConnectRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptions,
};
use futures_util::StreamExt;
use kit::docker::Engine;
use kit::health::{HttpCheck, Outcome, Schedule, Target, Wait};
use kit::log;
use kit::{Error, Result};
use serde_json::{json, Value};

use crate::api::{Container, Report, Request, Strategy};
use crate::config::{self, Blueprint};
use crate::lock::Lock;
use crate::nginx::{self, Where};

/// The environment variable that pauses swap at the start of a step (tests only: they send
/// a signal there). The value is the step's name.
pub const PAUSE_ENV: &str = "SWAP_TEST_PAUSE_AT";

const DEFAULT_NGINX_DRAIN: Duration = Duration::from_secs(30);
const DEFAULT_ALIAS_DRAIN: Duration = Duration::from_secs(3);

/// What the signal handler saw, for messages: set by the CLI.
pub(crate) static SIGNAL_NAME: std::sync::OnceLock<fn() -> Option<&'static str>> =
    std::sync::OnceLock::new();

struct Swap<'a> {
    engine: &'a Engine,
    req: &'a Request,
    stop: &'a dyn Fn() -> bool,
    report: &'a mut Report,
    started: Instant,
    step_started: Instant,
    /// The new container, once created; removed if the swap fails before the switch.
    new_id: Option<String>,
    new_name: String,
    /// Traffic reached the new container: from here on the swap is finished, not undone.
    switched: bool,
    /// recreate: the old container was stopped and must be started again on failure.
    old_stopped: bool,
    /// nginx's master as /proc shows it, found at the switch.
    nginx_master: Option<nginx::Master>,
}

/// What pre-flight found.
struct Preflight {
    old: Option<ContainerInspectResponse>,
    blueprint: Blueprint,
    port: Option<u16>,
    nginx: Option<NginxPlan>,
    alias: Option<(String, String)>,
}

struct NginxPlan {
    file: PathBuf,
    upstream: String,
    at: Where,
    /// The file's text before the swap (`None`: there was none).
    before: Option<String>,
    /// Networks nginx can reach the new container on (empty: any, nginx on the host).
    networks: Vec<String>,
}

pub(crate) fn run(
    engine: &Engine,
    req: &Request,
    stop: &dyn Fn() -> bool,
    report: &mut Report,
) -> Result<()> {
    report.service = req.service.clone();
    report.strategy = req.strategy.name().into();
    report.image = req.image.clone();
    report.dry_run = req.dry_run;
    let mut swap = Swap {
        engine,
        req,
        stop,
        report,
        started: Instant::now(),
        step_started: Instant::now(),
        new_id: None,
        new_name: format!("{}-next-{}", req.container, short_random()),
        switched: false,
        old_stopped: false,
        nginx_master: None,
    };

    swap.begin("lock")?;
    let lock = if req.dry_run {
        None
    } else {
        let lock = Lock::take(&req.lock_dir, &req.service, &req.image, req.lock_wait, stop)?;
        let mut info = json!({ "file": lock.path.display().to_string() });
        if let Some(h) = &lock.took_over {
            info["took_over"] = serde_json::to_value(h).unwrap_or(Value::Null);
        }
        swap.report.lock = Some(info);
        Some(lock)
    };
    swap.end("lock");

    swap.begin("preflight")?;
    if !req.dry_run {
        swap.reconcile()?;
    }
    let pre = swap.preflight()?;
    swap.end("preflight");
    if req.dry_run {
        swap.plan(&pre);
        return Ok(());
    }

    let result = match req.strategy {
        Strategy::Recreate => swap.recreate(&pre),
        _ => swap.start_first(&pre),
    };
    if let Err(err) = result {
        swap.undo(&pre, &err);
        return Err(err);
    }
    swap.report.ms.insert(
        "total".into(),
        (swap.started.elapsed().as_millis() as u64).into(),
    );
    let ms = |k: &str| swap.report.ms.get(k).and_then(Value::as_u64).unwrap_or(0);
    let healthy = swap.report.health.as_ref().map_or(0, |h| h.elapsed_ms) + ms("start");
    swap.report.overhead_ms = Some(ms("total").saturating_sub(healthy + ms("drain")));
    drop(lock);
    Ok(())
}

impl Swap<'_> {
    /// Starts a step: the test-only pause, then a signal check.
    fn begin(&mut self, step: &'static str) -> Result<()> {
        if std::env::var(PAUSE_ENV).as_deref() == Ok(step) {
            log::info(&format!("test pause at {step} ({PAUSE_ENV})"));
            let end = Instant::now() + Duration::from_secs(60);
            while !(self.stop)() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.check(step)?;
        self.step_started = Instant::now();
        Ok(())
    }

    fn check(&self, step: &str) -> Result<()> {
        if (self.stop)() {
            return Err(interrupted(step));
        }
        Ok(())
    }

    fn end(&mut self, step: &str) {
        let ms = self.step_started.elapsed().as_millis() as u64;
        self.report.ms.insert(step.into(), ms.into());
    }

    fn docker_err(step: &str, what: String) -> impl FnOnce(bollard::errors::Error) -> Error + '_ {
        move |e| Error::docker(step, what, e)
    }

    /// Finishes or removes what an earlier, interrupted or killed swap left behind.
    fn reconcile(&mut self) -> Result<()> {
        let name = &self.req.container;
        if let Strategy::Nginx(n) = &self.req.strategy {
            let tmp = nginx::temp_path(&n.upstream_file);
            if tmp.exists() {
                log::info(&format!(
                    "removing {} left by an interrupted swap",
                    tmp.display()
                ));
                let _ = std::fs::remove_file(&tmp);
            }
        }
        let next = self.list(&format!("^/{}-next-", regex_escape(name)))?;
        if next.is_empty() {
            return Ok(());
        }
        let live = self.engine.inspect(name)?;
        let referenced = self.upstream_ips()?;
        for (id, cname, running, _) in next {
            let ip = self.engine.inspect(&id)?.and_then(|c| first_ip(&c));
            let serving = ip
                .as_ref()
                .is_some_and(|ip| referenced.iter().any(|r| r == ip));
            if live.is_none() && running && (serving || referenced.is_empty()) {
                // Killed between the switch and the rename: it is the live one.
                log::warn(&format!(
                    "{cname} serves but was never renamed (an interrupted swap); naming it {name}"
                ));
                self.rename(&id, name, "preflight")?;
                continue;
            }
            if serving {
                return Err(Error::step(
                    "preflight",
                    format!(
                        "the upstream file points at {cname}, left by an interrupted swap, while \
                         {name} also runs; point the file at the one that should serve and remove \
                         the other"
                    ),
                ));
            }
            log::warn(&format!(
                "removing {cname}, left half-made by an interrupted swap"
            ));
            self.remove(&id);
        }
        Ok(())
    }

    /// IPs the nginx upstream file points at now.
    fn upstream_ips(&self) -> Result<Vec<String>> {
        let Strategy::Nginx(n) = &self.req.strategy else {
            return Ok(Vec::new());
        };
        let upstream = n.upstream.as_deref().unwrap_or(&self.req.service);
        Ok(std::fs::read_to_string(&n.upstream_file)
            .ok()
            .and_then(|t| nginx::servers(&t, upstream))
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.rsplit_once(':')
                    .map_or(s.as_str(), |(ip, _)| ip)
                    .to_string()
            })
            .collect())
    }

    /// Containers (id, name, running, created) whose name matches the filter regex.
    fn list(&self, name_filter: &str) -> Result<Vec<(String, String, bool, i64)>> {
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("name", vec![name_filter])]))
            .build();
        let list = self
            .engine
            .block(self.engine.docker.list_containers(Some(opts)))
            .map_err(Self::docker_err("preflight", "list containers".into()))?;
        Ok(list
            .into_iter()
            .map(|c| {
                (
                    c.id.unwrap_or_default(),
                    c.names
                        .and_then(|n| n.first().cloned())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    c.state.map(|s| s.to_string()).as_deref() == Some("running"),
                    c.created.unwrap_or(0),
                )
            })
            .collect())
    }

    fn preflight(&mut self) -> Result<Preflight> {
        let req = self.req;
        let image = self.image_present()?;
        self.report.image_id = image.id.clone();
        let old = self.engine.inspect(&req.container)?;
        if let Some(o) = &old {
            self.report.old = Some(container_of(o));
            if o.state.as_ref().and_then(|s| s.running) != Some(true) {
                log::warn(&format!(
                    "{} is not running: nothing serves now; the new container replaces it",
                    req.container
                ));
            }
        }
        let source = req.template.as_ref().or(old.as_ref());
        let mut blueprint = match source {
            Some(src) => {
                let old_image = src.image.as_deref().and_then(|i| self.image_config(i));
                config::from_container(
                    src,
                    old_image.as_ref(),
                    &req.image,
                    &req.service,
                    &req.spec,
                )?
            }
            None => {
                let network = match (&req.spec.network, &req.strategy) {
                    (Some(n), _) => n.clone(),
                    (None, Strategy::Nginx(n)) => match &n.container {
                        Some(c) => self
                            .networks_of(c)?
                            .into_iter()
                            .next()
                            .unwrap_or_else(|| "bridge".into()),
                        None => "bridge".into(),
                    },
                    (None, Strategy::Alias(a)) => {
                        a.network.clone().unwrap_or_else(|| "bridge".into())
                    }
                    (None, Strategy::Recreate) => "bridge".into(),
                };
                log::info(&format!(
                    "first deploy of {}: nothing named {} runs; creating it on network {network}",
                    req.service, req.container
                ));
                config::fresh(&req.image, &req.service, &network, &req.spec)?
            }
        };
        if !matches!(req.strategy, Strategy::Recreate) {
            let ports = blueprint.host_ports();
            if !ports.is_empty() {
                return Err(Error::input(
                    "--strategy",
                    format!(
                        "{} owns host ports ({}): two containers cannot bind them at once, so it \
                         cannot be swapped with zero downtime; use --strategy recreate (a short \
                         gap), or put it behind nginx without host ports",
                        req.container,
                        ports.join(", ")
                    ),
                ));
            }
        } else {
            self.check_ports(&blueprint, old.as_ref())?;
        }
        let port = match req.port {
            Some(p) => Some(p),
            None => {
                let exposed: BTreeSet<String> = blueprint
                    .body
                    .exposed_ports
                    .iter()
                    .flatten()
                    .chain(
                        image
                            .config
                            .as_ref()
                            .and_then(|c| c.exposed_ports.as_ref())
                            .into_iter()
                            .flatten(),
                    )
                    .filter(|p| p.ends_with("/tcp"))
                    .cloned()
                    .collect();
                match exposed.len() {
                    1 => exposed
                        .iter()
                        .next()
                        .and_then(|p| p.trim_end_matches("/tcp").parse().ok()),
                    _ => None,
                }
            }
        };
        let needs_port = req.health.path.is_some() || matches!(req.strategy, Strategy::Nginx(_));
        if needs_port && port.is_none() {
            return Err(Error::input(
                "--port",
                "cannot tell which port the app listens on (the image exposes none or several); set --port",
            ));
        }
        let nginx = match &req.strategy {
            Strategy::Nginx(n) => Some(self.nginx_plan(n, &blueprint, old.as_ref(), port)?),
            _ => None,
        };
        let alias = match &req.strategy {
            Strategy::Alias(a) => {
                let network = match &a.network {
                    Some(n) => n.clone(),
                    None => blueprint
                        .networks
                        .first()
                        .map(|(n, _)| n.clone())
                        .ok_or_else(|| {
                            Error::input(
                                "--alias-network",
                                "the container is on no network; name the one carrying the alias",
                            )
                        })?,
                };
                if !blueprint.networks.iter().any(|(n, _)| *n == network) {
                    return Err(Error::input(
                        "--alias-network",
                        format!("{} is not on network {network}", req.container),
                    ));
                }
                let alias = a.alias.clone().unwrap_or_else(|| req.service.clone());
                blueprint.without_alias(&network, &alias);
                Some((network, alias))
            }
            _ => None,
        };
        Ok(Preflight {
            old,
            blueprint,
            port,
            nginx,
            alias,
        })
    }

    /// The image, pulled first when it is missing and the user allows it.
    fn image_present(&self) -> Result<bollard::models::ImageInspect> {
        let image = &self.req.image;
        match self.engine.block(self.engine.docker.inspect_image(image)) {
            Ok(i) => return Ok(i),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                return Err(Error::docker(
                    "preflight",
                    format!("inspect image {image}"),
                    e,
                ))
            }
        }
        if !self.req.pull {
            return Err(Error::step(
                "preflight",
                format!(
                    "image {image} is not on this engine; push and pull it first, or pass --pull"
                ),
            ));
        }
        log::info(&format!("pulling {image}"));
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        // The user's docker credentials for the image's registry, as `docker pull` would use.
        let credentials = kit::image::Reference::parse(image)
            .ok()
            .and_then(|r| kit::registry::from_docker_config(&r));
        let mut stream = self
            .engine
            .docker
            .create_image(Some(opts), None, credentials);
        let pulled: Result<()> = self.engine.block(async {
            while let Some(item) = stream.next().await {
                item.map_err(|e| Error::docker("preflight", format!("pull {image}"), e))?;
            }
            Ok(())
        });
        pulled?;
        self.engine
            .block(self.engine.docker.inspect_image(image))
            .map_err(|e| Error::docker("preflight", format!("inspect image {image}"), e))
    }

    fn image_config(&self, image: &str) -> Option<ImageConfig> {
        self.engine
            .block(self.engine.docker.inspect_image(image))
            .ok()
            .and_then(|i| i.config)
    }

    fn networks_of(&self, container: &str) -> Result<Vec<String>> {
        let c = self.engine.inspect(container)?.ok_or_else(|| {
            Error::input(
                "--nginx-container",
                format!("no container named {container}"),
            )
        })?;
        let mut nets: Vec<String> = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_keys()
            .collect();
        nets.sort();
        Ok(nets)
    }

    fn nginx_plan(
        &self,
        n: &crate::api::Nginx,
        bp: &Blueprint,
        old: Option<&ContainerInspectResponse>,
        port: Option<u16>,
    ) -> Result<NginxPlan> {
        let upstream = n
            .upstream
            .clone()
            .unwrap_or_else(|| self.req.service.clone());
        let before = match std::fs::read_to_string(&n.upstream_file) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::io(
                    "preflight",
                    format!("read the upstream file {}", n.upstream_file.display()),
                    e,
                ))
            }
        };
        if let Some(text) = &before {
            if !text.trim().is_empty() && nginx::servers(text, &upstream).is_none() {
                return Err(Error::input(
                    "--upstream",
                    format!(
                        "{} has no `upstream {upstream} {{ ... }}` block",
                        n.upstream_file.display()
                    ),
                ));
            }
        }
        let dir = n
            .upstream_file
            .parent()
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            return Err(Error::input(
                "--upstream-file",
                format!("{} is not a directory", dir.display()),
            ));
        }
        let (at, networks) = match &n.container {
            Some(c) => {
                let nets = self.networks_of(c)?;
                if !bp.networks.iter().any(|(net, _)| nets.contains(net)) {
                    return Err(Error::input(
                        "--nginx-container",
                        format!(
                            "{c} (on {}) shares no network with the new container (on {}): nginx could not reach it",
                            nets.join(", "),
                            bp.networks.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                (Where::Container(c.clone()), nets)
            }
            None => (
                Where::Host {
                    pid_file: PathBuf::from("/run/nginx.pid"),
                },
                Vec::new(),
            ),
        };
        if let (Some(o), Some(text), Some(port)) = (old, &before, port) {
            let servers = nginx::servers(text, &upstream).unwrap_or_default();
            let ips: Vec<String> = o
                .network_settings
                .as_ref()
                .and_then(|s| s.networks.as_ref())
                .map(|m| m.values().filter_map(|e| e.ip_address.clone()).collect())
                .unwrap_or_default();
            if !servers
                .iter()
                .any(|s| ips.iter().any(|ip| *s == format!("{ip}:{port}")))
            {
                if n.must_point_at_old {
                    return Err(Error::step(
                        "preflight",
                        format!(
                            "{} points at {}, not at {} ({}:{port}): it is not this service's \
                             upstream; nothing was changed (name this service's own \
                             --upstream-file, or restore it with --service)",
                            n.upstream_file.display(),
                            servers.join(", "),
                            self.req.container,
                            ips.join(", ")
                        ),
                    ));
                }
                log::warn(&format!(
                    "{} points at {} rather than {}'s address ({}:{port}); swap replaces it",
                    n.upstream_file.display(),
                    servers.join(", "),
                    self.req.container,
                    ips.join(", ")
                ));
            }
        }
        Ok(NginxPlan {
            file: n.upstream_file.clone(),
            upstream,
            at,
            before,
            networks,
        })
    }

    /// recreate: host ports the new container needs must be free, or held by the old one.
    fn check_ports(&self, bp: &Blueprint, old: Option<&ContainerInspectResponse>) -> Result<()> {
        let Some(map) = bp
            .body
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.as_ref())
        else {
            return Ok(());
        };
        let old_ports = config::host_ports(old.and_then(|o| o.host_config.as_ref()));
        for (port, bindings) in map {
            for b in bindings.iter().flatten() {
                let Some(hp) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) else {
                    continue;
                };
                if old_ports.iter().any(|p| p.contains(&format!(":{hp}->"))) {
                    continue;
                }
                let ip = b
                    .host_ip
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("0.0.0.0");
                if port.ends_with("/tcp") && std::net::TcpListener::bind((ip, hp)).is_err() {
                    return Err(Error::step(
                        "preflight",
                        format!(
                            "host port {ip}:{hp} is already taken; free it or change --publish"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `--dry-run`: the plan, on stderr and in the report; nothing changes.
    fn plan(&mut self, pre: &Preflight) {
        let req = self.req;
        let bp = &pre.blueprint;
        let old = pre.old.as_ref().map(container_of);
        let health = match (&req.health.path, pre.port) {
            (Some(path), Some(port)) => format!(
                "GET http://<{}'s address>:{port}{path}, expect {}, within {}",
                self.new_name,
                req.health.expect_status,
                kit::human(req.health.timeout)
            ),
            _ => format!(
                "the image's HEALTHCHECK (or running, without one), within {}",
                kit::human(req.health.timeout)
            ),
        };
        let switch = match (&req.strategy, &pre.nginx, &pre.alias) {
            (Strategy::Nginx(_), Some(n), _) => format!(
                "rewrite {} so upstream {} is <{}'s address>:{} (now {}); nginx -t; nginx -s reload in {}",
                n.file.display(),
                n.upstream,
                self.new_name,
                pre.port.unwrap_or(0),
                n.before
                    .as_deref()
                    .and_then(|t| nginx::servers(t, &n.upstream))
                    .map(|s| s.join(", "))
                    .unwrap_or_else(|| "no file".into()),
                n.at
            ),
            (Strategy::Alias(_), _, Some((net, alias))) => format!(
                "give {} the alias {alias} on {net} (reconnect)",
                self.new_name
            ),
            _ => "stop the old container first, then start the new one (a gap)".into(),
        };
        let drain = match &req.strategy {
            Strategy::Nginx(_) => format!(
                "wait until the old nginx workers have exited, at most {}",
                kit::human(req.drain.unwrap_or(DEFAULT_NGINX_DRAIN))
            ),
            Strategy::Alias(_) => format!(
                "{} during which both answer on the alias",
                kit::human(req.drain.unwrap_or(DEFAULT_ALIAS_DRAIN))
            ),
            Strategy::Recreate => "none".into(),
        };
        let stop = match &old {
            Some(o) => format!(
                "{} (SIGTERM, its stop timeout), renamed {}, keeping {} old container(s)",
                o.name,
                old_name(&req.container, &o.id),
                req.keep
            ),
            None => "nothing (first deploy)".into(),
        };
        let create = json!({
            "name": self.new_name,
            "renamed_to": req.container,
            "image": req.image,
            "networks": bp.networks.iter().map(|(n, a)| (n.clone(), json!(a))).collect::<serde_json::Map<_, _>>(),
            "cmd": bp.body.cmd,
            "entrypoint": bp.body.entrypoint,
            "env_keys": bp.env_keys(),
            "labels": bp.body.labels,
            "restart": bp.body.host_config.as_ref().and_then(|h| h.restart_policy.as_ref()).and_then(|r| r.name).map(|n| n.to_string()),
            "binds": bp.body.host_config.as_ref().and_then(|h| h.binds.clone()),
            "ports": bp.host_ports(),
            "user": bp.body.user,
            "healthcheck": bp.body.healthcheck.as_ref().and_then(|h| h.test.clone()),
        });
        let plan = json!({
            "old": old,
            "create": create,
            "health": health,
            "switch": switch,
            "drain": drain,
            "stop": stop,
        });
        let mut lines = vec![
            format!(
                "create  {} from {} on {}",
                self.new_name,
                req.image,
                bp.networks
                    .iter()
                    .map(|(n, a)| if a.is_empty() {
                        n.clone()
                    } else {
                        format!("{n} (aliases {})", a.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "        env: {} (values not shown)",
                bp.env_keys().join(", ")
            ),
            format!("health  {health}"),
            format!("switch  {switch}"),
            format!("drain   {drain}"),
            format!("stop    {stop}"),
            format!("rename  {} → {}", self.new_name, req.container),
        ];
        if bp.env_keys().is_empty() {
            lines.remove(1);
        }
        log::block("dry run: nothing changed; the plan is", &lines, false);
        self.report.plan = Some(plan);
    }

    /// nginx and alias: start the new one first.
    fn start_first(&mut self, pre: &Preflight) -> Result<()> {
        self.begin("create")?;
        self.create(pre)?;
        self.end("create");

        self.begin("start")?;
        self.start()?;
        self.end("start");

        self.begin("health")?;
        let ip = self.health(pre)?;
        self.end("health");

        if pre.old.is_none() {
            // Nothing served: it takes the stable name before it serves.
            let id = self.new_id.clone().unwrap_or_default();
            self.rename(&id, &self.req.container.clone(), "switch")?;
            self.new_name = self.req.container.clone();
        }

        self.begin("switch")?;
        let mut drain_from = None;
        match &self.req.strategy {
            Strategy::Nginx(_) => {
                let n = pre
                    .nginx
                    .as_ref()
                    .ok_or_else(|| Error::step("switch", "no nginx plan"))?;
                drain_from = Some(self.switch_nginx(n, pre, &ip)?);
            }
            Strategy::Alias(_) => {
                let (net, alias) = pre
                    .alias
                    .clone()
                    .ok_or_else(|| Error::step("switch", "no alias plan"))?;
                self.switch_alias(pre, &net, &alias)?;
            }
            Strategy::Recreate => {}
        }
        self.switched = true;
        self.rename_after_switch(pre);
        self.end("switch");

        let Some(old) = &pre.old else {
            // First deploy: nothing to stop, but the old nginx workers still answer from the
            // previous configuration until they exit; the service is live once they are gone.
            if drain_from.as_ref().is_some_and(|w| !w.is_empty()) {
                self.begin("drain")?;
                self.drain(pre, drain_from.as_ref());
                self.end("drain");
            }
            return Ok(());
        };
        // Traffic has moved: even when a signal came, the old nginx workers are waited for
        // (bounded by the drain limit), since stopping the old container under them fails
        // their requests with 502s. Only the alias window is cut short by a signal.
        let mut interrupted = self.begin("drain").err();
        self.drain(pre, drain_from.as_ref());
        if interrupted.is_none() {
            self.end("drain");
            interrupted = self.check("drain").err();
        }
        let interrupted = interrupted.or_else(|| self.begin("stop").err());
        self.stop_old(old);
        if let Some(err) = interrupted {
            return Err(err);
        }
        self.end("stop");
        self.begin("cleanup")?;
        self.retention();
        self.end("cleanup");
        Ok(())
    }

    /// recreate: stop the old one, then start the new one.
    fn recreate(&mut self, pre: &Preflight) -> Result<()> {
        self.begin("create")?;
        self.create(pre)?;
        self.end("create");

        let gap_start = Instant::now();
        if let Some(old) = &pre.old {
            self.begin("stop")?;
            let id = old.id.clone().unwrap_or_default();
            log::info(&format!(
                "stopping {} (recreate: nothing serves until the new one is healthy)",
                self.req.container
            ));
            self.old_stopped = true;
            self.engine
                .block(
                    self.engine
                        .docker
                        .stop_container(&id, None::<StopContainerOptions>),
                )
                .map_err(Self::docker_err(
                    "stop",
                    format!("stop {}", self.req.container),
                ))?;
            self.end("stop");
        }
        self.begin("start")?;
        self.start()?;
        self.end("start");
        self.begin("health")?;
        self.health(pre)?;
        self.end("health");
        self.switched = true;
        let gap = gap_start.elapsed();
        if pre.old.is_some() {
            self.report.gap_ms = Some(gap.as_millis() as u64);
            log::info(&format!(
                "the service was down for {} (recreate)",
                kit::human(gap)
            ));
        }
        self.rename_after_switch(pre);
        self.begin("cleanup")?;
        self.retention();
        self.end("cleanup");
        Ok(())
    }

    fn create(&mut self, pre: &Preflight) -> Result<()> {
        let bp = &pre.blueprint;
        log::info(&format!(
            "creating {} from {}",
            self.new_name, self.req.image
        ));
        let opts = CreateContainerOptionsBuilder::default()
            .name(&self.new_name)
            .build();
        let created = self
            .engine
            .block(
                self.engine
                    .docker
                    .create_container(Some(opts), bp.body.clone()),
            )
            .map_err(Self::docker_err(
                "create",
                format!("create {}", self.new_name),
            ))?;
        self.new_id = Some(created.id.clone());
        for (net, aliases) in bp.networks.iter().skip(1) {
            self.engine
                .block(self.engine.docker.connect_network(
                    net,
                    NetworkConnectRequest {
                        container: created.id.clone(),
                        endpoint_config: Some(config::endpoint(aliases)),
                    },
                ))
                .map_err(Self::docker_err(
                    "create",
                    format!("connect {} to {net}", self.new_name),
                ))?;
        }
        self.report.new = Some(Container {
            id: created.id,
            name: self.new_name.clone(),
            image: self.req.image.clone(),
            ip: None,
        });
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        let id = self.new_id.clone().unwrap_or_default();
        self.engine
            .block(self.engine.docker.start_container(&id, None))
            .map_err(|e| {
                kit::docker::report_failed_container(self.engine, &id);
                Error::docker("start", format!("start {}", self.new_name), e)
            })
    }

    /// Waits until the new container is healthy; returns its address (IP) for the switch.
    fn health(&mut self, pre: &Preflight) -> Result<String> {
        let id = self.new_id.clone().unwrap_or_default();
        let inspected = self.engine.inspect(&id)?;
        let ip = inspected
            .as_ref()
            .and_then(|c| {
                ip_on(
                    c,
                    pre.nginx
                        .as_ref()
                        .map(|n| n.networks.as_slice())
                        .unwrap_or(&[]),
                )
            })
            .unwrap_or_default();
        if let Some(new) = self.report.new.as_mut() {
            new.ip = (!ip.is_empty()).then(|| ip.clone());
        }
        let target = match (&self.req.health.path, pre.port) {
            (Some(path), Some(port)) if !ip.is_empty() => Target::Http(HttpCheck {
                url: format!("http://{ip}:{port}{path}"),
                expect_status: self.req.health.expect_status.clone(),
                expect_body: None,
                headers: Vec::new(),
            }),
            _ => Target::Container(self.new_name.clone()),
        };
        self.report.health_url = self.health_url(pre, &ip);
        let wait = Wait {
            target,
            schedule: Schedule::Within {
                timeout: self.req.health.timeout,
                interval: self.req.health.interval,
            },
            attempt_timeout: self.req.health.attempt_timeout,
        };
        let dead: RefCell<Option<String>> = RefCell::new(None);
        let engine = self.engine;
        let stop = self.stop;
        let probe_dead = || {
            if let Ok(Some(c)) = engine.inspect(&id) {
                if let Some(why) = cannot_become_healthy(&c) {
                    *dead.borrow_mut() = Some(why);
                    return true;
                }
            }
            false
        };
        let early = inspected.as_ref().and_then(cannot_become_healthy);
        let outcome: Outcome = match early {
            // Already gone (it crashed at once): no need to wait for anything.
            Some(why) => {
                *dead.borrow_mut() = Some(why.clone());
                Outcome {
                    target: wait.target.to_string(),
                    healthy: false,
                    attempts: 0,
                    elapsed_ms: 0,
                    last_status: None,
                    last: why,
                }
            }
            None => wait.run(Some(engine), &|| stop() || probe_dead())?,
        };
        self.report.health = Some(outcome.clone());
        if outcome.healthy {
            return Ok(ip);
        }
        self.check("health")?;
        kit::docker::report_failed_container(self.engine, &self.new_name);
        let still = if pre.old.is_some() && !matches!(self.req.strategy, Strategy::Recreate) {
            format!("; {} keeps serving", self.req.container)
        } else {
            String::new()
        };
        let dead = dead.into_inner().or_else(|| {
            self.engine
                .inspect(&id)
                .ok()
                .flatten()
                .as_ref()
                .and_then(cannot_become_healthy)
        });
        Err(Error::step(
            "health",
            match dead {
                Some(why) => format!("{} cannot become healthy: {why}{still}", self.new_name),
                None => format!(
                    "{} did not become healthy within {}: {}{still}",
                    self.new_name,
                    kit::human(self.req.health.timeout),
                    outcome.last
                ),
            },
        ))
    }

    fn health_url(&self, pre: &Preflight, ip: &str) -> Option<String> {
        let path = self.req.health.path.as_deref()?;
        if let Strategy::Nginx(n) = &self.req.strategy {
            if let Some(url) = &n.service_url {
                return Some(format!("{}{path}", url.trim_end_matches('/')));
            }
        }
        Some(format!("http://{ip}:{}{path}", pre.port?))
    }

    /// Rewrites the upstream file, checks it, reloads nginx. Returns the workers that were
    /// running before the reload (to drain).
    fn switch_nginx(&mut self, n: &NginxPlan, pre: &Preflight, ip: &str) -> Result<BTreeSet<u32>> {
        let server = format!("{ip}:{}", pre.port.unwrap_or(0));
        let text = match &n.before {
            Some(t) if !t.trim().is_empty() => {
                nginx::rewrite(t, &n.upstream, &server).ok_or_else(|| {
                    Error::step(
                        "switch",
                        format!("no upstream {} in {}", n.upstream, n.file.display()),
                    )
                })?
            }
            _ => nginx::generate(&n.upstream, &server, &self.req.service),
        };
        let master = nginx::master(self.engine, &n.at);
        self.nginx_master = master;
        let workers_before = nginx::workers_of(self.engine, &n.at, master)?;
        log::info(&format!(
            "switching upstream {} in {} to {server} ({})",
            n.upstream,
            n.file.display(),
            self.new_name
        ));
        nginx::write_atomic(&n.file, &text)
            .map_err(|e| Error::io("switch", format!("write {}", n.file.display()), e))?;
        let restore = |why: String| -> Error {
            let back = match &n.before {
                Some(t) => nginx::write_atomic(&n.file, t),
                None => std::fs::remove_file(&n.file),
            };
            let kept = match back {
                Ok(()) => "the previous upstream file is back in place".to_string(),
                Err(e) => format!("restoring the previous upstream file failed too: {e}"),
            };
            Error::step(
                "switch",
                format!(
                    "{why}; {kept}; nginx still proxies to {}",
                    self.req.container
                ),
            )
        };
        let (code, out) = match nginx::nginx(self.engine, &n.at, &["-t"]) {
            Ok(r) => r,
            Err(e) => return Err(restore(format!("cannot run nginx -t: {e}"))),
        };
        if code != 0 {
            log::block(
                "nginx -t refused the configuration:",
                &out.lines().map(str::to_string).collect::<Vec<_>>(),
                true,
            );
            return Err(restore(format!(
                "nginx -t refused the new configuration (exit {code})"
            )));
        }
        let (code, out) = match nginx::reload(self.engine, &n.at, master) {
            Ok(r) => r,
            Err(e) => return Err(restore(format!("cannot run nginx -s reload: {e}"))),
        };
        if code != 0 {
            return Err(restore(format!(
                "nginx -s reload failed (exit {code}): {}",
                out.trim()
            )));
        }
        if !workers_before.is_empty()
            && !nginx::wait_new_workers(
                self.engine,
                &n.at,
                master,
                &workers_before,
                Duration::from_secs(10),
            )?
        {
            let err = restore("nginx started no new workers within 10s of the reload".into());
            let _ = nginx::reload(self.engine, &n.at, master);
            return Err(err);
        }
        self.report.switch = Some(json!({
            "upstream_file": n.file.display().to_string(),
            "upstream": n.upstream,
            "server": server,
            "before": n.before.as_deref().and_then(|t| nginx::servers(t, &n.upstream)),
            "nginx": n.at.to_string(),
        }));
        Ok(workers_before)
    }

    fn switch_alias(&mut self, pre: &Preflight, net: &str, alias: &str) -> Result<()> {
        let id = self.new_id.clone().unwrap_or_default();
        let mut aliases = pre
            .blueprint
            .networks
            .iter()
            .find(|(n, _)| n == net)
            .map(|(_, a)| a.clone())
            .unwrap_or_default();
        aliases.push(alias.to_string());
        log::info(&format!(
            "giving {} the alias {alias} on {net}",
            self.new_name
        ));
        self.engine
            .block(self.engine.docker.disconnect_network(
                net,
                NetworkDisconnectRequest {
                    container: id.clone(),
                    force: Some(false),
                },
            ))
            .map_err(Self::docker_err(
                "switch",
                format!("disconnect {} from {net}", self.new_name),
            ))?;
        self.engine
            .block(self.engine.docker.connect_network(
                net,
                NetworkConnectRequest {
                    container: id.clone(),
                    endpoint_config: Some(config::endpoint(&aliases)),
                },
            ))
            .map_err(Self::docker_err(
                "switch",
                format!("connect {} to {net}", self.new_name),
            ))?;
        let ip = self
            .engine
            .inspect(&id)?
            .and_then(|c| ip_on(&c, &[net.to_string()]));
        if let Some(new) = self.report.new.as_mut() {
            new.ip = ip.clone();
        }
        if let (Some(ip), Some(_)) = (&ip, &self.req.health.path) {
            self.report.health_url = self.health_url(pre, ip);
        }
        self.report.switch = Some(json!({ "network": net, "alias": alias, "ip": ip }));
        Ok(())
    }

    /// Old → `<name>-old-<id>`, new → `<name>`: `docker logs <name>` shows the live one.
    fn rename_after_switch(&mut self, pre: &Preflight) {
        let Some(new_id) = self.new_id.clone() else {
            return;
        };
        if let Some(old) = &pre.old {
            let old_id = old.id.clone().unwrap_or_default();
            let to = old_name(&self.req.container, &old_id);
            if let Err(e) = self.rename(&old_id, &to, "switch") {
                log::warn(&format!(
                    "{e}; the new container keeps the name {}",
                    self.new_name
                ));
                return;
            }
            if let Some(o) = self.report.old.as_mut() {
                o.name = to;
            }
        }
        if self.new_name != self.req.container {
            let name = self.req.container.clone();
            match self.rename(&new_id, &name, "switch") {
                Ok(()) => self.new_name = name,
                Err(e) => log::warn(&e.to_string()),
            }
        }
        if let Some(new) = self.report.new.as_mut() {
            new.name = self.new_name.clone();
        }
    }

    fn rename(&self, id: &str, to: &str, step: &str) -> Result<()> {
        let opts = RenameContainerOptionsBuilder::default().name(to).build();
        self.engine
            .block(self.engine.docker.rename_container(id, opts))
            .map_err(Self::docker_err(
                step,
                format!("rename {} to {to}", short(id)),
            ))
    }

    fn drain(&mut self, pre: &Preflight, workers: Option<&BTreeSet<u32>>) {
        let start = Instant::now();
        match (&self.req.strategy, &pre.nginx, workers) {
            (Strategy::Nginx(_), Some(n), Some(before)) => {
                let limit = self.req.drain.unwrap_or(DEFAULT_NGINX_DRAIN);
                let mut left = before.clone();
                while !left.is_empty() && start.elapsed() < limit {
                    match nginx::workers_of(self.engine, &n.at, self.nginx_master) {
                        Ok(now) => left.retain(|p| now.contains(p)),
                        Err(e) => {
                            log::warn(&format!("cannot watch the nginx workers: {e}"));
                            break;
                        }
                    }
                    if !left.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                if !left.is_empty() {
                    log::warn(&format!(
                        "{} old nginx worker(s) still shutting down after {}; stopping the old container anyway",
                        left.len(),
                        kit::human(start.elapsed())
                    ));
                } else {
                    log::info(&format!(
                        "old nginx workers finished in {}",
                        kit::human(start.elapsed())
                    ));
                }
                self.report.drain = Some(json!({
                    "old_workers": before.len(),
                    "drained": left.is_empty(),
                    "ms": start.elapsed().as_millis() as u64,
                }));
            }
            _ => {
                let window = self.req.drain.unwrap_or(DEFAULT_ALIAS_DRAIN);
                log::info(&format!("draining for {}", kit::human(window)));
                while start.elapsed() < window && !(self.stop)() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.report.drain = Some(json!({
                    "window_ms": window.as_millis() as u64,
                    "drained": start.elapsed() >= window,
                    "ms": start.elapsed().as_millis() as u64,
                }));
            }
        }
    }

    fn stop_old(&mut self, old: &ContainerInspectResponse) {
        let id = old.id.clone().unwrap_or_default();
        let name = self
            .report
            .old
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        let start = Instant::now();
        log::info(&format!("stopping {name} (SIGTERM, then its stop timeout)"));
        let mut exit = None;
        if !self.stop_fast(&id) {
            let result = self.engine.block(
                self.engine
                    .docker
                    .stop_container(&id, None::<StopContainerOptions>),
            );
            if let Err(e) = &result {
                log::warn(&format!("cannot stop {name}: {e}"));
            }
            exit = self
                .engine
                .inspect(&id)
                .ok()
                .flatten()
                .and_then(|c| c.state.and_then(|s| s.exit_code));
        }
        self.report.stopped = Some(json!({
            "name": name,
            "exit_code": exit,
            "ms": start.elapsed().as_millis() as u64,
            "kept": self.req.keep > 0,
        }));
    }

    /// Sends the container its stop signal and waits for its process to exit, watching /proc
    /// (the engine's own bookkeeping of the exit then finishes in the background). False when
    /// the process is not visible here or outlives its stop timeout: `docker stop` then.
    fn stop_fast(&self, id: &str) -> bool {
        let Ok(Some(c)) = self.engine.inspect(id) else {
            return false;
        };
        let pid = c.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
        let alive = |pid: i64| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().to_string())
                })
                .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
        };
        if pid <= 0 || !alive(pid) {
            return false;
        }
        let config = c.config.unwrap_or_default();
        let signal = config.stop_signal.unwrap_or_else(|| "SIGTERM".into());
        let timeout = Duration::from_secs(config.stop_timeout.unwrap_or(10).max(0) as u64);
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::default()
            .signal(&signal)
            .build();
        if self
            .engine
            .block(self.engine.docker.kill_container(id, Some(opts)))
            .is_err()
        {
            return false;
        }
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Keeps the newest `keep` stopped old containers, removes the rest.
    fn retention(&mut self) {
        let filter = format!("^/{}-old-", regex_escape(&self.req.container));
        let Ok(mut olds) = self.list(&filter) else {
            return;
        };
        // The old container just stopped may still show as running for a moment.
        let just_stopped = self.report.old.as_ref().map(|o| o.id.clone());
        olds.retain(|(id, _, running, _)| !running || Some(id) == just_stopped.as_ref());
        olds.sort_by_key(|(_, _, _, created)| std::cmp::Reverse(*created));
        for (id, name, _, _) in olds.into_iter().skip(self.req.keep) {
            log::info(&format!("removing {name} (keeping {} old)", self.req.keep));
            self.remove(&id);
            self.report.removed.push(name);
        }
    }

    fn remove(&self, id: &str) {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self
            .engine
            .block(self.engine.docker.remove_container(id, Some(opts)))
        {
            log::warn(&format!("cannot remove {}: {e}", short(id)));
        }
    }

    /// After a failure: before the switch, remove the new container (and start the old one
    /// again for recreate); after it, the swap was finished as far as it could be.
    fn undo(&mut self, pre: &Preflight, err: &Error) {
        if self.switched {
            return;
        }
        if let Some(id) = self.new_id.take() {
            log::info(&format!("removing {} ({})", self.new_name, err.step_name()));
            self.remove(&id);
        }
        if let Some(new) = self.report.new.as_mut() {
            new.name.clone_from(&self.new_name);
        }
        if self.old_stopped {
            if let Some(old) = &pre.old {
                let id = old.id.clone().unwrap_or_default();
                log::info(&format!("starting {} again", self.req.container));
                if let Err(e) = self
                    .engine
                    .block(self.engine.docker.start_container(&id, None))
                {
                    log::error(&format!("cannot start {} again: {e}", self.req.container));
                }
            }
        }
    }
}

fn interrupted(step: &str) -> Error {
    let signal = SIGNAL_NAME
        .get()
        .and_then(|f| f())
        .unwrap_or("a stop request");
    Error::Interrupted {
        step: step.to_string(),
        signal: signal.to_string(),
    }
}

/// A container that exited or restart-loops cannot become healthy: say why.
fn cannot_become_healthy(c: &ContainerInspectResponse) -> Option<String> {
    let state = c.state.as_ref()?;
    if state.restarting == Some(true) || c.restart_count.unwrap_or(0) > 0 {
        return Some(format!(
            "it is restart-looping (restarted {} times, last exit code {})",
            c.restart_count.unwrap_or(0),
            state.exit_code.unwrap_or(0)
        ));
    }
    if state.running != Some(true) {
        return Some(format!("it exited (code {})", state.exit_code.unwrap_or(0)));
    }
    None
}

fn container_of(c: &ContainerInspectResponse) -> Container {
    Container {
        id: c.id.clone().unwrap_or_default(),
        name: c
            .name
            .as_deref()
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string(),
        image: c
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        ip: first_ip(c),
    }
}

fn first_ip(c: &ContainerInspectResponse) -> Option<String> {
    ip_on(c, &[])
}

/// The container's IP on one of `networks` (any network when empty).
fn ip_on(c: &ContainerInspectResponse, networks: &[String]) -> Option<String> {
    let nets = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| networks.is_empty() || networks.contains(n))
        .filter_map(|n| nets[n].ip_address.clone())
        .find(|ip| !ip.is_empty())
}

fn old_name(name: &str, id: &str) -> String {
    format!("{name}-old-{}", short(id))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

fn short_random() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:06x}",
        (nanos ^ std::process::id().rotate_left(13)) & 0xff_ffff
    )
}

fn regex_escape(s: &str) -> String {
    regex::escape(s)
}
