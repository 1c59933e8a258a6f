//! The blueprint of the new container: the running (or recorded) container's configuration,
//! with the new image, minus what came from the old image's own config (so the new image's
//! defaults apply, as Watchtower does), plus the `io.deploykit.service` label and the user's
//! overrides.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings,
    HostConfig, ImageConfig, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use kit::{Error, Result};

use crate::request::{Spec, SERVICE_LABEL};

/// What to create: the body (holding the first network, the one allowed at create time on
/// API 1.41) and every network with its aliases, to connect the others before start.
#[derive(Debug, Clone)]
pub(crate) struct Blueprint {
    pub body: ContainerCreateBody,
    /// (network, aliases), the first one given at create time.
    pub networks: Vec<(String, Vec<String>)>,
}

impl Blueprint {
    pub fn env_keys(&self) -> Vec<String> {
        self.body
            .env
            .iter()
            .flatten()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_string())
            .collect()
    }

    /// Host ports this container would bind (`0.0.0.0:8080->80/tcp`).
    pub fn host_ports(&self) -> Vec<String> {
        kit::docker::host_ports(self.body.host_config.as_ref())
    }

    /// Removes `alias` from `network`'s aliases (alias strategy: added at the switch).
    pub fn without_alias(&mut self, network: &str, alias: &str) {
        for (net, aliases) in &mut self.networks {
            if net == network {
                aliases.retain(|a| a != alias);
            }
        }
        self.sync_first_network();
    }

    fn sync_first_network(&mut self) {
        self.body.networking_config =
            self.networks
                .first()
                .map(|(net, aliases)| NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(net.clone(), endpoint(aliases, None))])),
                });
    }
}

/// A network endpoint with these aliases, at a fixed address when `ip` is given (only on a
/// network whose subnet the user configured).
pub(crate) fn endpoint(aliases: &[String], ip: Option<&str>) -> EndpointSettings {
    EndpointSettings {
        aliases: (!aliases.is_empty()).then(|| aliases.to_vec()),
        ipam_config: ip.map(|ip| EndpointIpamConfig {
            ipv4_address: Some(ip.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The new container's configuration from a running or recorded one.
pub(crate) fn from_container(
    old: &ContainerInspectResponse,
    old_image: Option<&ImageConfig>,
    image: &str,
    service: &str,
    spec: &Spec,
) -> Result<Blueprint> {
    let config = old.config.clone().unwrap_or_default();
    // ContainerConfig and ContainerCreateBody share their field names: go through JSON.
    let mut body: ContainerCreateBody = serde_json::to_value(&config)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            Error::step(
                "preflight",
                format!("cannot read the old container's config: {e}"),
            )
        })?;
    body.image = Some(image.to_string());
    let short_id = kit::docker::short_id(old.id.as_deref().unwrap_or(""));
    if body.hostname.as_deref() == Some(short_id) {
        body.hostname = None;
    }
    if let Some(img) = old_image {
        strip_image_defaults(&mut body, img);
    }
    let mut host = old.host_config.clone().unwrap_or_default();
    // Docker fills these in per container; copying them would pin the new one to the old's.
    host.container_id_file = None;
    body.host_config = Some(host);

    let mut networks = Vec::new();
    let mode = body
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let attached = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let mut names: Vec<&String> = attached.keys().collect();
    names.sort();
    // The network named by network_mode first: it is the one given at create time.
    names.sort_by_key(|n| **n != mode);
    for name in names {
        let ep = &attached[name];
        let aliases: Vec<String> = ep
            .aliases
            .iter()
            .flatten()
            .filter(|a| a.as_str() != short_id && !short_id.starts_with(a.as_str()))
            .cloned()
            .collect();
        networks.push((name.clone(), aliases));
    }
    let mut bp = Blueprint { body, networks };
    apply_spec(&mut bp, service, spec);
    bp.sync_first_network();
    Ok(bp)
}

/// A first deploy's configuration: the image's defaults, the spec, the label.
pub(crate) fn fresh(image: &str, service: &str, network: &str, spec: &Spec) -> Result<Blueprint> {
    let restart = restart_policy(spec.restart.as_deref().unwrap_or("unless-stopped"))?;
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            restart_policy: Some(restart),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut bp = Blueprint {
        body,
        networks: vec![(network.to_string(), Vec::new())],
    };
    apply_spec(&mut bp, service, spec);
    bp.sync_first_network();
    Ok(bp)
}

fn apply_spec(bp: &mut Blueprint, service: &str, spec: &Spec) {
    let body = &mut bp.body;
    let env = body.env.get_or_insert_with(Vec::new);
    for (k, v) in &spec.env {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key) != k);
        env.push(format!("{k}={v}"));
    }
    if env.is_empty() {
        body.env = None;
    }
    let labels = body.labels.get_or_insert_with(HashMap::new);
    labels.insert(SERVICE_LABEL.into(), service.into());
    for (k, v) in &spec.labels {
        labels.insert(k.clone(), v.clone());
    }
    if !spec.ports.is_empty() {
        let host = body.host_config.get_or_insert_with(HostConfig::default);
        let map = host.port_bindings.get_or_insert_with(HashMap::new);
        for p in &spec.ports {
            if let Some((port, binding)) = parse_publish(p) {
                map.insert(port.clone(), Some(vec![binding]));
                body.exposed_ports
                    .get_or_insert_with(Vec::new)
                    .retain(|e| *e != port);
                body.exposed_ports.get_or_insert_with(Vec::new).push(port);
            }
        }
    }
    if let Some(policy) = spec.restart.as_deref().and_then(|r| restart_policy(r).ok()) {
        body.host_config
            .get_or_insert_with(HostConfig::default)
            .restart_policy = Some(policy);
    }
}

/// `no`, `always`, `unless-stopped`, `on-failure[:N]`.
pub(crate) fn restart_policy(text: &str) -> Result<RestartPolicy> {
    let (name, retries) = match text.split_once(':') {
        Some((n, r)) => (n, r.parse::<i64>().ok()),
        None => (text, None),
    };
    let name = match name {
        "no" => RestartPolicyNameEnum::NO,
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        _ => {
            return Err(Error::input(
                "--restart",
                format!("'{text}' is not a restart policy; try no, always, unless-stopped or on-failure[:N]"),
            ))
        }
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count: retries,
    })
}

/// `[IP:]HOST:CONTAINER[/proto]` → ("CONTAINER/proto", binding).
pub(crate) fn parse_publish(text: &str) -> Option<(String, bollard::models::PortBinding)> {
    let (spec, proto) = match text.rsplit_once('/') {
        Some((s, p)) => (s, p),
        None => (text, "tcp"),
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (container, host, ip) = match parts.as_slice() {
        [c, h] => (*c, *h, None),
        [c, h, ip] => (*c, *h, Some(ip.to_string())),
        _ => return None,
    };
    container.parse::<u16>().ok()?;
    host.parse::<u16>().ok()?;
    Some((
        format!("{container}/{proto}"),
        bollard::models::PortBinding {
            host_ip: ip,
            host_port: Some(host.to_string()),
        },
    ))
}

/// Drops the values that equal the old image's own: the new image's defaults then apply.
fn strip_image_defaults(body: &mut ContainerCreateBody, img: &ImageConfig) {
    if let (Some(env), Some(img_env)) = (body.env.as_mut(), img.env.as_ref()) {
        env.retain(|e| !img_env.contains(e));
    }
    if let (Some(labels), Some(img_labels)) = (body.labels.as_mut(), img.labels.as_ref()) {
        labels.retain(|k, v| img_labels.get(k) != Some(v));
    }
    if body.cmd.is_some() && body.cmd == img.cmd {
        body.cmd = None;
    }
    if body.entrypoint.is_some() && body.entrypoint == img.entrypoint {
        body.entrypoint = None;
    }
    if body.healthcheck.is_some() && body.healthcheck == img.healthcheck {
        body.healthcheck = None;
    }
    if body.working_dir.is_some() && body.working_dir == img.working_dir {
        body.working_dir = None;
    }
    if body.user.is_some() && body.user == img.user {
        body.user = None;
    }
    if body.stop_signal.is_some() && body.stop_signal == img.stop_signal {
        body.stop_signal = None;
    }
    if body.shell.is_some() && body.shell == img.shell {
        body.shell = None;
    }
    if body.on_build.is_some() && body.on_build == img.on_build {
        body.on_build = None;
    }
    if let (Some(ports), Some(img_ports)) =
        (body.exposed_ports.as_mut(), img.exposed_ports.as_ref())
    {
        ports.retain(|p| !img_ports.contains(p));
    }
    if let (Some(vols), Some(img_vols)) = (body.volumes.as_mut(), img.volumes.as_ref()) {
        vols.retain(|v| !img_vols.contains(v));
    }
    for empty in [&mut body.env, &mut body.exposed_ports, &mut body.volumes] {
        if empty.as_ref().is_some_and(Vec::is_empty) {
            *empty = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_defaults_are_not_carried_over() {
        let img = ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "APP_VERSION=v1".into()]),
            cmd: Some(vec!["/app".into()]),
            labels: Some(HashMap::from([("org.version".into(), "v1".into())])),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            env: Some(vec![
                "PATH=/bin".into(),
                "APP_VERSION=v1".into(),
                "DATABASE_URL=x".into(),
            ]),
            cmd: Some(vec!["/app".into()]),
            labels: Some(HashMap::from([
                ("org.version".into(), "v1".into()),
                ("com.docker.compose.service".into(), "backend".into()),
            ])),
            ..Default::default()
        };
        strip_image_defaults(&mut body, &img);
        assert_eq!(body.env, Some(vec!["DATABASE_URL=x".to_string()]));
        assert_eq!(body.cmd, None);
        assert_eq!(
            body.labels,
            Some(HashMap::from([(
                "com.docker.compose.service".to_string(),
                "backend".to_string()
            )]))
        );
    }

    #[test]
    fn publish_specs() {
        let (port, b) = parse_publish("127.0.0.1:8080:80").unwrap();
        assert_eq!(port, "80/tcp");
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b.host_port.as_deref(), Some("8080"));
        assert_eq!(parse_publish("8080:80/udp").unwrap().0, "80/udp");
        assert!(parse_publish("80").is_none());
    }
}
