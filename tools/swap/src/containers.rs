//! The container primitives a swap is made of: list, create (on every network), start,
//! rename, remove, stop (its stop signal, one stop timeout, then SIGKILL) and the retention
//! of stopped old containers. Each is one Docker call or a short sequence of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, NetworkConnectRequest, NetworkDisconnectRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, WaitContainerOptions,
};
use futures_util::StreamExt;
use kit::docker::{short_id, Engine};
use kit::{log, Error, Result};

use crate::blueprint::{self, Blueprint};
use crate::report::{Container, Stopped};

/// A container as the engine lists it.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// Creation time, in seconds since the epoch.
    pub created: i64,
}

/// Containers (running or not) whose name matches the regex `name_filter`.
pub(crate) fn list(engine: &Engine, name_filter: &str, step: &str) -> Result<Vec<Listed>> {
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&HashMap::from([("name", vec![name_filter])]))
        .build();
    let list = engine
        .block(engine.docker.list_containers(Some(opts)))
        .map_err(|e| Error::docker(step, "list containers", e))?;
    Ok(list
        .into_iter()
        .map(|c| Listed {
            id: c.id.unwrap_or_default(),
            name: c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: c.state.map(|s| s.to_string()).as_deref() == Some("running"),
            created: c.created.unwrap_or(0),
        })
        .collect())
}

/// Creates the container `name` from the blueprint and connects it to every network (API
/// 1.41 takes one at create time). Its id goes into `made` as soon as it exists, so the
/// caller removes it when a later connect fails.
pub(crate) fn create(
    engine: &Engine,
    name: &str,
    bp: &Blueprint,
    made: &mut Option<String>,
) -> Result<()> {
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    let created = engine
        .block(engine.docker.create_container(Some(opts), bp.body.clone()))
        .map_err(|e| Error::docker("create", format!("create {name}"), e))?;
    *made = Some(created.id.clone());
    for (net, aliases) in bp.networks.iter().skip(1) {
        connect(engine, &created.id, net, aliases, None)
            .map_err(|e| Error::docker("create", format!("connect {name} to {net}"), e))?;
    }
    Ok(())
}

/// Connects a container to a network with these aliases.
pub(crate) fn connect(
    engine: &Engine,
    id: &str,
    net: &str,
    aliases: &[String],
    ip: Option<&str>,
) -> std::result::Result<(), bollard::errors::Error> {
    engine.block(engine.docker.connect_network(
        net,
        NetworkConnectRequest {
            container: id.to_string(),
            endpoint_config: Some(blueprint::endpoint(aliases, ip)),
        },
    ))
}

/// Disconnects a container from a network.
pub(crate) fn disconnect(
    engine: &Engine,
    id: &str,
    net: &str,
) -> std::result::Result<(), bollard::errors::Error> {
    engine.block(engine.docker.disconnect_network(
        net,
        NetworkDisconnectRequest {
            container: id.to_string(),
            force: Some(false),
        },
    ))
}

/// Starts a created container; when the engine refuses, its logs are shown first.
pub(crate) fn start(engine: &Engine, id: &str, name: &str) -> Result<()> {
    engine
        .block(engine.docker.start_container(id, None))
        .map_err(|e| {
            kit::docker::report_failed_container(engine, id);
            Error::docker("start", format!("start {name}"), e)
        })
}

pub(crate) fn rename(engine: &Engine, id: &str, to: &str, step: &str) -> Result<()> {
    let opts = RenameContainerOptionsBuilder::default().name(to).build();
    engine
        .block(engine.docker.rename_container(id, opts))
        .map_err(|e| Error::docker(step, format!("rename {} to {to}", short_id(id)), e))
}

/// Removes a container, running or not; a failure is a warning (it is cleanup).
pub(crate) fn remove(engine: &Engine, id: &str) {
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    if let Err(e) = engine.block(engine.docker.remove_container(id, Some(opts))) {
        log::warn(&format!("cannot remove {}: {e}", short_id(id)));
    }
}

/// Stops a container as `docker stop` would, but without ever waiting twice: its stop signal
/// (SIGTERM unless configured), then at most its stop timeout (10 s unless configured) for it
/// to stop, then SIGKILL. Returns once the engine reports it not running, so nothing that
/// follows (or a user's `docker ps` right after) sees it still running.
pub(crate) fn stop(engine: &Engine, id: &str, name: &str, keep: bool) -> Stopped {
    let start = Instant::now();
    let config = engine
        .inspect(id)
        .ok()
        .flatten()
        .and_then(|c| c.config)
        .unwrap_or_default();
    let signal = config.stop_signal.unwrap_or_else(|| "SIGTERM".into());
    let timeout = Duration::from_secs(config.stop_timeout.unwrap_or(10).max(0) as u64);
    log::info(&format!(
        "stopping {name} ({signal}, then SIGKILL after {})",
        kit::human(timeout)
    ));
    let mut killed = false;
    if kill(engine, id, &signal) && !wait_stopped(engine, id, timeout) {
        log::warn(&format!(
            "{name} did not stop within {} of {signal}: killing it",
            kit::human(timeout)
        ));
        killed = true;
        if !kill(engine, id, "SIGKILL") || !wait_stopped(engine, id, Duration::from_secs(30)) {
            log::warn(&format!("{name} may still be running"));
        }
    }
    let exit_code = engine
        .inspect(id)
        .ok()
        .flatten()
        .and_then(|c| c.state.and_then(|s| s.exit_code));
    Stopped {
        name: name.to_string(),
        exit_code,
        ms: start.elapsed().as_millis() as u64,
        kept: keep,
        killed,
    }
}

/// Sends a signal; false when the container is not running (nothing to wait for) or the
/// engine refused.
fn kill(engine: &Engine, id: &str, signal: &str) -> bool {
    let opts = KillContainerOptionsBuilder::default()
        .signal(signal)
        .build();
    match engine.block(engine.docker.kill_container(id, Some(opts))) {
        Ok(()) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => false,
        Err(e) => {
            log::warn(&format!("cannot send {signal} to {}: {e}", short_id(id)));
            false
        }
    }
}

/// Waits until the engine reports the container not running; false when `within` passed.
fn wait_stopped(engine: &Engine, id: &str, within: Duration) -> bool {
    let options = WaitContainerOptions {
        condition: "not-running".into(),
    };
    let mut stream = engine.docker.wait_container(id, Some(options));
    engine.block(async {
        // A non-zero exit code comes as an error item: it stopped all the same.
        tokio::time::timeout(within, stream.next()).await.is_ok()
    })
}

/// Keeps the newest `keep` stopped old containers of `container`, removes the rest; returns
/// the names removed. `just_stopped` may still show as running for a moment.
pub(crate) fn retention(
    engine: &Engine,
    container: &str,
    keep: usize,
    just_stopped: Option<&str>,
) -> Vec<String> {
    let filter = format!("^/{}-old-", regex::escape(container));
    let Ok(mut olds) = list(engine, &filter, "cleanup") else {
        return Vec::new();
    };
    olds.retain(|c| !c.running || Some(c.id.as_str()) == just_stopped);
    olds.sort_by_key(|c| std::cmp::Reverse(c.created));
    let mut removed = Vec::new();
    for old in olds.into_iter().skip(keep) {
        log::info(&format!("removing {} (keeping {keep} old)", old.name));
        remove(engine, &old.id);
        removed.push(old.name);
    }
    removed
}

/// The name an old container is kept under: `<name>-old-<short id>`.
pub(crate) fn old_name(name: &str, id: &str) -> String {
    format!("{name}-old-{}", short_id(id))
}

/// The temporary name of a new container until it serves: `<name>-next-<random>`.
pub(crate) fn next_name(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{name}-next-{:06x}",
        (nanos ^ std::process::id().rotate_left(13)) & 0xff_ffff
    )
}

/// A container as the report names it.
pub(crate) fn describe(c: &ContainerInspectResponse) -> Container {
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
        ip: ip_on(c, &[]),
    }
}

/// The container's IP on one of `networks` (any network when empty; the first by name).
pub(crate) fn ip_on(c: &ContainerInspectResponse, networks: &[String]) -> Option<String> {
    let nets = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| networks.is_empty() || networks.contains(n))
        .filter_map(|n| nets[n].ip_address.clone())
        .find(|ip| !ip.is_empty())
}

/// Every IP the container has, on any network.
pub(crate) fn ips(c: &ContainerInspectResponse) -> Vec<String> {
    c.network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .map(|m| {
            m.values()
                .filter_map(|e| e.ip_address.clone())
                .filter(|ip| !ip.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Why a container that exited or restart-loops can never become healthy; `None` while it
/// may still.
pub(crate) fn cannot_become_healthy(c: &ContainerInspectResponse) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerState, EndpointSettings, NetworkSettings};

    fn on(nets: &[(&str, &str)]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            network_settings: Some(NetworkSettings {
                networks: Some(
                    nets.iter()
                        .map(|(n, ip)| {
                            (
                                n.to_string(),
                                EndpointSettings {
                                    ip_address: Some(ip.to_string()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_ip_on_a_network() {
        let c = on(&[("zeta", "10.0.2.5"), ("app", "10.0.1.5"), ("none", "")]);
        assert_eq!(ip_on(&c, &[]).as_deref(), Some("10.0.1.5"), "first by name");
        assert_eq!(ip_on(&c, &["zeta".into()]).as_deref(), Some("10.0.2.5"));
        assert_eq!(ip_on(&c, &["none".into()]), None, "no address there");
        assert_eq!(ip_on(&c, &["other".into()]), None);
        assert_eq!(ip_on(&ContainerInspectResponse::default(), &[]), None);
        let mut all = ips(&c);
        all.sort();
        assert_eq!(all, ["10.0.1.5", "10.0.2.5"]);
    }

    #[test]
    fn exited_and_restart_looping_containers_cannot_become_healthy() {
        let with = |running: bool, restarting: bool, restarts: i64| ContainerInspectResponse {
            state: Some(ContainerState {
                running: Some(running),
                restarting: Some(restarting),
                exit_code: Some(3),
                ..Default::default()
            }),
            restart_count: Some(restarts),
            ..Default::default()
        };
        assert_eq!(cannot_become_healthy(&with(true, false, 0)), None);
        assert_eq!(
            cannot_become_healthy(&with(false, false, 0)).as_deref(),
            Some("it exited (code 3)")
        );
        let looping = cannot_become_healthy(&with(true, false, 2)).unwrap();
        assert!(
            looping.contains("restart-looping (restarted 2 times"),
            "{looping}"
        );
        assert!(cannot_become_healthy(&with(false, true, 0))
            .unwrap()
            .contains("restart-looping"));
        assert_eq!(
            cannot_become_healthy(&ContainerInspectResponse::default()),
            None
        );
    }

    #[test]
    fn kept_and_temporary_names() {
        assert_eq!(old_name("api", "0123456789abcdef"), "api-old-0123456789ab");
        let next = next_name("api");
        assert!(next.starts_with("api-next-") && next.len() == "api-next-".len() + 6);
    }
}
