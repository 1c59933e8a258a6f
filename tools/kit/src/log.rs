//! Everything a person reads goes to stderr, through here: one line per message, prefixed with
//! the tool's name, quiet with `-q`, whole with `-v`, and with every registered secret replaced
//! by `[REDACTED]` before it is written. Under GitHub Actions, secrets are also masked with
//! `::add-mask::`, long logs are folded into `::group::`s and failures become `::error::`s.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

struct Logger {
    tool: &'static str,
    quiet: bool,
    verbose: bool,
    tty: bool,
    github: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Set up logging for this process. Called once by [`crate::main`]; `github`: the process runs
/// as a GitHub Actions step (workflow commands are written then).
pub fn init(tool: &'static str, quiet: bool, verbose: bool, github: bool) {
    let _ = LOGGER.set(Logger {
        tool,
        quiet,
        verbose,
        tty: std::io::stderr().is_terminal(),
        github,
    });
}

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        tool: "kit",
        quiet: false,
        verbose: false,
        tty: false,
        github: false,
    })
}

/// The name of the running tool.
pub fn tool() -> &'static str {
    logger().tool
}

pub fn is_verbose() -> bool {
    logger().verbose
}

/// Whether stderr is a terminal (progress may then redraw one line).
pub fn is_tty() -> bool {
    logger().tty
}

/// Registers a secret: from now on it never appears in anything this process writes.
/// Values shorter than 4 characters are not registered, since hiding them would garble text.
pub fn secret(value: &str) {
    let value = value.trim();
    if value.len() < 4 {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    if secrets.iter().any(|s| s == value) {
        return;
    }
    secrets.push(value.to_string());
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    drop(secrets);
    if logger().github {
        raw(&format!("::add-mask::{value}"));
    }
}

/// Replaces every registered secret in `text` with `[REDACTED]`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[REDACTED]");
        }
    }
    out
}

fn raw(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// A line of progress: `swap: starting backend-new-1a2b`. Hidden with `-q`.
pub fn info(msg: &str) {
    if logger().quiet {
        return;
    }
    raw(&redact(&format!("{}: {msg}", logger().tool)));
}

/// Detail shown only with `-v` (and always folded under GitHub Actions' groups).
pub fn debug(msg: &str) {
    if logger().verbose {
        info(msg);
    }
}

/// A warning: shown even with `-q`.
pub fn warn(msg: &str) {
    let text = redact(&format!("{}: warning: {msg}", logger().tool));
    if logger().github {
        raw(&format!("::warning::{}", one_line(&text)));
    }
    raw(&text);
}

/// An error: shown even with `-q`; an `::error::` annotation under GitHub Actions.
pub fn error(msg: &str) {
    let text = redact(&format!("{}: error: {msg}", logger().tool));
    if logger().github {
        raw(&format!(
            "::error title={}::{}",
            logger().tool,
            one_line(&text)
        ));
    }
    raw(&text);
}

/// Lines of someone else's output (a build log, a container's logs), indented under a header
/// and folded into a group under GitHub Actions. Shown even with `-q` when `always` is set
/// (a failing container's logs must be seen).
pub fn block(header: &str, lines: &[String], always: bool) {
    if logger().quiet && !always {
        return;
    }
    let tool = logger().tool;
    let mut err = std::io::stderr().lock();
    if logger().github {
        let _ = writeln!(err, "::group::{tool}: {}", redact(header));
    } else {
        let _ = writeln!(err, "{tool}: {}", redact(header));
    }
    for line in lines {
        let _ = writeln!(err, "  | {}", redact(line));
    }
    if logger().github {
        let _ = writeln!(err, "::endgroup::");
    }
}

fn one_line(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_longest_first() {
        secret("hunter2-secret");
        secret("hunter2-secret-longer");
        secret("abc");
        assert_eq!(
            redact("a hunter2-secret-longer b hunter2-secret c abc"),
            "a [REDACTED] b [REDACTED] c abc"
        );
    }
}
