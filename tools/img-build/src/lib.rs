//! img-build: build an image through the Docker Engine API.
//!
//! Reads nothing from the record (it starts a deploy). Adds `img-build`: `image_id`, `tags`
//! (the first is the one to deploy), `size` (bytes), `duration_ms`, `labels` (the labels this
//! run set), `context`, `dockerfile`, `steps`, `cached_steps` and `context_bytes`. On a failed
//! build it adds `img-build.failed_step` (`number`, `of`, `instruction`) and no tag exists.
//!
//! The context is streamed as a tar while it is read ([`context`]), filtered by
//! `.dockerignore` exactly as the docker CLI filters it ([`dockerignore`]).

pub mod context;
pub mod dockerignore;
mod git;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::{BuildImageOptionsBuilder, TagImageOptionsBuilder};
use clap::Parser;
use futures_util::StreamExt;
use kit::docker::Engine;
use kit::image::Reference;
use kit::{log, Common, Done, Error, Record, Result, Tool};
use regex::Regex;
use serde::Serialize;

use crate::context::{Context, Outside};
use crate::dockerignore::Matcher;

/// Build an image from a directory through the Docker Engine, as `docker build` does, with
/// the OCI labels filled from git and GitHub Actions and a compact log.
///
/// Without --tag, the image is tagged IMAGE:<short commit id>.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// The build context: the directory whose files COPY and ADD can see
    #[arg(
        long,
        default_value = ".",
        value_name = "DIR",
        env = "IMG_BUILD_CONTEXT"
    )]
    pub context: PathBuf,

    /// The Dockerfile (default: DIR/Dockerfile); it may live outside the context
    #[arg(short = 'f', long, value_name = "PATH", env = "IMG_BUILD_FILE")]
    pub file: Option<PathBuf>,

    /// A name for the image, repeatable: registry.example.com/shop/api:v1. The first is the
    /// one later tools deploy
    #[arg(
        short = 't',
        long = "tag",
        value_name = "REF",
        env = "IMG_BUILD_TAGS",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,

    /// The repository to tag with the short commit id when no --tag is given
    /// (default: the context directory's name)
    #[arg(long, value_name = "NAME", env = "IMG_BUILD_IMAGE")]
    pub image: Option<String>,

    /// A build-time variable, repeatable: K=V, or K to take V from the environment
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,

    /// The stage of a multi-stage Dockerfile to build
    #[arg(long, value_name = "STAGE", env = "IMG_BUILD_TARGET")]
    pub target: Option<String>,

    /// A label to set, repeatable: K=V (overrides the OCI labels filled from git)
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,

    /// Do not use the build cache
    #[arg(long, env = "IMG_BUILD_NO_CACHE")]
    pub no_cache: bool,

    /// Pull newer versions of the base images (nothing is pulled otherwise)
    #[arg(long, env = "IMG_BUILD_PULL")]
    pub pull: bool,

    /// The platform to build for, e.g. linux/amd64, where the engine supports it
    #[arg(long, value_name = "OS/ARCH", env = "IMG_BUILD_PLATFORM")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub common: Common,
}

/// What `img-build` adds to the record.
#[derive(Debug, Serialize)]
pub struct Built {
    pub image_id: String,
    pub tags: Vec<String>,
    pub size: i64,
    pub duration_ms: u64,
    pub labels: BTreeMap<String, String>,
    pub context: String,
    pub dockerfile: String,
    pub steps: u32,
    pub cached_steps: u32,
    pub context_bytes: u64,
}

/// Everything checked before the engine is touched (with the [`Context`] to send).
struct Plan {
    tags: Vec<Reference>,
    labels: BTreeMap<String, String>,
    build_args: HashMap<String, String>,
}

impl Tool for Args {
    const NAME: &'static str = "img-build";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let (context, plan) = self.plan()?;
        let engine = Engine::connect("build")?;
        let started = Instant::now();
        let mut failed_step = None;
        let build = self.build(&engine, context, &plan, &mut failed_step);
        if let Some(step) = failed_step {
            record.set(Self::NAME, serde_json::json!({ "failed_step": step }));
        }
        let outcome = build?;
        for tag in &plan.tags[1..] {
            let options = TagImageOptionsBuilder::default()
                .repo(&tag.repository)
                .tag(tag.tag.as_deref().unwrap_or("latest"))
                .build();
            engine
                .block(engine.docker.tag_image(&outcome.image_id, Some(options)))
                .map_err(|e| Error::docker("tag", format!("tag the image as {tag}"), e))?;
        }
        let size = engine
            .block(engine.docker.inspect_image(&outcome.image_id))
            .map_err(|e| Error::docker("inspect", "inspect the built image", e))?
            .size
            .unwrap_or(0);
        let duration = started.elapsed();
        let tags: Vec<String> = plan.tags.iter().map(ToString::to_string).collect();
        log::info(&format!(
            "built {} as {} in {} ({} of {} steps cached)",
            short_id(&outcome.image_id),
            tags.join(", "),
            kit::human(duration),
            outcome.cached,
            outcome.steps
        ));
        Ok(Done::ok(Built {
            image_id: outcome.image_id,
            tags,
            size,
            duration_ms: duration.as_millis() as u64,
            labels: plan.labels,
            context: self.context.display().to_string(),
            dockerfile: self.dockerfile_path().display().to_string(),
            steps: outcome.steps,
            cached_steps: outcome.cached,
            context_bytes: outcome.sent.bytes,
        }))
    }
}

/// The Dockerfile step a build failed at, as recorded under `img-build.failed_step`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub number: u32,
    pub of: u32,
    pub instruction: String,
}

struct Outcome {
    image_id: String,
    steps: u32,
    cached: u32,
    sent: context::Sent,
}

impl Args {
    fn dockerfile_path(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| self.context.join("Dockerfile"))
    }

    /// Checks every input and prepares the context; fails with exit 2 before anything runs.
    fn plan(&self) -> Result<(Context, Plan)> {
        let root = fs::canonicalize(&self.context).map_err(|e| {
            Error::input(
                "--context",
                format!("{}: {}", self.context.display(), io_reason(&e)),
            )
        })?;
        if !root.is_dir() {
            return Err(Error::input(
                "--context",
                format!("{} is not a directory", self.context.display()),
            ));
        }
        let dockerfile_arg = self.dockerfile_path();
        let dockerfile = fs::canonicalize(&dockerfile_arg)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                Error::input(
                    "--file",
                    format!(
                        "no Dockerfile at {} (give one with --file PATH)",
                        dockerfile_arg.display()
                    ),
                )
            })?;

        let ignore_text = match fs::read_to_string(root.join(".dockerignore")) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::input(
                    ".dockerignore",
                    format!("cannot read it: {e}"),
                ))
            }
        };
        let mut matcher = Matcher::parse(ignore_text.as_deref().unwrap_or(""))
            .map_err(|e| Error::input(".dockerignore", e.to_string()))?;
        matcher.keep(".dockerignore");

        let (name, outside) = match dockerfile.strip_prefix(&root) {
            Ok(rel) => {
                let rel = rel
                    .to_str()
                    .ok_or_else(|| Error::input("--file", "the Dockerfile's path is not UTF-8"))?;
                matcher.keep(rel);
                (rel.to_string(), None)
            }
            Err(_) => {
                // As the CLI does: send it under a generated name that .dockerignore hides
                // from COPY.
                let content = fs::read(&dockerfile).map_err(|e| {
                    Error::input("--file", format!("{}: {e}", dockerfile.display()))
                })?;
                let name = format!(".dockerfile.{}", random_hex());
                let mut ignore = ignore_text
                    .clone()
                    .unwrap_or_else(|| ".dockerignore".into())
                    .into_bytes();
                ignore.extend_from_slice(format!("\n{name}\n").as_bytes());
                let outside = Outside {
                    name: name.clone(),
                    content,
                    dockerignore: ignore,
                };
                (name, Some(outside))
            }
        };

        let git = git::Info::read(&root);
        let tags = self.tags(&root, &git)?;
        let mut labels = git.labels();
        for kv in &self.labels {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| Error::input("--label", format!("'{kv}' is not K=V")))?;
            labels.insert(k.to_string(), v.to_string());
        }
        let mut build_args = HashMap::new();
        for kv in &self.build_args {
            match kv.split_once('=') {
                Some((k, v)) => {
                    build_args.insert(k.to_string(), v.to_string());
                }
                // `--build-arg K` takes K from the environment, and is left out when unset.
                None => {
                    if let Ok(v) = std::env::var(kv) {
                        build_args.insert(kv.clone(), v);
                    }
                }
            }
        }
        let context = Context {
            root,
            matcher,
            dockerfile: name,
            outside,
        };
        Ok((
            context,
            Plan {
                tags,
                labels,
                build_args,
            },
        ))
    }

    /// The tags to give: --tag, else IMAGE:<short commit id>.
    fn tags(&self, root: &Path, git: &git::Info) -> Result<Vec<Reference>> {
        if !self.tags.is_empty() {
            return self
                .tags
                .iter()
                .map(|t| {
                    let r = Reference::parse(t.trim()).map_err(|e| Error::input("--tag", e))?;
                    if r.digest.is_some() {
                        return Err(Error::input(
                            "--tag",
                            format!("'{t}' names a digest; give a tag"),
                        ));
                    }
                    Ok(r.with_default_tag())
                })
                .collect();
        }
        let Some(short) = &git.short else {
            return Err(Error::input(
                "--tag",
                "no --tag given and no git commit to tag the image with \
                 (the context is not in a git repository and GITHUB_SHA is unset)",
            ));
        };
        let image = match &self.image {
            Some(image) => image.clone(),
            None => default_repository(root),
        };
        let r = Reference::parse(&format!("{image}:{short}"))
            .map_err(|e| Error::input("--image", e))?;
        Ok(vec![r])
    }

    /// Sends the context and follows the build; on failure, says which step failed.
    fn build(
        &self,
        engine: &Engine,
        context: Context,
        plan: &Plan,
        failed_step: &mut Option<Step>,
    ) -> Result<Outcome> {
        let (tags, labels, build_args) = (&plan.tags, &plan.labels, &plan.build_args);
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(&context.dockerfile)
            .t(&tags[0].to_string())
            .rm(true)
            // Unlike `docker build`, no stopped container of a failed step is left behind.
            .forcerm(true)
            .nocache(self.no_cache);
        if self.pull {
            options = options.pull("1");
        }
        if let Some(target) = &self.target {
            options = options.target(target);
        }
        if let Some(platform) = &self.platform {
            options = options.platform(platform);
        }
        if !build_args.is_empty() {
            options = options.buildargs(build_args);
        }
        if !labels.is_empty() {
            let labels: HashMap<&String, &String> = labels.iter().collect();
            options = options.labels(&labels);
        }
        log::info(&format!(
            "building {} from {} ({})",
            tags[0],
            self.context.display(),
            self.dockerfile_path().display()
        ));

        let (mut rx, reader) = context.stream();
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        // The first answer comes only once the whole context is unpacked: no 2-minute limit.
        let docker = engine
            .docker
            .clone()
            .with_timeout(Duration::from_secs(24 * 3600));
        let mut log = BuildLog::new();
        let result: std::result::Result<Option<String>, bollard::errors::Error> =
            engine.block(async {
                let mut stream =
                    docker.build_image(options.build(), None, Some(bollard::body_try_stream(body)));
                let mut id = None;
                while let Some(item) = stream.next().await {
                    let info = item?;
                    if let Some(text) = &info.stream {
                        log.push(text);
                    }
                    if let Some(status) = &info.status {
                        log.status(status, info.id.as_deref());
                    }
                    if let Some(aux) = info.aux.and_then(|a| a.id) {
                        id = Some(aux);
                    }
                }
                Ok(id)
            });
        log.flush();
        // The body (and so the reading thread's channel) is gone by now: the thread ends.
        let sent = match reader.join() {
            Ok(Ok(sent)) => Some(sent),
            Ok(Err(e)) => {
                log.show_tail("the build log before the context failed:");
                return Err(Error::io("context", "cannot send the build context", e));
            }
            Err(_) => None,
        };
        log.fold();
        if result.is_err() || matches!(result, Ok(None)) {
            failed_step.clone_from(&log.step);
        }
        match result {
            Ok(Some(id)) => Ok(Outcome {
                image_id: id,
                steps: log.step.as_ref().map_or(0, |s| s.of),
                cached: log.cached,
                sent: sent.unwrap_or_default(),
            }),
            Ok(None) => Err(Error::step(
                "build",
                "the engine ended the build without an image id",
            )),
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                log.show_tail("last lines of the build log:");
                let error = error.trim();
                let message = match &log.step {
                    Some(s) => format!(
                        "step {}/{} ({}) failed: {error}",
                        s.number, s.of, s.instruction
                    ),
                    None => format!("the build failed: {error}"),
                };
                Err(Error::step("build", message))
            }
            Err(e) => {
                log.show_tail("last lines of the build log:");
                Err(Error::docker("build", "the build failed", e))
            }
        }
    }
}

/// The build output: shown compact (the steps), whole with -v, folded under GitHub Actions,
/// and its tail on failure.
struct BuildLog {
    partial: String,
    lines: VecDeque<String>,
    step: Option<Step>,
    cached: u32,
    step_re: Regex,
    last_status: String,
    live_all: bool,
}

/// Lines kept for the folded log and the failure tail.
const KEEP_LINES: usize = 5000;
const TAIL_LINES: usize = 20;

impl BuildLog {
    fn new() -> BuildLog {
        BuildLog {
            partial: String::new(),
            lines: VecDeque::new(),
            step: None,
            cached: 0,
            step_re: Regex::new(r"^Step (\d+)/(\d+) : (.*)$").unwrap_or_else(|_| unreachable!()),
            last_status: String::new(),
            live_all: log::is_verbose() && !kit::github::is_actions(),
        }
    }

    fn push(&mut self, text: &str) {
        self.partial.push_str(text);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.line(line.trim_end_matches(['\n', '\r']));
        }
    }

    fn status(&mut self, status: &str, id: Option<&str>) {
        // Pull progress repeats the same status for every chunk: show each change once.
        let line = match id {
            Some(id) => format!("{id}: {status}"),
            None => status.to_string(),
        };
        if line != self.last_status {
            self.last_status = line.clone();
            self.line(&line);
        }
    }

    fn flush(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(rest.trim_end());
        }
    }

    fn line(&mut self, line: &str) {
        if let Some(c) = self.step_re.captures(line) {
            self.step = Some(Step {
                number: c[1].parse().unwrap_or(0),
                of: c[2].parse().unwrap_or(0),
                instruction: c[3].to_string(),
            });
            if !self.live_all {
                log::info(&format!("step {}/{}: {}", &c[1], &c[2], &c[3]));
            }
        }
        if line.trim() == "---> Using cache" {
            self.cached += 1;
        }
        if self.live_all {
            log::info(&format!("  | {line}"));
        }
        if self.lines.len() == KEEP_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.to_string());
    }

    /// Under GitHub Actions, the whole log in a collapsed group.
    fn fold(&self) {
        if kit::github::is_actions() {
            let lines: Vec<String> = self.lines.iter().cloned().collect();
            log::block(&format!("build log ({} lines)", lines.len()), &lines, false);
        }
    }

    /// The last lines, shown even with -q, unless they were all just printed.
    fn show_tail(&self, header: &str) {
        if self.live_all {
            return;
        }
        let skip = self.lines.len().saturating_sub(TAIL_LINES);
        let tail: Vec<String> = self.lines.iter().skip(skip).cloned().collect();
        log::block(header, &tail, true);
    }
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// The context directory's name made into a repository name: `My App` → `my-app`.
fn default_repository(root: &Path) -> String {
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .to_ascii_lowercase();
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if cleaned.is_empty() {
        "app".into()
    } else {
        cleaned.into()
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such directory".into(),
        _ => e.to_string(),
    }
}

/// 20 hex digits for the generated Dockerfile name (uniqueness, not secrecy).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as u128);
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{:016x}{:04x}", a, h.finish() & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_from_directory_name() {
        assert_eq!(default_repository(Path::new("/src/My App")), "my-app");
        assert_eq!(default_repository(Path::new("/src/_x_")), "x");
        assert_eq!(default_repository(Path::new("/")), "app");
    }

    #[test]
    fn steps_and_cache_hits_are_followed() {
        let mut log = BuildLog::new();
        log.push("Step 1/2 : FROM x\n ---> abc\nStep 2/2 : COPY . /");
        log.push("ctx\n ---> Using cache\n");
        let step = log.step.clone().unwrap();
        assert_eq!(
            (step.number, step.of, step.instruction.as_str()),
            (2, 2, "COPY . /ctx")
        );
        assert_eq!(log.cached, 1);
    }
}
