//! restore: roll back to a snapshot: the deploy's files, and its services' containers on their
//! recorded configuration and image, with zero downtime.
//!
//! Reads from the record: `failure` (restore acts on a failed deploy; on a record without one
//! it does nothing unless `--latest` or `--id` is given), `snapshot.path` / `snapshot.id` (the
//! snapshot taken earlier in the same deploy, so `snapshot | swap | restore` rolls back a
//! failed swap) and `swap` (how traffic moved, to move it back the same way). Adds `restore`:
//! the `snapshot` used, the deploy `dir`, each file and container with what was done to it,
//! the counts, `healthy`, `health_url` and per-step times. Keeps `failure`: a rolled-back
//! deploy is still a failed deploy, and restore then exits 1.

mod containers;
mod files;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use kit::{Common, Done, Error, Record, Result, Tool};
use serde::Serialize;
use serde_json::{Map, Value};
use snapshot::manifest::FILES;
use snapshot::store;

/// Roll back to a snapshot: verify it whole, restore the files atomically, recreate the
/// services' containers from their recorded configuration and image, wait until healthy.
///
/// Which snapshot: --id, --latest, else the one the record names (taken earlier in the same
/// deploy). On a record without a failure and without --id/--latest it does nothing.
///
/// Example: snapshot --service backend | swap --service backend ... | restore --strategy alias
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// Restore this snapshot (its directory name in the backups directory, see snapshot --list)
    #[arg(long, env = "RESTORE_ID", value_name = "ID", conflicts_with = "latest")]
    pub id: Option<String>,

    /// Restore the newest whole snapshot
    #[arg(long, env = "RESTORE_LATEST")]
    pub latest: bool,

    /// The deploy directory to restore the files into [default: the one the snapshot was taken
    /// of]
    #[arg(long, env = "DEPLOY_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Where snapshots are kept, for --id and --latest [default: <DIR>/backups]
    #[arg(long, env = "DEPLOY_BACKUPS", value_name = "DIR")]
    pub backups: Option<PathBuf>,

    /// Only these services' containers (default: every one in the snapshot); repeatable
    #[arg(
        long = "service",
        env = "RESTORE_SERVICES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub services: Vec<String>,

    /// Restore the files only, leave the containers as they are
    #[arg(long, env = "RESTORE_NO_CONTAINERS", conflicts_with = "no_files")]
    pub no_containers: bool,

    /// Recreate the containers only, leave the files as they are
    #[arg(long, env = "RESTORE_NO_FILES")]
    pub no_files: bool,

    /// Show what would be restored and recreated; change nothing
    #[arg(long, env = "RESTORE_DRY_RUN")]
    pub dry_run: bool,

    /// How traffic moves to each recreated container and when it counts as healthy. Default:
    /// what swap did for the service earlier in this deploy (from the record); recreate for a
    /// container that owns host ports; these settings apply to every container restored
    #[command(flatten)]
    pub traffic: swap::Traffic,

    /// How many stopped containers of the failed version to keep (named <name>-old-<id>)
    #[arg(
        long = "keep-old",
        env = "RESTORE_KEEP_OLD",
        default_value_t = 1,
        value_name = "N"
    )]
    pub keep_old: usize,

    /// Directory of the deploy lock files (swap's default)
    #[arg(long, env = "SWAP_LOCK_DIR", value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,

    /// Wait this long for a deploy of the same service to finish
    #[arg(long, env = "RESTORE_LOCK_WAIT", default_value = "30s", value_name = "DURATION",
          value_parser = kit::parse_duration)]
    pub lock_wait: Duration,

    #[command(flatten)]
    pub common: Common,
}

impl Tool for Args {
    const NAME: &'static str = "restore";
    const ACTS_ON_FAILURE: bool = true;

    fn common(&self) -> &Common {
        &self.common
    }

    fn cli() -> clap::Command {
        swap::Traffic::env_prefix(Self::command(), "RESTORE")
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let started = Instant::now();
        let failed = record.failure().is_some();
        let mut out = Restore {
            dry_run: self.dry_run,
            ..Restore::default()
        };
        let result = self.restore(record, &mut out);
        out.ms.insert(
            "total".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
        match result {
            Ok(()) if failed => Ok(Done::partial(out)),
            Ok(()) => Ok(Done::ok(out)),
            Err(e) => {
                out.error = Some(e.to_string());
                record.set(Self::NAME, &out);
                Err(e)
            }
        }
    }
}

/// `restore` in the record.
#[derive(Debug, Default, Serialize)]
pub struct Restore {
    /// Whether anything was restored (false: nothing to roll back, or a dry run).
    restored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<SnapshotRef>,
    /// `--latest`: newer snapshots passed over because they do not verify, newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<Skipped>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    files: Vec<FileDone>,
    files_restored: usize,
    containers: Vec<containers::Restored>,
    containers_recreated: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_url: Option<String>,
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ms: Map<String, Value>,
}

/// A snapshot `--latest` passed over, and why.
#[derive(Debug, Serialize)]
struct Skipped {
    id: String,
    why: String,
}

#[derive(Debug, Serialize)]
struct SnapshotRef {
    id: String,
    path: PathBuf,
    created_at: String,
}

#[derive(Debug, Serialize)]
struct FileDone {
    path: String,
    action: files::Action,
}

/// Times the steps into `ms`.
struct Clock {
    step: Instant,
}

impl Clock {
    fn lap(&mut self, out: &mut Restore, step: &str) {
        out.ms
            .insert(step.into(), (self.step.elapsed().as_millis() as u64).into());
        self.step = Instant::now();
    }
}

impl Args {
    fn restore(&self, record: &Record, out: &mut Restore) -> Result<()> {
        let mut clock = Clock {
            step: Instant::now(),
        };
        let failure = record.failure();
        if failure.is_none() && !self.latest && self.id.is_none() {
            let why = "the record carries no failure: nothing to roll back (pass --latest or \
                       --id ID to restore anyway)";
            kit::log::info(why);
            out.reason = Some(why.into());
            return Ok(());
        }
        if let Some(f) = &failure {
            kit::log::info(&format!(
                "rolling back: {} failed at {}: {}",
                f.tool, f.step, f.error
            ));
        }
        let Some(path) = self.select(record, out)? else {
            let why = format!(
                "nothing to roll back: the deploy failed{} before anything was deployed (no \
                 snapshot named, swap never ran)",
                failure
                    .as_ref()
                    .map(|f| format!(" at {}", f.tool))
                    .unwrap_or_default()
            );
            kit::log::info(&why);
            out.reason = Some(why);
            return Ok(());
        };
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Held until the end: retention skips a snapshot a restore is reading.
        let _held = store::hold(&path, Duration::from_secs(10))?;
        let manifest = store::verify(&path).map_err(|p| {
            Error::step(
                "verify",
                format!("snapshot {id} is refused: {p}; nothing was changed"),
            )
        })?;
        for f in &manifest.files {
            if snapshot::take::is_env_file(&f.path) {
                let text = std::fs::read_to_string(path.join(FILES).join(&f.path));
                kit::envfile::hide_secrets(&text.unwrap_or_default());
            }
        }
        out.snapshot = Some(SnapshotRef {
            id: id.clone(),
            path: path.clone(),
            created_at: manifest.created_at.clone(),
        });
        let dir_given = self.dir.clone().unwrap_or(manifest.deploy_dir.clone());
        let dir = std::fs::canonicalize(&dir_given).map_err(|e| {
            Error::input(
                "--dir",
                format!(
                    "the deploy directory {} is missing: {e}",
                    dir_given.display()
                ),
            )
        })?;
        out.dir = Some(dir.clone());
        clock.lap(out, "verify");

        let planned_files = if self.no_files {
            Vec::new()
        } else {
            files::plan(&path, &dir, &manifest.files)?
        };
        let entries: Vec<_> = if self.no_containers {
            Vec::new()
        } else {
            for s in &self.services {
                if !manifest.containers.iter().any(|c| c.service == *s) {
                    return Err(Error::input(
                        "--service",
                        format!("snapshot {id} has no container of service {s}"),
                    ));
                }
            }
            manifest
                .containers
                .iter()
                .filter(|c| self.services.is_empty() || self.services.contains(&c.service))
                .cloned()
                .collect()
        };
        let engine = if entries.is_empty() {
            None
        } else {
            Some(kit::docker::Engine::connect("preflight")?)
        };
        let planned = match &engine {
            Some(engine) => containers::plan(engine, &entries, self, record)?,
            None => Vec::new(),
        };
        out.files = planned_files
            .iter()
            .map(|p| FileDone {
                path: p.entry.path.clone(),
                action: p.action,
            })
            .collect();
        clock.lap(out, "plan");

        if self.dry_run {
            show_plan(&id, &planned_files, &planned);
            if let Some(engine) = &engine {
                out.containers = containers::dry_run(engine, &planned, self)?;
            }
            return Ok(());
        }

        let pulled = match &engine {
            Some(engine) => containers::pull(engine, &planned)?,
            None => Vec::new(),
        };
        clock.lap(out, "pull");

        files::apply(&planned_files)?;
        out.restored = true;
        out.files_restored = planned_files
            .iter()
            .filter(|p| p.action != files::Action::Unchanged)
            .count();
        for p in &planned_files {
            match p.action {
                files::Action::Unchanged => kit::log::debug(&format!("{} unchanged", p.entry.path)),
                action => kit::log::info(&format!(
                    "{} {} (mode {})",
                    if action == files::Action::Created {
                        "created"
                    } else {
                        "restored"
                    },
                    p.entry.path,
                    p.entry.mode
                )),
            }
        }
        clock.lap(out, "files");

        if let Some(engine) = &engine {
            kit::signals::install();
            let result = containers::apply(
                engine,
                &planned,
                self,
                &pulled,
                &kit::signals::received,
                &mut out.containers,
            );
            out.containers_recreated = out
                .containers
                .iter()
                .filter(|c| c.action == containers::Action::Recreated && c.new.is_some())
                .count();
            out.health_url = out.containers.iter().find_map(|c| c.health_url.clone());
            out.healthy = Some(
                result.is_ok()
                    && out
                        .containers
                        .iter()
                        .all(|c| c.health.as_ref().is_none_or(|h| h.healthy)),
            );
            clock.lap(out, "containers");
            result?;
        }

        kit::log::info(&format!(
            "restored {id}: {} file(s) restored, {} container(s) recreated{}",
            out.files_restored,
            out.containers_recreated,
            if failure.is_some() {
                "; the deploy still counts as failed"
            } else {
                ""
            }
        ));
        Ok(())
    }

    /// The snapshot to restore: --id, --latest, else the record's. `None`: the record names
    /// none, and nothing was deployed (the deploy failed before swap ran).
    fn select(&self, record: &Record, out: &mut Restore) -> Result<Option<PathBuf>> {
        let base = self.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        let backups = || snapshot::backups_dir(&base, self.backups.as_deref());
        if let Some(id) = &self.id {
            if store::Name::parse(id).is_none() {
                return Err(Error::input(
                    "--id",
                    format!(
                        "'{id}' is not a snapshot id (YYYYMMDD_HHMMSS[-N]; see snapshot --list)"
                    ),
                ));
            }
            let path = backups()?.join(id);
            return match store::verify(&path) {
                Err(store::Problem::NoManifest) => Err(Error::input(
                    "--id",
                    format!("there is no snapshot {id} in {}", backups()?.display()),
                )),
                _ => Ok(Some(path)),
            };
        }
        if self.latest {
            let backups = backups()?;
            let store::Latest { good, skipped } = store::latest_good(&backups)?;
            for (id, why) in &skipped {
                kit::log::warn(&format!(
                    "skipping snapshot {id}, newer than the one restored, because it does not \
                     verify: {why}"
                ));
            }
            out.skipped = skipped
                .into_iter()
                .map(|(id, why)| Skipped { id, why })
                .collect();
            return match good {
                Some(entry) => {
                    kit::log::info(&format!(
                        "the latest whole snapshot is {}{}",
                        entry.id,
                        if out.skipped.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} newer one(s) skipped: corrupt)", out.skipped.len())
                        }
                    ));
                    Ok(Some(entry.path))
                }
                None => Err(Error::step(
                    "select",
                    format!(
                        "there is no whole snapshot in {} to restore",
                        backups.display()
                    ),
                )),
            };
        }
        if let Some(path) = record.string("snapshot.path")? {
            return Ok(Some(PathBuf::from(path)));
        }
        if let Some(id) = record.string("snapshot.id")? {
            if store::Name::parse(&id).is_some() {
                return Ok(Some(backups()?.join(id)));
            }
        }
        if !swap_ran(record) {
            return Ok(None);
        }
        Err(Error::input(
            "snapshot.path",
            "the record names no snapshot (run snapshot earlier in the pipe), and neither \
             --latest nor --id was given",
        ))
    }
}

/// Whether swap ran in this deploy (and so may have changed what serves): a step of it that
/// was not skipped or refused as bad input.
fn swap_ran(record: &Record) -> bool {
    record
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            s.get("tool").and_then(Value::as_str) == Some("swap")
                && matches!(
                    s.get("outcome").and_then(Value::as_str),
                    Some("ok" | "failed")
                )
        })
}

/// `--dry-run`: what would change, on stderr.
fn show_plan(id: &str, files: &[files::Planned], containers: &[containers::Planned]) {
    let mut lines = Vec::new();
    for f in files {
        lines.push(match f.action {
            files::Action::Unchanged => {
                format!("keep     {} (already the snapshot's)", f.entry.path)
            }
            files::Action::Created => format!(
                "create   {} ({} bytes, mode {})",
                f.entry.path, f.entry.size, f.entry.mode
            ),
            files::Action::Restored => format!(
                "restore  {} ({} bytes, mode {})",
                f.entry.path, f.entry.size, f.entry.mode
            ),
        });
    }
    for c in containers {
        lines.push(match c.action {
            containers::Action::Unchanged => {
                format!(
                    "keep     container {} (the snapshot's own, running)",
                    c.entry.name
                )
            }
            containers::Action::Recreated => format!(
                "recreate container {} from {}{} ({})",
                c.entry.name,
                c.image,
                if c.pull.is_some() {
                    ", pulled first"
                } else {
                    ""
                },
                c.strategy.as_ref().map_or("", |s| s.name())
            ),
        });
    }
    kit::log::block(
        &format!("dry run: nothing changed; restoring {id} would:"),
        &lines,
        false,
    );
}
