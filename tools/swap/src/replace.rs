//! The step order of a replacement, and its undo.
//!
//! nginx and alias: lock → preflight → create → start → health → switch → drain → stop →
//! cleanup. recreate: lock → preflight → create → stop → start → health → cleanup.
//!
//! Until the switch has happened, any failure or signal undoes what was made (the new
//! container; the switch itself puts a rewritten upstream file back) and leaves the old
//! container serving. After the switch the new container serves, and the swap is finished
//! rather than undone: the old container is always stopped (after the drain), so swap never
//! exits with two versions running.

use std::time::{Duration, Instant};

use kit::docker::Engine;
use kit::{log, Error, Result};

use crate::containers;
use crate::health;
use crate::leftovers;
use crate::lock::Lock;
use crate::plan;
use crate::preflight::{self, Preflight, SwitchPlan};
use crate::report::{Container, Failed, LockInfo, Report, Switch};
use crate::request::Request;
use crate::switch::{self, Reloaded, DEFAULT_ALIAS_DRAIN, DEFAULT_NGINX_DRAIN};

/// The environment variable that pauses swap at the start of a step (tests only: they send
/// a signal there). The value is the step's name.
pub const PAUSE_ENV: &str = "SWAP_TEST_PAUSE_AT";

/// Replaces the service's container with one running `req.image` (or created from
/// `req.template`), with zero downtime for the `nginx` and `alias` strategies: takes the
/// service's deploy lock, checks everything it can first, starts the new container under a
/// temporary name, waits until it is healthy, switches traffic, drains, stops the old one
/// gracefully and gives the new one the stable name.
///
/// On any failure, or when `stop()` turns true (a signal), before the switch: the new container
/// is removed, the proxy configuration and the old container are left as they were, and the
/// error names the step. After the switch the swap is finished rather than undone. Either
/// way the report says what was done ([`Failed::report`] on an error). Progress goes to
/// stderr through `kit::log`.
pub fn replace(
    engine: &Engine,
    req: &Request,
    stop: &dyn Fn() -> bool,
) -> std::result::Result<Report, Failed> {
    let mut swap = Swap {
        engine,
        req,
        stop,
        report: Report {
            service: req.service.clone(),
            strategy: req.strategy.name().into(),
            image: req.image.clone(),
            dry_run: req.dry_run,
            ..Report::default()
        },
        started: Instant::now(),
        step_started: Instant::now(),
        new_id: None,
        new_name: containers::next_name(&req.container),
        switched: false,
        old_stopped: false,
    };
    match swap.run() {
        Ok(()) => Ok(swap.report),
        Err(error) => Err(Failed {
            report: Box::new(swap.report),
            error,
        }),
    }
}

struct Swap<'a> {
    engine: &'a Engine,
    req: &'a Request,
    stop: &'a dyn Fn() -> bool,
    report: Report,
    started: Instant,
    step_started: Instant,
    /// The new container, once created; removed if the swap fails before the switch.
    new_id: Option<String>,
    new_name: String,
    /// Traffic reached the new container: from here on the swap is finished, not undone.
    switched: bool,
    /// recreate: the old container was stopped and must be started again on failure.
    old_stopped: bool,
}

impl Swap<'_> {
    fn run(&mut self) -> Result<()> {
        let req = self.req;
        self.begin("lock")?;
        let lock = if req.dry_run {
            None
        } else {
            let lock = Lock::take(
                &req.lock_dir,
                &req.service,
                &req.image,
                req.lock_wait,
                self.stop,
            )?;
            self.report.lock = Some(LockInfo {
                file: lock.path.display().to_string(),
                took_over: lock.took_over.clone(),
            });
            Some(lock)
        };
        self.end("lock");

        self.begin("preflight")?;
        if !req.dry_run {
            leftovers::reconcile(self.engine, req)?;
        }
        let pre = preflight::check(self.engine, req)?;
        self.report.image_id.clone_from(&pre.image_id);
        self.report.old = pre.old.as_ref().map(containers::describe);
        self.end("preflight");
        if req.dry_run {
            self.report.plan = Some(plan::dry_run(req, &pre, &self.new_name));
            return Ok(());
        }

        let result = match pre.switch {
            SwitchPlan::Recreate => self.recreate(&pre),
            _ => self.start_first(&pre),
        };
        if let Err(err) = result {
            self.undo(&pre, &err);
            return Err(err);
        }
        let total = self.started.elapsed().as_millis() as u64;
        self.report.ms.insert("total".into(), total.into());
        let healthy =
            self.report.health.as_ref().map_or(0, |h| h.elapsed_ms) + self.report.step_ms("start");
        self.report.overhead_ms =
            Some(total.saturating_sub(healthy + self.report.step_ms("drain")));
        drop(lock);
        Ok(())
    }

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
            return Err(kit::signals::interrupted(step));
        }
        Ok(())
    }

    fn end(&mut self, step: &str) {
        let ms = self.step_started.elapsed().as_millis() as u64;
        self.report.ms.insert(step.into(), ms.into());
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
            containers::rename(self.engine, &id, &self.req.container, "switch")?;
            self.new_name = self.req.container.clone();
        }

        self.begin("switch")?;
        let reloaded = self.switch(pre, &ip)?;
        self.switched = true;
        self.rename_after_switch(pre);
        self.end("switch");

        let Some(old) = &pre.old else {
            // First deploy: nothing to stop, but the old nginx workers still answer from the
            // previous configuration until they exit; the service is live once they are gone.
            if reloaded
                .as_ref()
                .is_some_and(|r| !r.workers_before.is_empty())
            {
                self.begin("drain")?;
                self.drain(pre, reloaded.as_ref());
                self.end("drain");
            }
            return Ok(());
        };
        // Traffic has moved: even when a signal came, the old nginx workers are waited for
        // (bounded by the drain limit), since stopping the old container under them fails
        // their requests with 502s; and the old container is stopped before swap exits. Only
        // the alias window is cut short by a signal.
        let mut interrupted = self.begin("drain").err();
        self.drain(pre, reloaded.as_ref());
        if interrupted.is_none() {
            self.end("drain");
            interrupted = self.check("drain").err();
        }
        let interrupted = interrupted.or_else(|| self.begin("stop").err());
        let old_id = old.id.clone().unwrap_or_default();
        let name = self
            .report
            .old
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        self.report.stopped = Some(containers::stop(
            self.engine,
            &old_id,
            &name,
            self.req.keep > 0,
        ));
        if let Some(err) = interrupted {
            return Err(err);
        }
        self.end("stop");
        self.begin("cleanup")?;
        self.report.removed = containers::retention(
            self.engine,
            &self.req.container,
            self.req.keep,
            Some(&old_id),
        );
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
                "recreate: nothing serves {} until the new one is healthy",
                self.req.container
            ));
            self.old_stopped = true;
            self.report.stopped = Some(containers::stop(
                self.engine,
                &id,
                &self.req.container,
                self.req.keep > 0,
            ));
            if self.engine.inspect(&id)?.is_some_and(running) {
                return Err(Error::step(
                    "stop",
                    format!("cannot stop {}", self.req.container),
                ));
            }
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
        let old_id = pre.old.as_ref().and_then(|o| o.id.clone());
        self.report.removed = containers::retention(
            self.engine,
            &self.req.container,
            self.req.keep,
            old_id.as_deref(),
        );
        self.end("cleanup");
        Ok(())
    }

    fn create(&mut self, pre: &Preflight) -> Result<()> {
        log::info(&format!(
            "creating {} from {}",
            self.new_name, self.req.image
        ));
        containers::create(
            self.engine,
            &self.new_name,
            &pre.blueprint,
            &mut self.new_id,
        )?;
        self.report.new = Some(Container {
            id: self.new_id.clone().unwrap_or_default(),
            name: self.new_name.clone(),
            image: self.req.image.clone(),
            ip: None,
        });
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        let id = self.new_id.clone().unwrap_or_default();
        containers::start(self.engine, &id, &self.new_name)
    }

    /// Waits until the new container is healthy; returns its address for the switch.
    fn health(&mut self, pre: &Preflight) -> Result<String> {
        let id = self.new_id.clone().unwrap_or_default();
        let waited = health::wait(self.engine, self.req, pre, &id, &self.new_name, self.stop)?;
        if let Some(new) = self.report.new.as_mut() {
            new.ip.clone_from(&waited.ip);
        }
        self.report.health_url = health::url(self.req, pre, waited.ip.as_deref());
        self.report.health = Some(waited.outcome.clone());
        if waited.outcome.healthy {
            return Ok(waited.ip.unwrap_or_default());
        }
        self.check("health")?;
        kit::docker::report_failed_container(self.engine, &self.new_name);
        Err(health::unhealthy(self.req, pre, &self.new_name, &waited))
    }

    /// Moves traffic to the new container at `ip`; nginx's reload is returned for the drain.
    fn switch(&mut self, pre: &Preflight, ip: &str) -> Result<Option<Reloaded>> {
        let id = self.new_id.clone().unwrap_or_default();
        match &pre.switch {
            SwitchPlan::Nginx(plan) => {
                let reloaded = switch::nginx(
                    self.engine,
                    plan,
                    ip,
                    &self.new_name,
                    &self.req.service,
                    &self.req.container,
                )?;
                self.report.switch = Some(Switch::Nginx(reloaded.switch.clone()));
                Ok(Some(reloaded))
            }
            SwitchPlan::Alias(plan) => {
                let aliases = pre
                    .blueprint
                    .networks
                    .iter()
                    .find(|(n, _)| *n == plan.network)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
                let (mut switched, fixed) =
                    switch::alias(self.engine, plan, &aliases, &id, &self.new_name)?;
                if let (true, Some(old)) = (fixed, &pre.old) {
                    switched.old_left_dns =
                        switch::leave_dns(self.engine, plan, old, &self.req.container);
                }
                if let Some(new) = self.report.new.as_mut() {
                    new.ip.clone_from(&switched.ip);
                }
                if let Some(ip) = &switched.ip {
                    if self.req.health.path.is_some() {
                        self.report.health_url = health::url(self.req, pre, Some(ip));
                    }
                }
                self.report.switch = Some(Switch::Alias(switched));
                Ok(None)
            }
            SwitchPlan::Recreate => Ok(None),
        }
    }

    fn drain(&mut self, pre: &Preflight, reloaded: Option<&Reloaded>) {
        self.report.drain = Some(match (&pre.switch, reloaded) {
            (SwitchPlan::Nginx(n), Some(r)) => switch::drain_workers(
                self.engine,
                &n.at,
                r,
                self.req.drain.unwrap_or(DEFAULT_NGINX_DRAIN),
            ),
            _ => switch::drain_window(self.req.drain.unwrap_or(DEFAULT_ALIAS_DRAIN), self.stop),
        });
    }

    /// Old → `<name>-old-<id>`, new → `<name>`: `docker logs <name>` shows the live one.
    fn rename_after_switch(&mut self, pre: &Preflight) {
        let Some(new_id) = self.new_id.clone() else {
            return;
        };
        if let Some(old) = &pre.old {
            let old_id = old.id.clone().unwrap_or_default();
            let to = containers::old_name(&self.req.container, &old_id);
            if let Err(e) = containers::rename(self.engine, &old_id, &to, "switch") {
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
            match containers::rename(self.engine, &new_id, &name, "switch") {
                Ok(()) => self.new_name = name,
                Err(e) => log::warn(&e.to_string()),
            }
        }
        if let Some(new) = self.report.new.as_mut() {
            new.name.clone_from(&self.new_name);
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
            containers::remove(self.engine, &id);
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

fn running(c: bollard::models::ContainerInspectResponse) -> bool {
    c.state.and_then(|s| s.running) == Some(true)
}
