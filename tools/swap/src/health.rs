//! Waiting until the new container is healthy: its HTTP health path on its own address, or
//! its HEALTHCHECK; cut short as soon as it exits or restart-loops (it never will be), and an
//! error that explains itself when it is not.

use std::cell::RefCell;

use kit::docker::Engine;
use kit::health::{HttpCheck, Outcome, Schedule, Target, Wait};
use kit::{Error, Result};

use crate::containers;
use crate::preflight::{Preflight, SwitchPlan};
use crate::request::{Request, Strategy};

/// How the wait ended.
pub(crate) struct Waited {
    /// The new container's address (on the network the proxy reaches it on).
    pub ip: Option<String>,
    pub outcome: Outcome,
    /// Why it can never become healthy, when that ended the wait.
    pub dead: Option<String>,
}

/// Waits for the new container `id` (named `name`) within the request's health budget.
/// Errors only when the engine cannot be asked; an unhealthy container is a [`Waited`] whose
/// outcome says so.
pub(crate) fn wait(
    engine: &Engine,
    req: &Request,
    pre: &Preflight,
    id: &str,
    name: &str,
    stop: &dyn Fn() -> bool,
) -> Result<Waited> {
    let inspected = engine.inspect(id)?;
    let ip = inspected
        .as_ref()
        .and_then(|c| containers::ip_on(c, pre.switch.networks()));
    let target = match (&req.health.path, pre.port, &ip) {
        (Some(path), Some(port), Some(ip)) => Target::Http(HttpCheck {
            url: format!("http://{ip}:{port}{path}"),
            expect_status: req.health.expect_status.clone(),
            expect_body: None,
            headers: Vec::new(),
        }),
        _ => Target::Container(name.to_string()),
    };
    let wait = Wait {
        target,
        schedule: Schedule::Within {
            timeout: req.health.timeout,
            interval: req.health.interval,
        },
        attempt_timeout: req.health.attempt_timeout,
    };
    // Already gone (it crashed at once): no need to wait for anything.
    if let Some(why) = inspected
        .as_ref()
        .and_then(containers::cannot_become_healthy)
    {
        return Ok(Waited {
            ip,
            outcome: Outcome {
                target: wait.target.to_string(),
                healthy: false,
                attempts: 0,
                elapsed_ms: 0,
                last_status: None,
                last: why.clone(),
            },
            dead: Some(why),
        });
    }
    let dead: RefCell<Option<String>> = RefCell::new(None);
    let probe_dead = || match engine.inspect(id) {
        Ok(Some(c)) => match containers::cannot_become_healthy(&c) {
            Some(why) => {
                *dead.borrow_mut() = Some(why);
                true
            }
            None => false,
        },
        _ => false,
    };
    let outcome = wait.run(Some(engine), &|| stop() || probe_dead())?;
    let dead = dead.into_inner().or_else(|| {
        (!outcome.healthy)
            .then(|| engine.inspect(id).ok().flatten())
            .flatten()
            .as_ref()
            .and_then(containers::cannot_become_healthy)
    });
    Ok(Waited { ip, outcome, dead })
}

/// The error for a container that did not become healthy, saying why and what still serves.
pub(crate) fn unhealthy(req: &Request, pre: &Preflight, name: &str, waited: &Waited) -> Error {
    let still = if pre.old.is_some() && !matches!(req.strategy, Strategy::Recreate) {
        format!("; {} keeps serving", req.container)
    } else {
        String::new()
    };
    Error::step(
        "health",
        match &waited.dead {
            Some(why) => format!("{name} cannot become healthy: {why}{still}"),
            None => format!(
                "{name} did not become healthy within {}: {}{still}",
                kit::human(req.health.timeout),
                waited.outcome.last
            ),
        },
    )
}

/// The service's health URL: through nginx when its URL is known, else the container's own.
pub(crate) fn url(req: &Request, pre: &Preflight, ip: Option<&str>) -> Option<String> {
    let path = req.health.path.as_deref()?;
    if let SwitchPlan::Nginx(n) = &pre.switch {
        if let Some(url) = &n.service_url {
            return Some(format!("{}{path}", url.trim_end_matches('/')));
        }
    }
    Some(format!("http://{}:{}{path}", ip?, pre.port?))
}
