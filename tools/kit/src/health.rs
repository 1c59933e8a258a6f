//! Waiting until a service is healthy: the engine behind `healthwait`, and the health step of
//! `swap` and `restore`.
//!
//! A [`Probe`] checks one target once (HTTP status and body, a TCP connect, or Docker's own
//! HEALTHCHECK). [`Wait::run`] repeats it on a [`Schedule`] until it passes, the budget is
//! spent, or the target can never pass (a container that exited or restart-loops fails fast).

use std::fmt;
use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::docker::Engine;
use crate::error::{Error, Result};

/// What to wait for.
#[derive(Debug, Clone)]
pub enum Target {
    Http(HttpCheck),
    /// `host:port` that must accept a TCP connection.
    Tcp(String),
    /// A container whose HEALTHCHECK must say healthy (or, without one, that must be running).
    Container(String),
    /// Swarm services that must converge (see [`crate::swarm`]).
    Swarm(crate::swarm::Services),
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub url: String,
    pub expect_status: StatusSet,
    pub expect_body: Option<Regex>,
    pub headers: Vec<(String, String)>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Http(h) => write!(f, "{} (expect {}", h.url, h.expect_status).and_then(|()| {
                match &h.expect_body {
                    Some(re) => write!(f, ", body ~ /{re}/)"),
                    None => write!(f, ")"),
                }
            }),
            Target::Tcp(addr) => write!(f, "tcp://{addr}"),
            Target::Container(name) => write!(f, "container {name} (HEALTHCHECK)"),
            Target::Swarm(services) => write!(f, "{services} to converge"),
        }
    }
}

/// Accepted HTTP statuses: `200`, `2xx`, `200,204`, `200-299`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl Default for StatusSet {
    fn default() -> Self {
        StatusSet(vec![(200, 200)])
    }
}

impl StatusSet {
    pub fn parse(text: &str) -> std::result::Result<StatusSet, String> {
        let bad = || format!("'{text}' is not a status list; try 200, 2xx, 200,204 or 200-299");
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let range = if let Some(class) = part.strip_suffix("xx") {
                let c: u16 = class.parse().map_err(|_| bad())?;
                (c * 100, c * 100 + 99)
            } else if let Some((a, b)) = part.split_once('-') {
                (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                )
            } else {
                let s: u16 = part.parse().map_err(|_| bad())?;
                (s, s)
            };
            if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) {
                return Err(bad());
            }
            ranges.push(range);
        }
        Ok(StatusSet(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(a, b)| (a..=b).contains(&status))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else if a % 100 == 0 && b == a + 99 {
                    format!("{}xx", a / 100)
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// When to probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Exactly `attempts` probes, `interval` apart (today's `for i in $(seq 30) ... sleep 2`).
    Fixed { attempts: u32, interval: Duration },
    /// Probe until `timeout` is spent: every `interval` if given, else quickly at first and
    /// backing off to [`BACKOFF_CAP`], so readiness is noticed within ~0.15 s without hammering.
    Within {
        timeout: Duration,
        interval: Option<Duration>,
    },
}

/// The default budget, as today's hand-rolled loop (30 attempts × 2 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The first pause of the backoff, and its cap.
pub const BACKOFF_START: Duration = Duration::from_millis(25);
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);
/// The default per-attempt timeout (kamal-proxy's).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Within {
            timeout: DEFAULT_TIMEOUT,
            interval: None,
        }
    }
}

impl Schedule {
    /// The pause after attempt number `n` (1-based).
    fn pause(&self, n: u32) -> Duration {
        match *self {
            Schedule::Fixed { interval, .. }
            | Schedule::Within {
                interval: Some(interval),
                ..
            } => interval,
            Schedule::Within { interval: None, .. } => {
                let factor = 1u32
                    .checked_shl(n.saturating_sub(1).min(16))
                    .unwrap_or(u32::MAX);
                BACKOFF_START.saturating_mul(factor).min(BACKOFF_CAP)
            }
        }
    }

    /// The whole budget, for messages: `60s`, `30 attempts × 2s`.
    pub fn describe(&self) -> String {
        match *self {
            Schedule::Fixed { attempts, interval } => {
                format!("{attempts} attempts × {}", crate::human(interval))
            }
            Schedule::Within { timeout, .. } => format!("within {}", crate::human(timeout)),
        }
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Healthy(String),
    /// Not healthy yet; may become healthy (connection refused, 503, health "starting").
    NotYet(String),
    /// Can never become healthy (the container exited or restart-loops).
    Fatal(String),
}

/// How a wait ended; stored in the record by `healthwait` and `swap`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub target: String,
    pub healthy: bool,
    pub attempts: u32,
    pub elapsed_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last probe's result in words: `200 OK`, `connection refused`, `exited (code 3)`.
    pub last: String,
}

/// A wait: a target, a schedule and a per-attempt timeout.
#[derive(Debug, Clone)]
pub struct Wait {
    pub target: Target,
    pub schedule: Schedule,
    pub attempt_timeout: Duration,
}

impl Wait {
    /// Probes until healthy or the budget is spent. Progress goes to stderr: what it waits for,
    /// then a line at most every `PROGRESS_EVERY`. `stop` is asked between probes (swap uses it
    /// to abandon a wait on SIGTERM).
    pub fn run(&self, engine: Option<&Engine>, stop: &dyn Fn() -> bool) -> Result<Outcome> {
        self.run_tracking(engine, stop, &mut None)
    }

    /// [`Wait::run`], keeping what a Swarm target's wait learnt in `convergence` (its tasks per
    /// node, when each service converged: [`crate::swarm::Convergence::reports`]).
    pub fn run_tracking(
        &self,
        engine: Option<&Engine>,
        stop: &dyn Fn() -> bool,
        convergence: &mut Option<crate::swarm::Convergence>,
    ) -> Result<Outcome> {
        const PROGRESS_EVERY: Duration = Duration::from_secs(3);
        let start = Instant::now();
        let deadline = match self.schedule {
            Schedule::Within { timeout, .. } => Some(start + timeout),
            Schedule::Fixed { .. } => None,
        };
        let max_attempts = match self.schedule {
            Schedule::Fixed { attempts, .. } => attempts.max(1),
            Schedule::Within { .. } => u32::MAX,
        };
        crate::log::info(&format!(
            "waiting for {} ({})",
            self.target,
            self.schedule.describe()
        ));
        let http = self.agent();
        let mut container_restarts = None;
        let mut last_report = start;
        let mut attempts = 0;
        let outcome = |healthy: bool, attempts: u32, last: &str, status: Option<u16>| Outcome {
            target: self.target.to_string(),
            healthy,
            attempts,
            elapsed_ms: start.elapsed().as_millis() as u64,
            last_status: status,
            last: last.to_string(),
        };
        loop {
            attempts += 1;
            let timeout = match deadline {
                Some(d) => self
                    .attempt_timeout
                    .min(d.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(10)),
                None => self.attempt_timeout,
            };
            let (probe, status) = match &self.target {
                Target::Http(check) => probe_http(&http, check, timeout),
                Target::Tcp(addr) => (probe_tcp(addr, timeout), None),
                Target::Container(name) => {
                    let engine = engine.ok_or_else(|| {
                        Error::step("health", "a container target needs the Docker Engine")
                    })?;
                    (
                        probe_container(engine, name, &mut container_restarts)?,
                        None,
                    )
                }
                Target::Swarm(services) => {
                    let engine = engine.ok_or_else(|| {
                        Error::step("health", "a Swarm target needs the Docker Engine")
                    })?;
                    let convergence = match convergence {
                        Some(c) => c,
                        None => {
                            convergence.insert(crate::swarm::Convergence::new(engine, services)?)
                        }
                    };
                    let probe = match convergence.look(engine)? {
                        crate::swarm::Verdict::Converged(w) => Probe::Healthy(w),
                        crate::swarm::Verdict::Converging(w) => Probe::NotYet(w),
                        crate::swarm::Verdict::Failed(w) => Probe::Fatal(w),
                    };
                    (probe, None)
                }
            };
            match probe {
                Probe::Healthy(what) => {
                    let o = outcome(true, attempts, &what, status);
                    let done = match self.target {
                        Target::Swarm(_) => "converged",
                        _ => "healthy",
                    };
                    crate::log::info(&format!(
                        "{done} after {} ({} attempt{}): {what}",
                        crate::human(start.elapsed()),
                        attempts,
                        if attempts == 1 { "" } else { "s" }
                    ));
                    return Ok(o);
                }
                Probe::Fatal(why) => {
                    let cannot = match self.target {
                        Target::Swarm(_) => "cannot converge",
                        _ => "cannot become healthy",
                    };
                    crate::log::info(&format!("{cannot}: {why}"));
                    return Ok(outcome(false, attempts, &why, status));
                }
                Probe::NotYet(why) => {
                    let pause = self.schedule.pause(attempts);
                    let out_of_budget = attempts >= max_attempts
                        || deadline.is_some_and(|d| Instant::now() + pause >= d);
                    if out_of_budget || stop() {
                        let not = match self.target {
                            Target::Swarm(_) => "not converged",
                            _ => "not healthy",
                        };
                        crate::log::info(&format!(
                            "{not} after {} ({attempts} attempts): {why}",
                            crate::human(start.elapsed())
                        ));
                        return Ok(outcome(false, attempts, &why, status));
                    }
                    if crate::log::is_verbose() || last_report.elapsed() >= PROGRESS_EVERY {
                        let not_yet = match self.target {
                            Target::Swarm(_) => "not converged yet",
                            _ => "not healthy yet",
                        };
                        crate::log::info(&format!(
                            "{not_yet} after {} ({attempts} attempts): {why}",
                            crate::human(start.elapsed())
                        ));
                        last_report = Instant::now();
                    }
                    std::thread::sleep(pause);
                }
            }
        }
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("healthwait/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }
}

/// One HTTP probe. Any status is an answer; only the expected ones (and body) are healthy.
fn probe_http(agent: &ureq::Agent, check: &HttpCheck, timeout: Duration) -> (Probe, Option<u16>) {
    let mut req = agent
        .get(&check.url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    for (k, v) in &check.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = match req.call() {
        Ok(resp) => resp,
        Err(e) => return (Probe::NotYet(describe_http_error(&e, timeout)), None),
    };
    let status = resp.status();
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("");
    let words = format!("{code} {reason}").trim().to_string();
    if !check.expect_status.contains(code) {
        return (
            Probe::NotYet(format!("{words}, expected {}", check.expect_status)),
            Some(code),
        );
    }
    if let Some(re) = &check.expect_body {
        let mut body = String::new();
        let read = resp
            .body_mut()
            .as_reader()
            .take(64 * 1024)
            .read_to_string(&mut body);
        if let Err(e) = read {
            return (
                Probe::NotYet(format!("{words}, body unreadable: {e}")),
                Some(code),
            );
        }
        if !re.is_match(&body) {
            let shown: String = body.chars().take(80).collect();
            return (
                Probe::NotYet(format!("{words}, body does not match /{re}/: {shown:?}")),
                Some(code),
            );
        }
    }
    (Probe::Healthy(words), Some(code))
}

fn describe_http_error(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => format!("no answer within {}", crate::human(timeout)),
        ureq::Error::Io(io) => io_words(io),
        ureq::Error::HostNotFound => "host not found (DNS)".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut | WouldBlock => "timed out".into(),
        UnexpectedEof => "connection closed before an answer".into(),
        _ => e.to_string(),
    }
}

fn probe_tcp(addr: &str, timeout: Duration) -> Probe {
    let addrs = match addr.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Probe::NotYet(format!("cannot resolve {addr}: {e}")),
    };
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Probe::Healthy(format!("{a} accepts connections")),
            Err(e) => last = io_words(&e),
        }
    }
    Probe::NotYet(last)
}

/// One look at a container: Docker's health status, or fail fast when it cannot get healthy.
fn probe_container(engine: &Engine, name: &str, restarts: &mut Option<i64>) -> Result<Probe> {
    let Some(c) = engine.inspect(name)? else {
        return Ok(Probe::Fatal(format!("no container named {name}")));
    };
    let state = c.state.clone().unwrap_or_default();
    let count = c.restart_count.unwrap_or(0);
    let first = *restarts.get_or_insert(count);
    let status = state
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    if state.restarting == Some(true) || count > first {
        return Ok(Probe::Fatal(format!(
            "{name} is restart-looping (restarted {count} times, last exit code {})",
            state.exit_code.unwrap_or(0)
        )));
    }
    if state.running != Some(true) {
        let detail = match state.error.as_deref() {
            Some(err) if !err.is_empty() => format!(": {err}"),
            _ => String::new(),
        };
        return Ok(Probe::Fatal(format!(
            "{name} is {status} (exit code {}){detail}",
            state.exit_code.unwrap_or(0)
        )));
    }
    let health = state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .map(|s| s.to_string());
    Ok(match health.as_deref() {
        None | Some("none") | Some("") => {
            Probe::Healthy(format!("{name} is running (it has no HEALTHCHECK)"))
        }
        Some("healthy") => Probe::Healthy(format!("{name} is healthy")),
        Some(other) => {
            let last = crate::docker::health_log(&c).pop().unwrap_or_default();
            if last.is_empty() {
                Probe::NotYet(format!("health is {other}"))
            } else {
                Probe::NotYet(format!("health is {other}; last check: {last}"))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let s = StatusSet::parse("2xx,301").unwrap();
        assert!(s.contains(204) && s.contains(301) && !s.contains(302));
        assert_eq!(s.to_string(), "2xx,301");
        assert!(StatusSet::parse("abc").is_err());
        assert!(StatusSet::parse("700").is_err());
    }

    #[test]
    fn backoff_starts_quick_and_caps() {
        let s = Schedule::default();
        assert_eq!(s.pause(1), Duration::from_millis(25));
        assert_eq!(s.pause(2), Duration::from_millis(50));
        assert_eq!(s.pause(4), Duration::from_millis(200));
        assert_eq!(s.pause(5), Duration::from_millis(250));
        assert_eq!(s.pause(40), BACKOFF_CAP);
    }

    #[test]
    fn tcp_refused_is_not_yet() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(matches!(
            probe_tcp(&addr, Duration::from_secs(1)),
            Probe::Healthy(_)
        ));
        drop(listener);
        assert_eq!(
            probe_tcp(&addr, Duration::from_secs(1)),
            Probe::NotYet("connection refused".into())
        );
    }
}
