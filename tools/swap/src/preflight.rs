//! Everything checked before anything changes: what an interrupted swap left behind, the
//! image, the old container, the new container's blueprint, the port the app listens on, and
//! how traffic will move ([`SwitchPlan`], decided here once). A failure here changes nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bollard::models::{ContainerInspectResponse, ImageInspect};
use kit::docker::Engine;
use kit::{log, Error, Result};

use crate::blueprint::{self, Blueprint};
use crate::containers;
use crate::nginx::{self, Where};
use crate::request::{Request, Strategy};

/// What pre-flight found, and the plan every later step follows.
pub(crate) struct Preflight {
    pub image_id: Option<String>,
    /// The live container (absent on a first deploy).
    pub old: Option<ContainerInspectResponse>,
    pub blueprint: Blueprint,
    /// The port the app listens on, when known (always known for nginx: it is in the plan).
    pub port: Option<u16>,
    pub switch: SwitchPlan,
}

/// How traffic moves, with everything the switch needs.
pub(crate) enum SwitchPlan {
    Nginx(NginxPlan),
    Alias(AliasPlan),
    /// Stop the old container first, then start the new one.
    Recreate,
}

pub(crate) struct NginxPlan {
    pub file: PathBuf,
    pub upstream: String,
    pub at: Where,
    /// The file's text before the swap (`None`: there was none).
    pub before: Option<String>,
    /// Networks nginx can reach the new container on (empty: any, nginx on the host).
    pub networks: Vec<String>,
    /// The port the upstream server line names.
    pub port: u16,
    /// The service's URL through nginx, recorded as the health URL.
    pub service_url: Option<String>,
}

pub(crate) struct AliasPlan {
    pub network: String,
    pub alias: String,
}

impl SwitchPlan {
    /// The networks the new container's address for the switch and health is taken from.
    pub fn networks(&self) -> &[String] {
        match self {
            SwitchPlan::Nginx(n) => &n.networks,
            _ => &[],
        }
    }
}

/// Checks everything that can be checked and decides the plan.
pub(crate) fn check(engine: &Engine, req: &Request) -> Result<Preflight> {
    let image = image_present(engine, req)?;
    let old = engine.inspect(&req.container)?;
    if let Some(o) = &old {
        if o.state.as_ref().and_then(|s| s.running) != Some(true) {
            log::warn(&format!(
                "{} is not running: nothing serves now; the new container replaces it",
                req.container
            ));
        }
    }
    let mut blueprint = blueprint_for(engine, req, old.as_ref())?;
    if matches!(req.strategy, Strategy::Recreate) {
        check_ports(&blueprint, old.as_ref())?;
    } else {
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
    }
    let image_ports = image
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports.clone())
        .unwrap_or_default();
    let container_ports = blueprint.body.exposed_ports.clone().unwrap_or_default();
    let port = infer_port(req.port, &container_ports, &image_ports);
    let needs_port = req.health.path.is_some() || matches!(req.strategy, Strategy::Nginx(_));
    let port = match port {
        Some(p) => Some(p),
        None if needs_port => {
            return Err(Error::input(
                "--port",
                "cannot tell which port the app listens on (the image exposes none or several); set --port",
            ))
        }
        None => None,
    };
    let switch = match &req.strategy {
        Strategy::Nginx(n) => SwitchPlan::Nginx(nginx_plan(
            engine,
            req,
            n,
            &blueprint,
            old.as_ref(),
            port.unwrap_or_default(),
        )?),
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
            SwitchPlan::Alias(AliasPlan { network, alias })
        }
        Strategy::Recreate => SwitchPlan::Recreate,
    };
    Ok(Preflight {
        image_id: image.id,
        old,
        blueprint,
        port,
        switch,
    })
}

/// The port the app listens on: the one given, else the only TCP port the container or its
/// image exposes; `None` when there are none or several.
pub(crate) fn infer_port(
    given: Option<u16>,
    container_exposed: &[String],
    image_exposed: &[String],
) -> Option<u16> {
    if given.is_some() {
        return given;
    }
    let tcp: BTreeSet<&String> = container_exposed
        .iter()
        .chain(image_exposed)
        .filter(|p| p.ends_with("/tcp"))
        .collect();
    match tcp.into_iter().collect::<Vec<_>>().as_slice() {
        [only] => only.trim_end_matches("/tcp").parse().ok(),
        _ => None,
    }
}

/// The image, pulled first when it is missing and the user allows it.
fn image_present(engine: &Engine, req: &Request) -> Result<ImageInspect> {
    let image = &req.image;
    if let Some(found) = engine.image(image, "preflight")? {
        return Ok(found);
    }
    if !req.pull {
        return Err(Error::step(
            "preflight",
            format!("image {image} is not on this engine; push and pull it first, or pass --pull"),
        ));
    }
    log::info(&format!("pulling {image}"));
    engine.pull(image, "preflight")?;
    engine.image(image, "preflight")?.ok_or_else(|| {
        Error::step(
            "preflight",
            format!("pulled {image}, but the engine does not have it"),
        )
    })
}

/// The new container's blueprint: from the recorded template or the live container, else a
/// first deploy's on the right network.
fn blueprint_for(
    engine: &Engine,
    req: &Request,
    old: Option<&ContainerInspectResponse>,
) -> Result<Blueprint> {
    if let Some(src) = req.template.as_ref().or(old) {
        let old_image = src
            .image
            .as_deref()
            .and_then(|i| engine.image(i, "preflight").ok().flatten())
            .and_then(|i| i.config);
        return blueprint::from_container(
            src,
            old_image.as_ref(),
            &req.image,
            &req.service,
            &req.spec,
        );
    }
    let network = match (&req.spec.network, &req.strategy) {
        (Some(n), _) => n.clone(),
        (None, Strategy::Nginx(n)) => match &n.container {
            Some(c) => networks_of(engine, c)?
                .into_iter()
                .next()
                .unwrap_or_else(|| "bridge".into()),
            None => "bridge".into(),
        },
        (None, Strategy::Alias(a)) => a.network.clone().unwrap_or_else(|| "bridge".into()),
        (None, Strategy::Recreate) => "bridge".into(),
    };
    log::info(&format!(
        "first deploy of {}: nothing named {} runs; creating it on network {network}",
        req.service, req.container
    ));
    blueprint::fresh(&req.image, &req.service, &network, &req.spec)
}

/// The networks a container (nginx's) is on, sorted.
fn networks_of(engine: &Engine, container: &str) -> Result<Vec<String>> {
    let c = engine.inspect(container)?.ok_or_else(|| {
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
    engine: &Engine,
    req: &Request,
    n: &crate::request::Nginx,
    bp: &Blueprint,
    old: Option<&ContainerInspectResponse>,
    port: u16,
) -> Result<NginxPlan> {
    let upstream = n.upstream.clone().unwrap_or_else(|| req.service.clone());
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
            let nets = networks_of(engine, c)?;
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
    if let (Some(o), Some(text)) = (old, &before) {
        let servers = nginx::servers(text, &upstream).unwrap_or_default();
        let ips = containers::ips(o);
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
                        req.container,
                        ips.join(", ")
                    ),
                ));
            }
            log::warn(&format!(
                "{} points at {} rather than {}'s address ({}:{port}); swap replaces it",
                n.upstream_file.display(),
                servers.join(", "),
                req.container,
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
        port,
        service_url: n.service_url.clone(),
    })
}

/// recreate: host ports the new container needs must be free, or held by the old one.
fn check_ports(bp: &Blueprint, old: Option<&ContainerInspectResponse>) -> Result<()> {
    let Some(map) = bp
        .body
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
    else {
        return Ok(());
    };
    let old_ports = kit::docker::host_ports(old.and_then(|o| o.host_config.as_ref()));
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
                    format!("host port {ip}:{hp} is already taken; free it or change --publish"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_port_is_given_or_the_only_one_exposed() {
        assert_eq!(infer_port(Some(9), &ports(&["80/tcp"]), &[]), Some(9));
        assert_eq!(infer_port(None, &[], &ports(&["8000/tcp"])), Some(8000));
        assert_eq!(
            infer_port(None, &ports(&["8000/tcp"]), &ports(&["8000/tcp"])),
            Some(8000),
            "the same port from both counts once"
        );
        assert_eq!(
            infer_port(None, &ports(&["8000/tcp", "53/udp"]), &[]),
            Some(8000),
            "udp does not count"
        );
        assert_eq!(
            infer_port(None, &ports(&["80/tcp"]), &ports(&["443/tcp"])),
            None
        );
        assert_eq!(infer_port(None, &[], &[]), None);
    }
}
