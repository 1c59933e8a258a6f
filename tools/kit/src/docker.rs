//! The Docker Engine connection and the container helpers several tools need.
//!
//! The connection follows `DOCKER_HOST` and the TLS settings exactly as the docker CLI does
//! (`unix://`, `tcp://` with or without `DOCKER_TLS_VERIFY`, `ssh://`; the local socket when
//! unset: see [`crate::endpoint`]), so the same tools drive a remote engine or a Swarm manager.
//! Tools are synchronous: [`Engine::block`] runs one Docker call to completion on a small
//! current-thread runtime.

use std::future::Future;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{InspectContainerOptions, LogsOptionsBuilder};
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
