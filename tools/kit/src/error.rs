//! One error type for every tool, and the one mapping from errors to exit codes.
//!
//! The exit codes are part of the contract (docs/contract.md) and the same in every tool:
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | the tool did its job |
//! | 1    | the tool tried and failed; the record says what, where and why |
//! | 2    | bad input: usage, a record that is not JSON, a field of the wrong type; nothing changed |
//! | 3    | not run: the record carries an upstream failure, passed through untouched |

use std::process::ExitCode;

/// What a tool's run ends with. Converted into a process exit code in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the job is done.
    Success,
    /// 1: the job failed (recorded under `failure`, or per channel for notify).
    Failure,
    /// 2: bad input or usage; nothing was changed.
    BadInput,
    /// 3: an upstream tool failed; this one passed the record through without acting.
    Skipped,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::BadInput => 2,
            Exit::Skipped => 3,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// Everything that can go wrong, with the context a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a flag, an environment variable or a record field. Exit 2, nothing changed.
    #[error("{field}: {message}")]
    Input { field: String, message: String },

    /// A step of the tool's job failed. `step` names the step (`build`, `health`, `switch`, ...).
    #[error("{message}")]
    Step { step: String, message: String },

    /// The Docker Engine answered with an error, or could not be reached.
    #[error("{context}: {}", docker_message(source))]
    Docker {
        step: String,
        context: String,
        #[source]
        source: bollard::errors::Error,
    },

    /// A file or stream could not be read or written.
    #[error("{context}: {source}")]
    Io {
        step: String,
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// SIGINT or SIGTERM arrived; the tool cleaned up what it had made.
    #[error("interrupted by {signal} during {step}")]
    Interrupted { step: String, signal: String },
}

impl Error {
    /// Bad input naming the field (a flag such as `--url`, or a record path such as `swap.image`).
    pub fn input(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Input {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A failed step of the job.
    pub fn step(step: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Step {
            step: step.into(),
            message: message.into(),
        }
    }

    pub fn docker(
        step: impl Into<String>,
        context: impl Into<String>,
        source: bollard::errors::Error,
    ) -> Error {
        Error::Docker {
            step: step.into(),
            context: context.into(),
            source,
        }
    }

    pub fn io(
        step: impl Into<String>,
        context: impl Into<String>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            step: step.into(),
            context: context.into(),
            source,
        }
    }

    /// The step the error happened in, as recorded under `failure.step`.
    pub fn step_name(&self) -> &str {
        match self {
            Error::Input { .. } => "input",
            Error::Step { step, .. }
            | Error::Docker { step, .. }
            | Error::Io { step, .. }
            | Error::Interrupted { step, .. } => step,
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Error::Input { .. } => Exit::BadInput,
            _ => Exit::Failure,
        }
    }
}

/// The daemon's own message, without bollard's wrapping ("Docker responded with status code
/// 404: No such container: x" reads better as "No such container: x (404)").
fn docker_message(err: &bollard::errors::Error) -> String {
    use bollard::errors::Error as B;
    match err {
        B::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} ({status_code})"),
        B::DockerStreamError { error } => error.clone(),
        B::HyperLegacyError { .. } | B::IOError { .. } => {
            format!(
                "cannot reach the Docker Engine ({err}); is it running, and is DOCKER_HOST right?"
            )
        }
        other => other.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
