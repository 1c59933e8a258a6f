//! img-push: push image tags to their registry through the Docker Engine API.
//!
//! Reads `img-build.tags` from the record when no `--tag` is given. Adds `img-push`:
//! `registry` (the first tag's), `image_id`, `pushed` (`[{tag, digest}]`, in the order given:
//! the first is the one to deploy), `duration_ms`; when a push fails it also adds
//! `not_pushed` (the tags that are not in the registry from this run) before failing.
//!
//! Each tag is pushed explicitly: pushing a repository without a tag would push every local
//! tag of it. Credentials come from the environment (`REGISTRY_USERNAME` with
//! `REGISTRY_PASSWORD` or `REGISTRY_PASSWORD_FILE`) or, as the docker CLI finds them, from
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`; they are never printed nor
//! recorded. Connection failures, timeouts and 5xx answers are retried with exponential
//! backoff; an authentication error or a missing image is not.

use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::PushImageOptionsBuilder;
use clap::Parser;
use futures_util::StreamExt;
use kit::docker::Engine;
use kit::image::Reference;
use kit::{log, Common, Done, Error, Record, Result, Tool};
use serde::Serialize;

/// Push image tags to their registry, each tag explicitly, with the docker CLI's credentials
/// and bounded retries of transient failures.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// A tag to push, repeatable (default: the tags img-build recorded)
    #[arg(
        short = 't',
        long = "tag",
        value_name = "REF",
        env = "IMG_PUSH_TAGS",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,

    /// Retries of a transient failure (connection refused, timeout, 5xx) per tag
    #[arg(long, default_value_t = 4, value_name = "N", env = "IMG_PUSH_RETRIES")]
    pub retries: u32,

    /// The first pause before a retry; each next one doubles, up to 30s
    #[arg(long, default_value = "1s", value_name = "DURATION", env = "IMG_PUSH_RETRY_DELAY",
          value_parser = kit::parse_duration)]
    pub retry_delay: Duration,

    #[command(flatten)]
    pub common: Common,
}

/// What `img-push` adds to the record.
#[derive(Debug, Serialize)]
pub struct Pushed {
    pub registry: String,
    pub image_id: String,
    pub pushed: Vec<PushedTag>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_pushed: Vec<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushedTag {
    pub tag: String,
    pub digest: String,
}

/// The longest pause between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(30);

impl Tool for Args {
    const NAME: &'static str = "img-push";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let tags = self.tags(record)?;
        let auth = Auth::find(&tags[0])?;
        let engine = Engine::connect("push")?;
        let started = Instant::now();

        // Every tag must exist before anything is pushed.
        let mut image_id = String::new();
        for tag in &tags {
            let name = tag.to_string();
            match engine.block(engine.docker.inspect_image(&name)) {
                Ok(image) => {
                    if image_id.is_empty() {
                        image_id = image.id.unwrap_or_default();
                    }
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    return Err(Error::step(
                        "preflight",
                        format!("there is no image {name} here to push; build it first (img-build) or check --tag"),
                    ))
                }
                Err(e) => return Err(Error::docker("preflight", format!("inspect {name}"), e)),
            }
        }

        let mut result = Pushed {
            registry: tags[0].registry.clone(),
            image_id,
            pushed: Vec::new(),
            not_pushed: Vec::new(),
            duration_ms: 0,
        };
        for (i, tag) in tags.iter().enumerate() {
            let credentials = auth.for_tag(tag);
            match self.push_with_retries(&engine, tag, credentials) {
                Ok(digest) => result.pushed.push(PushedTag {
                    tag: tag.to_string(),
                    digest,
                }),
                Err(err) => {
                    result.not_pushed = tags[i..].iter().map(ToString::to_string).collect();
                    result.duration_ms = started.elapsed().as_millis() as u64;
                    record.set(Self::NAME, &result);
                    let err = match err {
                        Error::Step { step, message }
                            if message.contains("unauthorized")
                                || message.contains("authentication required") =>
                        {
                            Error::Step {
                                step,
                                message: format!("{message}; {}", auth.hint(&tag.registry)),
                            }
                        }
                        other => other,
                    };
                    return Err(err);
                }
            }
        }
        result.duration_ms = started.elapsed().as_millis() as u64;
        log::info(&format!(
            "pushed {} tag{} to {} in {}",
            result.pushed.len(),
            if result.pushed.len() == 1 { "" } else { "s" },
            result.registry,
            kit::human(started.elapsed())
        ));
        Ok(Done::ok(result))
    }
}

impl Args {
    /// The tags to push: --tag, else `img-build.tags`. Each names its tag (`:latest` if none).
    fn tags(&self, record: &Record) -> Result<Vec<Reference>> {
        let (field, given) = if self.tags.is_empty() {
            ("img-build.tags", record.strings("img-build.tags")?)
        } else {
            ("--tag", self.tags.clone())
        };
        if given.is_empty() {
            return Err(Error::input(
                "--tag",
                "nothing to push: give --tag REF, or pipe the record of img-build",
            ));
        }
        given
            .iter()
            .map(|t| {
                let r = Reference::parse(t.trim()).map_err(|e| Error::input(field, e))?;
                if r.digest.is_some() {
                    return Err(Error::input(
                        field,
                        format!("'{t}' names a digest; push a tag"),
                    ));
                }
                Ok(r.with_default_tag())
            })
            .collect()
    }

    /// Pushes one tag, retrying transient failures; returns the registry's digest.
    fn push_with_retries(
        &self,
        engine: &Engine,
        tag: &Reference,
        credentials: Option<DockerCredentials>,
    ) -> Result<String> {
        let mut delay = self.retry_delay;
        let mut attempt = 0;
        loop {
            attempt += 1;
            log::info(&format!("pushing {tag}"));
            let started = Instant::now();
            match push(engine, tag, credentials.clone()) {
                Ok(digest) => {
                    log::info(&format!(
                        "pushed {tag} ({digest}) in {}",
                        kit::human(started.elapsed())
                    ));
                    return Ok(digest);
                }
                Err(failure) => {
                    let transient = failure.transient();
                    if !transient || attempt > self.retries {
                        let tries = if attempt > 1 {
                            format!(" after {attempt} attempts")
                        } else {
                            String::new()
                        };
                        return Err(Error::step(
                            "push",
                            format!("cannot push {tag}{tries}: {}", failure.message),
                        ));
                    }
                    log::warn(&format!(
                        "push of {tag} failed ({}); retry {}/{} in {}",
                        failure.message,
                        attempt,
                        self.retries,
                        kit::human(delay)
                    ));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_DELAY);
                }
            }
        }
    }
}

/// Why one push attempt failed.
struct Failure {
    message: String,
    /// The engine itself could not be reached or refused the request (not the registry), or it
    /// already retried the upload itself (it does, for about 50 s): no retry on top.
    engine: bool,
}

impl Failure {
    /// Connection refused, timeouts and 5xx from the registry are worth another attempt;
    /// authentication errors, a missing image and anything about the engine itself are not.
    fn transient(&self) -> bool {
        if self.engine {
            return false;
        }
        let m = self.message.to_ascii_lowercase();
        let permanent = [
            "unauthorized",
            "authentication required",
            "denied",
            "no basic auth credentials",
            "does not exist",
            "no such image",
            "name unknown",
            "manifest invalid",
        ];
        if permanent.iter().any(|p| m.contains(p)) {
            return false;
        }
        [
            "connection refused",
            "connection reset",
            "broken pipe",
            "timeout",
            "timed out",
            "no route to host",
            "eof",
            " 500",
            " 502",
            " 503",
            " 504",
            "internal server error",
            "bad gateway",
            "service unavailable",
            "gateway timeout",
            "too many requests",
        ]
        .iter()
        .any(|p| m.contains(p))
    }
}

/// One push of one tag: follows the engine's stream to its end and reads the digest from the
/// registry's answer (`v1: digest: sha256:… size: 528`), since the stream has no digest field.
fn push(
    engine: &Engine,
    tag: &Reference,
    credentials: Option<DockerCredentials>,
) -> std::result::Result<String, Failure> {
    let name = tag.to_string();
    let options = PushImageOptionsBuilder::default()
        .tag(tag.tag.as_deref().unwrap_or("latest"))
        .build();
    // A large layer over a slow link takes long: no 2-minute limit on the whole push.
    let docker = engine
        .docker
        .clone()
        .with_timeout(Duration::from_secs(24 * 3600));
    let mut digest = None;
    let mut last_status = String::new();
    let (mut layers_pushed, mut layers_there) = (0, 0);
    let (mut engine_retries, mut countdown) = (0, 0);
    let result = engine.block(async {
        let mut stream = docker.push_image(&tag.repository, Some(options), credentials);
        while let Some(item) = stream.next().await {
            let info = item?;
            let Some(status) = info.status else { continue };
            if let Some(d) = digest_of(&status) {
                digest = Some(d);
            }
            // "Retrying in 5 seconds", 4, 3 …: the engine retrying a layer upload by itself.
            if let Some(secs) = status
                .strip_prefix("Retrying in ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
            {
                if secs >= countdown {
                    engine_retries += 1;
                    log::warn(&format!(
                        "the engine retries an upload to {} in {secs}s",
                        tag.registry
                    ));
                }
                countdown = secs;
            } else {
                countdown = 0;
            }
            match status.as_str() {
                "Pushed" => layers_pushed += 1,
                "Layer already exists" => layers_there += 1,
                _ => {}
            }
            if status != "Pushing" && status != last_status {
                log::debug(&format!("  | {status}"));
                last_status = status;
            }
        }
        Ok::<(), bollard::errors::Error>(())
    });
    if let Err(e) = result {
        use bollard::errors::Error as B;
        return Err(match e {
            B::DockerStreamError { error } if engine_retries > 0 => Failure {
                message: format!(
                    "{} (after the engine's own {engine_retries} retries)",
                    error.trim()
                ),
                engine: true,
            },
            B::DockerStreamError { error } => Failure {
                message: error.trim().to_string(),
                engine: false,
            },
            B::DockerResponseServerError {
                status_code,
                message,
            } => Failure {
                // The engine answers 5xx itself when the registry cannot be reached.
                engine: status_code < 500,
                message: format!("{} ({status_code})", message.trim()),
            },
            other => Failure {
                message: Error::docker("push", format!("push {name}"), other).to_string(),
                engine: true,
            },
        });
    }
    log::debug(&format!(
        "{name}: {layers_pushed} layer(s) pushed, {layers_there} already in the registry"
    ));
    digest.ok_or_else(|| Failure {
        message: format!("the engine finished pushing {name} without reporting its digest"),
        engine: true,
    })
}

/// `v1: digest: sha256:… size: 528` → `sha256:…`.
fn digest_of(status: &str) -> Option<String> {
    let rest = &status[status.find("digest: sha256:")? + "digest: ".len()..];
    let digest: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == ':')
        .collect();
    (digest.len() == "sha256:".len() + 64).then_some(digest)
}

/// Where the credentials come from.
enum Auth {
    /// REGISTRY_USERNAME and REGISTRY_PASSWORD(_FILE): for every registry pushed to.
    Env { username: String, password: String },
    /// config.json (auths, credsStore, credHelpers), looked up per registry.
    DockerConfig,
}

impl Auth {
    /// Reads the environment's credentials, registering the secret at once.
    fn find(first: &Reference) -> Result<Auth> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let password = match (env("REGISTRY_PASSWORD"), env("REGISTRY_PASSWORD_FILE")) {
            (Some(p), _) => Some(p),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        Error::input("REGISTRY_PASSWORD_FILE", format!("cannot read {path}: {e}"))
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        if let Some(p) = &password {
            log::secret(p);
        }
        match (env("REGISTRY_USERNAME"), password) {
            (Some(username), Some(password)) => {
                log::debug(&format!(
                    "credentials for {}: REGISTRY_USERNAME and its password",
                    first.registry
                ));
                Ok(Auth::Env { username, password })
            }
            (Some(_), None) => Err(Error::input(
                "REGISTRY_PASSWORD",
                "REGISTRY_USERNAME is set but neither REGISTRY_PASSWORD nor REGISTRY_PASSWORD_FILE",
            )),
            (None, Some(_)) => Err(Error::input(
                "REGISTRY_USERNAME",
                "a registry password is set but REGISTRY_USERNAME is not",
            )),
            (None, None) => Ok(Auth::DockerConfig),
        }
    }

    /// The credentials to send for the registry of `tag`; `None` pushes anonymously.
    fn for_tag(&self, tag: &Reference) -> Option<DockerCredentials> {
        match self {
            Auth::Env { username, password } => Some(DockerCredentials {
                username: Some(username.clone()),
                password: Some(password.clone()),
                serveraddress: Some(tag.auth_key().to_string()),
                ..Default::default()
            }),
            Auth::DockerConfig => kit::registry::from_docker_config(tag),
        }
    }

    /// What to check when the registry refused the credentials.
    fn hint(&self, registry: &str) -> String {
        match self {
            Auth::Env { .. } => "the registry refused REGISTRY_USERNAME with that password; check REGISTRY_PASSWORD".to_string(),
            Auth::DockerConfig => format!(
                "log in with `docker login {registry}`, or set REGISTRY_USERNAME and REGISTRY_PASSWORD"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_from_the_status_line() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        assert_eq!(digest_of(&format!("v1: digest: {d} size: 528")), Some(d));
        assert_eq!(digest_of("Pushed"), None);
    }

    #[test]
    fn which_failures_are_retried() {
        let f = |m: &str| {
            Failure {
                message: m.into(),
                engine: false,
            }
            .transient()
        };
        assert!(f(
            "Get \"http://127.0.0.1:5/v2/\": dial tcp 127.0.0.1:5: connect: connection refused"
        ));
        assert!(f(
            "received unexpected HTTP status: 503 Service Unavailable"
        ));
        assert!(f("net/http: TLS handshake timeout"));
        assert!(!f("unauthorized: authentication required"));
        assert!(!f("denied: requested access to the resource is denied"));
        assert!(!f("An image does not exist locally with the tag: x"));
    }
}
