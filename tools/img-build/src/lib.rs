//! img-build: build an image through the Docker Engine API.
//!
//! Reads nothing from the record (it starts a deploy). Adds `img-build`: `image_id`, `builder`
//! (`buildkit` or `classic`), `tags` (the first is the one to deploy), `size` (bytes),
//! `duration_ms`, `labels` (the labels this run set), `context`, `dockerfile`, `steps`,
//! `cached_steps`, `cached` (BuildKit's names of the cached steps), `cache_from`, `cache_to`
//! and `context_bytes`. On a failed build it adds `img-build.failed_step` (`stage` under
//! BuildKit, `number`, `of`, `instruction`) and no tag exists.
//!
//! The context is streamed as a tar while it is read ([`context`]), filtered by
//! `.dockerignore` exactly as the docker CLI filters it ([`dockerignore`]), to the engine's
//! embedded BuildKit (`POST /build?version=2` with a session; its progress stream is followed
//! by [`buildkit`], secrets are served by [`session`]) or to its classic builder.

pub mod buildkit;
pub mod context;
pub mod dockerignore;
pub mod filesync;
mod git;
pub mod session;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{BuildInfoAux, ImageId};
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion, TagImageOptionsBuilder};
use clap::{Parser, ValueEnum};
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

    /// The builder: the engine's embedded BuildKit, its classic builder, or auto (BuildKit
    /// when the engine offers it, else classic)
    #[arg(long, value_enum, default_value_t = Builder::Auto, env = "IMG_BUILD_BUILDER")]
    pub builder: Builder,

    /// A build secret, repeatable, as the docker CLI spells it: id=NAME,src=FILE or
    /// id=NAME,env=VAR. A `RUN --mount=type=secret,id=NAME` step sees it; no layer, image,
    /// cache, record or log line does (BuildKit only)
    #[arg(long = "secret", value_name = "id=NAME,src=FILE")]
    pub secrets: Vec<String>,

    /// An image whose build cache to reuse, repeatable: typically the last image pushed
    /// (registry.example.com/shop/api:latest), so a fresh CI runner pulls only the layers it
    /// needs. One that cannot be reached is a warning and a cold build
    #[arg(
        long = "cache-from",
        value_name = "REF",
        env = "IMG_BUILD_CACHE_FROM",
        value_delimiter = ','
    )]
    pub cache_from: Vec<String>,

    /// Where the build cache goes: inline (in the image's config, pushed with it, for the
    /// next build's --cache-from; the default under BuildKit) or none. `type=inline` too
    #[arg(
        long = "cache-to",
        value_name = "inline|none",
        env = "IMG_BUILD_CACHE_TO"
    )]
    pub cache_to: Option<String>,

    /// Which layers the exported cache holds: min (the image's own; what inline cache
    /// holds) or max (every stage's, which needs a registry or local cache exporter)
    #[arg(long = "cache-mode", value_enum, env = "IMG_BUILD_CACHE_MODE")]
    pub cache_mode: Option<CacheMode>,

    #[command(flatten)]
    pub common: Common,
}

/// Which builder of the engine builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Builder {
    Auto,
    Buildkit,
    Classic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    Min,
    Max,
}

/// What `img-build` adds to the record.
#[derive(Debug, Serialize)]
pub struct Built {
    pub image_id: String,
    /// `buildkit` or `classic`.
    pub builder: &'static str,
    pub tags: Vec<String>,
    pub size: i64,
    pub duration_ms: u64,
    pub labels: BTreeMap<String, String>,
    pub context: String,
    pub dockerfile: String,
    pub steps: u32,
    pub cached_steps: u32,
    /// The steps the cache satisfied (BuildKit's names: `[2/5] RUN make`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cached: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    /// `inline` when the image carries its build cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_to: Option<&'static str>,
    pub context_bytes: u64,
}

/// Everything checked before the engine is touched (with the [`Context`] to send).
struct Plan {
    tags: Vec<Reference>,
    labels: BTreeMap<String, String>,
    build_args: HashMap<String, String>,
    secrets: Vec<session::Secret>,
    /// What BuildKit's file sync serves: `.dockerignore` as written (the classic builder's
    /// tar keeps the Dockerfile and `.dockerignore` for the engine to drop), and the
    /// Dockerfile's directory and name.
    root: PathBuf,
    ignore: Matcher,
    dockerfile_dir: PathBuf,
    dockerfile_name: String,
    cache_from: Vec<String>,
    /// `Some(true)`: inline cache asked for; `Some(false)`: none; `None`: the default.
    inline_cache: Option<bool>,
}

impl Tool for Args {
    const NAME: &'static str = "img-build";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let (context, plan) = self.plan()?;
        let engine = Engine::connect("build")?;
        let buildkit = self.choose_builder(&engine, &plan)?;
        let started = Instant::now();
        let mut failed_step = None;
        let build = self.build(&engine, context, &plan, buildkit, &mut failed_step);
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
            builder: if buildkit { "buildkit" } else { "classic" },
            tags,
            size,
            duration_ms: duration.as_millis() as u64,
            labels: plan.labels,
            context: self.context.display().to_string(),
            dockerfile: self.dockerfile_path().display().to_string(),
            steps: outcome.steps,
            cached_steps: outcome.cached,
            cached: outcome.cached_names,
            cache_from: plan.cache_from.clone(),
            cache_to: (buildkit && plan.inline_cache != Some(false)).then_some("inline"),
            context_bytes: outcome.sent.bytes,
        }))
    }
}

/// The Dockerfile step a build failed at, as recorded under `img-build.failed_step`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The stage's name in a multi-stage build under BuildKit (`builder`, `stage-1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub number: u32,
    pub of: u32,
    pub instruction: String,
}

struct Outcome {
    image_id: String,
    steps: u32,
    cached: u32,
    cached_names: Vec<String>,
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
        let ignore = Matcher::parse(ignore_text.as_deref().unwrap_or(""))
            .map_err(|e| Error::input(".dockerignore", e.to_string()))?;
        let mut matcher = Matcher::parse(ignore_text.as_deref().unwrap_or(""))
            .map_err(|e| Error::input(".dockerignore", e.to_string()))?;
        matcher.keep(".dockerignore");
        let dockerfile_dir = dockerfile
            .parent()
            .map_or_else(|| root.clone(), Path::to_path_buf);
        let dockerfile_name = dockerfile
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::input("--file", "the Dockerfile's name is not UTF-8"))?
            .to_string();

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
        let secrets = self
            .secrets
            .iter()
            .map(|spec| session::parse(spec))
            .collect::<Result<Vec<_>>>()?;
        if !secrets.is_empty() && self.builder == Builder::Classic {
            return Err(Error::input(
                "--secret",
                "the classic builder cannot mount secrets: use --builder buildkit (or auto)",
            ));
        }
        let mut cache_from = Vec::new();
        for r in &self.cache_from {
            let r = r.trim();
            if r.is_empty() {
                continue;
            }
            let parsed = Reference::parse(r).map_err(|e| Error::input("--cache-from", e))?;
            cache_from.push(parsed.to_string());
        }
        if let Some(p) = &self.platform {
            if p.contains(',') || p.split('/').count() < 2 {
                return Err(Error::input(
                    "--platform",
                    format!(
                        "'{p}': give one platform, OS/ARCH[/VARIANT] (img-build builds one image)"
                    ),
                ));
            }
        }
        let inline_cache = self.inline_cache()?;
        let context = Context {
            root: root.clone(),
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
                secrets,
                root,
                ignore,
                dockerfile_dir,
                dockerfile_name,
                cache_from,
                inline_cache,
            },
        ))
    }

    /// `--cache-to` and `--cache-mode`: what the engine's builder can export is inline cache,
    /// and inline cache holds the final image's layers only (mode=min).
    fn inline_cache(&self) -> Result<Option<bool>> {
        let mut mode = self.cache_mode;
        let inline = match self.cache_to.as_deref().map(str::trim) {
            None => None,
            Some("none" | "type=none") => Some(false),
            Some(spec) => {
                for part in spec.split(',') {
                    match part.split_once('=').unwrap_or(("type", part)) {
                        ("type", "inline") => {}
                        ("mode", "min") => mode = mode.or(Some(CacheMode::Min)),
                        ("mode", "max") => mode = Some(CacheMode::Max),
                        ("type", other) => {
                            return Err(Error::input(
                                "--cache-to",
                                format!(
                                    "'{other}': the engine's builder exports the cache inline \
                                     only (give inline, or none; pass the image itself to the \
                                     next build's --cache-from)"
                                ),
                            ))
                        }
                        _ => {
                            return Err(Error::input(
                                "--cache-to",
                                format!("'{part}' in '{spec}': give inline, type=inline or none"),
                            ))
                        }
                    }
                }
                Some(true)
            }
        };
        if mode == Some(CacheMode::Max) {
            return Err(Error::input(
                "--cache-mode",
                "max needs a registry or local cache exporter, which the engine's builder \
                 lacks; inline cache holds the final image's layers (min): put the expensive \
                 steps in the final stage, or build the earlier stage with its own tag",
            ));
        }
        if inline == Some(true) && self.builder == Builder::Classic {
            return Err(Error::input(
                "--cache-to",
                "the classic builder cannot export a cache: use --builder buildkit (or auto)",
            ));
        }
        Ok(inline)
    }

    /// BuildKit or classic: as asked, or (auto) BuildKit when the engine offers it, said on
    /// stderr either way.
    fn choose_builder(&self, engine: &Engine, plan: &Plan) -> Result<bool> {
        let offered = match engine.block(engine.docker.version()) {
            Ok(v) => {
                let api = v.api_version.unwrap_or_default();
                let (major, minor) = api
                    .split_once('.')
                    .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                    .unwrap_or((0, 0));
                let linux = v.os.as_deref().unwrap_or("linux") == "linux";
                let why = format!(
                    "Engine {} (API {api}, {})",
                    v.version.as_deref().unwrap_or("?"),
                    v.os.as_deref().unwrap_or("?")
                );
                // The engine's embedded BuildKit came with API 1.39 (Engine 18.09), on Linux.
                (linux && (major, minor) >= (1, 39), why)
            }
            Err(e) => (false, format!("its version is unknown: {e}")),
        };
        // img-build talks to the engine's BuildKit over a session it opens itself.
        let offered = match session::supported() {
            Ok(()) => offered,
            Err(why) => (false, format!("{}; {why}", offered.1)),
        };
        let buildkit = match self.builder {
            Builder::Buildkit => true,
            Builder::Classic => false,
            Builder::Auto => offered.0,
        };
        let wants_buildkit = if !plan.secrets.is_empty() {
            Some("--secret")
        } else if plan.inline_cache == Some(true) {
            Some("--cache-to")
        } else {
            None
        };
        if let (false, Some(flag)) = (buildkit, wants_buildkit) {
            return Err(Error::step(
                "build",
                format!(
                    "{flag} needs BuildKit, which this engine does not offer ({})",
                    offered.1
                ),
            ));
        }
        log::info(&format!(
            "builder: {} ({}{})",
            if buildkit { "BuildKit" } else { "classic" },
            match self.builder {
                Builder::Auto => "auto, ",
                _ => "as asked, ",
            },
            offered.1
        ));
        Ok(buildkit)
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
        buildkit: bool,
        failed_step: &mut Option<Step>,
    ) -> Result<Outcome> {
        let (tags, labels) = (&plan.tags, &plan.labels);
        let mut build_args = plan.build_args.clone();
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
        let cache_from = if buildkit {
            self.reachable_cache(engine, plan)
        } else {
            self.local_cache(engine, &plan.cache_from)
        };
        if !cache_from.is_empty() {
            options = options.cachefrom(&cache_from);
        }
        let session_id = format!("img-build-{}", random_hex());
        if buildkit {
            options = options
                .version(BuilderVersion::BuilderBuildKit)
                .session(&session_id);
            if plan.inline_cache != Some(false) {
                // How the engine's BuildKit is asked for an inline cache export.
                build_args.insert("BUILDKIT_INLINE_CACHE".into(), "1".into());
            }
        }
        if !build_args.is_empty() {
            options = options.buildargs(&build_args);
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

        // Classic: the context as a tar, streamed while it is read. BuildKit: the context is
        // read through the session's file sync, as the CLI serves it; the request has no body.
        let mut docker = engine
            .docker
            .clone()
            // The first answer comes only once the whole context is read: no 2-minute limit.
            .with_timeout(Duration::from_secs(24 * 3600));
        let (body, reader, provider) = if buildkit {
            options = options
                .remote("client-session")
                .dockerfile(&plan.dockerfile_name);
            // bollard's own session (registry auth only) steps aside for ours.
            docker = docker.with_request_modifier(session::bollard_session_renamed);
            drop(context);
            let (provider, counter) = filesync::Provider::new(filesync::Dirs {
                context: plan.root.clone(),
                ignore: plan.ignore.clone(),
                dockerfile: plan.dockerfile_dir.clone(),
            });
            (
                bollard::body_full(bytes::Bytes::new()),
                Err(counter),
                Some(provider),
            )
        } else {
            let (mut rx, reader) = context.stream();
            let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            (bollard::body_try_stream(body), Ok(reader), None)
        };
        let secrets = plan.secrets.clone();
        let mut log = if buildkit {
            Follow::BuildKit(buildkit::Progress::new())
        } else {
            Follow::Classic(BuildLog::new())
        };
        let result: std::result::Result<Option<String>, BuildError> = engine.block(async {
            if let Some(provider) = provider {
                session::open(&session_id, secrets, provider)
                    .await
                    .map_err(BuildError::Session)?;
            }
            let mut stream = docker.build_image(options.build(), None, Some(body));
            let mut id = None;
            while let Some(item) = stream.next().await {
                let info = item.map_err(BuildError::Docker)?;
                match (&mut log, info.aux) {
                    (Follow::BuildKit(p), Some(BuildInfoAux::BuildKit(status))) => {
                        p.update(&status)
                    }
                    (_, Some(BuildInfoAux::Default(ImageId { id: Some(aux) }))) => id = Some(aux),
                    _ => {}
                }
                if let Follow::Classic(log) = &mut log {
                    if let Some(text) = &info.stream {
                        log.push(text);
                    }
                    if let Some(status) = &info.status {
                        log.status(status, info.id.as_deref());
                    }
                }
            }
            Ok(id)
        });
        if let Follow::Classic(l) = &mut log {
            l.flush();
        }
        // The body (and so the reading thread's channel) is gone by now: the thread ends.
        let sent = match reader {
            Err(counter) => Some(counter.sent()),
            Ok(reader) => match reader.join() {
                Ok(Ok(sent)) => Some(sent),
                Ok(Err(e)) => {
                    log.show_tail("the build log before the context failed:");
                    return Err(Error::io("context", "cannot send the build context", e));
                }
                Err(_) => None,
            },
        };
        log.fold();
        let step = log.step();
        if result.is_err() || matches!(result, Ok(None)) {
            failed_step.clone_from(&step);
        }
        match result {
            Ok(Some(id)) => {
                let (steps, cached, cached_names) = log.counts();
                Ok(Outcome {
                    image_id: id,
                    steps,
                    cached,
                    cached_names,
                    sent: sent.unwrap_or_default(),
                })
            }
            Ok(None) => Err(Error::step(
                "build",
                "the engine ended the build without an image id",
            )),
            Err(BuildError::Session(e)) => Err(e),
            Err(BuildError::Docker(bollard::errors::Error::DockerStreamError { error })) => {
                log.show_tail("last lines of the build log:");
                let error = error.trim();
                let mut message = match &step {
                    Some(s) => format!("step {} failed: {error}", s.describe()),
                    None => format!("the build failed: {error}"),
                };
                if buildkit {
                    let dockerfile = fs::read_to_string(self.dockerfile_path()).unwrap_or_default();
                    if let Some(why) = buildkit::explain(error, &dockerfile) {
                        message = format!("{message}; {why}");
                    }
                }
                Err(Error::step("build", message))
            }
            Err(BuildError::Docker(e)) => {
                log.show_tail("last lines of the build log:");
                Err(Error::docker("build", "the build failed", e))
            }
        }
    }

    /// The classic builder takes its cache only from local images: those that are here.
    fn local_cache(&self, engine: &Engine, refs: &[String]) -> Vec<String> {
        refs.iter()
            .filter(|r| {
                let here = engine.block(engine.docker.inspect_image(r)).is_ok();
                if !here {
                    log::warn(&format!(
                        "--cache-from {r}: the classic builder reuses local images only, and \
                         it is not here: building without it"
                    ));
                }
                here
            })
            .cloned()
            .collect()
    }

    /// The --cache-from images the engine can reach. BuildKit skips one it cannot fetch
    /// without a word, so each is looked up first (by the engine, as the build would) and
    /// one that fails is a warning and left out: the build runs cold rather than failing.
    fn reachable_cache(&self, engine: &Engine, plan: &Plan) -> Vec<String> {
        let credentials = self.cache_credentials(plan).unwrap_or_default();
        plan.cache_from
            .iter()
            .filter(|r| {
                let registry = Reference::parse(r).map(|r| r.registry).unwrap_or_default();
                let found = engine.block(
                    engine
                        .docker
                        .inspect_registry_image(r, credentials.get(&registry).cloned()),
                );
                match found {
                    Ok(_) => true,
                    Err(e) => {
                        let why = match e {
                            bollard::errors::Error::DockerResponseServerError {
                                message, ..
                            } => message,
                            e => e.to_string(),
                        };
                        log::warn(&format!(
                            "--cache-from {r}: cannot be read ({}); building without it",
                            why.trim()
                        ));
                        false
                    }
                }
            })
            .cloned()
            .collect()
    }

    /// The docker config's credentials for the registries of --cache-from.
    fn cache_credentials(
        &self,
        plan: &Plan,
    ) -> Option<HashMap<String, bollard::auth::DockerCredentials>> {
        let mut found = HashMap::new();
        for r in &plan.cache_from {
            if let Ok(r) = Reference::parse(r) {
                if let Some(c) = kit::registry::from_docker_config(&r) {
                    found.insert(r.registry.clone(), c);
                }
            }
        }
        (!found.is_empty()).then_some(found)
    }
}

enum BuildError {
    Session(Error),
    Docker(bollard::errors::Error),
}

/// The build's log, as each builder reports it.
enum Follow {
    Classic(BuildLog),
    BuildKit(buildkit::Progress),
}

impl Follow {
    fn show_tail(&self, header: &str) {
        match self {
            Follow::Classic(l) => l.show_tail(header),
            Follow::BuildKit(p) => p.show_tail(header),
        }
    }

    fn fold(&self) {
        match self {
            Follow::Classic(l) => l.fold(),
            Follow::BuildKit(p) => p.fold(),
        }
    }

    /// The step the build is at (classic) or failed at (BuildKit).
    fn step(&self) -> Option<Step> {
        match self {
            Follow::Classic(l) => l.step.clone(),
            Follow::BuildKit(p) => p.failed.as_ref().and_then(|(step, _)| step.clone()),
        }
    }

    fn counts(&self) -> (u32, u32, Vec<String>) {
        match self {
            Follow::Classic(l) => (l.step.as_ref().map_or(0, |s| s.of), l.cached, Vec::new()),
            Follow::BuildKit(p) => p.counts(),
        }
    }
}

impl Step {
    /// `2/5 (RUN make)`, or `2/5 of stage builder (RUN make)`.
    fn describe(&self) -> String {
        match &self.stage {
            Some(stage) => format!(
                "{}/{} of stage {stage} ({})",
                self.number, self.of, self.instruction
            ),
            None => format!("{}/{} ({})", self.number, self.of, self.instruction),
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
                stage: None,
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
