//! Taking a snapshot: copy the named files (hashing as they are copied) and record the
//! services' containers into a private temporary directory, write the manifest last, fsync
//! everything, and rename the directory into place.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bollard::models::{ContainerInspectResponse, ContainerSummaryStateEnum};
use bollard::query_parameters::ListContainersOptionsBuilder;
use kit::docker::Engine;
use kit::{Error, Result};
use sha2::{Digest, Sha256};

use crate::manifest::{hex, safe_relative, ContainerEntry, FileEntry, ImageEntry, FILES, MANIFEST};
use crate::store::SNAPSHOT_LOCK;

/// The labels a service's container is found by, after its name.
pub const SERVICE_LABELS: [&str; 2] = ["io.deploykit.service", "com.docker.compose.service"];

/// A file to back up: its path relative to the deploy directory, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub rel: String,
    pub abs: PathBuf,
}

/// Expands the names the user gave (files or directories, relative to `dir`) into the files
/// to back up, sorted. A name that is missing or leaves `dir` is bad input, naming it.
pub fn sources(dir: &Path, names: &[String], backups: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for name in names {
        let rel = name.trim_end_matches('/');
        let rel = Path::new(rel)
            .strip_prefix(dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| rel.to_string());
        safe_relative(&rel).map_err(|e| Error::input("--file", e))?;
        let abs = dir.join(&rel);
        let meta = std::fs::metadata(&abs).map_err(|e| {
            Error::input(
                "--file",
                format!("cannot back up {rel}: {} ({e})", abs.display()),
            )
        })?;
        if meta.is_dir() {
            if backups.starts_with(&abs) {
                return Err(Error::input(
                    "--file",
                    format!(
                        "{rel} holds the backups directory {}; name the files inside it instead",
                        backups.display()
                    ),
                ));
            }
            let mut options = fs_extra::dir::DirOptions::new();
            options.depth = 64;
            let content = fs_extra::dir::get_dir_content2(&abs, &options).map_err(|e| {
                Error::input("--file", format!("cannot read the directory {rel}: {e}"))
            })?;
            for file in content.files {
                let file = PathBuf::from(file);
                let inner = file.strip_prefix(dir).map_err(|_| {
                    Error::input("--file", format!("{} is outside {rel}", file.display()))
                })?;
                out.push(Source {
                    rel: inner.to_string_lossy().into_owned(),
                    abs: file,
                });
            }
        } else {
            out.push(Source { rel, abs });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.dedup_by(|a, b| a.rel == b.rel);
    Ok(out)
}

/// Creates a private directory (0700 whatever the umask).
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Writes a new private file (0600 whatever the umask) and fsyncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// fsyncs a directory, so the names created or renamed in it survive a crash.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::fsync(&fd)?;
    Ok(())
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Whether a file holds environment values (`.env`, `.env.production`, `app.env`).
pub fn is_env_file(rel: &str) -> bool {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    base.starts_with(".env") || base.ends_with(".env")
}

/// Copies one file into `root/files/<rel>` (0600, parents 0700), hashing it on the way, and
/// fsyncs the copy. Returns its manifest entry (the source's mode and owner).
pub fn copy_file(root: &Path, source: &Source) -> Result<FileEntry> {
    let fail = |e: std::io::Error| Error::io("files", format!("cannot back up {}", source.rel), e);
    let dest = root.join(FILES).join(&source.rel);
    if let Some(parent) = dest.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(fail)?;
    }
    let mut input = File::open(&source.abs).map_err(fail)?;
    let meta = input.metadata().map_err(fail)?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&dest)
        .map_err(fail)?;
    output
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(fail)?;
    let mut writer = Hashing {
        inner: output,
        hasher: Sha256::new(),
        size: 0,
    };
    if is_env_file(&source.rel) {
        let text = std::fs::read_to_string(&source.abs).unwrap_or_default();
        kit::envfile::hide_secrets(&text);
    }
    std::io::copy(&mut input, &mut writer).map_err(fail)?;
    writer.inner.sync_all().map_err(fail)?;
    Ok(FileEntry {
        path: source.rel.clone(),
        size: writer.size,
        sha256: hex(&writer.hasher.finalize()),
        mode: format!("{:04o}", meta.mode() & 0o7777),
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// fsyncs every directory under `root/files`, deepest first, then `root`.
pub fn sync_tree(root: &Path) -> std::io::Result<()> {
    let files = root.join(FILES);
    if files.is_dir() {
        let mut options = fs_extra::dir::DirOptions::new();
        options.depth = 64;
        let content = fs_extra::dir::get_dir_content2(&files, &options)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for dir in content.directories.iter().rev() {
            sync_dir(Path::new(dir))?;
        }
    }
    sync_dir(root)
}

/// Creates the snapshot's lock file (restore holds it shared while it reads the snapshot).
pub fn create_lock(root: &Path) -> Result<()> {
    write_private(&root.join(SNAPSHOT_LOCK), b"")
        .map_err(|e| Error::io("files", "cannot create the snapshot's lock file", e))
}

/// Writes the manifest, the last thing in the snapshot.
pub fn write_manifest(root: &Path, bytes: &[u8]) -> Result<()> {
    write_private(&root.join(MANIFEST), bytes)
        .map_err(|e| Error::io("manifest", format!("cannot write {MANIFEST}"), e))
}

/// Finds the container of `service`: named so, else labelled `io.deploykit.service=<service>`,
/// else `com.docker.compose.service=<service>`; a running one before a stopped one. `None`
/// when there is none; an error when several run and none is named so.
pub fn find_container(engine: &Engine, service: &str) -> Result<Option<ContainerInspectResponse>> {
    if let Some(c) = engine.inspect(service)? {
        // Inspect also matches an id prefix: only a container of that exact name counts.
        if c.name.as_deref().map(|n| n.trim_start_matches('/')) == Some(service) {
            return Ok(Some(c));
        }
    }
    for label in SERVICE_LABELS {
        let filters = std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{label}={service}")],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = engine
            .block(engine.docker.list_containers(Some(options)))
            .map_err(|e| Error::docker("containers", format!("list containers of {service}"), e))?;
        let running: Vec<_> = found
            .iter()
            .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
            .collect();
        let pick = match running.as_slice() {
            [one] => Some(*one),
            [] => found.first(),
            several => {
                let names: Vec<String> = several
                    .iter()
                    .filter_map(|c| c.names.as_ref()?.first().cloned())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .collect();
                return Err(Error::step(
                    "containers",
                    format!(
                        "{} containers run service {service} ({label}): {}; name the container \
                         with --service NAME instead",
                        several.len(),
                        names.join(", ")
                    ),
                ));
            }
        };
        if let Some(id) = pick.and_then(|c| c.id.clone()) {
            return engine.inspect(&id);
        }
    }
    Ok(None)
}

/// A service's container as the manifest keeps it: the whole inspect and its image.
pub fn container_entry(
    engine: &Engine,
    service: &str,
    inspect: ContainerInspectResponse,
) -> Result<ContainerEntry> {
    let id = inspect.id.clone().unwrap_or_default();
    let name = inspect
        .name
        .as_deref()
        .unwrap_or(service)
        .trim_start_matches('/')
        .to_string();
    let image_id = inspect.image.clone().unwrap_or_default();
    let reference = inspect
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let mut image = ImageEntry {
        id: image_id.clone(),
        reference,
        ..ImageEntry::default()
    };
    match engine.block(engine.docker.inspect_image(&image_id)) {
        Ok(found) => {
            image.tags = found.repo_tags.unwrap_or_default();
            image.repo_digests = found.repo_digests.unwrap_or_default();
        }
        Err(e) => kit::log::warn(&format!(
            "the image {image_id} of {name} cannot be inspected ({e}); only its id is kept"
        )),
    }
    Ok(ContainerEntry {
        service: service.to_string(),
        name,
        id,
        image,
        inspect,
    })
}
