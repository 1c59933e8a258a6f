//! Telegram, against a loopback stand-in for the Bot API that answers as Telegram does and
//! keeps every request, so each test checks exactly what was sent.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use testkit::{json, Out, StubServer, Value};

const TOKEN: &str = "123456789:AAtelegram-token-for-tests";

/// One chat, Apprise style.
fn chat() -> String {
    format!("tgram://{TOKEN}/123")
}

/// notify with `record` on stdin, sending to [`chat`] through the stand-in `api`.
fn to_chat(api: &StubServer, record: &Value) -> Out {
    notify()
        .args(["--telegram-api", &api.url(), "--to", &chat()])
        .record(record)
        .run()
}

#[test]
fn sends_html_to_every_chat_with_thread_silence_and_no_preview() {
    let api = bot();
    let url = format!(
        "telegram://{TOKEN}@telegram?chats=@deploys,-1001234567890&thread=42&silent=yes&preview=no"
    );
    let out = notify()
        .args(["--telegram-api", &api.url(), "--to", &url])
        .record(&deployed())
        .run();
    out.code(0).one_record();

    let requests = api.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/bot{TOKEN}/sendMessage"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let mut chats: Vec<Value> = bodies(&api).iter().map(|b| b["chat_id"].clone()).collect();
    chats.sort_by_key(|c| c.to_string());
    assert_eq!(chats, [json!("@deploys"), json!(-1001234567890i64)]);
    for body in bodies(&api) {
        assert_eq!(body["parse_mode"], "HTML");
        assert_eq!(body["message_thread_id"], 42);
        assert_eq!(body["disable_notification"], true);
        assert_eq!(body["link_preview_options"], json!({"is_disabled": true}));
        assert_eq!(body["disable_web_page_preview"], true);
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with("<b>✅ backend deployed — acme/shop@main</b>\n"),
            "{text}"
        );
        // The commit message arrives intact once Telegram reads the HTML.
        assert!(
            shown(text).contains(&format!("0123456 {NASTY} — alice")),
            "{text}"
        );
        assert!(
            text.contains("<code>registry.example.com/shop:v2</code>"),
            "{text}"
        );
    }

    assert_eq!(
        out.record["notify"],
        json!({"deploy": "ok", "channels": [{
            "channel": "telegram://***@telegram?chats=@deploys,-1001234567890&thread=42&silent=yes&preview=no",
            "ok": true, "ms": out.record["notify"]["channels"][0]["ms"], "messages": 2,
        }]})
    );
    out.stderr_has("telegram://***@telegram?chats=@deploys,-1001234567890&thread=42")
        .stderr_has("sent (2 messages");
}

#[test]
fn apprise_style_url_with_a_topic() {
    let api = bot();
    let out = notify()
        .args(["--telegram-api", &api.url()])
        .args(["--to", &format!("tgram://{TOKEN}/-100777:5")])
        .record(&deployed())
        .run();
    out.code(0);
    let body = &bodies(&api)[0];
    assert_eq!(body["chat_id"], json!(-100777));
    assert_eq!(body["message_thread_id"], 5);
    assert!(body.get("disable_notification").is_none());
    assert!(body.get("link_preview_options").is_none());
    assert_eq!(
        out.record["notify"]["channels"][0]["channel"],
        "tgram://***/-100777:5"
    );
}

#[test]
fn a_failed_deploy_says_who_where_why_and_the_rollback() {
    let api = bot();
    let record = failed();
    let out = to_chat(&api, &record);
    // Every channel got it: exit 0, and the deploy's failure is left exactly as it was.
    out.code(0).one_record();
    assert_eq!(out.record["failure"], record["failure"]);
    assert_eq!(out.record["notify"]["deploy"], "failed");
    let text = shown(bodies(&api)[0]["text"].as_str().unwrap());
    assert!(
        text.starts_with("❌ backend deploy FAILED — acme/shop@main\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "Failed: swap (health): backend-new never became healthy: HTTP 500 from /up <html> & more"
        ),
        "{text}"
    );
    assert!(
        text.contains("Rolled back to snapshot 20261126T232900Z-1"),
        "{text}"
    );
    assert!(text.contains("swap 4.0s ✗"), "{text}");
}

#[test]
fn a_message_over_4096_characters_is_split_on_lines_and_nothing_is_lost() {
    let api = bot();
    let mut record = failed();
    let long: Vec<String> = (0..400)
        .map(|i| format!("log line {i:03}: <tag> & ünïcödé 😀 *x*"))
        .collect();
    record["failure"]["error"] = json!(long.join("\n"));
    let out = to_chat(&api, &record);
    out.code(0);
    let texts: Vec<String> = bodies(&api)
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    assert!(texts.len() >= 4, "{} parts", texts.len());
    for t in &texts {
        // Telegram counts UTF-16 code units.
        assert!(
            t.encode_utf16().count() <= 4096,
            "{}",
            t.encode_utf16().count()
        );
    }
    let all = texts
        .iter()
        .map(|t| shown(t))
        .collect::<Vec<_>>()
        .join("\n");
    let mut at = 0;
    for line in &long {
        let found = all[at..].find(line.as_str());
        assert!(found.is_some(), "lost or out of order: {line}");
        at += found.unwrap_or(0) + line.len();
    }
    assert!(all.contains("Rolled back"));
    assert_eq!(
        out.record["notify"]["channels"][0]["messages"],
        texts.len() as u64
    );
}

#[test]
fn markup_telegram_cannot_parse_is_sent_again_as_plain_text() {
    let api = StubServer::start(|req| {
        if req.body.contains("\"parse_mode\"") {
            tg_error(
                400,
                "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 7",
                Value::Null,
            )
        } else {
            tg_ok(req)
        }
    });
    let out = to_chat(&api, &deployed());
    out.code(0).stderr_has("sending it as plain text");
    let sent = bodies(&api);
    assert_eq!(sent.len(), 2);
    assert!(sent[1].get("parse_mode").is_none());
    let plain = sent[1]["text"].as_str().unwrap();
    assert!(
        plain.starts_with("✅ backend deployed — acme/shop@main\n"),
        "{plain}"
    );
    assert!(plain.contains(NASTY), "{plain}");
}

#[test]
fn a_429_waits_for_retry_after_then_delivers() {
    let times = Arc::new(Mutex::new(Vec::new()));
    let seen = times.clone();
    let api = StubServer::start(move |req| {
        let mut t = seen.lock().unwrap();
        t.push(Instant::now());
        if t.len() == 1 {
            tg_error(
                429,
                "Too Many Requests: retry after 1",
                json!({"retry_after": 1}),
            )
        } else {
            tg_ok(req)
        }
    });
    let out = to_chat(&api, &deployed());
    out.code(0);
    let t = times.lock().unwrap();
    assert_eq!(t.len(), 2);
    assert!(
        t[1] - t[0] >= Duration::from_millis(950),
        "retried after {:?}, before retry_after",
        t[1] - t[0]
    );
}

#[test]
fn a_retry_after_beyond_the_timeout_fails_at_once_and_says_why() {
    let api = StubServer::start(|_| {
        tg_error(
            429,
            "Too Many Requests: retry after 600",
            json!({"retry_after": 600}),
        )
    });
    let out = notify()
        .args(["--telegram-api", &api.url(), "--timeout", "3s"])
        .args(["--to", &chat()])
        .record(&deployed())
        .run();
    out.code(1).one_record();
    assert_eq!(api.requests().len(), 1);
    let report = &out.record["notify"]["channels"][0];
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["error"],
        "rate limited (HTTP 429): asked to retry after 10m00s, beyond the 3.0s timeout"
    );
    assert!(out.record.get("failure").is_none(), "{}", out.stdout);
    out.stderr_has("not sent: rate limited");
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let api = StubServer::start(|_| tg_error(502, "Bad Gateway", Value::Null));
    let out = to_chat(&api, &deployed());
    out.code(1);
    assert_eq!(api.requests().len(), 3);
    assert_eq!(
        error_of(&out),
        "Telegram answered 502: Bad Gateway (after 3 attempts)"
    );

    let calls = Arc::new(AtomicU32::new(0));
    let n = calls.clone();
    let api = StubServer::start(move |req| {
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            Some((503, "text/html", "<html>busy</html>".into()))
        } else {
            tg_ok(req)
        }
    });
    to_chat(&api, &deployed()).code(0);
    assert_eq!(api.requests().len(), 2);
}

#[test]
fn a_refused_token_or_chat_is_reported_in_telegrams_words() {
    let api = StubServer::start(|req| {
        if req.body.contains("\"@nosuchchat\"") {
            tg_error(400, "Bad Request: chat not found", Value::Null)
        } else {
            tg_ok(req)
        }
    });
    let out = notify()
        .args(["--telegram-api", &api.url()])
        .args([
            "--to",
            &format!("telegram://{TOKEN}@telegram?chats=@nosuchchat,@deploys"),
        ])
        .record(&deployed())
        .run();
    out.code(1);
    let report = &out.record["notify"]["channels"][0];
    assert_eq!(
        report["error"],
        "chat @nosuchchat: Telegram answered 400: Bad Request: chat not found"
    );
    // The other chat of the same URL still got it.
    assert_eq!(report["messages"], 1);

    let api = StubServer::start(|_| tg_error(401, "Unauthorized", Value::Null));
    let out = to_chat(&api, &deployed());
    out.code(1);
    assert_eq!(api.requests().len(), 1, "a 401 is not retried");
    assert_eq!(error_of(&out), "Telegram answered 401: Unauthorized");
}

#[test]
fn an_unreachable_api_fails_with_a_clear_error() {
    let port = testkit::free_port();
    let out = notify()
        .args(["--telegram-api", &format!("http://127.0.0.1:{port}")])
        .args(["--to", &chat()])
        .record(&deployed())
        .run();
    out.code(1);
    assert_eq!(error_of(&out), "connection refused");
}
