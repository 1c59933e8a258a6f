//! snapshot: back up what a deploy needs to come back, before the deploy, atomically.
//!
//! Reads nothing from the record (flags and environment only). Adds `snapshot`: the new
//! snapshot's `id` and `path`, the deploy `dir`, the `files` backed up (paths and sizes), the
//! `containers` (service, name, id, image id and reference), services that had no container
//! (`missing`), what retention removed (`pruned`) and the image ids every kept snapshot needs
//! (`images`: an image cleanup must leave these alone). With `--list`: `list` (newest first),
//! `corrupt` and `images` instead. Never an environment value: those stay in the private
//! manifest. With `--prune-images`: no snapshot is taken; `prune` is added to the `snapshot`
//! result already in the record (what the cleanup removed and kept, and why).
//!
//! The library side is for the other tools: `restore` reads snapshots through [`store`] and
//! [`manifest`]; an image cleanup asks [`kept_images`] which images it must keep.

pub mod images;
pub mod manifest;
pub mod store;
pub mod take;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use kit::{Common, Done, Error, Record, Result, Tool};
use serde::Serialize;

pub use manifest::Manifest;
pub use store::kept_images;
use store::{Entry, Name, State, TEMP_PREFIX};

/// Test-only: a duration (`20ms`) to sleep between the steps of writing a snapshot (after each
/// file, before and after the manifest, the rename and each removal of retention), so a test can
/// kill the process inside every one of them. Never set it outside the tests.
pub const TEST_DELAY_ENV: &str = "SNAPSHOT_TEST_DELAY";

/// Sleeps for [`TEST_DELAY_ENV`] when it is set (tests only).
pub(crate) fn test_pause() {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var(TEST_DELAY_ENV)
            .ok()
            .and_then(|v| kit::parse_duration(&v).ok())
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

/// The files backed up when none are named (those of them that exist).
pub const DEFAULT_FILES: [&str; 2] = ["docker-compose.yml", ".env.production"];

/// Back up a deploy before it happens: the deploy directory's files and the services'
/// containers (configuration and image), atomically, keeping the last N. Or list them.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// The deploy directory: the files are backed up relative to it
    #[arg(long, env = "DEPLOY_DIR", value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Where snapshots are kept [default: <DIR>/backups]
    #[arg(long, env = "DEPLOY_BACKUPS", value_name = "DIR")]
    pub backups: Option<PathBuf>,

    /// A file or directory of the deploy directory to back up; repeat for several (or separate
    /// with commas). Default: docker-compose.yml and .env.production, those that exist
    #[arg(
        long = "file",
        env = "SNAPSHOT_FILES",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub files: Vec<String>,

    /// A service whose container to back up (its whole configuration and its image): the
    /// container named NAME, else the one labelled io.deploykit.service=NAME or
    /// com.docker.compose.service=NAME. Repeat for several (or separate with commas)
    #[arg(
        long = "service",
        env = "SNAPSHOT_SERVICES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub services: Vec<String>,

    /// How many whole snapshots to keep; older ones are removed after the new one is complete
    /// (never the newest, never one a restore is using)
    #[arg(long, env = "SNAPSHOT_KEEP", value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,

    /// List the snapshots instead of taking one: JSON in the record (snapshot.list), a table on
    /// stderr. Corrupt ones are shown apart and never offered
    #[arg(long, conflicts_with = "prune_images")]
    pub list: bool,

    /// Remove the old images of these repositories instead of taking a snapshot: every image
    /// no container (running or stopped) uses and no kept snapshot ran. Without a REPO, the
    /// repositories of the images the --service containers run. Adds snapshot.prune
    #[arg(
        long,
        value_name = "REPO",
        num_args = 0..,
        value_delimiter = ','
    )]
    pub prune_images: Option<Vec<String>>,

    /// With --prune-images: say what would be removed, remove nothing
    #[arg(long, requires = "prune_images")]
    pub dry_run: bool,

    /// How long to wait while another snapshot is being taken into the same backups directory
    #[arg(long, env = "SNAPSHOT_LOCK_WAIT", value_name = "DURATION", default_value = "30s",
          value_parser = kit::parse_duration)]
    pub lock_wait: Duration,

    #[command(flatten)]
    pub common: Common,
}

impl Tool for Args {
    const NAME: &'static str = "snapshot";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        if self.list {
            list(&self)
        } else if let Some(repos) = &self.prune_images {
            prune_images(&self, repos, record)
        } else {
            snapshot(&self)
        }
    }
}

impl Args {
    /// The backups directory of `--dir` as given (which need not exist yet).
    fn backups_of_dir(&self) -> Result<PathBuf> {
        let dir = std::path::absolute(&self.dir).map_err(|e| {
            Error::input(
                "--dir",
                format!("cannot resolve {}: {e}", self.dir.display()),
            )
        })?;
        backups_dir(&dir, self.backups.as_deref())
    }
}

/// The backups directory: `--backups`, else `<dir>/backups`, made absolute.
pub fn backups_dir(dir: &Path, backups: Option<&Path>) -> Result<PathBuf> {
    let path = backups.map_or_else(|| dir.join("backups"), Path::to_path_buf);
    std::path::absolute(&path).map_err(|e| {
        Error::input(
            "--backups",
            format!("cannot resolve {}: {e}", path.display()),
        )
    })
}

/// `snapshot.files` entries: paths and sizes only (no checksums of secrets).
#[derive(Debug, Serialize)]
struct FileOut {
    path: String,
    size: u64,
}

/// `snapshot.containers` entries (and `list[].containers`).
#[derive(Debug, Serialize)]
struct ContainerOut {
    service: String,
    name: String,
    id: String,
    image_id: String,
    image: String,
}

impl ContainerOut {
    fn of(c: &manifest::ContainerEntry) -> ContainerOut {
        ContainerOut {
            service: c.service.clone(),
            name: c.name.clone(),
            id: c.id.clone(),
            image_id: c.image.id.clone(),
            image: c.image.reference.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Taken {
    id: String,
    path: PathBuf,
    dir: PathBuf,
    files: Vec<FileOut>,
    containers: Vec<ContainerOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing: Vec<String>,
    pruned: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kept_in_use: Vec<String>,
    kept: usize,
    images: Vec<String>,
    ms: u64,
}

/// Removes a temporary directory when dropped, unless it was renamed into place.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                kit::log::warn(&format!(
                    "cannot remove {}: {e}; the next snapshot removes it",
                    path.display()
                ));
            }
        }
    }
}

fn snapshot(args: &Args) -> Result<Done> {
    let started = Instant::now();
    let dir = std::fs::canonicalize(&args.dir).map_err(|e| {
        Error::input(
            "--dir",
            format!("{} is not a directory: {e}", args.dir.display()),
        )
    })?;
    let backups = backups_dir(&dir, args.backups.as_deref())?;
    let names: Vec<String> = if args.files.is_empty() {
        DEFAULT_FILES
            .iter()
            .filter(|f| dir.join(f).exists())
            .map(|f| f.to_string())
            .collect()
    } else {
        args.files.clone()
    };
    let sources = take::sources(&dir, &names, &backups)?;
    if sources.is_empty() && args.services.is_empty() {
        return Err(Error::input(
            "--file",
            format!(
                "nothing to back up: {} has neither {}; name files with --file or services \
                 with --service",
                dir.display(),
                DEFAULT_FILES.join(" nor ")
            ),
        ));
    }

    // Docker first: a Docker error fails the run before anything is written.
    let mut containers = Vec::new();
    let mut missing = Vec::new();
    if !args.services.is_empty() {
        let engine = kit::docker::Engine::connect("containers")?;
        for service in &args.services {
            match take::find_container(&engine, service)? {
                Some(inspect) => containers.push(take::container_entry(&engine, service, inspect)?),
                None => {
                    kit::log::warn(&format!(
                        "service {service} has no container (none named {service} or labelled \
                         {}={service}); its configuration is not backed up",
                        take::SERVICE_LABELS.join(" or ")
                    ));
                    missing.push(service.clone());
                }
            }
        }
    }

    store::create_store(&backups)?;
    let _lock = store::lock_store(&backups, args.lock_wait)?;
    let leftovers = store::clean_temps(&backups);
    if !leftovers.is_empty() {
        kit::log::info(&format!(
            "removed {} leftover(s) of an interrupted run: {}",
            leftovers.len(),
            leftovers.join(", ")
        ));
    }
    let now = chrono::Local::now().naive_local();
    let newest = store::names(&backups)?.into_iter().map(|(_, n)| n).max();
    let name = Name::after(now, newest);
    if name.time > Name::after(now, None).time {
        kit::log::warn(&format!(
            "the clock ({}) is behind the newest snapshot; naming this one {name} so it sorts \
             as the latest",
            now.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    let id = name.to_string();

    let temp = backups.join(format!("{TEMP_PREFIX}{id}-{}", std::process::id()));
    take::private_dir(&temp)
        .map_err(|e| Error::io("files", format!("cannot create {}", temp.display()), e))?;
    let mut guard = TempDir(Some(temp.clone()));
    let mut files = Vec::with_capacity(sources.len());
    for source in &sources {
        files.push(take::copy_file(&temp, source)?);
        test_pause();
    }
    take::create_lock(&temp)?;
    let sync = |e| Error::io("sync", format!("cannot fsync {}", temp.display()), e);
    take::sync_tree(&temp).map_err(sync)?;
    let manifest = Manifest {
        format: manifest::FORMAT,
        tool: format!("snapshot {}", env!("CARGO_PKG_VERSION")),
        created_at: kit::record::now_rfc3339(),
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        deploy_dir: dir.clone(),
        files,
        containers,
        missing,
    };
    let bytes = manifest
        .to_bytes()
        .map_err(|e| Error::step("manifest", e))?;
    test_pause();
    take::write_manifest(&temp, &bytes)?;
    take::sync_dir(&temp).map_err(sync)?;
    test_pause();
    let path = backups.join(&id);
    std::fs::rename(&temp, &path).map_err(|e| {
        Error::io(
            "rename",
            format!("cannot move the snapshot into place at {}", path.display()),
            e,
        )
    })?;
    guard.0 = None;
    take::sync_dir(&backups)
        .map_err(|e| Error::io("sync", format!("cannot fsync {}", backups.display()), e))?;
    test_pause();
    kit::log::info(&format!(
        "took {id}: {} file(s), {} container(s), in {}",
        manifest.files.len(),
        manifest.containers.len(),
        path.display()
    ));

    let entries = store::scan(&backups)?;
    let pruned = store::prune(&entries, args.keep as usize);
    if !pruned.removed.is_empty() {
        kit::log::info(&format!(
            "pruned {} (keeping the newest {})",
            pruned.removed.join(", "),
            args.keep
        ));
    }
    let kept: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.manifest().is_some() && !pruned.removed.contains(&e.id))
        .collect();
    let mut images: Vec<String> = kept
        .iter()
        .filter_map(|e| e.manifest())
        .flat_map(|m| m.image_ids().map(str::to_string).collect::<Vec<_>>())
        .filter(|i| !i.is_empty())
        .collect();
    images.sort();
    images.dedup();

    Ok(Done::ok(Taken {
        id,
        path,
        dir,
        files: manifest
            .files
            .iter()
            .map(|f| FileOut {
                path: f.path.clone(),
                size: f.size,
            })
            .collect(),
        containers: manifest.containers.iter().map(ContainerOut::of).collect(),
        missing: manifest.missing.clone(),
        pruned: pruned.removed,
        kept_in_use: pruned.in_use,
        kept: kept.len(),
        images,
        ms: started.elapsed().as_millis() as u64,
    }))
}

/// `snapshot.list` entries.
#[derive(Debug, Serialize)]
struct Listed {
    id: String,
    path: PathBuf,
    created_at: String,
    host: String,
    dir: PathBuf,
    files: usize,
    bytes: u64,
    containers: Vec<ContainerOut>,
}

#[derive(Debug, Serialize)]
struct Corrupt {
    id: String,
    path: PathBuf,
    error: String,
}

#[derive(Debug, Serialize)]
struct Listing {
    backups: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest: Option<String>,
    list: Vec<Listed>,
    corrupt: Vec<Corrupt>,
    images: Vec<String>,
}

fn list(args: &Args) -> Result<Done> {
    let backups = args.backups_of_dir()?;
    let entries = store::scan(&backups)?;
    let mut listing = Listing {
        backups: backups.clone(),
        latest: None,
        list: Vec::new(),
        corrupt: Vec::new(),
        images: Vec::new(),
    };
    let mut foreign = 0;
    for entry in entries.iter().rev() {
        match &entry.state {
            State::Good(m) => listing.list.push(Listed {
                id: entry.id.clone(),
                path: entry.path.clone(),
                created_at: m.created_at.clone(),
                host: m.host.clone(),
                dir: m.deploy_dir.clone(),
                files: m.files.len(),
                bytes: m.files.iter().map(|f| f.size).sum(),
                containers: m.containers.iter().map(ContainerOut::of).collect(),
            }),
            State::Corrupt(why) => listing.corrupt.push(Corrupt {
                id: entry.id.clone(),
                path: entry.path.clone(),
                error: why.clone(),
            }),
            State::Foreign => foreign += 1,
        }
    }
    listing.latest = listing.list.first().map(|l| l.id.clone());
    let mut images: Vec<String> = listing
        .list
        .iter()
        .flat_map(|l| l.containers.iter().map(|c| c.image_id.clone()))
        .filter(|i| !i.is_empty())
        .collect();
    images.sort();
    images.dedup();
    listing.images = images;
    show(&listing, foreign);
    Ok(Done::ok(listing))
}

/// `--prune-images`: the cleanup's result joins the `snapshot` result the deploy's snapshot
/// left in the record (restore still finds that snapshot there). A cleanup that cannot run or
/// finish never records a deploy failure: that would make `restore` roll back a deploy that
/// is healthy. It says why under `prune.error` and exits non-zero (2 for bad input, else 1).
fn prune_images(args: &Args, repos: &[String], record: &Record) -> Result<Done> {
    let mut result = match record.get(<Args as Tool>::NAME) {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(map)) => map.clone(),
        Some(other) => return Err(kit::record::wrong_type("snapshot", "an object", other)),
    };
    let cleaned = (|| {
        let backups = args.backups_of_dir()?;
        let engine = kit::docker::Engine::connect("images")?;
        let repositories = images::repositories(&engine, repos, &args.services)?;
        images::prune(
            &engine,
            &backups,
            repositories,
            args.dry_run,
            args.lock_wait,
        )
    })();
    let (prune, exit) = match cleaned {
        Ok(pruned) => {
            let exit = if pruned.failed.is_empty() {
                kit::Exit::Success
            } else {
                kit::Exit::Failure
            };
            (serde_json::to_value(pruned).unwrap_or_default(), exit)
        }
        Err(e) => {
            kit::log::error(&format!("{e}; no image was removed, and the deploy stands"));
            let prune = serde_json::json!({"error": e.to_string(), "step": e.step_name()});
            (prune, e.exit())
        }
    };
    result.insert("prune".into(), prune);
    Ok(Done {
        result: serde_json::Value::Object(result),
        exit,
    })
}

/// The listing as a person reads it, on stderr.
fn show(listing: &Listing, foreign: usize) {
    if listing.list.is_empty() {
        kit::log::info(&format!(
            "no snapshots in {} to go back to",
            listing.backups.display()
        ));
    } else {
        let mut lines = vec![format!(
            "{:<20} {:<20} {:>5} {:>9}  {}",
            "ID", "TAKEN (UTC)", "FILES", "BYTES", "SERVICES"
        )];
        for l in &listing.list {
            let taken = l
                .created_at
                .get(..19)
                .unwrap_or(&l.created_at)
                .replace('T', " ");
            let services: Vec<String> = l
                .containers
                .iter()
                .map(|c| {
                    let short = c.image_id.trim_start_matches("sha256:");
                    format!(
                        "{}={} ({})",
                        c.service,
                        c.image,
                        &short[..short.len().min(12)]
                    )
                })
                .collect();
            lines.push(format!(
                "{:<20} {:<20} {:>5} {:>9}  {}",
                l.id,
                taken,
                l.files,
                l.bytes,
                if services.is_empty() {
                    "-".to_string()
                } else {
                    services.join(", ")
                }
            ));
        }
        kit::log::block(
            &format!(
                "{} snapshot(s) in {}, newest first:",
                listing.list.len(),
                listing.backups.display()
            ),
            &lines,
            false,
        );
    }
    for c in &listing.corrupt {
        kit::log::warn(&format!(
            "{} is corrupt and is never used: {}",
            c.id, c.error
        ));
    }
    if foreign > 0 {
        kit::log::info(&format!(
            "{foreign} director(ies) named like snapshots have no manifest (not made by \
             snapshot): ignored"
        ));
    }
}
