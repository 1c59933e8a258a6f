//! GitHub Actions: detection, step outputs and the step summary.
//!
//! Every tool writes `record` (the whole record, one line) and `outcome` to `$GITHUB_OUTPUT`,
//! so a later step can read `steps.<id>.outputs.record`. Workflow commands (`::group::`,
//! `::error::`, `::add-mask::`) are written by [`crate::log`].

use std::io::Write;

/// Whether this process runs as a GitHub Actions step.
pub fn is_actions() -> bool {
    std::env::var_os("GITHUB_ACTIONS").is_some_and(|v| v == "true")
}

/// Appends `key=value` to `$GITHUB_OUTPUT` (multi-line values use a heredoc delimiter).
pub fn output(key: &str, value: &str) {
    append_env_file("GITHUB_OUTPUT", &entry(key, value));
}

/// Appends Markdown to `$GITHUB_STEP_SUMMARY`.
pub fn summary(markdown: &str) {
    append_env_file("GITHUB_STEP_SUMMARY", markdown);
}

fn entry(key: &str, value: &str) -> String {
    if value.contains('\n') {
        let delim = format!("EOF_{}", std::process::id());
        format!("{key}<<{delim}\n{value}\n{delim}\n")
    } else {
        format!("{key}={value}\n")
    }
}

fn append_env_file(var: &str, text: &str) {
    let Some(path) = std::env::var_os(var) else {
        return;
    };
    let text = crate::log::redact(text);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path);
    match file.and_then(|mut f| f.write_all(text.as_bytes())) {
        Ok(()) => {}
        Err(e) => crate::log::warn(&format!("cannot write ${var}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn multiline_values_use_a_delimiter() {
        assert_eq!(super::entry("a", "b"), "a=b\n");
        assert!(super::entry("a", "b\nc").starts_with("a<<EOF_"));
    }
}
