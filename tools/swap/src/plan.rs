//! `--dry-run`: what a swap would create, switch, drain and stop, on stderr for people and as
//! JSON in the report; computed from pre-flight, so it is what the real run would do.

use kit::log;
use serde_json::{json, Value};

use crate::containers;
use crate::nginx;
use crate::preflight::{Preflight, SwitchPlan};
use crate::request::Request;
use crate::switch::{DEFAULT_ALIAS_DRAIN, DEFAULT_NGINX_DRAIN};

/// The plan, logged; returns it for the report.
pub(crate) fn dry_run(req: &Request, pre: &Preflight, new_name: &str) -> Value {
    let bp = &pre.blueprint;
    let old = pre.old.as_ref().map(containers::describe);
    let health = match (&req.health.path, pre.port) {
        (Some(path), Some(port)) => format!(
            "GET http://<{new_name}'s address>:{port}{path}, expect {}, within {}",
            req.health.expect_status,
            kit::human(req.health.timeout)
        ),
        _ => format!(
            "the image's HEALTHCHECK (or running, without one), within {}",
            kit::human(req.health.timeout)
        ),
    };
    let (switch, drain) = match &pre.switch {
        SwitchPlan::Nginx(n) => (
            format!(
                "rewrite {} so upstream {} is <{new_name}'s address>:{} (now {}); nginx -t; nginx -s reload in {}",
                n.file.display(),
                n.upstream,
                n.port,
                n.before
                    .as_deref()
                    .and_then(|t| nginx::servers(t, &n.upstream))
                    .map(|s| s.join(", "))
                    .unwrap_or_else(|| "no file".into()),
                n.at
            ),
            format!(
                "wait until the old nginx workers have exited, at most {}",
                kit::human(req.drain.unwrap_or(DEFAULT_NGINX_DRAIN))
            ),
        ),
        SwitchPlan::Alias(a) => (
            format!(
                "give {new_name} the alias {} on {} (reconnect)",
                a.alias, a.network
            ),
            format!(
                "{} during which both answer on the alias",
                kit::human(req.drain.unwrap_or(DEFAULT_ALIAS_DRAIN))
            ),
        ),
        SwitchPlan::Recreate => (
            "stop the old container first, then start the new one (a gap)".into(),
            "none".into(),
        ),
    };
    let stop = match &old {
        Some(o) => format!(
            "{} (its stop signal, SIGKILL after its stop timeout), renamed {}, keeping {} old container(s)",
            o.name,
            containers::old_name(&req.container, &o.id),
            req.keep
        ),
        None => "nothing (first deploy)".into(),
    };
    let host = bp.body.host_config.as_ref();
    let create = json!({
        "name": new_name,
        "renamed_to": req.container,
        "image": req.image,
        "networks": bp.networks.iter().map(|(n, a)| (n.clone(), json!(a))).collect::<serde_json::Map<_, _>>(),
        "cmd": bp.body.cmd,
        "entrypoint": bp.body.entrypoint,
        "env_keys": bp.env_keys(),
        "labels": bp.body.labels,
        "restart": host.and_then(|h| h.restart_policy.as_ref()).and_then(|r| r.name).map(|n| n.to_string()),
        "binds": host.and_then(|h| h.binds.clone()),
        "ports": bp.host_ports(),
        "user": bp.body.user,
        "healthcheck": bp.body.healthcheck.as_ref().and_then(|h| h.test.clone()),
    });
    let networks = bp
        .networks
        .iter()
        .map(|(n, a)| {
            if a.is_empty() {
                n.clone()
            } else {
                format!("{n} (aliases {})", a.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut lines = vec![format!(
        "create  {new_name} from {} on {networks}",
        req.image
    )];
    if !bp.env_keys().is_empty() {
        lines.push(format!(
            "        env: {} (values not shown)",
            bp.env_keys().join(", ")
        ));
    }
    lines.extend([
        format!("health  {health}"),
        format!("switch  {switch}"),
        format!("drain   {drain}"),
        format!("stop    {stop}"),
        format!("rename  {new_name} → {}", req.container),
    ]);
    log::block("dry run: nothing changed; the plan is", &lines, false);
    json!({
        "old": old,
        "create": create,
        "health": health,
        "switch": switch,
        "drain": drain,
        "stop": stop,
    })
}
