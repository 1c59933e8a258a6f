//! One POST with a deadline, retried the way chat services ask: a 429 waits out its
//! `retry_after` (if that fits in the time left), a 5xx or a refused connection is tried again
//! a bounded number of times, and nothing ever runs past the channel's deadline.

use std::time::{Duration, Instant};

use serde_json::Value;

/// The time one channel may take.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Instant,
    /// The whole `--timeout`, for saying what ran out.
    pub timeout: Duration,
    pub connect: Duration,
}

impl Budget {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn timed_out(&self) -> String {
        format!("no answer within {}", kit::human(self.timeout))
    }
}

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// How many requests it took.
    pub attempts: u32,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `HTTP 404: not found`, the body cut to one short line.
    pub fn describe(&self) -> String {
        let body: String = self
            .body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(200)
            .collect();
        let tries = if self.attempts > 1 {
            format!(" (after {} attempts)", self.attempts)
        } else {
            String::new()
        };
        if body.is_empty() {
            format!("HTTP {}{tries}", self.status)
        } else {
            format!("HTTP {}: {body}{tries}", self.status)
        }
    }
}

const MAX_ATTEMPTS: u32 = 3;
const MAX_RATE_LIMITED: u32 = 3;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

pub fn agent(budget: &Budget) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(budget.connect.min(budget.timeout)))
        .user_agent(concat!("deploykit-notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// POSTs `body` as JSON to `url` until it is answered for good or the budget runs out.
/// `Err` is a sentence for the record; it never holds the URL (which may hold a token).
pub fn post_json(
    agent: &ureq::Agent,
    url: &str,
    body: &str,
    budget: &Budget,
) -> Result<Answer, String> {
    let mut attempts = 0;
    let mut rate_limited = 0;
    loop {
        attempts += 1;
        let left = budget.left();
        if left.is_zero() {
            return Err(budget.timed_out());
        }
        let answer = agent
            .post(url)
            .header("Content-Type", "application/json")
            .config()
            .timeout_global(Some(left))
            .build()
            .send(body);
        let (answer, wait) = match answer {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let header_wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok());
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_string()
                    .unwrap_or_default();
                let answer = Answer {
                    status,
                    body,
                    attempts,
                };
                match status {
                    429 => {
                        rate_limited += 1;
                        // Telegram puts it in the body, others in the Retry-After header.
                        let secs = answer.json()["parameters"]["retry_after"]
                            .as_f64()
                            .or(header_wait)
                            .unwrap_or(1.0)
                            .max(0.0);
                        let wait = Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER);
                        if rate_limited > MAX_RATE_LIMITED {
                            return Err(format!(
                                "rate limited (HTTP 429) {MAX_RATE_LIMITED} times in a row"
                            ));
                        }
                        if wait >= budget.left() {
                            return Err(format!(
                                "rate limited (HTTP 429): asked to retry after {}, beyond the \
                                 {} timeout",
                                kit::human(Duration::from_secs_f64(secs)),
                                kit::human(budget.timeout)
                            ));
                        }
                        // Waiting as asked is not a failed attempt.
                        attempts -= 1;
                        (answer.describe(), wait)
                    }
                    500..=599 if attempts < MAX_ATTEMPTS => (answer.describe(), backoff(attempts)),
                    _ => return Ok(answer),
                }
            }
            Err(ureq::Error::Timeout(ureq::Timeout::Connect)) => {
                return Err(format!(
                    "could not connect within {}",
                    kit::human(budget.connect.min(budget.timeout))
                ))
            }
            Err(ureq::Error::Timeout(_)) => return Err(budget.timed_out()),
            Err(e) if attempts < MAX_ATTEMPTS && retryable(&e) => (words(&e), backoff(attempts)),
            Err(e) => return Err(words(&e)),
        };
        kit::log::debug(&format!(
            "attempt {attempts}: {answer}; again in {}",
            kit::human(wait)
        ));
        if wait >= budget.left() {
            return Err(format!("{answer}; no time left to try again"));
        }
        std::thread::sleep(wait);
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(4))
}

fn retryable(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::ConnectionFailed | ureq::Error::Io(_))
}

/// A network error in words, without the URL.
fn words(e: &ureq::Error) -> String {
    use std::io::ErrorKind as K;
    match e {
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused => "connection refused".into(),
            K::ConnectionReset => "connection reset".into(),
            K::TimedOut => "connection timed out".into(),
            K::UnexpectedEof => "connection closed before an answer".into(),
            _ => format!("network error: {io}"),
        },
        ureq::Error::HostNotFound => "host not found (DNS)".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::BadUri(_) => "invalid URL".into(),
        ureq::Error::Rustls(e) => format!("TLS: {e}"),
        other => other.to_string(),
    }
}
