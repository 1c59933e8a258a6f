//! The files part of a restore: check where each file goes, stage every file next to its
//! target (verified again while copied, with its mode and owner, fsync'd), then rename them
//! all into place. A failure while staging changes nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kit::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use snapshot::manifest::{hex, safe_relative, FileEntry, FILES};

/// What happens to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The live file differs (content or mode): replaced by the snapshot's.
    Restored,
    /// There is no live file: created.
    Created,
    /// The live file is already the snapshot's, content and mode.
    Unchanged,
}

/// One file of the plan.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: FileEntry,
    pub source: PathBuf,
    pub target: PathBuf,
    pub action: Action,
}

/// Checks every entry against the deploy directory and the live files. Refuses (before
/// anything is changed) an entry whose path would leave `dir`, also through a symlinked
/// directory, or whose target is a directory.
pub fn plan(snapshot: &Path, dir: &Path, entries: &[FileEntry]) -> Result<Vec<Planned>> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let refuse = |why: String| {
            Error::step(
                "verify",
                format!("refused {}: {why}; nothing was changed", entry.path),
            )
        };
        let rel = safe_relative(&entry.path).map_err(&refuse)?;
        let target = dir.join(&rel);
        let anchor = deepest_existing(target.parent().unwrap_or(dir));
        let real = std::fs::canonicalize(&anchor)
            .map_err(|e| refuse(format!("cannot resolve {} ({e})", anchor.display())))?;
        if !real.starts_with(dir) {
            return Err(refuse(format!(
                "{} leads to {}, outside the deploy directory {}",
                anchor.display(),
                real.display(),
                dir.display()
            )));
        }
        let action = match std::fs::symlink_metadata(&target) {
            Err(_) => Action::Created,
            Ok(meta) if meta.is_dir() => {
                return Err(refuse(format!("{} is a directory", target.display())))
            }
            Ok(meta) if meta.is_file() && same(&target, &meta, entry) => Action::Unchanged,
            Ok(_) => Action::Restored,
        };
        out.push(Planned {
            entry: entry.clone(),
            source: snapshot.join(FILES).join(&rel),
            target,
            action,
        });
    }
    Ok(out)
}

/// The path itself if it exists, else its nearest existing ancestor.
fn deepest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while std::fs::symlink_metadata(&p).is_err() {
        if !p.pop() {
            break;
        }
    }
    p
}

/// Whether a live file already has the entry's content and mode.
fn same(path: &Path, meta: &std::fs::Metadata, entry: &FileEntry) -> bool {
    meta.len() == entry.size
        && Some(meta.mode() & 0o7777) == entry.mode_bits()
        && snapshot::store::sha256_file(path).is_ok_and(|sum| sum == entry.sha256)
}

/// A staged file: written next to its target, waiting for the rename.
struct Staged<'a> {
    temp: PathBuf,
    planned: &'a Planned,
}

/// Stages every file that changes, then renames them into place and fsyncs their
/// directories. On a staging error every staged file is removed and nothing changed.
pub fn apply(planned: &[Planned]) -> Result<()> {
    let mut staged: Vec<Staged> = Vec::new();
    let result = planned
        .iter()
        .filter(|p| p.action != Action::Unchanged)
        .try_for_each(|p| {
            let temp = temp_path(&p.target);
            // Pushed first, so a half-written temp file is removed too.
            staged.push(Staged {
                temp: temp.clone(),
                planned: p,
            });
            stage(p, &temp)
        });
    if let Err(e) = result {
        for s in &staged {
            let _ = std::fs::remove_file(&s.temp);
        }
        return Err(e);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (i, s) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(&s.temp, &s.planned.target) {
            for rest in &staged[i..] {
                let _ = std::fs::remove_file(&rest.temp);
            }
            return Err(Error::io(
                "files",
                format!(
                    "cannot move the restored {} into place ({i} of {} already were)",
                    s.planned.entry.path,
                    staged.len()
                ),
                e,
            ));
        }
        if let Some(parent) = s.planned.target.parent() {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_path_buf());
            }
        }
    }
    for dir in dirs {
        snapshot::take::sync_dir(&dir)
            .map_err(|e| Error::io("files", format!("cannot fsync {}", dir.display()), e))?;
    }
    Ok(())
}

/// `.<name>.restore-<pid>` next to the target: same directory, so the rename is atomic.
fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.restore-{}", std::process::id()))
}

/// Copies the snapshot's file to `temp`, checking its checksum again on the way (the
/// snapshot could have changed since it was verified), with the recorded mode and, when
/// allowed, owner; fsyncs it.
fn stage(p: &Planned, temp: &Path) -> Result<()> {
    let path = &p.entry.path;
    let fail = |e: std::io::Error| Error::io("files", format!("cannot restore {path}"), e);
    if let Some(parent) = p.target.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mode = p.entry.mode_bits().unwrap_or(0o600);
    let mut input = File::open(&p.source).map_err(fail)?;
    let mut output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(temp)
        .map_err(fail)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = input.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(fail)?;
    }
    let sum = hex(&hasher.finalize());
    if sum != p.entry.sha256 {
        return Err(Error::step(
            "verify",
            format!("{FILES}/{path} changed since it was verified (sha256 {sum}); refused"),
        ));
    }
    // The owner first: chown clears set-id bits, which the mode then sets back.
    if nix::unistd::geteuid().is_root() {
        let _ = nix::unistd::fchown(
            &output,
            Some(nix::unistd::Uid::from_raw(p.entry.uid)),
            Some(nix::unistd::Gid::from_raw(p.entry.gid)),
        );
    }
    output
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    output.sync_all().map_err(fail)
}
