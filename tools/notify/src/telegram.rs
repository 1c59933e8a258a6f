//! Telegram through the Bot API's `sendMessage`: HTML parse mode with the three characters
//! escaped, split into parts of at most 4096 characters on line boundaries, and, should
//! Telegram still refuse the markup ("can't parse entities"), sent once more as plain text.

use serde_json::{json, Value};

use crate::channel::{Chat, Telegram};
use crate::http::{self, Budget};
use crate::message::{utf16_len, Doc, Markup};
use crate::Delivery;

/// Telegram's limit on one message, in UTF-16 code units.
pub const LIMIT: usize = 4096;

pub fn send(t: &Telegram, api: &str, doc: &Doc, budget: &Budget) -> Delivery {
    let url = format!("{}/bot{}/sendMessage", api.trim_end_matches('/'), t.token);
    let parts = doc.split(Markup::Html, LIMIT, utf16_len);
    let agent = http::agent(budget);
    // Each chat on its own thread: a chat that hangs does not hold back the others.
    let results: Vec<(String, Result<u32, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = t
            .chats
            .iter()
            .map(|chat| {
                let (agent, url, parts) = (&agent, &url, &parts);
                s.spawn(move || {
                    (
                        chat.id.clone(),
                        send_chat(agent, url, t, chat, parts, budget),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (String::new(), Err("sender crashed".into())))
            })
            .collect()
    });
    let mut delivery = Delivery::default();
    let mut errors = Vec::new();
    for (chat, result) in results {
        match result {
            Ok(n) => delivery.messages += n,
            Err(e) if t.chats.len() > 1 => errors.push(format!("chat {chat}: {e}")),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        delivery.error = Some(errors.join("; "));
    }
    delivery
}

/// Sends every part to one chat, in order; stops at the first part that fails.
fn send_chat(
    agent: &ureq::Agent,
    url: &str,
    t: &Telegram,
    chat: &Chat,
    parts: &[Doc],
    budget: &Budget,
) -> Result<u32, String> {
    let mut sent = 0;
    for (i, part) in parts.iter().enumerate() {
        let body = request(t, chat, &part.render(Markup::Html), true);
        let mut answer = http::post_json(agent, url, &body.to_string(), budget);
        if let Ok(a) = &answer {
            if a.status == 400
                && description(a)
                    .to_lowercase()
                    .contains("can't parse entities")
            {
                kit::log::warn(&format!(
                    "Telegram could not read the message's markup ({}); sending it as plain text",
                    description(a)
                ));
                let body = request(t, chat, &part.plain(), false);
                answer = http::post_json(agent, url, &body.to_string(), budget);
            }
        }
        let answer = answer.map_err(|e| part_of(i, parts.len(), e))?;
        if !(answer.is_success() && answer.json()["ok"] == true) {
            let why = match description(&answer) {
                d if d.is_empty() => answer.describe(),
                d if answer.attempts > 1 => format!(
                    "Telegram answered {}: {d} (after {} attempts)",
                    answer.status, answer.attempts
                ),
                d => format!("Telegram answered {}: {d}", answer.status),
            };
            return Err(part_of(i, parts.len(), why));
        }
        sent += 1;
    }
    Ok(sent)
}

fn part_of(i: usize, n: usize, e: String) -> String {
    if n > 1 {
        format!("part {} of {n}: {e}", i + 1)
    } else {
        e
    }
}

fn description(a: &http::Answer) -> String {
    a.json()["description"].as_str().unwrap_or("").to_string()
}

/// The `sendMessage` body.
fn request(t: &Telegram, chat: &Chat, text: &str, html: bool) -> Value {
    let chat_id: Value = match chat.id.parse::<i64>() {
        Ok(n) => n.into(),
        Err(_) => chat.id.clone().into(),
    };
    let mut body = json!({ "chat_id": chat_id, "text": text });
    if html {
        body["parse_mode"] = "HTML".into();
    }
    if let Some(thread) = chat.thread {
        body["message_thread_id"] = thread.into();
    }
    if t.silent {
        body["disable_notification"] = true.into();
    }
    if !t.preview {
        // Bot API 7.0's field, and the older one for self-hosted servers not yet updated.
        body["link_preview_options"] = json!({ "is_disabled": true });
        body["disable_web_page_preview"] = true.into();
    }
    body
}
