//! What git and GitHub Actions know about the source: the OCI labels and the default tag.
//!
//! `org.opencontainers.image.created` is the commit's time (or `SOURCE_DATE_EPOCH`), not the
//! wall clock: a rebuild of the same commit then hits the cache for every step and yields the
//! same image id, which a "build on every push" pipeline relies on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, Default)]
pub struct Info {
    pub revision: Option<String>,
    pub short: Option<String>,
    pub created: Option<String>,
    pub source: Option<String>,
    pub version: Option<String>,
}

impl Info {
    /// Asks git about the context's checkout, then fills gaps from GitHub Actions' variables.
    pub fn read(dir: &Path) -> Info {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut info = Info::default();
        if let Some(out) = git(dir, &["log", "-1", "--format=%H%n%h%n%cI"]) {
            let mut lines = out.lines();
            info.revision = lines.next().map(str::to_string);
            info.short = lines.next().map(str::to_string);
            info.created = lines.next().map(str::to_string);
        }
        if info.revision.is_none() {
            if let Some(sha) = env("GITHUB_SHA") {
                info.short = Some(sha.chars().take(7).collect());
                info.revision = Some(sha);
            }
        }
        if let Some(epoch) = env("SOURCE_DATE_EPOCH").and_then(|e| e.parse::<i64>().ok()) {
            info.created = chrono::DateTime::from_timestamp(epoch, 0).map(|t| t.to_rfc3339());
        }
        info.source = match (env("GITHUB_SERVER_URL"), env("GITHUB_REPOSITORY")) {
            (Some(server), Some(repo)) => Some(format!("{server}/{repo}")),
            _ => git(dir, &["config", "--get", "remote.origin.url"])
                .and_then(|url| web_url(url.trim())),
        };
        info.version = match (env("GITHUB_REF_TYPE").as_deref(), env("GITHUB_REF_NAME")) {
            (Some("tag"), Some(name)) => Some(name),
            _ if info.revision.is_some() => {
                git(dir, &["describe", "--tags", "--exact-match"]).map(|t| t.trim().to_string())
            }
            _ => None,
        };
        info
    }

    /// The OCI labels for what is known.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        for (key, value) in [
            ("revision", &self.revision),
            ("created", &self.created),
            ("source", &self.source),
            ("version", &self.version),
        ] {
            if let Some(value) = value {
                labels.insert(format!("org.opencontainers.image.{key}"), value.clone());
            }
        }
        labels
    }
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then_some(text)
}

/// A remote URL as a browsable https URL, never with credentials in it:
/// `git@github.com:o/r.git` and `https://user:token@github.com/o/r` → `https://github.com/o/r`.
fn web_url(remote: &str) -> Option<String> {
    let (host, path) = if let Some(rest) = remote.strip_prefix("git@") {
        rest.split_once(':')?
    } else {
        let rest = remote.split_once("://")?.1;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split_once('/')?
    };
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    Some(format!("https://{host}/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_lose_credentials() {
        for (remote, want) in [
            ("git@github.com:o/r.git", "https://github.com/o/r"),
            (
                "https://x-access-token:ghs_secret@github.com/o/r",
                "https://github.com/o/r",
            ),
            (
                "ssh://git@gitlab.example.com/g/r.git",
                "https://gitlab.example.com/g/r",
            ),
        ] {
            assert_eq!(web_url(remote).as_deref(), Some(want));
        }
        assert_eq!(web_url("/srv/git/repo"), None);
    }
}
