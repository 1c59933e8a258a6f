//! healthwait: wait until a service is healthy.
//!
//! Reads from the record: the target when no target flag is given (`swap.health_url`, else
//! `restore.health_url`). Adds `healthwait`: target, healthy, attempts, elapsed_ms,
//! last_status and last (the last probe's result in words). Exit 0 healthy, 1 not healthy
//! within the budget (or never able to be: a container that exited), 2 bad input.

use std::time::Duration;

use clap::{ArgGroup, Parser};
use kit::docker::Engine;
use kit::health::{HttpCheck, Schedule, StatusSet, Target, Wait};
use kit::{Common, Done, Error, Record, Result, Tool};
use regex::Regex;

/// Wait until a service is healthy: an HTTP endpoint answers as expected, a container's own
/// HEALTHCHECK says healthy, or a TCP port accepts connections.
///
/// With no budget flags it waits up to 60 s, probing quickly at first and then every 250 ms,
/// so readiness is noticed at once without hammering the app.
#[derive(Debug, Parser)]
#[command(version, group(ArgGroup::new("target").args(["url", "tcp", "container"])))]
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
            Target::Container(_) => Some(Engine::connect("health")?),
            _ => None,
        };
        let outcome = wait.run(engine.as_ref(), &|| false)?;
        if let (false, Target::Container(name), Some(engine)) =
            (outcome.healthy, &wait.target, &engine)
        {
            kit::docker::report_failed_container(engine, name);
        }
        if outcome.healthy {
            Ok(Done::ok(outcome))
        } else {
            let message = format!(
                "{} not healthy after {} ({} attempts): {}",
                outcome.target,
                kit::human(Duration::from_millis(outcome.elapsed_ms)),
                outcome.attempts,
                outcome.last
            );
            record.set(Self::NAME, &outcome);
            Err(Error::step("health", message))
        }
    }
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
        } else if let Some(url) = record.string("swap.health_url")? {
            self.http(&url, "swap.health_url")?
        } else if let Some(url) = record.string("restore.health_url")? {
            self.http(&url, "restore.health_url")?
        } else {
            return Err(Error::input(
                "target",
                "nothing to wait for: give --url, --tcp or --container, or pipe a record with swap.health_url",
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
