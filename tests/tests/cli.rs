//! What every tool shares at the command line, run on the real binaries: the man page and the
//! shell completions (`--generate`), and a usage error that names the flag.

use testkit::{shell, tool};

const TOOLS: [(&str, &str); 7] = [
    ("img-build", "--context"),
    ("img-push", "--retries"),
    ("snapshot", "--prune-images"),
    ("healthwait", "--url"),
    ("swap", "--upstream-file"),
    ("restore", "--latest"),
    ("notify", "--to"),
];

const FAILED: &str = r#"{"version":1,"failure":{"tool":"img-build","step":"build","error":"x"}}"#;

#[test]
fn every_tool_prints_its_man_page_without_its_required_flags_or_a_record() {
    for (name, flag) in TOOLS {
        // No other flags (swap needs --service to run); a failed record on stdin is not read.
        let out = tool(name).args(["--generate", "man"]).stdin(FAILED).run();
        out.code(0);
        assert!(
            out.stdout.starts_with(".ie") || out.stdout.contains(&format!(".TH {name} 1")),
            "{name}: not a man page:\n{}",
            &out.stdout[..out.stdout.len().min(300)]
        );
        let roff_flag = flag.replace('-', "\\-");
        assert!(
            out.stdout.contains(&roff_flag),
            "{name}: the man page does not document {flag}"
        );
        assert!(
            !out.stdout.contains("\"version\""),
            "{name} printed a record"
        );
    }
}

#[test]
fn every_tool_completes_its_flags_in_bash_zsh_and_fish() {
    for (name, flag) in TOOLS {
        // bash registers the completion and, given the start of a flag, offers the flags that
        // start so, as a user's shell would on Tab.
        let prefix = &flag[..4];
        let out = shell(&format!(
            "source <({name} --generate bash) && complete -p {name} >/dev/null && \
             f=$(complete -p {name} | sed -E 's/.*-F ([^ ]+).*/\\1/') && \
             COMP_WORDS=({name} {prefix}) COMP_CWORD=1 COMP_LINE='{name} {prefix}' \
             COMP_POINT={point} && \
             \"$f\" {name} {prefix} {name} && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            point = name.len() + 1 + prefix.len(),
        ));
        assert_eq!(out.status, Some(0), "{name}: {}", out.stderr);
        let offered: Vec<&str> = out.stdout.lines().collect();
        assert!(
            offered.contains(&flag) && offered.iter().all(|o| o.starts_with(prefix)),
            "{name}: bash completes {prefix} to {offered:?}, want {flag} among flags starting so"
        );
        for (what, marker) in [
            ("zsh", format!("#compdef {name}")),
            ("fish", format!("complete -c {name}")),
        ] {
            let out = tool(name).args(["--generate", what]).run();
            out.code(0);
            assert!(out.stdout.contains(&marker), "{name} --generate {what}");
            assert!(
                out.stdout.contains(flag.trim_start_matches('-')),
                "{name} {what}: no {flag}"
            );
        }
    }
}

#[test]
fn a_usage_error_names_the_flag_on_one_line_and_exits_2() {
    let out = tool("swap").run();
    out.code(2).one_record();
    out.stderr_has("required arguments were not provided: --service <NAME>");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let out = tool("healthwait").args(["--generate", "pdf"]).run();
    out.code(2)
        .stderr_has("invalid value 'pdf' for '--generate <WHAT>'");
}

/// Whether `word` occurs in `text` as a whole name (not part of a longer NAME_LIKE_THIS).
fn whole_word(text: &str, word: &str) -> bool {
    let name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, m)| {
        !text[..i].chars().next_back().is_some_and(name)
            && !text[i + m.len()..].chars().next().is_some_and(name)
    })
}

/// Whether shell text uses `$KEY` or `${KEY…}` (the whole name).
fn uses_var(text: &str, key: &str) -> bool {
    let braced = ["}", ":", "-", "+", "?", "="]
        .iter()
        .any(|end| text.contains(&format!("${{{key}{end}")));
    let bare = text.match_indices(&format!("${key}")).any(|(i, m)| {
        !text[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    braced || bare
}

#[test]
fn every_setting_of_the_example_deploy_env_is_read_by_a_tool_or_the_justfile() {
    let root = testkit::root();
    let example = std::fs::read_to_string(root.join("examples/deploy.env")).unwrap();
    let justfile = std::fs::read_to_string(root.join("justfile")).unwrap();
    let mut known = String::new();
    for (name, _) in TOOLS {
        known.push_str(&tool(name).arg("--help").run().stdout);
    }
    let keys: Vec<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    assert!(keys.len() >= 10, "{keys:?}");
    for key in keys {
        // A variable a tool reads is named in its --help ([env: KEY=], or in the text when the
        // tool reads it itself); the recipe's own shows as $KEY or ${KEY…}; a token as ${KEY}
        // inside a notify URL of the example. Whole names only: a typo must not pass as a prefix.
        let read = whole_word(&known, key)
            || uses_var(&justfile, key)
            || example.contains(&format!("${{{key}}}"));
        assert!(read, "examples/deploy.env sets {key}, which nothing reads");
    }
}

#[test]
fn the_example_deploy_env_keeps_the_notify_token_a_reference_when_just_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        testkit::root().join("examples/deploy.env"),
        dir.path().join(".env"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("justfile"),
        "set dotenv-load := true\nshow:\n    @echo \"$NOTIFY_URLS|$TELEGRAM_TOKEN\"\n",
    )
    .unwrap();
    let out = shell(&format!("cd {} && just show", dir.path().display()));
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "tgram://${TELEGRAM_TOKEN}/-1001234567890|123456789:replace-me",
        "notify must get ${{TELEGRAM_TOKEN}} to expand, not an empty token"
    );
}
