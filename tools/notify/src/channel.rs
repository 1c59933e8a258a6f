//! Channels as URLs, in the forms shoutrrr (Watchtower) and Apprise users already write:
//!
//! | channel | URL |
//! |---|---|
//! | Telegram | `telegram://TOKEN@telegram?chats=@chan,123&thread=4&silent=yes&preview=no`, `tgram://TOKEN/CHAT[:TOPIC]/...` |
//! | email | `smtp://user:pass@host:587/?from=a@x&to=b@y,c@z` (STARTTLS), `smtps://…:465` (implicit TLS) |
//! | JSON webhook | `json://host/path`, `jsons://…`, `webhook+https://…`, `generic://…`, a bare `https://…` |
//! | Slack | `slack://A/B/C`, `https://hooks.slack.com/services/A/B/C`, `slack+https://host/path` |
//! | Discord | `discord://TOKEN@ID`, `discord://ID/TOKEN`, `https://discord.com/api/webhooks/ID/TOKEN`, `discord+https://host/path` |
//!
//! Every secret a URL carries is registered with [`kit::log::secret`] as the URL is parsed, and
//! a channel is only ever shown by [`Channel::name`], which is built from the parsed parts with
//! the secrets left out.

use std::net::IpAddr;

use url::Url;

/// One place a message goes.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The URL without its secrets, as it appears in logs and the record.
    pub name: String,
    pub kind: Kind,
    /// Whether the URL holds a token or password.
    pub has_secret: bool,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Telegram(Telegram),
    Email(Email),
    Webhook(Webhook),
}

#[derive(Debug, Clone)]
pub struct Telegram {
    pub token: String,
    pub chats: Vec<Chat>,
    pub silent: bool,
    pub preview: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// `@channelname` or a numeric id (negative for groups).
    pub id: String,
    pub thread: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// STARTTLS, required.
    StartTls,
    /// No TLS at all: only to loopback.
    Plain,
}

#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub user: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The summary object.
    Json,
    /// `{"text": mrkdwn}`.
    Slack,
    /// `{"content": markdown}`.
    Discord,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub payload: Payload,
    /// The full URL to POST to (with its secrets: never shown).
    pub url: String,
}

/// Splits `NOTIFY_URLS`-style text into URLs: whitespace separates, and so does a comma that
/// starts a new `scheme://` (commas inside a URL, as in `chats=@a,@b`, stay).
pub fn split_list(text: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for word in text.split_whitespace() {
        let mut current = String::new();
        for (i, piece) in word.split(',').enumerate() {
            if i > 0 && starts_with_scheme(piece) && !current.is_empty() {
                urls.push(std::mem::take(&mut current));
            } else if i > 0 {
                current.push(',');
            }
            current.push_str(piece);
        }
        let current = current.trim_matches(',').to_string();
        if !current.is_empty() {
            urls.push(current);
        }
    }
    urls
}

fn starts_with_scheme(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Replaces each `${NAME}` with the environment variable NAME, so a secret can stay out of the
/// command line: `--to 'telegram://${TELEGRAM_TOKEN}@telegram?chats=@ops'`.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "'${' without '}' in a channel URL".to_string())?;
        let name = &after[..end];
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("${{{name}}} is used in a channel URL but not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Registers a secret (and its %-encoded spelling, which is how it sits in the URL).
fn secret(value: &str) {
    kit::log::secret(value);
    let encoded = percent(value);
    if encoded != value {
        kit::log::secret(&encoded);
    }
}

fn percent(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A bad channel URL, named without its secrets.
pub struct Bad {
    pub shown: String,
    pub why: String,
}

type Parsed = Result<Channel, Bad>;

impl Channel {
    /// Parses one channel URL. The secrets it holds are registered before anything can print.
    pub fn parse(raw: &str) -> Parsed {
        let raw = raw.trim();
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(Bad {
                shown: shown_unknown(raw),
                why: "not a URL (expected scheme://…, e.g. telegram://TOKEN@telegram?chats=@chan)"
                    .into(),
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "telegram" => telegram_shoutrrr(rest),
            "tgram" => telegram_apprise(rest),
            "smtp" | "smtps" => email(raw),
            "slack" => slack_tokens(rest),
            "discord" => discord_tokens(rest),
            "json" | "jsons" | "generic" | "webhook" => {
                // Apprise: json:// is plain HTTP, jsons:// is HTTPS; shoutrrr's generic:// is HTTPS.
                let real = if scheme.eq_ignore_ascii_case("json") {
                    "http"
                } else {
                    "https"
                };
                webhook(scheme, &format!("{real}://{rest}"), Payload::Json)
            }
            s if s.contains('+') => {
                let (kind, transport) = s.split_once('+').unwrap_or((s, ""));
                let payload = match kind {
                    "webhook" | "json" | "generic" => Payload::Json,
                    "slack" => Payload::Slack,
                    "discord" => Payload::Discord,
                    _ => return Err(unknown_scheme(scheme, rest)),
                };
                if !matches!(transport, "http" | "https") {
                    return Err(unknown_scheme(scheme, rest));
                }
                webhook(scheme, &format!("{transport}://{rest}"), payload)
            }
            "http" | "https" => {
                let host = rest.split(['/', '?']).next().unwrap_or("");
                let host = host.rsplit('@').next().unwrap_or("").to_ascii_lowercase();
                let payload = if host == "hooks.slack.com" {
                    Payload::Slack
                } else if host == "discord.com" || host == "discordapp.com" {
                    Payload::Discord
                } else {
                    Payload::Json
                };
                webhook(scheme, raw, payload)
            }
            _ => Err(unknown_scheme(scheme, rest)),
        }
    }
}

fn unknown_scheme(scheme: &str, rest: &str) -> Bad {
    Bad {
        shown: format!("{scheme}://{}", hide_rest(rest)),
        why: format!(
            "unknown channel '{scheme}' (known: telegram, tgram, smtp, smtps, slack, discord, \
             json, jsons, webhook+http(s), slack+http(s), discord+http(s), http(s))"
        ),
    }
}

/// A URL we cannot parse is shown by its host alone: it may hold secrets anywhere.
fn hide_rest(rest: &str) -> String {
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}/…"),
        None if rest.len() > authority.len() => format!("{authority}/…"),
        None => authority.to_string(),
    }
}

fn shown_unknown(raw: &str) -> String {
    let head: String = raw.chars().take(12).collect();
    if raw.chars().count() > 12 {
        format!("{head}…")
    } else {
        head
    }
}

fn yes_no(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        other => Err(format!("{key}={other}: expected yes or no")),
    }
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect()
}

fn ignored(name: &str, key: &str) {
    kit::log::warn(&format!("{name}: ignoring unknown parameter '{key}'"));
}

// --- Telegram ----------------------------------------------------------------------------

fn check_token(token: &str, shown: &str) -> Result<(), Bad> {
    let ok = token
        .split_once(':')
        .is_some_and(|(id, key)| !id.is_empty() && !key.is_empty())
        && !token.contains(['/', ' ', '?', '#']);
    if ok {
        Ok(())
    } else {
        Err(Bad {
            shown: shown.into(),
            why: "the bot token should look like 123456789:AA… (as @BotFather gives it)".into(),
        })
    }
}

fn parse_chat(text: &str, thread: Option<i64>, shown: &str) -> Result<Chat, Bad> {
    let (id, topic) = match text.rsplit_once(':') {
        Some((id, topic)) => {
            let topic = topic.parse::<i64>().map_err(|_| Bad {
                shown: shown.into(),
                why: format!("chat '{text}': the topic after ':' must be a number"),
            })?;
            (id, Some(topic))
        }
        None => (text, thread),
    };
    let valid = match id.strip_prefix('@') {
        Some(name) => {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => id.strip_prefix('-').unwrap_or(id).parse::<u64>().is_ok(),
    };
    if !valid {
        return Err(Bad {
            shown: shown.into(),
            why: format!("chat '{id}' is neither @channelname nor a numeric chat id"),
        });
    }
    Ok(Chat {
        id: id.to_string(),
        thread: topic,
    })
}

struct TelegramOptions {
    chats: Vec<String>,
    thread: Option<i64>,
    silent: bool,
    preview: bool,
}

fn telegram_query(query: &str, shown: &str) -> Result<TelegramOptions, Bad> {
    let bad = |why: String| Bad {
        shown: shown.into(),
        why,
    };
    let mut o = TelegramOptions {
        chats: Vec::new(),
        thread: None,
        silent: false,
        preview: true,
    };
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "chats" | "chat" | "to" => o.chats.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from),
            ),
            "thread" | "topic" | "message_thread_id" => {
                o.thread = Some(
                    v.parse()
                        .map_err(|_| bad(format!("{k}={v}: expected a number")))?,
                )
            }
            "silent" => o.silent = yes_no(&k, &v).map_err(bad)?,
            "notification" => o.silent = !yes_no(&k, &v).map_err(bad)?,
            "preview" | "webpreview" => o.preview = yes_no(&k, &v).map_err(bad)?,
            "parsemode" | "format" | "title" | "mdv2" => {}
            _ => ignored(shown, &k),
        }
    }
    Ok(o)
}

fn telegram_name(scheme: &str, o: &TelegramOptions, chats: &[Chat]) -> String {
    let mut q = Vec::new();
    if scheme == "telegram" {
        if !o.chats.is_empty() {
            q.push(format!("chats={}", o.chats.join(",")));
        }
        if let Some(t) = o.thread {
            q.push(format!("thread={t}"));
        }
    }
    if o.silent {
        q.push("silent=yes".into());
    }
    if !o.preview {
        q.push("preview=no".into());
    }
    let q = if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    };
    if scheme == "telegram" {
        format!("telegram://***@telegram{q}")
    } else {
        let chats: Vec<String> = chats
            .iter()
            .map(|c| match c.thread {
                Some(t) => format!("{}:{t}", c.id),
                None => c.id.clone(),
            })
            .collect();
        format!("tgram://***/{}{q}", chats.join("/"))
    }
}

/// `telegram://TOKEN@telegram?chats=@chan,123&thread=4` (shoutrrr).
fn telegram_shoutrrr(rest: &str) -> Parsed {
    let (head, query) = rest.split_once('?').unwrap_or((rest, ""));
    let head = head.trim_end_matches('/');
    let Some((token, host)) = head.rsplit_once('@') else {
        return Err(Bad {
            shown: "telegram://***".into(),
            why: "expected telegram://TOKEN@telegram?chats=@channel,123".into(),
        });
    };
    let token = decode(token);
    secret(&token);
    if let Some((_, key)) = token.split_once(':') {
        secret(key);
    }
    let mut shown = "telegram://***@telegram".to_string();
    if host != "telegram" {
        return Err(Bad {
            shown: format!("telegram://***@{host}"),
            why: "the host must be 'telegram' (telegram://TOKEN@telegram?chats=…); \
                  use --telegram-api for a self-hosted Bot API server"
                .into(),
        });
    }
    let o = telegram_query(query, &shown)?;
    shown = telegram_name("telegram", &o, &[]);
    check_token(&token, &shown)?;
    if o.chats.is_empty() {
        return Err(Bad {
            shown,
            why: "no chat: add ?chats=@channel or a numeric chat id".into(),
        });
    }
    let chats = o
        .chats
        .iter()
        .map(|c| parse_chat(c, o.thread, &shown))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Channel {
        name: shown,
        has_secret: true,
        kind: Kind::Telegram(Telegram {
            token,
            chats,
            silent: o.silent,
            preview: o.preview,
        }),
    })
}

/// `tgram://TOKEN/CHAT[:TOPIC]/CHAT2?silent=yes` (Apprise).
fn telegram_apprise(rest: &str) -> Parsed {
    let (head, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut parts = head.split('/').filter(|p| !p.is_empty());
    let token = decode(parts.next().unwrap_or(""));
    secret(&token);
    if let Some((_, key)) = token.split_once(':') {
        secret(key);
    }
    let chat_texts: Vec<String> = parts.map(decode).collect();
    let o = telegram_query(query, "tgram://***")?;
    let provisional = format!("tgram://***/{}", chat_texts.join("/"));
    check_token(&token, &provisional)?;
    let chats = chat_texts
        .iter()
        .chain(o.chats.iter())
        .map(|c| parse_chat(c, o.thread, &provisional))
        .collect::<Result<Vec<_>, _>>()?;
    if chats.is_empty() {
        return Err(Bad {
            shown: provisional,
            why: "no chat: expected tgram://TOKEN/CHAT_ID".into(),
        });
    }
    Ok(Channel {
        name: telegram_name("tgram", &o, &chats),
        has_secret: true,
        kind: Kind::Telegram(Telegram {
            token,
            chats,
            silent: o.silent,
            preview: o.preview,
        }),
    })
}

// --- email -------------------------------------------------------------------------------

/// Whether `host` is this machine: the only place mail may go without TLS.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn email(raw: &str) -> Parsed {
    let implicit = raw[..6].eq_ignore_ascii_case("smtps:");
    let scheme = if implicit { "smtps" } else { "smtp" };
    let url = parse_url(scheme, raw)?;
    let password = url.password().map(decode).filter(|p| !p.is_empty());
    if let Some(p) = &password {
        secret(p);
    }
    let user = Some(decode(url.username())).filter(|u| !u.is_empty());
    let host = url.host_str().unwrap_or("").to_string();
    let provisional = format!(
        "{scheme}://{}{host}",
        match (&user, &password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            _ => String::new(),
        }
    );
    let bad = |why: String| Bad {
        shown: provisional.clone(),
        why,
    };
    if host.is_empty() {
        return Err(bad("no mail server host".into()));
    }

    let mut from = None;
    let mut to: Vec<String> = Vec::new();
    let mut starttls = None;
    let mut subject = None;
    let mut kept = Vec::new();
    for (k, v) in query_pairs(url.query().unwrap_or("")) {
        match k.as_str() {
            "from" | "fromaddress" => from = Some(v.clone()),
            "to" | "toaddresses" => to.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from),
            ),
            "starttls" | "usestarttls" => starttls = Some(yes_no(&k, &v).map_err(bad)?),
            "encryption" => {
                starttls = match v.to_ascii_lowercase().as_str() {
                    "none" => Some(false),
                    "explicittls" | "auto" | "starttls" => Some(true),
                    "implicittls" => {
                        return Err(bad("encryption=ImplicitTLS: use smtps://".into()))
                    }
                    other => return Err(bad(format!("encryption={other}: unknown"))),
                }
            }
            "subject" | "title" => subject = Some(v.clone()),
            "auth" | "usehtml" | "fromname" | "clienthost" => {}
            _ => {
                ignored(&provisional, &k);
                continue;
            }
        }
        let v = v
            .replace('%', "%25")
            .replace('&', "%26")
            .replace(' ', "%20");
        kept.push(format!("{k}={v}"));
    }
    let security = match (implicit, starttls) {
        (true, Some(true)) => return Err(bad("smtps:// is TLS already; drop starttls".into())),
        (true, _) => Security::Implicit,
        (false, Some(false)) => Security::Plain,
        (false, _) => Security::StartTls,
    };
    let port = url.port().unwrap_or(match security {
        Security::Implicit => 465,
        Security::StartTls => 587,
        Security::Plain => 25,
    });
    let shown = format!(
        "{provisional}:{port}/{}",
        if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        }
    );
    let bad = |why: String| Bad {
        shown: shown.clone(),
        why,
    };
    if security == Security::Plain && !is_loopback(&host) {
        return Err(bad(format!(
            "starttls=no sends mail{} in clear text over the network; only loopback may be \
             plain: use starttls=yes or smtps://",
            if password.is_some() {
                " and the password"
            } else {
                ""
            }
        )));
    }
    let from = from
        .or_else(|| user.clone().filter(|u| u.contains('@')))
        .ok_or_else(|| bad("no sender: add ?from=deploy@example.com".into()))?;
    if to.is_empty() {
        return Err(bad(
            "no recipient: add &to=a@example.com,b@example.com".into()
        ));
    }
    for address in std::iter::once(&from).chain(&to) {
        if address.parse::<lettre::message::Mailbox>().is_err() {
            return Err(bad(format!("'{address}' is not an email address")));
        }
    }
    Ok(Channel {
        name: shown,
        has_secret: password.is_some(),
        kind: Kind::Email(Email {
            host,
            port,
            security,
            user,
            password,
            from,
            to,
            subject,
        }),
    })
}

// --- webhooks ----------------------------------------------------------------------------

/// Parses a channel URL; a bad one is named by its scheme with everything after it hidden.
fn parse_url(scheme: &str, raw: &str) -> Result<Url, Bad> {
    Url::parse(raw).map_err(|e| Bad {
        shown: format!(
            "{scheme}://{}",
            hide_rest(raw.split_once("://").map_or("", |p| p.1))
        ),
        why: format!("not a valid URL: {e}"),
    })
}

fn webhook(scheme: &str, real: &str, payload: Payload) -> Parsed {
    let scheme = scheme.to_ascii_lowercase();
    let url = parse_url(&scheme, real)?;
    if let Some(p) = url.password() {
        secret(&decode(p));
        secret(p);
    }
    let rest = &url[url::Position::BeforePath..];
    // Webhook paths and queries carry credentials (Slack's and Discord's are nothing else): the
    // token-like parts are secrets. Not the short words: hiding `/api` everywhere would garble
    // the record (a health URL) that notify passes on.
    for segment in url.path_segments().into_iter().flatten() {
        if segment.len() >= 16 {
            secret(&decode(segment));
            secret(segment);
        }
    }
    for (_, value) in url.query_pairs() {
        if value.len() >= 8 {
            secret(&value);
        }
    }
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err(Bad {
            shown: format!("{scheme}://"),
            why: "no host".into(),
        });
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let user = match url.username() {
        "" => String::new(),
        u if url.password().is_some() => format!("{}:***@", decode(u)),
        _ => "***@".into(),
    };
    if !url.username().is_empty() && url.password().is_none() {
        secret(&decode(url.username()));
    }
    let tail = if rest.len() > 1 { "/***" } else { "" };
    let has_secret = rest.len() > 1 || !url.username().is_empty();
    Ok(Channel {
        name: format!("{scheme}://{user}{host}{port}{tail}"),
        has_secret,
        kind: Kind::Webhook(Webhook {
            payload,
            url: url.to_string(),
        }),
    })
}

/// `slack://[botname@]A/B/C` → https://hooks.slack.com/services/A/B/C.
fn slack_tokens(rest: &str) -> Parsed {
    let rest = rest.split_once('?').map_or(rest, |p| p.0);
    let rest = rest.rsplit_once('@').map_or(rest, |p| p.1);
    let tokens: Vec<&str> = rest.split('/').filter(|t| !t.is_empty()).collect();
    for t in &tokens {
        secret(t);
    }
    if tokens.len() != 3 {
        return Err(Bad {
            shown: "slack://***".into(),
            why: "expected slack://TOKEN_A/TOKEN_B/TOKEN_C (the three parts of the webhook URL)"
                .into(),
        });
    }
    let url = format!("https://hooks.slack.com/services/{}", tokens.join("/"));
    let mut channel = webhook("https", &url, Payload::Slack)?;
    channel.name = "slack://***".into();
    Ok(channel)
}

/// `discord://TOKEN@ID` (shoutrrr) or `discord://ID/TOKEN` (Apprise).
fn discord_tokens(rest: &str) -> Parsed {
    let rest = rest
        .split_once('?')
        .map_or(rest, |p| p.0)
        .trim_end_matches('/');
    let (id, token) = match rest.split_once('@') {
        Some((token, id)) => (id, token),
        None => rest.split_once('/').unwrap_or((rest, "")),
    };
    secret(token);
    if id.is_empty() || token.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Bad {
            shown: "discord://***".into(),
            why: "expected discord://TOKEN@WEBHOOK_ID or discord://WEBHOOK_ID/TOKEN".into(),
        });
    }
    let url = format!("https://discord.com/api/webhooks/{id}/{token}");
    let mut channel = webhook("https", &url, Payload::Discord)?;
    channel.name = format!("discord://***@{id}");
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Channel {
        match Channel::parse(raw) {
            Ok(c) => c,
            Err(b) => panic!("{raw}: {}: {}", b.shown, b.why),
        }
    }

    fn bad(raw: &str) -> Bad {
        match Channel::parse(raw) {
            Ok(c) => panic!("{raw} parsed as {}", c.name),
            Err(b) => b,
        }
    }

    #[test]
    fn lists_split_between_urls_not_inside() {
        assert_eq!(
            split_list("telegram://t@telegram?chats=@a,1, smtp://h/?to=a@x,b@y,json://h/p"),
            [
                "telegram://t@telegram?chats=@a,1",
                "smtp://h/?to=a@x,b@y",
                "json://h/p"
            ]
        );
    }

    #[test]
    fn telegram_both_styles() {
        let c = ok(
            "telegram://123:SECRETKEY@telegram?chats=@chan,-100123&thread=4&silent=yes&preview=no",
        );
        assert_eq!(
            c.name,
            "telegram://***@telegram?chats=@chan,-100123&thread=4&silent=yes&preview=no"
        );
        let Kind::Telegram(t) = c.kind else { panic!() };
        assert_eq!(t.token, "123:SECRETKEY");
        assert_eq!(
            t.chats[1],
            Chat {
                id: "-100123".into(),
                thread: Some(4)
            }
        );
        assert!(t.silent && !t.preview);

        let c = ok("tgram://123:SECRETKEY/-100123:7/@chan");
        assert_eq!(c.name, "tgram://***/-100123:7/@chan");
        let Kind::Telegram(t) = c.kind else { panic!() };
        assert_eq!(t.chats[0].thread, Some(7));
        assert_eq!(t.chats[1].thread, None);
    }

    #[test]
    fn bad_telegram_urls_hide_the_token() {
        let b = bad("telegram://123:SECRETKEY@telegram");
        assert!(b.why.starts_with("no chat"));
        assert!(!b.shown.contains("SECRETKEY"));
        let b = bad("tgram://123:SECRETKEY/chan name");
        assert!(!b.shown.contains("SECRETKEY"), "{}", b.shown);
        assert!(bad("telegram://nocolon@telegram?chats=1")
            .why
            .contains("token"));
    }

    #[test]
    fn email_urls() {
        let c = ok("smtp://u%40x.org:p%40ss@mail.example.com/?from=a@x.org&to=b@y.org,c@z.org");
        assert_eq!(
            c.name,
            "smtp://u@x.org:***@mail.example.com:587/?from=a@x.org&to=b@y.org,c@z.org"
        );
        let Kind::Email(e) = c.kind else { panic!() };
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        assert_eq!((e.security, e.to.len()), (Security::StartTls, 2));

        let Kind::Email(e) = ok("smtps://h/?from=a@x&to=b@y").kind else {
            panic!()
        };
        assert_eq!((e.security, e.port), (Security::Implicit, 465));

        assert!(
            bad("smtp://u:PASSWORD@mail.example.com/?from=a@x&to=b@y&starttls=no")
                .why
                .contains("clear text")
        );
        ok("smtp://u:pw@127.0.0.1:2525/?from=a@x&to=b@y&starttls=no");
        assert!(bad("smtp://h/?from=a@x").why.starts_with("no recipient"));
        assert!(bad("smtp://h/?from=nope&to=b@y").why.contains("'nope'"));
    }

    #[test]
    fn webhooks() {
        let c = ok("slack+http://127.0.0.1:9/services/T/B/XYZ");
        assert_eq!(c.name, "slack+http://127.0.0.1:9/***");
        ok("json://127.0.0.1:9/api/hook?team=web&key=0123456789abcdef");
        assert_eq!(
            kit::log::redact("/api/hook?team=web&key=0123456789abcdef"),
            "/api/hook?team=web&key=[REDACTED]"
        );
        let c = ok("slack://T000/B000/XXXXXXXX");
        let Kind::Webhook(w) = c.kind else { panic!() };
        assert_eq!(w.url, "https://hooks.slack.com/services/T000/B000/XXXXXXXX");
        let Kind::Webhook(w) = ok("discord://TOKEN@123").kind else {
            panic!()
        };
        assert_eq!(w.url, "https://discord.com/api/webhooks/123/TOKEN");
        let Kind::Webhook(w) = ok("discord://123/TOKEN").kind else {
            panic!()
        };
        assert_eq!(w.url, "https://discord.com/api/webhooks/123/TOKEN");
        let c = ok("json://127.0.0.1:8080/hook?key=1");
        let Kind::Webhook(w) = c.kind else { panic!() };
        assert_eq!(
            (c.name.as_str(), w.url.as_str()),
            (
                "json://127.0.0.1:8080/***",
                "http://127.0.0.1:8080/hook?key=1"
            )
        );
        let Kind::Webhook(w) = ok("https://hooks.slack.com/services/a/b/c").kind else {
            panic!()
        };
        assert_eq!(w.payload, Payload::Slack);
        assert!(bad("ftp://x/y").why.starts_with("unknown channel"));
        assert!(bad("nonsense").why.starts_with("not a URL"));
    }
}
