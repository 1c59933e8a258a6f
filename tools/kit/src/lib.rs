//! What every tool of the deploy toolkit shares: the deploy record, errors and exit codes,
//! reading stdin and writing stdout (once, here), logging to stderr, GitHub Actions helpers,
//! and the Docker and health-check code more than one tool needs.
//!
//! A tool is a `clap::Parser` that implements [`Tool`]; its `main.rs` is one line:
//! `fn main() -> std::process::ExitCode { kit::main::<healthwait::Args>() }`.

pub mod docker;
pub mod endpoint;
pub mod envfile;
pub mod error;
pub mod github;
pub mod health;
pub mod image;
pub mod lock;
pub mod log;
pub mod record;
pub mod registry;
pub mod signals;
pub mod swarm;

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use error::{Error, Exit, Result};
pub use record::Record;
use serde_json::Value;

/// Flags every tool has. Flatten it into the tool's `Args`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Common {
    /// Print only warnings and errors on stderr.
    #[arg(short, long, global = true, env = "DEPLOY_QUIET")]
    pub quiet: bool,
    /// Print everything: whole build logs, every probe, every Docker call.
    #[arg(
        short,
        long,
        global = true,
        env = "DEPLOY_VERBOSE",
        conflicts_with = "quiet"
    )]
    pub verbose: bool,
    /// Print this tool's man page (`man`) or its shell completions (`bash`, `zsh`, `fish`,
    /// `elvish`, `powershell`) on stdout, and exit. Reads no record
    #[arg(long, value_enum, value_name = "WHAT")]
    pub generate: Option<Generate>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    Man,
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

/// What a tool's run produced: its result (stored under the tool's key) and how it ended.
#[derive(Debug)]
pub struct Done {
    pub result: Value,
    pub exit: Exit,
}

impl Done {
    /// The job is done: exit 0.
    pub fn ok(result: impl serde::Serialize) -> Done {
        Done {
            result: serde_json::to_value(result).unwrap_or(Value::Null),
            exit: Exit::Success,
        }
    }

    /// The job ended without recording a deploy failure but not fully done (e.g. a notification
    /// channel that did not get the message): exit 1, and the record's outcome is unchanged.
    pub fn partial(result: impl serde::Serialize) -> Done {
        Done {
            exit: Exit::Failure,
            ..Done::ok(result)
        }
    }
}

/// One tool of the toolkit.
pub trait Tool: clap::Parser {
    /// The binary's name, which is also the record key the tool owns.
    const NAME: &'static str;
    /// Tools that act on an upstream failure (notify reports it, restore rolls back). All
    /// others pass a failed record through untouched and exit 3.
    const ACTS_ON_FAILURE: bool = false;

    fn common(&self) -> &Common;

    /// The command line definition: the derived one, which a tool may adjust (restore reads
    /// swap's traffic flags from its own `RESTORE_*` variables). `--help`, `--generate` and
    /// parsing all go through it.
    fn cli() -> clap::Command {
        Self::command()
    }

    /// Does the job. Reads what it needs from `record`; may store a partial result under its own
    /// key before returning an error. The returned result is stored under [`Tool::NAME`].
    fn run(self, record: &mut Record) -> Result<Done>;

    /// Stdin held something that is not a deploy record (the tool before broke off mid-write).
    /// Every tool stops there with exit 2; this is its chance to act anyway (notify tells
    /// people the outcome is unknown). Returns the result to store under [`Tool::NAME`].
    fn on_unreadable(self, _record: &mut Record, _err: &Error) -> Option<Value>
    where
        Self: Sized,
    {
        None
    }
}

/// The whole life of a tool process: parse flags, read the record, run, write the record once.
pub fn main<T: Tool>() -> ExitCode {
    // Before the flags are checked: a man page needs no --service.
    if let Some(what) = generate_request() {
        return generate::<T>(what);
    }
    let parsed = T::cli()
        .try_get_matches()
        .and_then(|mut matches| T::from_arg_matches_mut(&mut matches));
    let args = match parsed {
        Ok(args) => args,
        Err(err) => return usage_error::<T>(err),
    };
    log::init(
        T::NAME,
        args.common().quiet,
        args.common().verbose,
        github::is_actions(),
    );

    // In a pipe every tool starts at once and waits for the record: its step starts when the
    // record has arrived, so `steps[].ms` is the tool's own time, not the pipe's so far.
    let record = Record::from_stdin();
    let started = Instant::now();
    let started_at = record::now_rfc3339();
    let mut record = match record {
        Ok(record) => record,
        Err(err) => {
            // Not a record at all: say so on stdout too, in a fresh record.
            log::error(&err.to_string());
            let mut record = Record::fresh();
            if let Some(result) = args.on_unreadable(&mut record, &err) {
                record.set(T::NAME, result);
            }
            record.set_failure(T::NAME, &err);
            record.add_step(T::NAME, err.exit(), &started_at, 0);
            return finish(&record, err.exit());
        }
    };

    if let Some(failure) = record.failure() {
        if !T::ACTS_ON_FAILURE {
            log::info(&format!(
                "not run: {} failed at {} ({}); passing the record on",
                failure.tool, failure.step, failure.error
            ));
            record.add_step(T::NAME, Exit::Skipped, &started_at, 0);
            return finish(&record, Exit::Skipped);
        }
    }

    let exit = match args.run(&mut record) {
        Ok(done) => {
            record.set(T::NAME, done.result);
            done.exit
        }
        Err(err) => {
            log::error(&err.to_string());
            record.set_failure(T::NAME, &err);
            err.exit()
        }
    };
    record.add_step(T::NAME, exit, &started_at, started.elapsed().as_millis());
    finish(&record, exit)
}

/// A flag that clap refused: one line on stderr, the record passed on with the failure, exit 2.
/// `--help` and `--version` print and exit 0 without reading stdin.
fn usage_error<T: Tool>(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return Exit::Success.into();
    }
    log::init(T::NAME, false, false, github::is_actions());
    let rendered = err.render().to_string();
    // clap's first paragraph, on one line: "the following required arguments were not
    // provided: --service <NAME>" names the flag only on its second line.
    let line = rendered
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.trim_start_matches("error: ");
    let line = if line.is_empty() { "bad usage" } else { line };
    let err = Error::input("usage", format!("{line} (see {} --help)", T::NAME));
    log::error(&err.to_string());
    let mut record = Record::from_stdin().unwrap_or_default();
    record.set_failure(T::NAME, &err);
    record.add_step(T::NAME, Exit::BadInput, &record::now_rfc3339(), 0);
    finish(&record, Exit::BadInput)
}

/// `--generate WHAT` (or `--generate=WHAT`) among the arguments, when WHAT is known; clap
/// reports a bad or missing WHAT.
fn generate_request() -> Option<Generate> {
    use clap::ValueEnum;
    let args = typed_args();
    let value = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.as_str() {
            "--generate" => args.get(i + 1).map(String::as_str),
            _ => a.strip_prefix("--generate="),
        })?;
    Generate::from_str(value, false).ok()
}

/// `--generate`: the man page or completions, from the same clap definition as `--help`.
fn generate<T: Tool>(what: Generate) -> ExitCode {
    use clap_complete::Shell;
    let mut cmd = T::cli();
    let mut out = Vec::new();
    let shell = match what {
        Generate::Man => None,
        Generate::Bash => Some(Shell::Bash),
        Generate::Zsh => Some(Shell::Zsh),
        Generate::Fish => Some(Shell::Fish),
        Generate::Elvish => Some(Shell::Elvish),
        Generate::Powershell => Some(Shell::PowerShell),
    };
    match shell {
        Some(shell) => clap_complete::generate(shell, &mut cmd, T::NAME, &mut out),
        None => {
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
                log::init(T::NAME, false, false, github::is_actions());
                log::error(&format!("cannot render the man page: {e}"));
                return Exit::Failure.into();
            }
        }
    }
    match std::io::stdout().lock().write_all(&out) {
        Ok(()) => Exit::Success.into(),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Success.into(),
        Err(e) => {
            log::init(T::NAME, false, false, github::is_actions());
            log::error(&format!("cannot write to stdout: {e}"));
            Exit::Failure.into()
        }
    }
}

/// Writes the record: the one place a record reaches stdout. A closed stdout (`| head`) is not
/// an error.
fn finish(record: &Record, exit: Exit) -> ExitCode {
    let line = record.to_redacted_line();
    if github::is_actions() {
        github::output("record", &line);
        github::output(
            "outcome",
            if exit == Exit::Success {
                "ok"
            } else {
                "failed"
            },
        );
    }
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => log::error(&format!("cannot write the record to stdout: {e}")),
    }
    exit.into()
}

/// Whether a long flag (`--strategy`) was typed on the command line, as `--strategy X` or
/// `--strategy=X`, rather than coming from its environment variable: for a tool that lets
/// what it knows better (the record) win over settings, but never over what was typed.
pub fn given_on_command_line(long: &str) -> bool {
    let with_value = format!("{long}=");
    typed_args()
        .iter()
        .any(|a| a == long || a.starts_with(&with_value))
}

/// The arguments as typed, in order. One that is not UTF-8 (a file name) comes lossily
/// converted: it can never equal a flag, and reading it never panics (`std::env::args` would).
pub fn typed_args() -> Vec<String> {
    std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Parses a human duration for a flag: `500ms`, `2s`, `1m30s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration ({e}); try 500ms, 2s or 1m"))
}

/// A duration as a person reads it: `1.2s`, `340ms`.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").unwrap_err().contains("'soon'"));
        assert_eq!(human(Duration::from_millis(1250)), "1.2s");
    }
}
