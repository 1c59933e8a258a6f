//! Moving traffic and letting the old side drain: the nginx switch (rewrite the upstream
//! file atomically, `nginx -t`, graceful reload, wait for new workers; anything that fails
//! puts the old file back), the alias switch (reconnect the new container with the alias),
//! and the drain (wait for the old nginx workers, or an alias window).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bollard::models::ContainerInspectResponse;
use kit::docker::Engine;
use kit::{log, Error, Result};

use crate::containers;
use crate::nginx::{self, Master, Where};
use crate::preflight::{AliasPlan, NginxPlan};
use crate::report::{AliasSwitch, Drain, NginxSwitch};

pub(crate) const DEFAULT_NGINX_DRAIN: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_ALIAS_DRAIN: Duration = Duration::from_secs(3);

/// What the nginx switch leaves for the drain: the workers that ran before the reload and
/// the master they belong to.
pub(crate) struct Reloaded {
    pub switch: NginxSwitch,
    pub workers_before: BTreeSet<u32>,
    pub master: Option<Master>,
}

/// Points the upstream at `ip` (the new container, named `new_name`), checks the
/// configuration and reloads nginx. On any failure the previous file is put back and nginx
/// still proxies to `live` (the live container's name).
pub(crate) fn nginx(
    engine: &Engine,
    plan: &NginxPlan,
    ip: &str,
    new_name: &str,
    service: &str,
    live: &str,
) -> Result<Reloaded> {
    let server = format!("{ip}:{}", plan.port);
    let text = match &plan.before {
        Some(t) if !t.trim().is_empty() => {
            nginx::rewrite(t, &plan.upstream, &server).ok_or_else(|| {
                Error::step(
                    "switch",
                    format!("no upstream {} in {}", plan.upstream, plan.file.display()),
                )
            })?
        }
        _ => nginx::generate(&plan.upstream, &server, service),
    };
    let master = nginx::master(engine, &plan.at);
    let workers_before = nginx::workers_of(engine, &plan.at, master)?;
    log::info(&format!(
        "switching upstream {} in {} to {server} ({new_name})",
        plan.upstream,
        plan.file.display(),
    ));
    nginx::write_atomic(&plan.file, &text)
        .map_err(|e| Error::io("switch", format!("write {}", plan.file.display()), e))?;
    let put_back = |why: String| -> Error {
        let back = match &plan.before {
            Some(t) => nginx::write_atomic(&plan.file, t),
            None => std::fs::remove_file(&plan.file),
        };
        let kept = match back {
            Ok(()) => "the previous upstream file is back in place".to_string(),
            Err(e) => format!("restoring the previous upstream file failed too: {e}"),
        };
        Error::step(
            "switch",
            format!("{why}; {kept}; nginx still proxies to {live}"),
        )
    };
    let (code, out) = match nginx::nginx(engine, &plan.at, &["-t"]) {
        Ok(r) => r,
        Err(e) => return Err(put_back(format!("cannot run nginx -t: {e}"))),
    };
    if code != 0 {
        log::block(
            "nginx -t refused the configuration:",
            &out.lines().map(str::to_string).collect::<Vec<_>>(),
            true,
        );
        return Err(put_back(format!(
            "nginx -t refused the new configuration (exit {code})"
        )));
    }
    let (code, out) = match nginx::reload(engine, &plan.at, master) {
        Ok(r) => r,
        Err(e) => return Err(put_back(format!("cannot run nginx -s reload: {e}"))),
    };
    if code != 0 {
        return Err(put_back(format!(
            "nginx -s reload failed (exit {code}): {}",
            out.trim()
        )));
    }
    if !workers_before.is_empty()
        && !nginx::wait_new_workers(
            engine,
            &plan.at,
            master,
            &workers_before,
            Duration::from_secs(10),
        )?
    {
        let err = put_back("nginx started no new workers within 10s of the reload".into());
        let _ = nginx::reload(engine, &plan.at, master);
        return Err(err);
    }
    Ok(Reloaded {
        switch: NginxSwitch {
            upstream_file: plan.file.clone(),
            upstream: plan.upstream.clone(),
            server,
            before: plan
                .before
                .as_deref()
                .and_then(|t| nginx::servers(t, &plan.upstream)),
            nginx: plan.at.to_string(),
            nginx_container: match &plan.at {
                Where::Container(c) => Some(c.clone()),
                Where::Host { .. } => None,
            },
        },
        workers_before,
        master,
    })
}

/// Gives the new container the alias on the plan's network (a reconnect: Docker changes an
/// endpoint's aliases no other way). `aliases` are its other aliases there.
///
/// It is reconnected at its own address first: that succeeds only on a network whose subnet
/// the user configured, and tells whether the old container can later leave DNS while keeping
/// its address ([`leave_dns`]); the new container serves nothing yet, so asking costs nothing.
pub(crate) fn alias(
    engine: &Engine,
    plan: &AliasPlan,
    aliases: &[String],
    id: &str,
    new_name: &str,
) -> Result<(AliasSwitch, bool)> {
    let (net, alias) = (&plan.network, &plan.alias);
    let mut aliases = aliases.to_vec();
    aliases.push(alias.clone());
    log::info(&format!("giving {new_name} the alias {alias} on {net}"));
    let before = engine
        .inspect(id)?
        .and_then(|c| containers::ip_on(&c, std::slice::from_ref(net)));
    containers::disconnect(engine, id, net)
        .map_err(|e| Error::docker("switch", format!("disconnect {new_name} from {net}"), e))?;
    let connect_err = |e| Error::docker("switch", format!("connect {new_name} to {net}"), e);
    let fixed = match before.as_deref() {
        Some(ip) => match containers::connect(engine, id, net, &aliases, Some(ip)) {
            Ok(()) => true,
            Err(e) if refuses_fixed_addresses(&e) => {
                containers::connect(engine, id, net, &aliases, None).map_err(connect_err)?;
                false
            }
            Err(e) => return Err(connect_err(e)),
        },
        None => {
            containers::connect(engine, id, net, &aliases, None).map_err(connect_err)?;
            false
        }
    };
    let ip = engine
        .inspect(id)?
        .and_then(|c| containers::ip_on(&c, std::slice::from_ref(net)));
    Ok((
        AliasSwitch {
            network: net.clone(),
            alias: alias.clone(),
            ip,
            old_left_dns: false,
        },
        fixed,
    ))
}

/// The engine's answer to a fixed address on a network whose subnet it chose itself.
fn refuses_fixed_addresses(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { message, .. }
        if message.contains("user configured subnets"))
}

/// alias, on a network with a configured subnet: takes the old container out of DNS (its
/// endpoint reconnected without the alias, at the same address) so that proxies resolving
/// the alias stop getting its address while it still answers. Without this, a proxy that
/// cached the old address after the old container stopped waits on it until its connect
/// timeout. False (with a warning) when the engine refused; the old container then keeps
/// the alias until it stops.
pub(crate) fn leave_dns(
    engine: &Engine,
    plan: &AliasPlan,
    old: &ContainerInspectResponse,
    name: &str,
) -> bool {
    let net = &plan.network;
    let id = old.id.clone().unwrap_or_default();
    let Some(ip) = containers::ip_on(old, std::slice::from_ref(net)) else {
        return false;
    };
    let short = kit::docker::short_id(&id);
    let aliases: Vec<String> = old
        .network_settings
        .as_ref()
        .and_then(|s| s.networks.as_ref())
        .and_then(|n| n.get(net))
        .and_then(|e| e.aliases.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| *a != plan.alias && !short.starts_with(a.as_str()))
        .collect();
    log::info(&format!(
        "taking {name} out of DNS for {}: reconnected to {net} at {ip} without the alias",
        plan.alias
    ));
    let result = containers::disconnect(engine, &id, net)
        .and_then(|()| containers::connect(engine, &id, net, &aliases, Some(&ip)));
    match result {
        Ok(()) => true,
        Err(e) => {
            log::warn(&format!(
                "cannot take {name} out of DNS ({e}); it keeps the alias until it stops"
            ));
            // Never leave it off the network: its in-flight requests still need it.
            let _ = containers::connect(engine, &id, net, &aliases, None);
            false
        }
    }
}

/// nginx: waits until the workers that ran before the reload have exited (they still proxy
/// to the old container), at most `limit`. Not cut short by a signal: stopping the old
/// container under them fails their requests.
pub(crate) fn drain_workers(
    engine: &Engine,
    at: &Where,
    reloaded: &Reloaded,
    limit: Duration,
) -> Drain {
    let start = Instant::now();
    let before = &reloaded.workers_before;
    let mut left = before.clone();
    while !left.is_empty() && start.elapsed() < limit {
        match nginx::workers_of(engine, at, reloaded.master) {
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
    if left.is_empty() {
        log::info(&format!(
            "old nginx workers finished in {}",
            kit::human(start.elapsed())
        ));
    } else {
        log::warn(&format!(
            "{} old nginx worker(s) still shutting down after {}; stopping the old container anyway",
            left.len(),
            kit::human(start.elapsed())
        ));
    }
    Drain::Workers {
        old_workers: before.len(),
        drained: left.is_empty(),
        ms: start.elapsed().as_millis() as u64,
    }
}

/// alias: both containers answer on the alias for `window` (cut short by a signal).
pub(crate) fn drain_window(window: Duration, stop: &dyn Fn() -> bool) -> Drain {
    let start = Instant::now();
    log::info(&format!("draining for {}", kit::human(window)));
    while start.elapsed() < window && !stop() {
        std::thread::sleep(Duration::from_millis(20));
    }
    Drain::Window {
        window_ms: window.as_millis() as u64,
        drained: start.elapsed() >= window,
        ms: start.elapsed().as_millis() as u64,
    }
}
