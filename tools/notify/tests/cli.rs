//! notify as a user meets it: out of the box with no channel, bad URLs, several channels at
//! once with one hanging, in a failing pipe, with templates, with GitHub's or git's context,
//! and never showing a secret.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::{json, shell, tool, StubServer, Value};

const TOKEN: &str = "123456789:AAtelegram-token-for-cli-tests";

#[test]
fn with_no_channel_the_message_goes_to_stderr() {
    let out = notify().record(&failed()).run();
    out.code(0)
        .one_record()
        .stderr_has("no channel configured (--to URL or NOTIFY_URLS); the message:")
        .stderr_has("  | ❌ backend deploy FAILED — acme/shop@main")
        .stderr_has("  | Failed: swap (health): backend-new never became healthy")
        .stderr_has(&format!("  | Commit: 0123456 {NASTY} — alice"));
    assert_eq!(
        out.record["notify"],
        json!({"deploy": "failed", "channels": []})
    );
    assert_eq!(out.record["failure"], failed()["failure"]);
    // And with nothing on stdin at all: a fresh record, a message all the same.
    notify()
        .run()
        .code(0)
        .stderr_has("  | ✅ Deploy succeeded — acme/shop@main");
}

#[test]
fn a_bad_channel_url_is_exit_2_before_anything_is_sent() {
    let api = bot();
    let cases = [
        (
            "tgram://123456789:AAsecret-in-a-bad-url/not-a-chat",
            "bad channel tgram://***/not-a-chat: chat 'not-a-chat' is neither",
        ),
        (
            "telegram://123456789:AAsecret-in-a-bad-url@telegram",
            "bad channel telegram://***@telegram: no chat",
        ),
        (
            "smtp://me:AAsecret-in-a-bad-url@mail.example.com/?from=me@example.com",
            "bad channel smtp://me:***@mail.example.com:587/?from=me@example.com: no recipient",
        ),
        (
            "gopher://AAsecret-in-a-bad-url@example.com/x",
            "bad channel gopher://***@example.com/…: unknown channel 'gopher'",
        ),
    ];
    for (bad, says) in cases {
        let out = notify()
            .args(["--telegram-api", &api.url()])
            .args(["--to", &format!("tgram://{TOKEN}/123"), "--to", bad])
            .record(&failed())
            .run();
        out.code(2)
            .one_record()
            .stderr_has(&format!("--to: {says}"))
            .stderr_lacks("AAsecret-in-a-bad-url");
        assert!(!out.stdout.contains("AAsecret-in-a-bad-url"));
        // The upstream failure is still the one recorded.
        assert_eq!(out.record["failure"], failed()["failure"]);
    }
    assert!(api.requests().is_empty(), "something was sent");

    let out = notify()
        .args(["--to", "json://127.0.0.1:9/x", "--timeout", "soon"])
        .run();
    out.code(2).stderr_has("--timeout");
}

#[test]
fn all_channels_at_once_and_a_hanging_one_costs_only_its_timeout() {
    let hanging = StubServer::start(|_| None);
    let hook = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let slack = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let out = notify()
        .args(["--telegram-api", &hanging.url(), "--timeout", "2s"])
        .args(["--to", &format!("tgram://{TOKEN}/123")])
        .args(["--to", &format!("json://{}/hook", hook.addr)])
        .args(["--to", &format!("slack+http://{}/s", slack.addr)])
        .record(&deployed())
        .run();
    out.code(1).one_record();
    let channels = out.record["notify"]["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 3);
    assert_eq!(channels[0]["ok"], false);
    assert_eq!(channels[0]["error"], "no answer within 2.0s");
    assert_eq!(
        (channels[1]["ok"].clone(), channels[2]["ok"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(hook.requests().len(), 1);
    assert_eq!(slack.requests().len(), 1);
    // Bounded: the hang cost the timeout, not the server's whim (the bench measures how close
    // to the timeout it ends).
    assert!(out.elapsed < Duration::from_secs(8), "{:?}", out.elapsed);
    assert!(out.record.get("failure").is_none());
}

#[test]
fn in_a_failing_pipe_it_reports_the_failure_and_the_pipe_stays_red() {
    let hook = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let closed = testkit::free_port();
    let out = shell(&format!(
        "healthwait --tcp 127.0.0.1:{closed} --timeout 300ms \
         | notify --to json://{}/hook --repository acme/shop --branch main",
        hook.addr
    ));
    out.code(1).one_record();
    let sent: Value = serde_json::from_str(&hook.requests()[0].body).unwrap();
    assert_eq!(sent["outcome"], "failed");
    assert_eq!(sent["failure"]["tool"], "healthwait");
    assert_eq!(sent["failure"]["step"], "health");
    assert!(sent["text"]
        .as_str()
        .unwrap()
        .contains("Failed: healthwait (health): tcp://127.0.0.1:"));
    out.failure_from("healthwait");
    let steps: Vec<&str> = out.record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tool"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["healthwait", "notify"]);
    assert_eq!(out.record["notify"]["channels"][0]["ok"], true);
}

/// `upstream | notify --to <json hook>`: what the hook received and what the pipe printed.
fn notify_after(upstream: &str) -> (Value, testkit::Out) {
    let hook = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let out = shell(&format!(
        "{upstream} | notify --to json://{}/hook --repository acme/shop --branch main",
        hook.addr
    ));
    let sent = serde_json::from_str(&hook.requests()[0].body).unwrap();
    (sent, out)
}

/// The message says the outcome is unknown, and why.
fn assert_unknown(sent: &Value, out: &testkit::Out, why: &str) {
    assert_eq!(sent["outcome"], "unknown");
    assert_eq!(sent["title"], "⚠️ Deploy outcome unknown — acme/shop@main");
    assert!(sent["text"].as_str().unwrap().contains(why), "{sent}");
    assert_eq!(out.record["notify"]["deploy"], "unknown");
}

#[test]
fn when_the_tool_before_it_dies_without_a_record_the_outcome_is_unknown_not_success() {
    let (sent, out) = notify_after("(exit 101)");
    out.code(101);
    assert_unknown(&sent, &out, "no deploy record arrived on stdin");
}

#[test]
fn an_odd_failure_is_still_reported_as_a_failure_and_notify_succeeds() {
    // A hand-made or older record: a failure without `exit`, `at` and `step`.
    let (sent, out) = notify_after(r#"echo '{"failure":{"tool":"deploy.sh","error":"boom"}}'"#);
    out.code(0).one_record();
    assert_eq!(sent["outcome"], "failed");
    assert_eq!(sent["failure"]["tool"], "deploy.sh");
    assert_eq!(sent["failure"]["error"], "boom");
    assert_eq!(out.record["notify"]["deploy"], "failed");
    assert_eq!(
        out.record["failure"],
        json!({"tool": "deploy.sh", "error": "boom"}),
        "passed on as it came"
    );
}

#[test]
fn a_record_cut_off_mid_write_is_told_as_unknown_and_still_exits_2() {
    // What a tool killed while writing leaves in the pipe: half a record.
    let (sent, out) = notify_after(r#"printf '{"version":1,"steps":[{"tool":"swap",'"#);
    out.code(2).one_record();
    out.stderr_has("notify: error: stdin: not a JSON deploy record");
    assert_unknown(&sent, &out, "the deploy record on stdin was unreadable");
    assert_eq!(out.failure_from("notify")["step"], "input");
}

#[test]
fn sentinel_secrets_never_show_anywhere_but_where_the_protocol_needs_them() {
    const SENTINEL: &str = "SENTINEL";
    let tg_token = "987654321:SENTINEL-telegram-token";
    let smtp_password = "SENTINEL-smtp-password";
    let smtp = Smtp::start("starttls", Some(smtp_password));
    let api = bot();
    let slack = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    // This one fails and echoes the request's path (its token) back in its error.
    let discord =
        StubServer::start(|req| Some((500, "text/plain", format!("bad hook {}", req.path))));
    let hook = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let urls = [
        format!("telegram://{tg_token}@telegram?chats=@deploys"),
        format!(
            "smtp://{SMTP_USER}:{smtp_password}@127.0.0.1:{}/?from=d@example.com&to=o@example.com",
            smtp.port
        ),
        format!(
            "slack+http://{}/services/T1/B2/SENTINEL-slack-token",
            slack.addr
        ),
        format!(
            "discord+http://{}/api/webhooks/1/SENTINEL-discord-token",
            discord.addr
        ),
        format!(
            "json://hooker:SENTINEL-json-password@{}/in/SENTINEL-json-path",
            hook.addr
        ),
    ];
    for verbose in ["-v", "-q"] {
        let out = notify()
            .arg(verbose)
            .args([
                "--telegram-api",
                &api.url(),
                "--smtp-ca",
                &certificate().0.display().to_string(),
            ])
            .env("NOTIFY_URLS", urls.join(" "))
            .record(&failed())
            .run();
        out.code(1).one_record();
        assert!(!out.stdout.contains(SENTINEL), "stdout: {}", out.stdout);
        assert!(!out.stderr.contains(SENTINEL), "stderr: {}", out.stderr);
        let channels = &out.record["notify"]["channels"];
        assert_eq!(channels[3]["ok"], false, "{channels}");
        assert!(channels[3]["error"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"));
        for i in [0, 1, 2, 4] {
            assert_eq!(channels[i]["ok"], true, "{channels}");
        }
        assert_eq!(
            channels[0]["channel"],
            "telegram://***@telegram?chats=@deploys"
        );
        out.stderr_lacks("command line");
    }
    // What the receivers got: the token only in the Bot API's path, the webhook secrets only
    // in their own URL and auth header, the password nowhere in the mail.
    for r in api.requests() {
        assert!(r.path.starts_with(&format!("/bot{tg_token}/")));
        assert!(!r.body.contains(SENTINEL), "{}", r.body);
    }
    for stub in [&slack, &discord, &hook] {
        for r in stub.requests() {
            assert!(!r.body.contains(SENTINEL), "{}", r.body);
        }
    }
    let auth = hook.requests()[0]
        .header("authorization")
        .unwrap_or("")
        .to_string();
    assert!(auth.starts_with("Basic "), "{auth}");
    let mail = smtp.wait_for(2);
    assert_eq!(mail.len(), 2);
    for n in 1..=2 {
        assert!(!smtp.raw(n).contains(SENTINEL));
    }
}

#[test]
fn a_secret_typed_on_the_command_line_is_flagged_and_env_references_avoid_it() {
    let api = bot();
    let out = notify()
        .args([
            "--telegram-api",
            &api.url(),
            "--to",
            &format!("tgram://{TOKEN}/123"),
        ])
        .record(&deployed())
        .run();
    out.code(0)
        .stderr_has("tgram://***/123: its secret is on the command line, where `ps` shows it");

    let out = notify()
        .args([
            "--telegram-api",
            &api.url(),
            "--to",
            "tgram://${MY_BOT_TOKEN}/123",
        ])
        .env("MY_BOT_TOKEN", TOKEN)
        .record(&deployed())
        .run();
    out.code(0).stderr_lacks("command line");
    assert_eq!(api.requests()[1].path, format!("/bot{TOKEN}/sendMessage"));

    let out = notify()
        .args(["--to", "tgram://${NOT_SET_ANYWHERE}/123"])
        .record(&deployed())
        .run();
    out.code(2)
        .stderr_has("--to: ${NOT_SET_ANYWHERE} is used in a channel URL but not set");
}

#[test]
fn under_github_actions_secrets_are_masked_and_kept_out_of_outputs() {
    let api = bot();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let out = notify()
        .args(["--telegram-api", &api.url()])
        .env("NOTIFY_URLS", format!("tgram://{TOKEN}/123"))
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &output)
        .record(&deployed())
        .run();
    out.code(0);
    out.stderr_has(&format!("::add-mask::{TOKEN}"));
    let outputs = std::fs::read_to_string(&output).unwrap();
    assert!(outputs.contains("record="), "{outputs}");
    assert!(!outputs.contains("AAtelegram-token"), "{outputs}");
}

#[test]
fn under_github_actions_the_step_summary_has_the_steps_and_a_gantt() {
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.md");
    let mut record = deployed();
    record["steps"] = json!([
        {"tool": "img-build", "outcome": "ok", "started_at": "2026-11-26T23:30:00.000Z", "ms": 8123},
        {"tool": "swap", "outcome": "ok", "started_at": "2026-11-26T23:30:08.200Z", "ms": 1500}
    ]);
    let out = notify()
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .record(&record)
        .run();
    out.code(0);
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("### Deploy succeeded"), "{md}");
    assert!(
        md.contains("| img-build | ok | 2026-11-26T23:30:00.000Z | 8.1s |"),
        "{md}"
    );
    assert!(md.contains("```mermaid\ngantt"), "{md}");
    assert!(
        md.contains("    swap : 1795735808200, 1795735809700"),
        "{md}"
    );
}

#[test]
fn several_urls_in_notify_urls() {
    let a = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let b = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    let api = bot();
    let out = notify()
        .args(["--telegram-api", &api.url()])
        .env(
            "NOTIFY_URLS",
            format!(
                "json://{}/a,telegram://{TOKEN}@telegram?chats=@x,@y\n  slack+http://{}/b",
                a.addr, b.addr
            ),
        )
        .record(&deployed())
        .run();
    out.code(0);
    assert_eq!(
        out.record["notify"]["channels"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        (a.requests().len(), api.requests().len(), b.requests().len()),
        (1, 2, 1)
    );
}

#[test]
fn a_template_shapes_the_message_and_is_checked_before_sending() {
    let api = bot();
    let template = "{{icon}} {{service}} {{status}}{{#failed}}: {{failed_tool}} at \
                    {{failed_step}}{{#rolled_back}}, rolled back{{/rolled_back}}{{/failed}}\n\
                    {{commit_short}} {{commit_message}} by {{author}}";
    let out = notify()
        .args(["--telegram-api", &api.url(), "--template-text", template])
        .args(["--to", &format!("tgram://{TOKEN}/123")])
        .record(&failed())
        .run();
    out.code(0);
    let body = &bodies(&api)[0];
    assert_eq!(
        shown(body["text"].as_str().unwrap()),
        format!("❌ backend failed: swap at health, rolled back\n0123456 {NASTY} by alice")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.txt");
    std::fs::write(
        &file,
        "Deployed {{image}}\n{{^failed}}all good{{/failed}}\n",
    )
    .unwrap();
    let hook = StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    notify()
        .args(["--template", file.to_str().unwrap()])
        .args(["--to", &format!("json://{}/h", hook.addr)])
        .record(&deployed())
        .run()
        .code(0);
    let sent: Value = serde_json::from_str(&hook.requests()[0].body).unwrap();
    assert_eq!(
        sent["text"],
        "Deployed registry.example.com/shop:v2\nall good"
    );
    assert_eq!(sent["title"], "Deployed registry.example.com/shop:v2");

    let out = notify()
        .args([
            "--template-text",
            "{{servise}} is up",
            "--to",
            &format!("json://{}/h", hook.addr),
        ])
        .record(&deployed())
        .run();
    out.code(2)
        .stderr_has("--template-text: unknown placeholder {{servise}}; known: status");
    assert_eq!(hook.requests().len(), 1, "nothing more was sent");
}

#[test]
fn github_actions_context_links_the_run_and_the_commit() {
    let api = bot();
    let dir = tempfile::tempdir().unwrap();
    let out = tool("notify")
        .current_dir(dir.path())
        .args([
            "--telegram-api",
            &api.url(),
            "--to",
            &format!("tgram://{TOKEN}/123"),
        ])
        .env("GITHUB_REPOSITORY", "acme/shop")
        .env("GITHUB_REF_NAME", "release")
        .env("GITHUB_SHA", "fedcba9876543210fedcba9876543210fedcba98")
        .env("GITHUB_ACTOR", "bob")
        .env("GITHUB_SERVER_URL", "https://github.example.com")
        .env("GITHUB_RUN_ID", "4242")
        .record(&deployed())
        .run();
    out.code(0);
    let text = bodies(&api)[0]["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("<b>✅ backend deployed — acme/shop@release</b>"),
        "{text}"
    );
    assert!(text.contains(
        "Commit: <a href=\"https://github.example.com/acme/shop/commit/fedcba9876543210fedcba9876543210fedcba98\">fedcba9</a> — bob"
    ), "{text}");
    assert!(text.ends_with(
        "Run: <a href=\"https://github.example.com/acme/shop/actions/runs/4242\">https://github.example.com/acme/shop/actions/runs/4242</a>"
    ), "{text}");
}

#[test]
fn outside_ci_the_context_comes_from_git() {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Dee Dev",
                "-c",
                "user.email=dee@example.com",
            ])
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "feature/x"]);
    git(&[
        "remote",
        "add",
        "origin",
        "https://dee:ghp_SENTINELremote@github.com/acme/web.git",
    ]);
    git(&[
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "Add <script> & under_score *bold*\n\nbody",
    ]);
    let out = tool("notify")
        .current_dir(dir.path())
        .record(&deployed())
        .run();
    out.code(0)
        .stderr_has("  | ✅ backend deployed — acme/web@feature/x")
        .stderr_has(" Add <script> & under_score *bold* — Dee Dev")
        .stderr_lacks("SENTINEL")
        .stderr_lacks("body");
    // Flags win over git.
    tool("notify")
        .current_dir(dir.path())
        .args(["--branch", "main", "--author", "ci"])
        .record(&deployed())
        .run()
        .code(0)
        .stderr_has("acme/web@main")
        .stderr_has("*bold* — ci");
}
