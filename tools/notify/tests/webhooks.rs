//! Webhooks: the generic JSON one (the summary object), and Slack- and Discord-compatible
//! incoming webhooks, against loopback receivers.

mod common;

use common::*;
use testkit::{json, StubServer, Value};

fn receiver(status: u16) -> StubServer {
    StubServer::start(move |_| Some((status, "text/plain", "ok".into())))
}

fn body(stub: &StubServer) -> Value {
    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    serde_json::from_str(&requests[0].body).expect("JSON body")
}

#[test]
fn the_json_webhook_gets_the_summary() {
    let hook = receiver(200);
    let out = notify()
        .args([
            "--to",
            &format!("json://{}/deploys/hook?team=web", hook.addr),
        ])
        .record(&failed())
        .run();
    out.code(0).one_record();
    // Every other key passes through as it came.
    let mut expected = failed();
    for (k, v) in expected.as_object_mut().unwrap().iter_mut() {
        if k != "steps" {
            assert_eq!(&out.record[k.as_str()], v, "{k}");
        }
    }
    assert_eq!(hook.requests()[0].path, "/deploys/hook?team=web");
    let b = body(&hook);
    assert_eq!(b["outcome"], "failed");
    assert_eq!(b["title"], "❌ backend deploy FAILED — acme/shop@main");
    assert!(b["text"]
        .as_str()
        .unwrap()
        .contains(&format!("Commit: 0123456 {NASTY} — alice")));
    assert_eq!(b["service"], "backend");
    assert_eq!(b["image"], "registry.example.com/shop:v2");
    assert_eq!(b["digest"], "sha256:4f2a9c1e0b7d4f2a9c1e0b7d4f2a9c1e0b7d");
    assert_eq!(b["repository"], "acme/shop");
    assert_eq!(b["branch"], "main");
    assert_eq!(b["commit"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(b["commit_message"], NASTY);
    assert_eq!(b["author"], "alice");
    assert_eq!(
        b["failure"],
        json!({"tool": "swap", "step": "health",
               "error": "backend-new never became healthy: HTTP 500 from /up <html> & more"})
    );
    assert_eq!(
        b["rollback"],
        json!({"ok": true, "snapshot": "20261126T232900Z-1"})
    );
    assert_eq!(
        b["steps"][2],
        json!({"tool": "swap", "outcome": "failed", "ms": 4000})
    );
    assert_eq!(b["total_ms"], 15300);
    assert_eq!(
        out.record["notify"]["channels"][0]["channel"],
        format!("json://{}/***", hook.addr)
    );
}

#[test]
fn slack_gets_mrkdwn_with_its_three_characters_escaped() {
    let hook = receiver(200);
    notify()
        .args([
            "--to",
            &format!("slack+http://{}/services/T000/B000/XXXX", hook.addr),
        ])
        .record(&deployed())
        .run()
        .code(0);
    let text = body(&hook)["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("*✅ backend deployed — acme/shop@main*\n"),
        "{text}"
    );
    assert!(
        text.contains("Fix &lt;b&gt;bold&lt;/b&gt; &amp; snake_case_name *stars*"),
        "{text}"
    );
    assert!(text.contains("URL: <http://127.0.0.1:8000/up|http://127.0.0.1:8000/up>"));
}

#[test]
fn discord_gets_escaped_markdown_without_mentions_and_split_at_2000() {
    let hook = StubServer::start(|_| Some((204, "text/plain", String::new())));
    let mut record = failed();
    record["failure"]["error"] = json!((0..200)
        .map(|i| format!("line {i}: @everyone _x_"))
        .collect::<Vec<_>>()
        .join("\n"));
    let out = notify()
        .args([
            "--to",
            &format!("discord+http://{}/api/webhooks/1/tok", hook.addr),
        ])
        .record(&record)
        .run();
    out.code(0);
    let parts: Vec<Value> = bodies(&hook);
    assert!(parts.len() >= 2);
    for p in &parts {
        assert_eq!(p["allowed_mentions"], json!({"parse": []}));
        assert!(p["content"].as_str().unwrap().chars().count() <= 2000);
    }
    let first = parts[0]["content"].as_str().unwrap();
    assert!(
        first.starts_with(r"**❌ backend deploy FAILED — acme/shop\@main**"),
        "{first}"
    );
    assert!(first.contains(r"line 0: \@everyone \_x\_"), "{first}");
    let last = parts.last().unwrap()["content"].as_str().unwrap();
    assert!(last.contains(r"line 199: \@everyone"), "{last}");
    assert_eq!(
        out.record["notify"]["channels"][0]["messages"],
        parts.len() as u64
    );
}

#[test]
fn a_webhook_that_refuses_fails_and_says_what_it_answered() {
    let hook = StubServer::start(|_| Some((404, "text/plain", "no such hook\n".into())));
    let out = notify()
        .args(["--to", &format!("webhook+http://{}/x", hook.addr)])
        .record(&deployed())
        .run();
    out.code(1).one_record();
    assert_eq!(error_of(&out), "HTTP 404: no such hook");
    assert!(out.record.get("failure").is_none());
}

#[test]
fn a_webhook_that_is_down_is_retried_then_reported() {
    let port = testkit::free_port();
    let out = notify()
        .args(["--to", &format!("webhook+http://127.0.0.1:{port}/x")])
        .record(&deployed())
        .run();
    out.code(1);
    assert_eq!(error_of(&out), "connection refused");
}
