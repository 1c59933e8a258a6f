//! Email over SMTP with lettre (rustls, no OpenSSL): STARTTLS or implicit TLS, plain only to
//! loopback (checked when the URL is parsed), login when the URL has a user, one message with
//! a text and an HTML part to every recipient.

use std::time::Instant;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

use crate::channel::{Email, Security};
use crate::http::Budget;
use crate::message::{html, Doc, Markup};
use crate::Delivery;

pub fn send(e: &Email, subject: &str, doc: &Doc, ca: Option<&[u8]>, budget: &Budget) -> Delivery {
    match try_send(e, subject, doc, ca, budget) {
        Ok(()) => Delivery {
            messages: 1,
            error: None,
        },
        Err(error) => Delivery {
            messages: 0,
            error: Some(error),
        },
    }
}

fn try_send(
    e: &Email,
    subject: &str,
    doc: &Doc,
    ca: Option<&[u8]>,
    budget: &Budget,
) -> Result<(), String> {
    let mailbox = |a: &str| -> Result<Mailbox, String> {
        a.parse()
            .map_err(|err| format!("'{a}' is not an email address: {err}"))
    };
    let mut message = Message::builder()
        .from(mailbox(&e.from)?)
        .subject(e.subject.as_deref().unwrap_or(subject))
        .message_id(None)
        .user_agent(concat!("deploykit-notify/", env!("CARGO_PKG_VERSION")).into());
    for to in &e.to {
        message = message.to(mailbox(to)?);
    }
    let message = message
        .multipart(MultiPart::alternative_plain_html(
            doc.plain(),
            html_page(subject, doc),
        ))
        .map_err(|err| format!("cannot build the message: {err}"))?;

    let tls = || -> Result<TlsParameters, String> {
        let mut params = TlsParameters::builder(e.host.clone());
        if let Some(pem) = ca {
            let cert = Certificate::from_pem(pem)
                .map_err(|err| format!("--smtp-ca is not a PEM certificate: {err}"))?;
            params = params.add_root_certificate(cert);
        }
        params.build_rustls().map_err(|err| format!("TLS: {err}"))
    };
    let tls = match e.security {
        Security::Implicit => Tls::Wrapper(tls()?),
        Security::StartTls => Tls::Required(tls()?),
        Security::Plain => Tls::None,
    };
    let left = budget.deadline.saturating_duration_since(Instant::now());
    let mut transport = SmtpTransport::builder_dangerous(e.host.as_str())
        .port(e.port)
        .tls(tls)
        .timeout(Some(left.min(budget.timeout)));
    if let Some(user) = &e.user {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            e.password.clone().unwrap_or_default(),
        ));
    }
    transport
        .build()
        .send(&message)
        .map(|_| ())
        .map_err(|err| words(e, &err, budget))
}

fn words(e: &Email, err: &lettre::transport::smtp::Error, budget: &Budget) -> String {
    if err.is_timeout() || socket_timed_out(err) {
        return budget.timed_out();
    }
    let text = err.to_string().replace('\n', " ");
    match err.status() {
        Some(code) if code.to_string() == "535" => format!("login refused: {text}"),
        _ if text.contains("UnknownIssuer") => {
            format!("{text} (a certificate from a private CA? trust it with --smtp-ca FILE)")
        }
        _ if text.starts_with("Connection error") => format!(
            "cannot connect to {}:{}: {}",
            e.host,
            e.port,
            text.trim_start_matches("Connection error: ")
        ),
        _ => text,
    }
}

/// A read or write that ran into the socket's timeout shows as `WouldBlock` on Linux, which
/// lettre's `is_timeout` does not count.
fn socket_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
        }
        source = e.source();
    }
    false
}

/// The HTML part: the same lines, with links and bold kept.
fn html_page(subject: &str, doc: &Doc) -> String {
    // No span holds a newline, so every newline is a line break of the message.
    let body = doc.render(Markup::Html).replace('\n', "<br>\n");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n\
         <body style=\"font-family: -apple-system, Segoe UI, sans-serif; line-height: 1.5\">\n\
         {body}\n</body></html>\n",
        html(subject)
    )
}
