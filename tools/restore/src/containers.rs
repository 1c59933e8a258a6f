//! The containers part of a restore: for each recorded service, find what runs now, make sure
//! the recorded image is on the engine (pulling it by digest when it is gone), and recreate
//! the container from the recorded configuration through swap's engine, with zero downtime
//! for the nginx and alias strategies.

use kit::docker::{short_id as short, Engine};
use kit::health::Outcome;
use kit::{Error, Record, Result};
use serde::Serialize;
use snapshot::manifest::ContainerEntry;

use crate::Args;

/// What happens to one service's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Recreated from the recorded configuration and image.
    Recreated,
    /// The recorded container itself still runs: nothing to do.
    Unchanged,
}

/// One container of the plan.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: ContainerEntry,
    pub action: Action,
    /// What to run: the recorded reference when it still names the recorded image, else the id.
    pub image: String,
    /// The digest reference to pull the image back from, when it is gone.
    pub pull: Option<String>,
    pub strategy: Option<swap::Strategy>,
}

/// What was done, per container: `restore.containers[]`.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub service: String,
    pub name: String,
    pub action: Action,
    pub image_id: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The container that ran before (replaced) and the one that runs now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    /// `--dry-run`: swap's plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<serde_json::Value>,
}

impl Restored {
    /// What swap reports of the recreate, done or failed: the containers before and after,
    /// and the health.
    fn fill(&mut self, report: swap::Report) {
        self.old = report.old.map(|c| c.id);
        self.new = report.new.map(|c| c.id);
        self.health = report.health;
        self.health_url = report.health_url;
    }

    fn of(p: &Planned) -> Restored {
        Restored {
            service: p.entry.service.clone(),
            name: p.entry.name.clone(),
            action: p.action,
            image_id: p.entry.image.id.clone(),
            image: p.image.clone(),
            pulled: None,
            strategy: p.strategy.as_ref().map(|s| s.name().to_string()),
            old: None,
            new: None,
            health: None,
            health_url: None,
            plan: None,
        }
    }
}

/// Plans every container, checking all that can be checked before anything changes: the
/// image is present or pullable (by a recorded registry digest), and how traffic moves.
pub fn plan(
    engine: &Engine,
    entries: &[ContainerEntry],
    args: &Args,
    record: &Record,
) -> Result<Vec<Planned>> {
    let swaps = recorded_swaps(record)?;
    let mut out = Vec::new();
    for entry in entries {
        let live = engine.inspect(&entry.name)?;
        let running = live
            .as_ref()
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.running)
            == Some(true);
        if running && live.as_ref().and_then(|c| c.id.as_deref()) == Some(entry.id.as_str()) {
            kit::log::info(&format!(
                "{} is still the container of the snapshot ({}): left as it is",
                entry.name,
                short(&entry.id)
            ));
            out.push(Planned {
                entry: entry.clone(),
                action: Action::Unchanged,
                image: entry.image.reference.clone(),
                pull: None,
                strategy: None,
            });
            continue;
        }
        let (image, pull) = image(engine, entry)?;
        let strategy = strategy(entry, args, swap_of(&swaps, &entry.service))?;
        out.push(Planned {
            entry: entry.clone(),
            action: Action::Recreated,
            image,
            pull,
            strategy: Some(strategy),
        });
    }
    Ok(out)
}

/// The image to run and, when it is gone, the digest reference to pull it from. An image
/// that is gone and was never pushed (no registry digest) fails here.
fn image(engine: &Engine, entry: &ContainerEntry) -> Result<(String, Option<String>)> {
    let id = &entry.image.id;
    let present = |reference: &str| -> Result<Option<String>> {
        Ok(engine.image(reference, "preflight")?.and_then(|i| i.id))
    };
    // Run it by its reference when that still names the recorded image: `docker ps` reads better.
    let name = |reference: &str| -> Result<String> {
        Ok(
            if !reference.is_empty() && present(reference)?.as_deref() == Some(id.as_str()) {
                reference.to_string()
            } else {
                id.clone()
            },
        )
    };
    if present(id)?.is_some() {
        return Ok((name(&entry.image.reference)?, None));
    }
    let Some(digest) = entry.image.repo_digests.first() else {
        return Err(Error::step(
            "preflight",
            format!(
                "the image of {} ({}, {}) is no longer on this engine and cannot be pulled back: \
                 it was never pushed to a registry (no digest recorded); nothing was changed",
                entry.service,
                entry.image.reference,
                short(id)
            ),
        ));
    };
    Ok((name(&entry.image.reference)?, Some(digest.clone())))
}

/// Pulls the planned images that are gone, by digest, and checks the pulled image is the
/// recorded one. Changes nothing a user runs.
pub fn pull(engine: &Engine, planned: &[Planned]) -> Result<Vec<String>> {
    let mut pulled = Vec::new();
    for p in planned {
        let Some(reference) = p.pull.clone() else {
            continue;
        };
        kit::log::info(&format!(
            "pulling {reference}: the image of {} is no longer on this engine",
            p.entry.service
        ));
        let mut errors = Vec::new();
        let candidates: Vec<String> = std::iter::once(reference.clone())
            .chain(p.entry.image.repo_digests.iter().skip(1).cloned())
            .collect();
        let mut ok = false;
        for candidate in &candidates {
            match engine.pull(candidate, "preflight") {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => errors.push(format!("{candidate}: {e}")),
            }
        }
        let got = engine
            .image(&p.entry.image.id, "preflight")
            .ok()
            .flatten()
            .and_then(|i| i.id);
        if !ok || got.as_deref() != Some(p.entry.image.id.as_str()) {
            return Err(Error::step(
                "preflight",
                format!(
                    "the image of {} ({}) is no longer on this engine and pulling it back failed \
                     ({}); nothing was changed",
                    p.entry.service,
                    short(&p.entry.image.id),
                    if errors.is_empty() {
                        "the registry gave another image".to_string()
                    } else {
                        errors.join("; ")
                    }
                ),
            ));
        }
        pulled.push(reference);
    }
    Ok(pulled)
}

/// The swaps this deploy made (the record's `swap`, then `swap.earlier`), newest first.
pub fn recorded_swaps(record: &Record) -> Result<Vec<swap::Report>> {
    let Some(mut last) = record.typed::<swap::Report>("swap")? else {
        return Ok(Vec::new());
    };
    let earlier = std::mem::take(&mut last.earlier);
    Ok(std::iter::once(last)
        .chain(earlier.into_iter().rev())
        .collect())
}

/// The swap of `service` that moved its traffic in this deploy, newest first: only such a
/// swap tells how to move it back (not a dry run, nor one that failed before its switch, when
/// an earlier swap of the service may have moved it).
fn swap_of<'s>(swaps: &'s [swap::Report], service: &str) -> Option<&'s swap::Report> {
    swaps
        .iter()
        .find(|s| s.service == service && s.moved_traffic())
}

/// What the flags say when they decide, else what the record says.
fn pick<T>(flags_decide: bool, flag: Option<T>, recorded: Option<T>) -> Option<T> {
    if flags_decide {
        flag.or(recorded)
    } else {
        recorded
    }
}

/// How traffic moves for this service. What was typed (`--strategy`, `--upstream-file`) wins;
/// then what swap did for this service earlier in this deploy (the record's `swap` or
/// `swap.earlier`: exact, per service); then `recreate` for a container that owns host ports
/// (nothing else can move it); then the settings (`RESTORE_*`). Settings apply to every
/// container restored, so they come last: the backend's `RESTORE_UPSTREAM_FILE` must never be
/// used for a frontend the record knows better, and when they do decide, the upstream must
/// point at the service's live container or nothing is changed.
fn strategy(
    entry: &ContainerEntry,
    args: &Args,
    swapped: Option<&swap::Report>,
) -> Result<swap::Strategy> {
    use swap::StrategyName as S;
    let t = &args.traffic;
    let recorded = swapped.and_then(|s| match s.strategy.as_str() {
        "nginx" => Some(S::Nginx),
        "alias" => Some(S::Alias),
        "recreate" => Some(S::Recreate),
        _ => None,
    });
    let typed =
        kit::given_on_command_line("--strategy") || kit::given_on_command_line("--upstream-file");
    let from_flags = || match (t.strategy, &t.upstream_file) {
        (Some(s), _) => Ok(s),
        (None, Some(_)) => Ok(S::Nginx),
        (None, None) => Err(Error::input(
            "--strategy",
            format!(
                "how does traffic reach {}? pass --strategy nginx --upstream-file PATH, \
                 --strategy alias, or --strategy recreate (nothing was changed)",
                entry.service
            ),
        )),
    };
    let host_ports = !kit::docker::host_ports(entry.inspect.host_config.as_ref()).is_empty();
    let (name, flags_decide) = match (recorded, swapped) {
        _ if typed => (from_flags()?, true),
        (Some(r), Some(s)) => {
            if t.strategy.is_some() || t.upstream_file.is_some() {
                kit::log::info(&format!(
                    "{}: moved back the way its swap moved it ({}); the --strategy and \
                     --upstream-file settings are for services this deploy did not swap",
                    entry.service, s.strategy
                ));
            }
            (r, false)
        }
        _ if host_ports => (S::Recreate, false),
        _ => (from_flags()?, true),
    };
    let switch = swapped.and_then(|s| s.switch.as_ref());
    Ok(match name {
        S::Nginx => {
            let recorded = match switch {
                Some(swap::Switch::Nginx(n)) => Some(n),
                _ => None,
            };
            let flag_file = t
                .upstream_file
                .as_ref()
                .map(|f| {
                    std::path::absolute(f).map_err(|e| {
                        Error::input("--upstream-file", format!("cannot resolve it: {e}"))
                    })
                })
                .transpose()?;
            let file = pick(
                flags_decide,
                flag_file,
                recorded.map(|n| n.upstream_file.clone()),
            )
            .ok_or_else(|| {
                Error::input(
                    "--upstream-file",
                    "the nginx strategy needs the upstream include file to rewrite",
                )
            })?;
            let mut n = swap::Nginx::new(file);
            n.upstream = pick(
                flags_decide,
                t.upstream.clone(),
                recorded.map(|n| n.upstream.clone()),
            );
            n.container = pick(
                flags_decide,
                t.nginx_container.clone(),
                recorded.and_then(|n| n.nginx_container.clone()),
            );
            if flags_decide {
                n.service_url.clone_from(&t.service_url);
            }
            n.must_point_at_old = flags_decide && !typed;
            swap::Strategy::Nginx(n)
        }
        S::Alias => {
            let recorded = match switch {
                Some(swap::Switch::Alias(a)) => Some(a),
                _ => None,
            };
            let mut a = swap::Alias::new();
            a.alias = pick(
                flags_decide,
                t.alias.clone(),
                recorded.map(|a| a.alias.clone()),
            );
            a.network = pick(
                flags_decide,
                t.alias_network.clone(),
                recorded.map(|a| a.network.clone()),
            );
            swap::Strategy::Alias(a)
        }
        S::Recreate => swap::Strategy::Recreate,
    })
}

/// The swap request that recreates one container from its recorded configuration.
fn request(p: &Planned, args: &Args, dry_run: bool) -> Result<swap::Request> {
    let strategy = p.strategy.clone().unwrap_or(swap::Strategy::Recreate);
    let mut req = swap::Request::new(&p.entry.service, &p.image, strategy);
    req.container.clone_from(&p.entry.name);
    req.template = Some(p.entry.inspect.clone());
    req.port = args.traffic.port;
    req.health = args.traffic.health()?;
    req.keep = args.keep_old;
    req.drain = args.traffic.drain;
    if let Some(dir) = &args.lock_dir {
        req.lock_dir.clone_from(dir);
    }
    req.lock_wait = args.lock_wait;
    req.dry_run = dry_run;
    Ok(req)
}

/// Recreates the planned containers, one service at a time, each waited healthy by swap
/// before traffic moves to it. Stops at the first failure, keeping what was done so far in
/// `done` (the error says which service failed; those before it are restored).
pub fn apply(
    engine: &Engine,
    planned: &[Planned],
    args: &Args,
    pulled: &[String],
    stop: &dyn Fn() -> bool,
    done: &mut Vec<Restored>,
) -> Result<()> {
    for p in planned {
        let mut r = Restored::of(p);
        r.pulled = p
            .pull
            .clone()
            .filter(|reference| pulled.contains(reference));
        if p.action == Action::Unchanged {
            r.new = Some(p.entry.id.clone());
            done.push(r);
            continue;
        }
        kit::log::info(&format!(
            "recreating {} from the snapshot: {} ({})",
            p.entry.name,
            p.image,
            short(&p.entry.image.id)
        ));
        match swap::replace(engine, &request(p, args, false)?, stop) {
            Ok(report) => {
                r.fill(report);
                done.push(r);
            }
            Err(swap::Failed { report, error }) => {
                r.fill(*report);
                done.push(r);
                return Err(error);
            }
        }
    }
    Ok(())
}

/// `--dry-run`: swap's plan for each container that would be recreated (when its image is
/// here; a pull is only announced).
pub fn dry_run(engine: &Engine, planned: &[Planned], args: &Args) -> Result<Vec<Restored>> {
    let mut out = Vec::new();
    for p in planned {
        let mut r = Restored::of(p);
        if p.action == Action::Recreated {
            if let Some(reference) = &p.pull {
                kit::log::info(&format!(
                    "would pull {reference} (the image of {} is gone), then recreate {}",
                    p.entry.service, p.entry.name
                ));
            } else {
                let report = swap::replace(engine, &request(p, args, true)?, &|| false)
                    .map_err(|f| f.error)?;
                r.plan = report.plan;
            }
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swaps(v: serde_json::Value) -> Result<Vec<swap::Report>> {
        recorded_swaps(&Record::parse(&v.to_string()).unwrap())
    }

    fn upstream_file(s: Option<&swap::Report>) -> Option<String> {
        match s?.switch.as_ref()? {
            swap::Switch::Nginx(n) => Some(n.upstream_file.display().to_string()),
            swap::Switch::Alias(_) => Some("alias".into()),
        }
    }

    fn nginx(service: &str, file: &str, dry_run: bool) -> serde_json::Value {
        serde_json::json!({"service": service, "strategy": "nginx", "dry_run": dry_run,
                           "switch": {"upstream_file": file, "upstream": service,
                                      "server": "10.0.0.2:80", "before": null,
                                      "nginx": "this host"}})
    }

    #[test]
    fn each_service_is_found_in_its_own_swap_newest_first() {
        let mut last = nginx("backend", "/b2.conf", false);
        last["earlier"] = serde_json::json!([
            nginx("backend", "/b1.conf", false),
            {"service": "frontend", "strategy": "recreate", "dry_run": false},
        ]);
        let all = swaps(serde_json::json!({ "swap": last })).unwrap();
        assert_eq!(
            upstream_file(swap_of(&all, "backend")).as_deref(),
            Some("/b2.conf")
        );
        assert_eq!(
            swap_of(&all, "frontend").map(|s| s.strategy.as_str()),
            Some("recreate")
        );
        assert!(swap_of(&all, "worker").is_none());
    }

    #[test]
    fn a_swap_that_moved_nothing_is_skipped_for_an_earlier_one() {
        // Failed before its switch: no `switch`.
        let all = swaps(serde_json::json!({"swap": {
            "service": "backend", "strategy": "nginx", "dry_run": false,
            "earlier": [nginx("backend", "/b.conf", false), nginx("backend", "/dry.conf", true)]
        }}))
        .unwrap();
        assert_eq!(
            upstream_file(swap_of(&all, "backend")).as_deref(),
            Some("/b.conf")
        );
    }

    #[test]
    fn wrong_types_are_bad_input_naming_the_field() {
        let err = swaps(serde_json::json!({"swap": {"service": "b", "earlier": {"x": 1}}}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("swap.earlier: invalid type: map"), "{err}");
        let err = swaps(serde_json::json!({"swap": {"service": 7}}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("swap.service: invalid type: integer"),
            "{err}"
        );
    }
}
