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

/// The deploy as Markdown for `$GITHUB_STEP_SUMMARY`: the outcome, a table of the steps and a
/// Mermaid gantt of their timings (GitHub renders both).
pub fn summary_markdown(record: &crate::Record) -> String {
    let mut md = String::new();
    match record.failure() {
        Some(f) => md.push_str(&format!(
            "### Deploy failed: {} at {}\n\n> {}\n\n",
            f.tool,
            f.step,
            f.error.replace('\n', " ")
        )),
        None => md.push_str("### Deploy succeeded\n\n"),
    }
    let steps: Vec<&serde_json::Value> = record
        .get("steps")
        .and_then(|s| s.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if steps.is_empty() {
        return md;
    }
    md.push_str("| step | outcome | started | time |\n|---|---|---|---|\n");
    for s in &steps {
        let ms = s["ms"].as_u64().unwrap_or(0);
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            s["tool"].as_str().unwrap_or("?"),
            s["outcome"].as_str().unwrap_or("?"),
            s["started_at"].as_str().unwrap_or(""),
            crate::human(std::time::Duration::from_millis(ms))
        ));
    }
    md.push_str(
        "\n```mermaid\ngantt\n    title Deploy steps\n    dateFormat x\n    axisFormat %M:%S\n",
    );
    for s in &steps {
        let start = s["started_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        let Some(start) = start else { continue };
        let ms = s["ms"].as_u64().unwrap_or(0).max(1);
        let tag = match s["outcome"].as_str() {
            Some("ok") => "",
            Some("skipped") => "done, ",
            _ => "crit, ",
        };
        md.push_str(&format!(
            "    {} : {tag}{start}, {}\n",
            s["tool"].as_str().unwrap_or("?"),
            start + ms as i64
        ));
    }
    md.push_str("```\n");
    md
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
    fn summary_has_a_table_and_a_gantt() {
        let mut r = crate::Record::fresh();
        r.add_step(
            "swap",
            crate::Exit::Failure,
            "2026-11-26T23:30:00.000Z",
            1500,
        );
        r.set_failure("swap", &crate::Error::step("health", "never healthy"));
        let md = super::summary_markdown(&r);
        assert!(md.starts_with("### Deploy failed: swap at health"), "{md}");
        assert!(
            md.contains("| swap | failed | 2026-11-26T23:30:00.000Z | 1.5s |"),
            "{md}"
        );
        assert!(
            md.contains("    swap : crit, 1795735800000, 1795735801500"),
            "{md}"
        );
    }

    #[test]
    fn multiline_values_use_a_delimiter() {
        assert_eq!(super::entry("a", "b"), "a=b\n");
        assert!(super::entry("a", "b\nc").starts_with("a<<EOF_"));
    }
}
