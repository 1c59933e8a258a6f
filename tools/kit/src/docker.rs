//! The Docker Engine connection and the container helpers several tools need.
//!
//! The connection follows `DOCKER_HOST` and the TLS settings exactly as the docker CLI does
//! (`unix://`, `tcp://` with or without `DOCKER_TLS_VERIFY`, `ssh://`; the local socket when
//! unset: see [`crate::endpoint`]), so the same tools drive a remote engine or a Swarm manager.
//! Tools are synchronous: [`Engine::block`] runs one Docker call to completion on a small
//! current-thread runtime.

use std::future::Future;

use bollard::models::{ContainerInspectResponse, HostConfig, ImageInspect};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, InspectContainerOptions, LogsOptionsBuilder, TopOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::endpoint::{Endpoint, CONNECT_TIMEOUT};
use crate::error::{Error, Result};

/// A connected Docker Engine and the runtime its calls run on.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    pub docker: Docker,
    /// Where it is, as read from the environment.
    pub endpoint: Endpoint,
}

/// Where the engine is, as the user set it: `DOCKER_HOST` or the local socket.
pub fn host() -> String {
    crate::endpoint::describe_env()
}

impl Engine {
    /// Connects and pings the engine, so an engine that is down, or whose certificate does not
    /// verify, fails at once with one clear line rather than in the middle of a step. Settings
    /// that cannot work (a scheme we do not speak, a certificate file missing) are bad input.
    pub fn connect(step: &str) -> Result<Engine> {
        let endpoint = Endpoint::from_env()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io(step, "cannot start the async runtime", e))?;
        let unreachable = |why: String| {
            let hint = match &endpoint {
                Endpoint::Unix(_) => "; is it running?",
                _ => "",
            };
            let source = if std::env::var_os("DOCKER_HOST").is_some() {
                " (DOCKER_HOST)"
            } else {
                ""
            };
            Error::step(
                step,
                format!(
                    "cannot reach the Docker Engine at {}{source}: {why}{hint}",
                    host()
                ),
            )
        };
        let docker = endpoint
            .connect()
            .map_err(|e| unreachable(endpoint.explain(&e)))?;
        match rt.block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, docker.ping()).await }) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(endpoint.explain(&e))),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}",
                    crate::human(CONNECT_TIMEOUT)
                )))
            }
        }
        Ok(Engine {
            rt,
            docker,
            endpoint,
        })
    }

    /// Runs a future (a Docker call) to completion.
    pub fn block<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Inspects a container; `Ok(None)` when there is no such container.
    pub fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>> {
        match self.block(
            self.docker
                .inspect_container(name, None::<InspectContainerOptions>),
        ) {
            Ok(c) => Ok(Some(c)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(Error::docker(
                "inspect",
                format!("inspect container {name}"),
                e,
            )),
        }
    }

    /// Inspects an image (a tag, a digest reference or an id); `Ok(None)` when the engine does
    /// not have it.
    pub fn image(&self, reference: &str, step: &str) -> Result<Option<ImageInspect>> {
        match self.block(self.docker.inspect_image(reference)) {
            Ok(i) => Ok(Some(i)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(Error::docker(step, format!("inspect image {reference}"), e)),
        }
    }

    /// Pulls an image as `docker pull` would: with the user's credentials for its registry
    /// from the docker config ([`crate::registry::from_docker_config`]). Fails on any error the
    /// engine reports, including one inside its progress stream.
    pub fn pull(&self, reference: &str, step: &str) -> Result<()> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .build();
        let credentials = crate::image::Reference::parse(reference)
            .ok()
            .and_then(|r| crate::registry::from_docker_config(&r));
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        self.block(async {
            while let Some(item) = stream.next().await {
                item.map_err(|e| Error::docker(step, format!("pull {reference}"), e))?;
            }
            Ok(())
        })
    }

    /// The processes of a running container, as `docker top` lists them.
    pub fn processes(&self, container: &str, step: &str) -> Result<Vec<Process>> {
        let top = self
            .block(
                self.docker
                    .top_processes(container, Some(TopOptionsBuilder::default().build())),
            )
            .map_err(|e| Error::docker(step, format!("list the processes of {container}"), e))?;
        Ok(parse_top(
            &top.titles.unwrap_or_default(),
            &top.processes.unwrap_or_default(),
        ))
    }

    /// The last `n` lines a container wrote (stdout and stderr), for failure reports.
    pub fn last_logs(&self, name: &str, n: usize) -> Vec<String> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&n.to_string())
            .build();
        let mut stream = self.docker.logs(name, Some(options));
        let mut text = String::new();
        self.block(async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(out) => text.push_str(&String::from_utf8_lossy(&out.into_bytes())),
                    Err(_) => break,
                }
            }
        });
        text.lines().map(str::to_string).collect()
    }
}

/// One process of a container (`docker top`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// The parent's pid, when `ps` reported it.
    pub ppid: Option<u32>,
    pub cmd: String,
}

/// `docker top`'s table (its columns depend on the engine's `ps`): PID, PPID and CMD (or
/// COMMAND) by their titles. Rows without a readable pid are left out.
fn parse_top(titles: &[String], rows: &[Vec<String>]) -> Vec<Process> {
    let col = |t: &str| titles.iter().position(|x| x == t);
    let (Some(pid), Some(cmd)) = (col("PID"), col("CMD").or_else(|| col("COMMAND"))) else {
        return Vec::new();
    };
    let ppid = col("PPID");
    rows.iter()
        .filter_map(|row| {
            Some(Process {
                pid: row.get(pid)?.parse().ok()?,
                ppid: ppid.and_then(|i| row.get(i)?.parse().ok()),
                cmd: row.get(cmd).cloned().unwrap_or_default(),
            })
        })
        .collect()
}

/// The short form of a container or image id people read: 12 hex characters, without
/// `sha256:` (what `docker ps` and `docker images` show).
pub fn short_id(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    &id[..id.len().min(12)]
}

/// The host ports a container binds, as `docker ps` shows them (`0.0.0.0:8080->80/tcp`),
/// sorted; `network_mode: host` counts as binding the host's network.
pub fn host_ports(hc: Option<&HostConfig>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(map) = hc.and_then(|h| h.port_bindings.as_ref()) {
        for (port, bindings) in map {
            for b in bindings.iter().flatten() {
                let ip = b
                    .host_ip
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("0.0.0.0");
                let hp = b.host_port.as_deref().unwrap_or("");
                if !hp.is_empty() {
                    out.push(format!("{ip}:{hp}->{port}"));
                }
            }
        }
    }
    if hc.and_then(|h| h.network_mode.as_deref()) == Some("host") {
        out.push("the host's network (network_mode host)".into());
    }
    out.sort();
    out
}

/// The container's health log as lines (`exit 1: connection refused`), oldest first.
pub fn health_log(c: &ContainerInspectResponse) -> Vec<String> {
    let Some(log) = c
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.log.as_ref())
    else {
        return Vec::new();
    };
    log.iter()
        .map(|entry| {
            format!(
                "exit {}: {}",
                entry.exit_code.unwrap_or(-1),
                entry.output.as_deref().unwrap_or("").trim()
            )
        })
        .collect()
}

/// Shows a failed container's last log lines and its health log on stderr (even with `-q`):
/// the first thing a user needs when a deploy fails.
pub fn report_failed_container(engine: &Engine, name: &str) {
    let logs = engine.last_logs(name, 30);
    if logs.is_empty() {
        crate::log::block(&format!("{name} wrote no logs"), &[], true);
    } else {
        crate::log::block(&format!("last log lines of {name}:"), &logs, true);
    }
    if let Ok(Some(c)) = engine.inspect(name) {
        let health = health_log(&c);
        if !health.is_empty() {
            crate::log::block(&format!("health log of {name}:"), &health, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn top_is_read_by_its_titles() {
        let titles = strings(&["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]);
        let rows = vec![
            strings(&[
                "root",
                "4242",
                "4200",
                "0",
                "10:00",
                "?",
                "00:00:00",
                "nginx: master process nginx",
            ]),
            strings(&[
                "101",
                "4250",
                "4242",
                "0",
                "10:00",
                "?",
                "00:00:00",
                "nginx: worker process",
            ]),
            strings(&["101", "x", "4242", "0", "10:00", "?", "00:00:00", "broken"]),
        ];
        let ps = parse_top(&titles, &rows);
        assert_eq!(ps.len(), 2);
        assert_eq!(
            ps[1],
            Process {
                pid: 4250,
                ppid: Some(4242),
                cmd: "nginx: worker process".into()
            }
        );
        // busybox's ps: PID and COMMAND, no PPID.
        let ps = parse_top(
            &strings(&["PID", "USER", "COMMAND"]),
            &[strings(&["7", "root", "httpd -f"])],
        );
        assert_eq!(
            ps,
            vec![Process {
                pid: 7,
                ppid: None,
                cmd: "httpd -f".into()
            }]
        );
        assert!(parse_top(&strings(&["USER"]), &[strings(&["root"])]).is_empty());
    }

    #[test]
    fn short_ids_are_twelve_characters_without_the_algorithm() {
        assert_eq!(short_id("sha256:0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn host_ports_read_like_docker_ps() {
        use bollard::models::PortBinding;
        let hc = HostConfig {
            port_bindings: Some(std::collections::HashMap::from([
                (
                    "80/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some("8080".into()),
                    }]),
                ),
                (
                    "9000/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: None,
                        host_port: Some(String::new()),
                    }]),
                ),
            ])),
            ..Default::default()
        };
        assert_eq!(host_ports(Some(&hc)), vec!["127.0.0.1:8080->80/tcp"]);
        let host = HostConfig {
            network_mode: Some("host".into()),
            ..Default::default()
        };
        assert_eq!(host_ports(Some(&host)).len(), 1);
        assert!(host_ports(None).is_empty());
    }
}
