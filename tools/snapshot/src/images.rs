//! `snapshot --prune-images`: remove the old images of a deploy's repositories, never one a
//! rollback needs. snapshot owns retention, so it alone knows which images the kept snapshots
//! need; an image is removed only when it is of a named repository, no container (running or
//! stopped) uses it and no kept snapshot ran it.
//!
//! Only the repository's tags are removed (`docker rmi repo:tag`, never by id, never forced):
//! an image also tagged in another repository keeps that tag, and Docker itself refuses to remove
//! an image a container started meanwhile uses (then it is reported as kept, in use).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use kit::docker::Engine;
use kit::image::Reference;
use kit::{Error, Result};
use serde::Serialize;

use crate::{store, take};

/// `snapshot.prune`: what the cleanup removed and what it kept, and why.
#[derive(Debug, Serialize)]
pub struct Pruned {
    /// The repositories cleaned (`127.0.0.1:5000/shop/api`).
    pub repositories: Vec<String>,
    pub dry_run: bool,
    /// Removed (or, with --dry-run, would be removed).
    pub removed: Vec<Image>,
    /// Images of the repositories left in place, with why.
    pub kept: Vec<Image>,
    /// Images whose removal Docker refused for another reason than use (the run exits 1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Image>,
    /// The size of the removed images (layers shared with kept images are not freed).
    pub bytes: u64,
}

/// One image of a cleaned repository.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub id: String,
    /// Its tags in the cleaned repositories (the only ones a removal touches).
    pub tags: Vec<String>,
    pub bytes: u64,
    /// Why it was kept: `container` (a container uses it), `snapshot` (a kept snapshot ran it),
    /// or why Docker refused to remove it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Whether all its tags are in the cleaned repositories (removing them deletes it).
    #[serde(skip)]
    pub only_ours: bool,
}

/// The repositories to clean: those named, else those of the images the services' containers
/// run now (what the deploy just put in place).
pub fn repositories(engine: &Engine, named: &[String], services: &[String]) -> Result<Vec<String>> {
    let mut repos: Vec<Reference> = Vec::new();
    for text in named.iter().filter(|t| !t.is_empty()) {
        let reference = Reference::parse(text).map_err(|e| Error::input("--prune-images", e))?;
        if reference.tag.is_some() || reference.digest.is_some() {
            return Err(Error::input(
                "--prune-images",
                format!(
                    "'{text}' names one image; name the repository ({}) and every unused \
                     image of it is removed",
                    reference.repository
                ),
            ));
        }
        repos.push(reference);
    }
    if repos.is_empty() {
        if services.is_empty() {
            return Err(Error::input(
                "--prune-images",
                "name the repositories to clean (--prune-images REPO) or the services whose \
                 images' repositories to clean (--service NAME)",
            ));
        }
        for service in services {
            let Some(inspect) = take::find_container(engine, service)? else {
                kit::log::warn(&format!(
                    "service {service} has no container; its images are not cleaned"
                ));
                continue;
            };
            let image = inspect.config.and_then(|c| c.image).unwrap_or_default();
            match Reference::parse(&image) {
                Ok(r) if !image.starts_with("sha256:") => repos.push(r),
                _ => kit::log::warn(&format!(
                    "service {service} runs image {image}, which names no repository; its \
                     images are not cleaned"
                )),
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    for r in repos {
        let name = canonical(&r);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `registry/path`, the same for every spelling of one repository (`app` is
/// `docker.io/library/app`).
fn canonical(r: &Reference) -> String {
    let registry = match r.registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => kit::image::DOCKER_HUB,
        other => other,
    };
    format!("{registry}/{}", r.path)
}

/// Removes the images of `repositories` that neither a container nor a snapshot kept in
/// `backups` uses. What is needed is read under the store lock (no snapshot is taken or
/// retired meanwhile); the removals run after it, since a container started since is
/// protected by Docker itself (it refuses, and the image is reported as kept).
pub fn prune(
    engine: &Engine,
    backups: &Path,
    repositories: Vec<String>,
    dry_run: bool,
    lock_wait: Duration,
) -> Result<Pruned> {
    // A wrong --backups would make every rollback target look unneeded.
    let refuse = |why: &str| {
        Error::input(
            "--backups",
            format!(
                "{} {why}: without the snapshots no image can be known to be unneeded; take a \
                 snapshot first or name the backups directory",
                backups.display()
            ),
        )
    };
    if !backups.is_dir() {
        return Err(refuse("does not exist"));
    }
    let (in_snapshots, in_use) = {
        let _lock = store::lock_store(backups, lock_wait)?;
        if store::names(backups)?.is_empty() {
            return Err(refuse("holds no snapshot"));
        }
        let in_snapshots: HashSet<String> = store::kept_images(backups)?.into_iter().collect();
        let containers = engine
            .block(engine.docker.list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            )))
            .map_err(|e| Error::docker("images", "list containers", e))?;
        let in_use: HashSet<String> = containers.into_iter().filter_map(|c| c.image_id).collect();
        (in_snapshots, in_use)
    };

    let images = engine
        .block(
            engine
                .docker
                .list_images(Some(ListImagesOptionsBuilder::default().all(false).build())),
        )
        .map_err(|e| Error::docker("images", "list images", e))?;

    let mut out = Pruned {
        repositories: repositories.clone(),
        dry_run,
        removed: Vec::new(),
        kept: Vec::new(),
        failed: Vec::new(),
        bytes: 0,
    };
    // Oldest first, so the log reads in the order the images were made; images of the same
    // second (the engine counts in seconds) by their tags, never by their random ids.
    let mut ours: BTreeMap<(i64, String, String), Image> = BTreeMap::new();
    for image in images {
        let tags = tags_in(&image.repo_tags, &repositories);
        if tags.is_empty() {
            continue;
        }
        let only_ours = tags.len() == image.repo_tags.len();
        ours.insert(
            (image.created, tags.join(" "), image.id.clone()),
            Image {
                id: image.id,
                tags,
                bytes: u64::try_from(image.size).unwrap_or(0),
                why: None,
                only_ours,
            },
        );
    }

    for (_, mut image) in ours {
        let why = if in_use.contains(&image.id) {
            Some("container")
        } else if in_snapshots.contains(&image.id) {
            Some("snapshot")
        } else {
            None
        };
        if let Some(why) = why {
            kit::log::debug(&format!("keep {} ({why})", image.tags.join(" ")));
            image.why = Some(why.into());
            out.kept.push(image);
            continue;
        }
        if dry_run {
            kit::log::info(&format!("would remove {}", image.tags.join(" ")));
            if !image.only_ours {
                image.bytes = 0;
            }
            out.bytes += image.bytes;
            out.removed.push(image);
            continue;
        }
        match remove_tags(engine, &image.tags) {
            Ok(deleted) => {
                kit::log::info(&format!(
                    "removed {}{}",
                    image.tags.join(" "),
                    if deleted {
                        format!(" ({})", bytes(image.bytes))
                    } else {
                        " (untagged; the image stays under another name)".into()
                    }
                ));
                if !deleted {
                    image.bytes = 0;
                }
                out.bytes += image.bytes;
                out.removed.push(image);
            }
            Err(refused) => {
                // Some tags may be gone already: report what is left.
                let left = tags_left(engine, &image.id, &repositories);
                let (why, list) = match refused {
                    Refused::InUse(why) => (why, &mut out.kept),
                    Refused::Other(why) => (why, &mut out.failed),
                };
                kit::log::warn(&format!("cannot remove {}: {why}", image.tags.join(" ")));
                if let Some(left) = left {
                    image.tags = left;
                }
                image.why = Some(why);
                list.push(image);
            }
        }
    }
    kit::log::info(&format!(
        "{} {} image(s) of {} ({}); kept {}",
        if dry_run { "would remove" } else { "removed" },
        out.removed.len(),
        out.repositories.join(", "),
        bytes(out.bytes),
        out.kept.len()
    ));
    Ok(out)
}

/// Why Docker did not remove an image.
enum Refused {
    /// 409: a container uses it (started since the listing) or a child image needs it.
    InUse(String),
    Other(String),
}

/// `docker rmi TAG` for each tag: untags, and deletes the image with its last tag. Whether
/// the image was deleted (not only untagged).
fn remove_tags(engine: &Engine, tags: &[String]) -> std::result::Result<bool, Refused> {
    let mut deleted = false;
    for tag in tags {
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        match engine.block(engine.docker.remove_image(tag, Some(options), None)) {
            Ok(items) => deleted |= items.iter().any(|i| i.deleted.is_some()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) => return Err(Refused::InUse(message)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {} // removed meanwhile: what we wanted
            Err(e) => return Err(Refused::Other(e.to_string())),
        }
    }
    Ok(deleted)
}

/// The tags of `id` in the cleaned repositories now (after a refusal), if it can be inspected.
fn tags_left(engine: &Engine, id: &str, repositories: &[String]) -> Option<Vec<String>> {
    let inspect = engine.block(engine.docker.inspect_image(id)).ok()?;
    Some(tags_in(
        &inspect.repo_tags.unwrap_or_default(),
        repositories,
    ))
}

/// The tags among `tags` that are of the cleaned repositories.
fn tags_in(tags: &[String], repositories: &[String]) -> Vec<String> {
    tags.iter()
        .filter(|t| Reference::parse(t).is_ok_and(|r| repositories.contains(&canonical(&r))))
        .cloned()
        .collect()
}

/// `12.3 MiB`.
fn bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mib = n as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_repository_however_it_is_spelled() {
        let c = |t: &str| canonical(&Reference::parse(t).unwrap());
        assert_eq!(c("app:v1"), "docker.io/library/app");
        assert_eq!(c("docker.io/library/app"), "docker.io/library/app");
        assert_eq!(c("index.docker.io/library/app:v2"), "docker.io/library/app");
        assert_eq!(c("acme/app@sha256:0123"), "docker.io/acme/app");
        assert_eq!(c("127.0.0.1:5000/shop/api:1"), "127.0.0.1:5000/shop/api");
        assert_ne!(c("127.0.0.1:5000/shop/api"), c("shop/api"));
    }
}
