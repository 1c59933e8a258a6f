//! Webhooks: the summary object as JSON, or Slack's `{"text": …}` and Discord's
//! `{"content": …}` for their incoming webhooks and the many servers that accept the same
//! (Mattermost, Rocket.Chat, Zulip's Slack endpoint, …).

use serde_json::json;

use crate::channel::{Payload, Webhook};
use crate::http::{self, Budget};
use crate::message::{char_len, Doc, Markup};
use crate::summary::Summary;
use crate::Delivery;

/// Discord refuses `content` over 2000 characters.
const DISCORD_LIMIT: usize = 2000;

pub fn send(w: &Webhook, summary: &Summary, doc: &Doc, budget: &Budget) -> Delivery {
    let bodies: Vec<String> = match w.payload {
        Payload::Json => vec![json!(summary).to_string()],
        Payload::Slack => vec![json!({ "text": doc.render(Markup::Slack) }).to_string()],
        Payload::Discord => doc
            .split(Markup::Discord, DISCORD_LIMIT, char_len)
            .iter()
            // No @everyone or role pings from a commit message.
            .map(|p| {
                json!({ "content": p.render(Markup::Discord), "allowed_mentions": { "parse": [] } })
                    .to_string()
            })
            .collect(),
    };
    let agent = http::agent(budget);
    let mut delivery = Delivery::default();
    for body in &bodies {
        match http::post_json(&agent, &w.url, body, budget) {
            Ok(a) if a.is_success() => delivery.messages += 1,
            Ok(a) => {
                delivery.error = Some(a.describe());
                break;
            }
            Err(e) => {
                delivery.error = Some(e);
                break;
            }
        }
    }
    delivery
}
