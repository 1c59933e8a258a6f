//! Email, against a real SMTP server (Debian's python3-aiosmtpd) that requires login over
//! STARTTLS with a certificate made by the test; each delivered message is checked as a mail
//! client would show it.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::*;
use testkit::json;

const PASSWORD: &str = "mail-password-for-tests";

fn url(smtp: &Smtp, extra: &str) -> String {
    format!(
        "smtp://{SMTP_USER}:{PASSWORD}@127.0.0.1:{}/?from=deploy@example.com&to=ops@example.com,dev@example.com{extra}",
        smtp.port
    )
}

fn ca() -> String {
    certificate().0.display().to_string()
}

#[test]
fn starttls_with_login_delivers_text_and_html_to_every_recipient() {
    let smtp = Smtp::start("starttls", Some(PASSWORD));
    let out = notify()
        .args(["--smtp-ca", &ca(), "--to", &url(&smtp, "")])
        .record(&deployed())
        .run();
    out.code(0).one_record();
    let mail = smtp.wait_for(1);
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert_eq!(m["login"], SMTP_USER);
    assert_eq!(m["tls"], true);
    assert_eq!(m["mail_from"], "deploy@example.com");
    assert_eq!(m["rcpt_tos"], json!(["ops@example.com", "dev@example.com"]));
    assert_eq!(m["from"], "deploy@example.com");
    assert_eq!(m["to"], "ops@example.com, dev@example.com");
    assert_eq!(m["subject"], "✅ backend deployed — acme/shop@main");
    assert_eq!(m["content_type"], "multipart/alternative");

    let text = m["text"].as_str().unwrap();
    assert!(
        text.starts_with("✅ backend deployed — acme/shop@main\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Commit: 0123456 {NASTY} — alice")),
        "{text}"
    );
    assert!(text.contains("Image: registry.example.com/shop:v2 sha256:4f2a9c1e0b7d"));
    let html = m["html"].as_str().unwrap();
    assert!(
        html.contains("<b>✅ backend deployed — acme/shop@main</b><br>"),
        "{html}"
    );
    assert!(html.contains("Fix &lt;b&gt;bold&lt;/b&gt; &amp; snake_case_name *stars*"));

    let raw = smtp.raw(1);
    assert!(raw.contains("Message-ID: <"), "{raw}");
    assert!(raw.contains("Date: "), "{raw}");
    assert_eq!(
        out.record["notify"]["channels"][0]["channel"],
        format!(
            "smtp://{SMTP_USER}:***@127.0.0.1:{}/?from=deploy@example.com&to=ops@example.com,dev@example.com",
            smtp.port
        )
    );
    assert_eq!(out.record["notify"]["channels"][0]["messages"], 1);
}

#[test]
fn implicit_tls_and_a_subject_of_ones_own() {
    let smtp = Smtp::start("implicit", Some(PASSWORD));
    let to = format!(
        "smtps://{SMTP_USER}:{PASSWORD}@127.0.0.1:{}/?from=deploy@example.com&to=ops@example.com&subject=Deploy%20report",
        smtp.port
    );
    notify()
        .args(["--smtp-ca", &ca(), "--to", &to])
        .record(&failed())
        .run()
        .code(0);
    let m = &smtp.wait_for(1)[0];
    assert_eq!(m["tls"], true);
    assert_eq!(m["subject"], "Deploy report");
    assert!(m["text"]
        .as_str()
        .unwrap()
        .starts_with("❌ backend deploy FAILED"));
}

#[test]
fn plain_smtp_is_allowed_to_loopback_only() {
    let smtp = Smtp::start("plain", None);
    let to = format!(
        "smtp://127.0.0.1:{}/?from=deploy@example.com&to=ops@example.com&starttls=no",
        smtp.port
    );
    notify()
        .args(["--to", &to])
        .record(&deployed())
        .run()
        .code(0);
    assert_eq!(smtp.wait_for(1)[0]["tls"], false);

    let out = notify()
        .args([
            "--to",
            &format!("smtp://u:{PASSWORD}@mail.example.com/?from=a@example.com&to=b@example.com&starttls=no"),
        ])
        .record(&deployed())
        .run();
    out.code(2)
        .stderr_has("--to: bad channel smtp://u:***@mail.example.com:25/")
        .stderr_has("clear text")
        .stderr_lacks(PASSWORD);
}

#[test]
fn a_wrong_password_is_refused_and_reported() {
    let smtp = Smtp::start("starttls", Some(PASSWORD));
    let to = url(&smtp, "").replace(PASSWORD, "not-the-password");
    let out = notify()
        .args(["--smtp-ca", &ca(), "--to", &to])
        .record(&deployed())
        .run();
    out.code(1).one_record();
    let error = error_of(&out);
    assert!(
        error.starts_with("login refused: permanent error (535)"),
        "{error}"
    );
    assert!(smtp.messages().is_empty());
    assert!(out.record.get("failure").is_none());
}

#[test]
fn an_untrusted_certificate_is_refused_with_a_hint() {
    let smtp = Smtp::start("starttls", Some(PASSWORD));
    let out = notify()
        .args(["--to", &url(&smtp, "")])
        .record(&deployed())
        .run();
    out.code(1);
    let error = error_of(&out);
    assert!(error.contains("UnknownIssuer"), "{error}");
    assert!(error.contains("--smtp-ca"), "{error}");
    assert!(smtp.messages().is_empty());
}

#[test]
fn a_server_that_never_answers_costs_the_timeout_only() {
    // Accepts connections (the kernel's backlog) but never says hello.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let to = format!("smtp://127.0.0.1:{port}/?from=a@example.com&to=b@example.com");
    let out = notify()
        .args(["--timeout", "1s", "--to", &to])
        .record(&deployed())
        .run();
    out.code(1);
    assert_eq!(error_of(&out), "no answer within 1.0s");
    assert!(out.elapsed < Duration::from_secs(6), "{:?}", out.elapsed);
}

#[test]
fn a_stopped_server_is_reported() {
    let port = testkit::free_port();
    let to = format!("smtps://127.0.0.1:{port}/?from=a@example.com&to=b@example.com");
    let out = notify().args(["--to", &to]).record(&deployed()).run();
    out.code(1);
    let error = error_of(&out);
    assert!(
        error.starts_with(&format!("cannot connect to 127.0.0.1:{port}")),
        "{error}"
    );
}
