//! The backups directory: snapshot names and their order, which snapshots are whole, the locks
//! that keep a snapshot from being pruned while a restore reads it, and retention.
//!
//! A snapshot is a directory `<backups>/<YYYYMMDD_HHMMSS>[-N]/` holding `files/…`, a `.lock`
//! file and, written last, `manifest.json`. It appears under its name only by an atomic rename
//! of a complete, fsync'd temporary directory (`.tmp-…`), so a listed snapshot is always
//! whole; one that does not verify is reported as corrupt and never used.
//!
//! Order is by name (time, then sequence), never by mtime: a copied or touched directory keeps
//! its place, and a new snapshot is always named after every existing one, even when the clock
//! went back (see [`Name::after`]).

use std::cmp::Ordering;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDateTime;
use kit::{Error, Result};
use nix::fcntl::Flock;
use sha2::{Digest, Sha256};

use crate::manifest::{hex, Manifest, FILES, MANIFEST};

/// Prefix of temporary directories (a snapshot being written, or one being pruned). Never
/// listed; removed by the next snapshot run.
pub const TEMP_PREFIX: &str = ".tmp-";
/// The lock file inside each snapshot: restore holds it shared, prune takes it exclusively.
pub const SNAPSHOT_LOCK: &str = ".lock";
/// The lock file in the backups directory that serializes snapshot runs.
const STORE_LOCK: &str = ".snapshot.lock";
const TIME_FORMAT: &str = "%Y%m%d_%H%M%S";

/// A snapshot's name: its time (`20261126_233000`) and a sequence number for several in the
/// same second (`20261126_233000-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name {
    pub time: NaiveDateTime,
    pub seq: u32,
}

impl Name {
    pub fn parse(text: &str) -> Option<Name> {
        let (time, seq) = match text.split_once('-') {
            Some((time, seq)) => {
                let seq: u32 = seq.parse().ok().filter(|n| *n > 0)?;
                // One spelling per number: `-01` would sort as `-1` yet be another directory.
                (seq.to_string() == text[time.len() + 1..]).then_some(())?;
                (time, seq)
            }
            None => (text, 0),
        };
        if time.len() != 15 {
            return None;
        }
        let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
        Some(Name { time, seq })
    }

    /// The name for a snapshot taken at `now` when `newest` is the newest existing one: `now`'s
    /// second, or, when that would not sort after `newest` (same second, or the clock went
    /// back), `newest`'s time with the next sequence number, so "latest" stays the last taken.
    pub fn after(now: NaiveDateTime, newest: Option<Name>) -> Name {
        let now = Name {
            time: now.with_nanosecond_zero(),
            seq: 0,
        };
        match newest {
            Some(n) if now <= n => Name {
                time: n.time,
                seq: n.seq + 1,
            },
            _ => now,
        }
    }
}

trait ZeroNanos {
    fn with_nanosecond_zero(self) -> Self;
}

impl ZeroNanos for NaiveDateTime {
    fn with_nanosecond_zero(self) -> Self {
        chrono::Timelike::with_nanosecond(&self, 0).unwrap_or(self)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.time.format(TIME_FORMAT))?;
        if self.seq > 0 {
            write!(f, "-{}", self.seq)?;
        }
        Ok(())
    }
}

/// What a directory with a snapshot's name holds.
#[derive(Debug, Clone)]
pub enum State {
    /// Whole: the manifest and every file verify.
    Good(Box<Manifest>),
    /// Has a manifest, but it or a file does not verify: never listed as usable, never the
    /// latest, pruned once older than the kept ones.
    Corrupt(String),
    /// No manifest: not made by this tool (a hand-made backup). Ignored, never pruned.
    Foreign,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub name: Name,
    pub path: PathBuf,
    pub state: State,
}

impl Entry {
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.state {
            State::Good(m) => Some(m),
            _ => None,
        }
    }
}

/// Every snapshot-named directory in `backups`, oldest first, each verified. A missing
/// backups directory holds none.
pub fn scan(backups: &Path) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = names(backups)?
        .into_iter()
        .map(|(id, name)| {
            let path = backups.join(&id);
            let state = match verify(&path) {
                Ok(m) => State::Good(Box::new(m)),
                Err(Problem::NoManifest) => State::Foreign,
                Err(Problem::Bad(why)) => State::Corrupt(why),
            };
            Entry {
                id,
                name,
                path,
                state,
            }
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(entries)
}

/// The names of snapshot-named directories, unverified (cheap: for naming the next one).
pub fn names(backups: &Path) -> Result<Vec<(String, Name)>> {
    let read = match std::fs::read_dir(backups) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::io(
                "list",
                format!("cannot read the backups directory {}", backups.display()),
                e,
            ))
        }
    };
    let mut out = Vec::new();
    for entry in read.flatten() {
        let Ok(id) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(name) = Name::parse(&id) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push((id, name));
            }
        }
    }
    Ok(out)
}

/// The newest snapshot that verifies, and what was passed over to find it.
pub struct Latest {
    pub good: Option<Entry>,
    /// Newer snapshots that do not verify, newest first: (id, why). A restore of "the
    /// latest" must say loudly that it skipped them.
    pub skipped: Vec<(String, String)>,
}

/// The newest snapshot that verifies.
pub fn latest_good(backups: &Path) -> Result<Latest> {
    let mut skipped = Vec::new();
    for entry in scan(backups)?.into_iter().rev() {
        match &entry.state {
            State::Good(_) => {
                return Ok(Latest {
                    good: Some(entry),
                    skipped,
                })
            }
            State::Corrupt(why) => skipped.push((entry.id.clone(), why.clone())),
            State::Foreign => {}
        }
    }
    Ok(Latest {
        good: None,
        skipped,
    })
}

/// The image ids that the snapshots kept in `backups` reference, sorted and without
/// duplicates. An image cleanup must never remove these: they are what a rollback runs. A
/// corrupt snapshot counts too, as far as its manifest can be read: it may be mended by hand.
pub fn kept_images(backups: &Path) -> Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::new();
    for entry in scan(backups)? {
        match &entry.state {
            State::Good(m) => ids.extend(m.image_ids().map(str::to_string)),
            State::Corrupt(_) => ids.extend(raw_image_ids(&entry.path.join(MANIFEST))),
            State::Foreign => {}
        }
    }
    ids.retain(|id| !id.is_empty());
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// `containers[].image.id` of a manifest that does not verify, read as plain JSON.
fn raw_image_ids(manifest: &Path) -> Vec<String> {
    let Ok(value) = std::fs::read(manifest)
        .map_err(|_| ())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).map_err(|_| ()))
    else {
        return Vec::new();
    };
    value["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["image"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Why a snapshot directory does not verify.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    NoManifest,
    Bad(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NoManifest => write!(f, "no {MANIFEST} (not a snapshot)"),
            Problem::Bad(why) => f.write_str(why),
        }
    }
}

/// Verifies a snapshot directory: the manifest and its checksum, then every file's size and
/// SHA-256. The error names the bad file.
pub fn verify(dir: &Path) -> std::result::Result<Manifest, Problem> {
    let bytes = match std::fs::read(dir.join(MANIFEST)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::NoManifest),
        Err(e) => return Err(Problem::Bad(format!("cannot read {MANIFEST}: {e}"))),
    };
    let manifest = Manifest::parse(&bytes).map_err(Problem::Bad)?;
    for file in &manifest.files {
        let copy = dir.join(FILES).join(&file.path);
        let bad = |why: String| Problem::Bad(format!("{FILES}/{}: {why}", file.path));
        let meta = std::fs::symlink_metadata(&copy).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() != file.size {
            return Err(bad(format!(
                "{} bytes, the manifest says {} (truncated?)",
                meta.len(),
                file.size
            )));
        }
        let sum = sha256_file(&copy).map_err(|e| bad(e.to_string()))?;
        if sum != file.sha256 {
            return Err(bad(format!(
                "sha256 {} does not match the manifest's {} (tampered or damaged)",
                short(&sum),
                short(&file.sha256)
            )));
        }
    }
    Ok(manifest)
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// Lower-case hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// A held flock, released on drop (or when the process dies, however it dies).
pub type Held = Flock<File>;

/// Holds a snapshot for reading (restore): prune skips it until this is dropped. Fails when
/// the snapshot is gone (pruned meanwhile) or is being pruned for longer than `wait`.
pub fn hold(snapshot: &Path, wait: Duration) -> Result<Held> {
    let gone = |why: String| {
        Error::step(
            "verify",
            format!("snapshot {} cannot be used: {why}", snapshot.display()),
        )
    };
    if !snapshot.join(MANIFEST).is_file() {
        return Err(gone("it does not exist (or has no manifest)".into()));
    }
    let held = kit::lock::take_within(&snapshot.join(SNAPSHOT_LOCK), false, wait)
        .map_err(|e| gone(format!("cannot lock it ({e})")))?
        .ok_or_else(|| gone("it is being pruned".into()))?;
    // Prune renames a snapshot away while holding its lock: check it is still in place.
    if !snapshot.join(MANIFEST).is_file() {
        return Err(gone("it was pruned just now".into()));
    }
    Ok(held)
}

/// Serializes snapshot runs on one backups directory (cleaning temporaries, naming, pruning).
pub fn lock_store(backups: &Path, wait: Duration) -> Result<Held> {
    kit::lock::take_within(&backups.join(STORE_LOCK), true, wait)
        .map_err(|e| Error::io("lock", format!("cannot lock {}", backups.display()), e))?
        .ok_or_else(|| {
            Error::step(
                "lock",
                format!(
                    "another snapshot is being taken in {} (waited {})",
                    backups.display(),
                    kit::human(wait)
                ),
            )
        })
}

/// Creates the backups directory (0700) when missing.
pub fn create_store(backups: &Path) -> Result<()> {
    if backups.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(backups)
        .and_then(|()| std::fs::set_permissions(backups, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| {
            Error::io(
                "prepare",
                format!("cannot create the backups directory {}", backups.display()),
                e,
            )
        })
}

/// Removes what killed runs left: `.tmp-…` directories. Call with the store lock held.
pub fn clean_temps(backups: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(read) = std::fs::read_dir(backups) else {
        return removed;
    };
    for entry in read.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed.push(name),
                Err(e) => kit::log::warn(&format!("cannot remove the leftover {name}: {e}")),
            }
        }
    }
    removed
}

/// What retention did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    /// Removed snapshots, oldest first.
    pub removed: Vec<String>,
    /// Old snapshots kept because a restore is reading them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<String>,
}

/// Keeps the newest `keep` whole snapshots: removes every snapshot (whole or corrupt) older
/// than the oldest of them. Corrupt ones do not count toward `keep`, so a run of corrupt newest
/// snapshots never pushes out the newest good one. Directories without a manifest (not made by
/// this tool) are never touched, nor is a snapshot a restore holds. Call with the store lock
/// held, after the new snapshot is in place.
pub fn prune(entries: &[Entry], keep: usize) -> Pruned {
    let mut pruned = Pruned::default();
    let good: Vec<&Entry> = entries.iter().filter(|e| e.manifest().is_some()).collect();
    if keep == 0 || good.len() <= keep {
        return pruned;
    }
    let oldest_kept = good[good.len() - keep].name;
    for entry in entries {
        if entry.name.cmp(&oldest_kept) != Ordering::Less || matches!(entry.state, State::Foreign) {
            continue;
        }
        match remove(entry) {
            Ok(true) => pruned.removed.push(entry.id.clone()),
            Ok(false) => {
                kit::log::info(&format!(
                    "kept {}: a restore is using it; it is pruned next time",
                    entry.id
                ));
                pruned.in_use.push(entry.id.clone());
            }
            Err(e) => kit::log::warn(&format!("cannot prune {}: {e}", entry.id)),
        }
    }
    pruned
}

/// Removes one snapshot unless a restore holds it: takes its lock, renames it out of the list
/// (atomic: it is listed whole or not at all), then deletes it.
fn remove(entry: &Entry) -> std::io::Result<bool> {
    let Some(_held) =
        kit::lock::take_within(&entry.path.join(SNAPSHOT_LOCK), true, Duration::ZERO)?
    else {
        return Ok(false);
    };
    let parent = entry.path.parent().unwrap_or(Path::new("."));
    let doomed = parent.join(format!(
        "{TEMP_PREFIX}pruned-{}-{}",
        entry.id,
        std::process::id()
    ));
    std::fs::rename(&entry.path, &doomed)?;
    crate::test_pause();
    std::fs::remove_dir_all(&doomed)?;
    crate::test_pause();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, TIME_FORMAT).unwrap()
    }

    #[test]
    fn names_parse_and_order() {
        let a = Name::parse("20260101_120000").unwrap();
        let b = Name::parse("20260101_120000-2").unwrap();
        let c = Name::parse("20260101_120000-10").unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "20260101_120000-10");
        for bad in [
            "2026",
            "20260101_120000-0",
            "20260101_120000-01",
            "20261301_120000",
            ".tmp-20260101_120000",
            "20260101_120000-x",
        ] {
            assert_eq!(Name::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_new_name_sorts_after_every_existing_one() {
        let newest = Name::parse("20260101_120000").unwrap();
        assert_eq!(
            Name::after(t("20260101_120001"), Some(newest)).to_string(),
            "20260101_120001"
        );
        assert_eq!(
            Name::after(t("20260101_120000"), Some(newest)).to_string(),
            "20260101_120000-1"
        );
        // The clock went back an hour.
        assert_eq!(
            Name::after(t("20260101_110000"), Some(newest)).to_string(),
            "20260101_120000-1"
        );
        assert_eq!(
            Name::after(t("20260101_110000"), None).to_string(),
            "20260101_110000"
        );
    }
}
