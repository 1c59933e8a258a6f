//! healthwait: wait until a service is healthy.
//!
//! Reads from the record: the target when no target flag is given (`swap.health_url`, else
//! `restore.health_url`). Adds `healthwait`: target, healthy, attempts, elapsed_ms,
//! last_status and last (the last probe's result in words); for Swarm services also
//! `services[]`, each with its tasks per node and when it converged. Exit 0 healthy (or
//! converged), 1 not within the budget (or never able to be: a container that exited, a service
//! whose tasks keep failing), 2 bad input (a service that does not exist).

use std::time::Duration;

use clap::{ArgGroup, Parser};
use kit::docker::Engine;
use kit::health::{HttpCheck, Outcome, Schedule, StatusSet, Target, Wait};
use kit::swarm::{ServiceReport, Services};
use kit::{Common, Done, Error, Record, Result, Tool};
use regex::Regex;
use serde::Serialize;

/// Wait until a service is healthy: an HTTP endpoint answers as expected, a container's own
/// HEALTHCHECK says healthy, a TCP port accepts connections, or Swarm services have converged.
///
/// With no budget flags it waits up to 60 s, probing quickly at first and then every 250 ms,
/// so readiness is noticed at once without hammering the app.
#[derive(Debug, Parser)]
#[command(
    version,
    group(ArgGroup::new("target").args(["url", "tcp", "container", "services", "stack"]))
)]
pub struct Args {
    /// HTTP(S) URL to GET, e.g. http://127.0.0.1:8000/api/v1/health
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// host:port that must accept a TCP connection
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Option<String>,

    /// Container whose Docker HEALTHCHECK must report healthy; fails fast if it exits
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,

    /// Swarm service that must converge (repeatable): the replicas of its current spec all
    /// running, and healthy when its image has a HEALTHCHECK, and no task of an older spec left.
    /// Fails fast when its tasks keep failing or its update was rolled back. DOCKER_HOST must
    /// be a Swarm manager
    #[arg(long = "service", value_name = "NAME")]
    pub services: Vec<String>,

    /// Every service of this stack (`docker stack deploy`'s label com.docker.stack.namespace)
    /// must converge, as --service
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,

    /// Accepted HTTP statuses: 200, 2xx, 200,204 or 200-299
    #[arg(long, default_value = "200", value_name = "STATUSES", value_parser = StatusSet::parse)]
    pub expect_status: StatusSet,

    /// Regular expression the response body must match, e.g. '"status":\s*"ok"'
    #[arg(long, value_name = "REGEX")]
    pub expect_body: Option<String>,

    /// Extra request header, repeatable: -H 'Host: app.example.com'
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Exactly this many attempts (with --interval: today's `--attempts 30 --interval 2s`)
    #[arg(long, value_name = "N", conflicts_with = "timeout",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: Option<u32>,

    /// Pause between attempts (default: 25 ms doubling up to 250 ms)
    #[arg(long, env = "HEALTHWAIT_INTERVAL", value_name = "DURATION", value_parser = kit::parse_duration)]
    pub interval: Option<Duration>,

    /// Total budget (default 60s, or HEALTHWAIT_TIMEOUT when neither --timeout nor --attempts
    /// is given): 500ms, 2s, 1m
    #[arg(long, value_name = "DURATION", value_parser = kit::parse_duration)]
    pub timeout: Option<Duration>,

    /// Timeout of one attempt
    #[arg(long, env = "HEALTHWAIT_ATTEMPT_TIMEOUT", default_value = "5s", value_name = "DURATION",
          value_parser = kit::parse_duration)]
    pub attempt_timeout: Duration,

    #[command(flatten)]
    pub common: Common,
}

/// `HEALTHWAIT_TIMEOUT`: the budget a deploy's settings give every healthwait. Read here, not
/// by clap, so that `--attempts` on the command line simply takes precedence over it (clap
/// would count the variable as `--timeout` and refuse the pair).
fn timeout_from_env() -> Result<Option<Duration>> {
    match std::env::var("HEALTHWAIT_TIMEOUT") {
        Ok(v) if !v.trim().is_empty() => kit::parse_duration(&v)
            .map(Some)
            .map_err(|e| Error::input("HEALTHWAIT_TIMEOUT", e)),
        _ => Ok(None),
    }
}

impl Tool for Args {
    const NAME: &'static str = "healthwait";

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let wait = self.wait(record)?;
        let engine = match wait.target {
            Target::Container(_) | Target::Swarm(_) => Some(Engine::connect("health")?),
            _ => None,
        };
        // Services that do not exist are bad input, said before any waiting.
        let mut convergence = match (&wait.target, &engine) {
            (Target::Swarm(services), Some(engine)) => {
                Some(kit::swarm::Convergence::new(engine, services)?)
            }
            _ => None,
        };
        let outcome = wait.run_tracking(engine.as_ref(), &|| false, &mut convergence)?;
        let report = Report {
            services: convergence
                .as_ref()
                .map(kit::swarm::Convergence::reports)
                .unwrap_or_default(),
            outcome,
        };
        let outcome = &report.outcome;
        if !outcome.healthy {
            match (&wait.target, &engine) {
                (Target::Container(name), Some(engine)) => {
                    kit::docker::report_failed_container(engine, name)
                }
                (Target::Swarm(_), Some(engine)) => {
                    kit::swarm::report_failed_tasks(engine, &report.services, 3)
                }
                _ => {}
            }
        }
        if outcome.healthy {
            return Ok(Done::ok(report));
        }
        let took = kit::human(Duration::from_millis(outcome.elapsed_ms));
        let message = match &wait.target {
            Target::Swarm(services) => format!(
                "{services} did not converge after {took} ({} looks): {}",
                outcome.attempts, outcome.last
            ),
            _ => format!(
                "{} not healthy after {took} ({} attempts): {}",
                outcome.target, outcome.attempts, outcome.last
            ),
        };
        record.set(Self::NAME, &report);
        Err(Error::step("health", message))
    }
}

/// What healthwait adds to the record: the wait's outcome, and for Swarm services their tasks.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    outcome: Outcome,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<ServiceReport>,
}

impl Args {
    /// Everything checked before the first probe: a bad target is exit 2 at once.
    fn wait(&self, record: &Record) -> Result<Wait> {
        let target = if let Some(url) = &self.url {
            self.http(url, "--url")?
        } else if let Some(addr) = &self.tcp {
            Target::Tcp(check_addr(addr)?)
        } else if let Some(name) = &self.container {
            if name.trim().is_empty() {
                return Err(Error::input("--container", "empty container name"));
            }
            Target::Container(name.clone())
        } else if !self.services.is_empty() {
            if let Some(bad) = self.services.iter().find(|s| !valid_name(s)) {
                return Err(Error::input(
                    "--service",
                    format!("'{bad}' is not a service name"),
                ));
            }
            Target::Swarm(Services::Named(self.services.clone()))
        } else if let Some(stack) = &self.stack {
            if !valid_name(stack) {
                return Err(Error::input(
                    "--stack",
                    format!("'{stack}' is not a stack name"),
                ));
            }
            Target::Swarm(Services::Stack(stack.clone()))
        } else if let Some(url) = record.string("swap.health_url")? {
            self.http(&url, "swap.health_url")?
        } else if let Some(url) = record.string("restore.health_url")? {
            self.http(&url, "restore.health_url")?
        } else {
            return Err(Error::input(
                "target",
                "nothing to wait for: give --url, --tcp, --container, --service or --stack, or pipe a record with swap.health_url",
            ));
        };
        let schedule = match (self.attempts, self.timeout) {
            (Some(attempts), _) => match self.interval {
                Some(interval) => Schedule::Fixed { attempts, interval },
                // A count without a pause: the quick backoff, bounded by the count.
                None => Schedule::Fixed {
                    attempts,
                    interval: kit::health::BACKOFF_CAP,
                },
            },
            (None, timeout) => Schedule::Within {
                timeout: match timeout {
                    Some(t) => t,
                    None => timeout_from_env()?.unwrap_or(kit::health::DEFAULT_TIMEOUT),
                },
                interval: self.interval,
            },
        };
        Ok(Wait {
            target,
            schedule,
            attempt_timeout: self.attempt_timeout,
        })
    }

    fn http(&self, url: &str, field: &str) -> Result<Target> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::input(field, format!("'{url}' is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::input(
                field,
                format!("'{url}' is not an http:// or https:// URL with a host"),
            ));
        }
        let expect_body = self
            .expect_body
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|e| Error::input("--expect-body", format!("not a regular expression: {e}")))?;
        let headers = self
            .headers
            .iter()
            .map(|h| match h.split_once(':') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(Error::input(
                    "--header",
                    format!("'{h}' is not 'Name: value'"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Target::Http(HttpCheck {
            url: url.to_string(),
            expect_status: self.expect_status.clone(),
            expect_body,
            headers,
        }))
    }
}

/// A Swarm service or stack name (or a service id): letters, digits, `_`, `.`, `-`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `host:port` with a numeric port; the host may be a name, an IPv4 or a bracketed IPv6.
fn check_addr(addr: &str) -> Result<String> {
    let bad = |why: &str| Error::input("--tcp", format!("'{addr}' is not host:port ({why})"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    Ok(addr.to_string())
}
