//! Where the deploy came from: repository, branch, commit, author and the CI run, from the flags,
//! else GitHub Actions' environment, else git in the current directory. Every field is
//! optional: a message without a branch is still worth sending.

use std::process::{Command, Stdio};

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Context {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_url: Option<String>,
}

impl Context {
    /// The short commit id people recognise.
    pub fn commit_short(&self) -> Option<String> {
        self.commit.as_ref().map(|c| c.chars().take(7).collect())
    }

    /// Fills what the flags left empty from GitHub Actions' environment, then from git.
    pub fn resolve(mut self) -> Context {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let server = env("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
        self.repository = self.repository.or_else(|| env("GITHUB_REPOSITORY"));
        self.branch = self.branch.or_else(|| env("GITHUB_REF_NAME"));
        self.commit = self.commit.or_else(|| env("GITHUB_SHA"));
        self.author = self.author.or_else(|| env("GITHUB_ACTOR"));
        if self.run_url.is_none() {
            if let (Some(repo), Some(run)) = (&self.repository, env("GITHUB_RUN_ID")) {
                self.run_url = Some(format!("{server}/{repo}/actions/runs/{run}"));
            }
        }
        let on_github = env("GITHUB_REPOSITORY").is_some();

        if self.commit_message.is_none() || self.commit.is_none() || self.author.is_none() {
            let rev = self.commit.clone().unwrap_or_else(|| "HEAD".into());
            if let Some(out) = git(&["log", "-1", "--format=%H%x00%an%x00%s", &rev, "--"]) {
                let mut parts = out.splitn(3, '\0');
                let (sha, author, subject) = (parts.next(), parts.next(), parts.next());
                self.commit = self.commit.or(sha.map(String::from));
                self.author = self.author.or(author.map(String::from));
                self.commit_message = self.commit_message.or(subject.map(String::from));
            }
        }
        if self.branch.is_none() {
            self.branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD");
        }
        if self.repository.is_none() {
            self.repository = git(&["config", "--get", "remote.origin.url"])
                .and_then(|u| repository_of(&u))
                .or_else(|| {
                    git(&["rev-parse", "--show-toplevel"])
                        .and_then(|d| d.rsplit('/').next().map(String::from))
                });
        }
        self.commit_message = self
            .commit_message
            .and_then(|m| m.lines().next().map(|l| l.trim().to_string()))
            .filter(|m| !m.is_empty());
        if self.commit_url.is_none() && on_github {
            if let (Some(repo), Some(sha)) = (&self.repository, &self.commit) {
                self.commit_url = Some(format!("{server}/{repo}/commit/{sha}"));
            }
        }
        self
    }
}

/// One line of git's output, or `None` outside a repository or without git.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// `owner/name` from a remote URL (`git@github.com:o/n.git`, `https://user:token@host/o/n`),
/// never keeping credentials the URL may carry.
fn repository_of(remote: &str) -> Option<String> {
    let path = match remote.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => remote.split_once(':')?.1,
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = path.rsplit('/');
    let name = parts.next().filter(|s| !s.is_empty())?;
    Some(match parts.next() {
        Some(owner) if !owner.is_empty() => format!("{owner}/{name}"),
        _ => name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn repository_from_remotes() {
        use super::repository_of as r;
        assert_eq!(r("git@github.com:acme/shop.git").unwrap(), "acme/shop");
        assert_eq!(
            r("https://x:ghp_secret@github.com/acme/shop").unwrap(),
            "acme/shop"
        );
        assert_eq!(r("ssh://git@host:22/srv/git/app.git/").unwrap(), "git/app");
    }
}
