//! The containers part of a restore: for each recorded service, find what runs now, make sure
//! the recorded image is on the engine (pulling it by digest when it is gone), and recreate
//! the container from the recorded configuration through swap's engine, with zero downtime
//! for the nginx and alias strategies.

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;
use kit::docker::Engine;
use kit::health::Outcome;
use kit::{Error, Record, Result};
use serde::Serialize;
use serde_json::Value;
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
        let strategy = strategy(entry, args, record)?;
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
        match engine.block(engine.docker.inspect_image(reference)) {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(Error::docker(
                "preflight",
                format!("inspect image {reference}"),
                e,
            )),
        }
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
            let options = CreateImageOptionsBuilder::default()
                .from_image(candidate)
                .build();
            let credentials = kit::image::Reference::parse(candidate)
                .ok()
                .and_then(|r| kit::registry::from_docker_config(&r));
            let mut stream = engine.docker.create_image(Some(options), None, credentials);
            let result: std::result::Result<(), bollard::errors::Error> = engine.block(async {
                while let Some(item) = stream.next().await {
                    item?;
                }
                Ok(())
            });
            match result {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => errors.push(format!(
                    "{candidate}: {}",
                    Error::docker("preflight", "pull", e)
                )),
            }
        }
        let got = engine
            .block(engine.docker.inspect_image(&p.entry.image.id))
            .ok()
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

/// The swap of `service` earlier in this deploy: the record's `swap`, or one of the swaps
/// before it (`swap.earlier`, several services in one deploy); with the record path it is at.
fn swap_of<'r>(record: &'r Record, service: &str) -> Result<Option<(&'r Value, String)>> {
    let Some(last) = record.get("swap") else {
        return Ok(None);
    };
    let mut found = vec![(last, "swap".to_string())];
    if let Some(earlier) = last.get("earlier") {
        let list = earlier
            .as_array()
            .ok_or_else(|| kit::record::wrong_type("swap.earlier", "an array", earlier))?;
        found.extend(
            list.iter()
                .enumerate()
                .rev()
                .map(|(i, s)| (s, format!("swap.earlier.{i}"))),
        );
    }
    for (swap, at) in found {
        if text(swap, &at, "service")?.as_deref() != Some(service) {
            continue;
        }
        // Only a swap that moved traffic tells how to move it back: not a dry run, and not
        // one that failed before its switch (then an earlier swap of the service may).
        let dry_run = swap.get("dry_run").and_then(Value::as_bool) == Some(true);
        let moved = match text(swap, &at, "strategy")?.as_deref() {
            Some("recreate") => true,
            Some("nginx" | "alias") => swap.get("switch").is_some_and(Value::is_object),
            _ => false,
        };
        if moved && !dry_run {
            return Ok(Some((swap, at)));
        }
    }
    Ok(None)
}

/// A string field of a recorded swap (`switch.upstream_file`); a wrong type is bad input
/// naming the field.
fn text(swap: &Value, at: &str, path: &str) -> Result<Option<String>> {
    let pointer = format!("/{}", path.replace('.', "/"));
    match swap.pointer(&pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(kit::record::wrong_type(
            &format!("{at}.{path}"),
            "a string",
            other,
        )),
    }
}

/// How traffic moves for this service. What was typed (`--strategy`, `--upstream-file`) wins;
/// then what swap did for this service earlier in this deploy (the record's `swap` or
/// `swap.earlier`: exact, per service); then `recreate` for a container that owns host ports
/// (nothing else can move it); then the settings (`RESTORE_*`). Settings apply to every
/// container restored, so they come last: the backend's `RESTORE_UPSTREAM_FILE` must never be
/// used for a frontend the record knows better, and when they do decide, the upstream must
/// point at the service's live container or nothing is changed.
fn strategy(entry: &ContainerEntry, args: &Args, record: &Record) -> Result<swap::Strategy> {
    use crate::StrategyName as S;
    let swapped = swap_of(record, &entry.service)?;
    let field = |path: &str| -> Result<Option<String>> {
        match &swapped {
            Some((swap, at)) => text(swap, at, path),
            None => Ok(None),
        }
    };
    let recorded = match field("strategy")?.as_deref() {
        Some("nginx") => Some(S::Nginx),
        Some("alias") => Some(S::Alias),
        Some("recreate") => Some(S::Recreate),
        _ => None,
    };
    let typed =
        kit::given_on_command_line("--strategy") || kit::given_on_command_line("--upstream-file");
    let from_flags = || match (args.strategy, &args.upstream_file) {
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
    let host_ports = !swap_host_ports(&entry.inspect).is_empty();
    let (name, flags_decide) = match recorded {
        _ if typed => (from_flags()?, true),
        Some(r) => {
            if args.strategy.is_some() || args.upstream_file.is_some() {
                kit::log::info(&format!(
                    "{}: moved back the way its swap moved it ({}); the --strategy and \
                     --upstream-file settings are for services this deploy did not swap",
                    entry.service,
                    field("strategy")?.unwrap_or_default()
                ));
            }
            (r, false)
        }
        None if host_ports => (S::Recreate, false),
        None => (from_flags()?, true),
    };
    // The flags first when they decided (the record fills what they leave out); the record's
    // switch alone when it did.
    let pick = |flag: &Option<String>, path: &str| -> Result<Option<String>> {
        let recorded = field(path)?;
        Ok(if flags_decide {
            flag.clone().or(recorded)
        } else {
            recorded
        })
    };
    Ok(match name {
        S::Nginx => {
            let flag_file = args
                .upstream_file
                .as_ref()
                .map(|f| {
                    std::path::absolute(f).map_err(|e| {
                        Error::input("--upstream-file", format!("cannot resolve it: {e}"))
                    })
                })
                .transpose()?
                .map(|f| f.display().to_string());
            let file = pick(&flag_file, "switch.upstream_file")?.ok_or_else(|| {
                Error::input(
                    "--upstream-file",
                    "the nginx strategy needs the upstream include file to rewrite",
                )
            })?;
            let mut n = swap::Nginx::new(std::path::PathBuf::from(file));
            n.upstream = pick(&args.upstream, "switch.upstream")?;
            let recorded_nginx = field("switch.nginx")?
                .and_then(|s| s.strip_prefix("container ").map(str::to_string));
            n.container = if flags_decide {
                args.nginx_container.clone().or(recorded_nginx)
            } else {
                recorded_nginx
            };
            if flags_decide {
                n.service_url.clone_from(&args.service_url);
            }
            n.must_point_at_old = flags_decide && !typed;
            swap::Strategy::Nginx(n)
        }
        S::Alias => {
            let mut a = swap::Alias::new();
            a.alias = pick(&args.alias, "switch.alias")?;
            a.network = pick(&args.alias_network, "switch.network")?;
            swap::Strategy::Alias(a)
        }
        S::Recreate => swap::Strategy::Recreate,
    })
}

/// Host ports a container binds.
fn swap_host_ports(c: &ContainerInspectResponse) -> Vec<String> {
    c.host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref())
        .into_iter()
        .flatten()
        .filter(|(_, b)| {
            b.iter()
                .flatten()
                .any(|b| b.host_port.as_deref().is_some_and(|p| !p.is_empty()))
        })
        .map(|(port, _)| port.clone())
        .collect()
}

/// The swap request that recreates one container from its recorded configuration.
fn request(p: &Planned, args: &Args, dry_run: bool) -> swap::Request {
    let strategy = p.strategy.clone().unwrap_or(swap::Strategy::Recreate);
    let mut req = swap::Request::new(&p.entry.service, &p.image, strategy);
    req.container.clone_from(&p.entry.name);
    req.template = Some(p.entry.inspect.clone());
    req.port = args.port;
    req.health.path.clone_from(&args.health_path);
    req.health.timeout = args.health_timeout;
    req.keep = args.keep_old;
    req.drain = args.drain;
    if let Some(dir) = &args.lock_dir {
        req.lock_dir.clone_from(dir);
    }
    req.lock_wait = args.lock_wait;
    req.dry_run = dry_run;
    req
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
        let result = swap::replace(engine, &request(p, args, false), stop);
        match result {
            Ok(report) => {
                r.old = report.old.map(|c| c.id);
                r.new = report.new.map(|c| c.id);
                r.health = report.health;
                r.health_url = report.health_url;
                done.push(r);
            }
            Err(e) => {
                done.push(r);
                return Err(e);
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
                let report = swap::replace(engine, &request(p, args, true), &|| false)?;
                r.plan = report.plan;
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn short(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: serde_json::Value) -> Record {
        Record::parse(&v.to_string()).unwrap()
    }

    fn found(r: &Record, service: &str) -> Option<String> {
        swap_of(r, service).unwrap().map(|(_, at)| at)
    }

    #[test]
    fn each_service_is_found_in_its_own_swap_newest_first() {
        let nginx = |service: &str, file: &str| {
            serde_json::json!({"service": service, "strategy": "nginx", "dry_run": false,
                               "switch": {"upstream_file": file}})
        };
        let mut last = nginx("backend", "/b2.conf");
        last["earlier"] = serde_json::json!([
            nginx("backend", "/b1.conf"),
            {"service": "frontend", "strategy": "recreate", "dry_run": false},
        ]);
        let r = record(serde_json::json!({"swap": last}));
        assert_eq!(found(&r, "backend").as_deref(), Some("swap"));
        assert_eq!(found(&r, "frontend").as_deref(), Some("swap.earlier.1"));
        assert_eq!(found(&r, "worker"), None);
    }

    #[test]
    fn a_swap_that_moved_nothing_is_skipped_for_an_earlier_one() {
        let r = record(serde_json::json!({"swap": {
        // Failed before its switch: no `switch`.
        "service": "backend", "strategy": "nginx", "dry_run": false,
        "earlier": [
            {"service": "backend", "strategy": "nginx", "dry_run": true,
             "switch": {"upstream_file": "/dry.conf"}},
            {"service": "backend", "strategy": "nginx", "dry_run": false,
             "switch": {"upstream_file": "/b.conf"}},
        ]}}));
        assert_eq!(found(&r, "backend").as_deref(), Some("swap.earlier.1"));
    }

    #[test]
    fn wrong_types_are_bad_input_naming_the_field() {
        let r = record(serde_json::json!({"swap": {"service": "b", "earlier": {"x": 1}}}));
        let err = swap_of(&r, "b").unwrap_err().to_string();
        assert!(err.starts_with("swap.earlier: expected an array"), "{err}");
        let r = record(serde_json::json!({"swap": {"service": 7}}));
        let err = swap_of(&r, "b").unwrap_err().to_string();
        assert!(err.starts_with("swap.service: expected a string"), "{err}");
    }
}
