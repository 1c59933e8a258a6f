//! notify: tell people how the deploy went, on Telegram, by email, or through a webhook.
//!
//! Reads from the record: `failure` (which tool and step failed, and why), `steps` (how long
//! each tool took), `img-build` (`tags`), `img-push` (`pushed[].tag`, `pushed[].digest`),
//! `swap` (`service`, `image`, `health_url`), `restore` (`restored`, `healthy`, `error`,
//! `snapshot.id`: whether a rollback ran and worked); every key is optional. Runs on a failed record
//! too (that is when it matters most) and never changes its `failure`. Adds `notify`:
//! `{"deploy": "ok"|"failed"|"unknown", "channels": [{"channel", "ok", "error", "ms",
//! "messages"}]}` ("unknown": an empty pipe, the tool before notify wrote no record),
//! each channel named without its secrets. Exit 0 when every channel got the message, 1 when
//! one did not, 2 for a bad channel URL or template (before anything is sent).

mod channel;
mod context;
mod email;
mod http;
mod message;
mod summary;
mod telegram;
mod template;
mod webhook;

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use kit::{Common, Done, Error, Record, Result, Tool};
use serde::Serialize;

use channel::{Channel, Kind};
use context::Context;
use http::Budget;
use message::Doc;
use summary::{Overrides, Summary, TEMPLATE_NAMES};
use template::Template;

/// Tell people how the deploy went: Telegram, email over SMTP, Slack, Discord or a JSON
/// webhook, several at once. Reads the deploy record on stdin, so it goes last in a pipe:
///
///   img-build … | img-push | swap … | notify --to 'tgram://${TELEGRAM_TOKEN}/-1001234567890'
///
/// It reports a failed deploy as faithfully as a good one (which tool, which step, why, and
/// whether it was rolled back). Every channel is tried, at the same time, each within
/// --timeout; one that fails or hangs never changes the deploy's recorded outcome. With no
/// channel, the message is printed on stderr.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// Where to send, repeatable (or several in NOTIFY_URLS, separated by spaces or commas):
    /// telegram://TOKEN@telegram?chats=@chan,123[&thread=4&silent=yes&preview=no],
    /// tgram://TOKEN/CHAT[:TOPIC], smtp://user:pass@host:587/?from=a@x&to=b@y,c@z
    /// (STARTTLS; starttls=no only to loopback), smtps://… (implicit TLS),
    /// slack://A/B/C, discord://TOKEN@ID, json://host/path or webhook+https://host/path
    /// (the summary as JSON), slack+https://… and discord+https://… for compatible servers.
    /// Write ${VAR} for a secret and set VAR, so the secret stays out of `ps`.
    #[arg(
        long = "to",
        value_name = "URL",
        env = "NOTIFY_URLS",
        hide_env_values = true
    )]
    pub to: Vec<String>,

    /// Time one channel may take, retries included (connect, send, answer)
    #[arg(long, default_value = "10s", value_name = "DURATION", env = "NOTIFY_TIMEOUT",
          value_parser = kit::parse_duration)]
    pub timeout: Duration,

    /// Time to establish a connection, within --timeout
    #[arg(long, default_value = "5s", value_name = "DURATION", env = "NOTIFY_CONNECT_TIMEOUT",
          value_parser = kit::parse_duration)]
    pub connect_timeout: Duration,

    /// Your own message: a file with {{placeholders}} (see docs/tools.md for the list)
    #[arg(
        long,
        value_name = "FILE",
        env = "NOTIFY_TEMPLATE",
        conflicts_with = "template_text"
    )]
    pub template: Option<std::path::PathBuf>,

    /// Your own message, inline: '{{icon}} {{service}} {{status}} ({{commit_short}})'
    #[arg(long, value_name = "TEXT", env = "NOTIFY_TEMPLATE_TEXT")]
    pub template_text: Option<String>,

    /// Telegram Bot API server, for a self-hosted one
    #[arg(
        long,
        value_name = "URL",
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api: String,

    /// Also trust this CA certificate (PEM) for SMTP over TLS, e.g. a company's own mail CA
    #[arg(long, value_name = "FILE", env = "NOTIFY_SMTP_CA")]
    pub smtp_ca: Option<std::path::PathBuf>,

    /// Name of the service (default: swap.service from the record)
    #[arg(long, value_name = "NAME", env = "NOTIFY_SERVICE")]
    pub service: Option<String>,

    /// The app's public URL, shown in the message (default: swap.health_url from the record)
    #[arg(long, value_name = "URL", env = "NOTIFY_APP_URL")]
    pub app_url: Option<String>,

    /// Repository (default: GITHUB_REPOSITORY, else git's origin remote)
    #[arg(long, value_name = "OWNER/NAME", env = "NOTIFY_REPOSITORY")]
    pub repository: Option<String>,

    /// Branch (default: GITHUB_REF_NAME, else git's current branch)
    #[arg(long, value_name = "NAME", env = "NOTIFY_BRANCH")]
    pub branch: Option<String>,

    /// Commit id (default: GITHUB_SHA, else git's HEAD)
    #[arg(long, value_name = "SHA", env = "NOTIFY_COMMIT")]
    pub commit: Option<String>,

    /// Commit message; its first line is shown (default: from git)
    #[arg(long, value_name = "TEXT", env = "NOTIFY_COMMIT_MESSAGE")]
    pub commit_message: Option<String>,

    /// Who deployed (default: GITHUB_ACTOR, else the commit's author)
    #[arg(long, value_name = "NAME", env = "NOTIFY_AUTHOR")]
    pub author: Option<String>,

    /// Link to the CI run (default: built from GITHUB_SERVER_URL, GITHUB_REPOSITORY and
    /// GITHUB_RUN_ID)
    #[arg(long, value_name = "URL", env = "NOTIFY_RUN_URL")]
    pub run_url: Option<String>,

    #[command(flatten)]
    pub common: Common,
}

/// What one channel got.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Messages the service accepted (a long Telegram message is several).
    pub messages: u32,
    pub error: Option<String>,
}

/// One channel's line in the record.
#[derive(Debug, Serialize)]
struct Report {
    channel: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    ms: u64,
    messages: u32,
}

#[derive(Debug, Serialize)]
struct Outcome {
    deploy: &'static str,
    channels: Vec<Report>,
}

/// Everything a sender thread needs, shared.
struct Job {
    summary: Summary,
    doc: Doc,
    telegram_api: String,
    smtp_ca: Option<Vec<u8>>,
}

impl Tool for Args {
    const NAME: &'static str = "notify";
    const ACTS_ON_FAILURE: bool = true;

    fn common(&self) -> &Common {
        &self.common
    }

    fn run(self, record: &mut Record) -> Result<Done> {
        let problem = (!record_arrived(record)).then(|| NO_RECORD.to_string());
        self.tell(record, problem)
    }

    /// A record that does not parse: the deploy's outcome is unknown, and people are told so.
    fn on_unreadable(self, record: &mut Record, err: &Error) -> Option<serde_json::Value> {
        let problem = format!(
            "the deploy record on stdin was unreadable: {err}. See the run's log for the tool \
             before notify"
        );
        match self.tell(record, Some(problem)) {
            Ok(done) => Some(done.result),
            Err(e) => {
                kit::log::error(&e.to_string());
                None
            }
        }
    }
}

/// Why the outcome is unknown when a pipe delivered no record at all.
pub const NO_RECORD: &str = "no deploy record arrived on stdin: the tool before notify wrote \
                             nothing (did it crash or get killed?); see the run's log";

impl Args {
    /// Sends the message about `record` to every channel; `stdin_problem` says why the
    /// deploy's outcome is unknown.
    fn tell(self, record: &mut Record, stdin_problem: Option<String>) -> Result<Done> {
        // Everything that can be wrong with the input is found before anything is sent.
        if self.timeout.is_zero() {
            return Err(Error::input("--timeout", "must be more than 0"));
        }
        let channels = self.channels()?;
        let template = self.template()?;
        let telegram_api = self.telegram_api()?;
        let smtp_ca = self.smtp_ca(&channels)?;

        // The end of the pipe writes the deploy's step summary (a table and a Mermaid gantt).
        if kit::github::is_actions() {
            kit::github::summary(&kit::github::summary_markdown(record));
        }

        let context = Context {
            repository: self.repository,
            branch: self.branch,
            commit: self.commit,
            commit_message: self.commit_message,
            author: self.author,
            run_url: self.run_url,
            commit_url: None,
        }
        .resolve();
        let overrides = Overrides {
            service: self.service,
            url: self.app_url,
        };
        let mut summary = Summary::read(record, stdin_problem, context, overrides);
        let mut doc = summary.doc();
        if let Some(t) = &template {
            let text = t.render(&summary.values(&doc.plain()));
            doc = Doc::from_text(&text);
            if let Some(first) = text.lines().find(|l| !l.trim().is_empty()) {
                summary.title = first.trim().to_string();
            }
        }
        summary.text = doc.plain();

        if channels.is_empty() {
            let lines: Vec<String> = summary.text.lines().map(String::from).collect();
            kit::log::block(
                "no channel configured (--to URL or NOTIFY_URLS); the message:",
                &lines,
                true,
            );
            return Ok(Done::ok(Outcome {
                deploy: summary.outcome,
                channels: Vec::new(),
            }));
        }

        let deploy = summary.outcome;
        let job = Arc::new(Job {
            summary,
            doc,
            telegram_api,
            smtp_ca,
        });
        let reports = send_all(channels, &job, self.timeout, self.connect_timeout);
        let all_ok = reports.iter().all(|r| r.ok);
        let outcome = Outcome {
            deploy,
            channels: reports,
        };
        Ok(if all_ok {
            Done::ok(outcome)
        } else {
            Done::partial(outcome)
        })
    }

    fn channels(&self) -> Result<Vec<Channel>> {
        let mut channels = Vec::new();
        for url in self.to.iter().flat_map(|v| channel::split_list(v)) {
            let expanded = channel::expand_env(&url).map_err(|e| Error::input("--to", e))?;
            match Channel::parse(&expanded) {
                Ok(c) => {
                    if c.has_secret && on_command_line(&expanded) {
                        kit::log::warn(&format!(
                            "{}: its secret is on the command line, where `ps` shows it; put \
                             the URL in NOTIFY_URLS, or write ${{VAR}} in its place and set VAR",
                            c.name
                        ));
                    }
                    channels.push(c)
                }
                Err(bad) => {
                    return Err(Error::input(
                        "--to",
                        format!("bad channel {}: {}", bad.shown, bad.why),
                    ))
                }
            }
        }
        Ok(channels)
    }

    fn template(&self) -> Result<Option<Template>> {
        let (flag, text) = match (&self.template, &self.template_text) {
            (Some(path), _) => (
                "--template",
                std::fs::read_to_string(path).map_err(|e| {
                    Error::input("--template", format!("cannot read {}: {e}", path.display()))
                })?,
            ),
            (None, Some(text)) => ("--template-text", text.clone()),
            (None, None) => return Ok(None),
        };
        let template = Template::parse(&text, TEMPLATE_NAMES).map_err(|e| Error::input(flag, e))?;
        Ok(Some(template))
    }

    fn telegram_api(&self) -> Result<String> {
        let api = self.telegram_api.trim().trim_end_matches('/').to_string();
        match url::Url::parse(&api) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(api),
            _ => Err(Error::input(
                "--telegram-api",
                format!("'{api}' is not an http(s) URL"),
            )),
        }
    }

    fn smtp_ca(&self, channels: &[Channel]) -> Result<Option<Vec<u8>>> {
        let Some(path) = &self.smtp_ca else {
            return Ok(None);
        };
        if !channels.iter().any(|c| matches!(c.kind, Kind::Email(_))) {
            return Ok(None);
        }
        let pem = std::fs::read(path).map_err(|e| {
            Error::input("--smtp-ca", format!("cannot read {}: {e}", path.display()))
        })?;
        if lettre::transport::smtp::client::Certificate::from_pem(&pem).is_err() {
            return Err(Error::input(
                "--smtp-ca",
                format!("{} is not a PEM certificate", path.display()),
            ));
        }
        Ok(Some(pem))
    }
}

/// Whether a record came down the pipe. A fresh record (nothing but what [`Record::fresh`]
/// puts in) read from a pipe means the tool before notify wrote nothing: it crashed or was
/// killed, and its outcome is unknown. From a terminal or /dev/null a fresh record is normal
/// (notify run by hand, to try a channel).
fn record_arrived(record: &Record) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let fresh = record
        .as_map()
        .keys()
        .all(|k| matches!(k.as_str(), "version" | "id" | "started_at"));
    let piped = std::fs::metadata("/dev/stdin")
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false);
    !(fresh && piped)
}

/// Whether `url` was typed as an argument (rather than read from NOTIFY_URLS or `${VAR}`).
fn on_command_line(url: &str) -> bool {
    kit::typed_args().iter().any(|a| a.contains(url))
}

/// Sends to every channel at once, each on its own thread within `timeout`; a channel still
/// busy past that is reported as timed out and left behind, so the whole stays within
/// `timeout` plus a moment.
fn send_all(
    channels: Vec<Channel>,
    job: &Arc<Job>,
    timeout: Duration,
    connect: Duration,
) -> Vec<Report> {
    let started = Instant::now();
    let budget = Budget {
        deadline: started + timeout,
        timeout,
        connect,
    };
    let (tx, rx) = mpsc::channel();
    for (i, channel) in channels.iter().enumerate() {
        let (tx, job, channel) = (tx.clone(), Arc::clone(job), channel.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let delivery = send_one(&channel, &job, &budget);
            let _ = tx.send((i, delivery, t.elapsed()));
        });
    }
    drop(tx);

    let mut got: Vec<Option<(Delivery, Duration)>> = channels.iter().map(|_| None).collect();
    let grace = budget.deadline + Duration::from_millis(500);
    while got.iter().any(Option::is_none) {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, delivery, took)) => got[i] = Some((delivery, took)),
            Err(_) => break,
        }
    }

    channels
        .iter()
        .zip(got)
        .map(|(channel, result)| {
            let (delivery, took) = result.unwrap_or_else(|| {
                (
                    Delivery {
                        messages: 0,
                        error: Some(budget.timed_out()),
                    },
                    started.elapsed(),
                )
            });
            let report = Report {
                channel: channel.name.clone(),
                ok: delivery.error.is_none(),
                error: delivery.error,
                ms: took.as_millis() as u64,
                messages: delivery.messages,
            };
            match &report.error {
                None => kit::log::info(&format!(
                    "{}: sent ({} message{}, {})",
                    report.channel,
                    report.messages,
                    if report.messages == 1 { "" } else { "s" },
                    kit::human(took)
                )),
                Some(e) => kit::log::warn(&format!("{}: not sent: {e}", report.channel)),
            }
            report
        })
        .collect()
}

fn send_one(channel: &Channel, job: &Job, budget: &Budget) -> Delivery {
    match &channel.kind {
        Kind::Telegram(t) => telegram::send(t, &job.telegram_api, &job.doc, budget),
        Kind::Email(e) => email::send(
            e,
            &job.summary.title,
            &job.doc,
            job.smtp_ca.as_deref(),
            budget,
        ),
        Kind::Webhook(w) => webhook::send(w, &job.summary, &job.doc, budget),
    }
}
