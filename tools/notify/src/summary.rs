//! What the deploy did, read from the record, and the default message that says it.
//!
//! The reader is tolerant: any key may be missing or of an unexpected type (a notifier that
//! refuses to speak because of an odd record would hide the very failure it should report).

use std::collections::BTreeMap;

use kit::Record;
use serde::Serialize;
use serde_json::Value;

use crate::context::Context;
use crate::message::{Doc, Span};

/// The deploy in a few fields: the body of a JSON webhook, and the values of a template.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `ok` or `failed`.
    pub outcome: &'static str,
    /// One line: what happened to what.
    pub title: String,
    /// The whole message as plain text.
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten)]
    pub context: Context,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    pub steps: Vec<StepTime>,
    pub total_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureInfo {
    pub tool: String,
    pub step: String,
    pub error: String,
}

/// Whether restore ran after the failure, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct Rollback {
    pub ok: bool,
    /// Why it did not work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub tool: String,
    pub outcome: String,
    pub ms: u64,
}

/// What flags may override in what the record says.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub service: Option<String>,
    pub url: Option<String>,
}

/// A string (or number) at a dotted path; anything else is as good as absent.
fn text(record: &Record, path: &str) -> Option<String> {
    match record.path(path)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The services swapped in this deploy, in order (`backend, frontend`): the earlier swaps
/// (`swap.earlier`), then the last.
fn swapped_services(record: &Record) -> Option<String> {
    let mut names: Vec<String> = array(record, "swap.earlier")
        .iter()
        .filter_map(|s| field(s, "service"))
        .collect();
    names.extend(text(record, "swap.service"));
    // Each once, in the order first swapped (backend swapped twice is still "backend").
    let mut seen = Vec::new();
    names.retain(|n| {
        let first = !seen.contains(n);
        seen.push(n.clone());
        first
    });
    (!names.is_empty()).then(|| names.join(", "))
}

fn array<'r>(record: &'r Record, path: &str) -> &'r [Value] {
    match record.path(path) {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

fn field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

impl Summary {
    /// Reads the record. `stdin_problem` says why no usable record arrived (the tool before
    /// notify died without writing one, or broke off mid-record): the outcome is then unknown,
    /// not a success.
    pub fn read(
        record: &Record,
        stdin_problem: Option<String>,
        context: Context,
        overrides: Overrides,
    ) -> Summary {
        let unknown = stdin_problem.is_some();
        let mut failure = record.failure().map(|f| FailureInfo {
            tool: f.tool,
            step: f.step,
            error: f.error,
        });
        if let (Some(problem), None) = (stdin_problem, &failure) {
            failure = Some(FailureInfo {
                tool: String::new(),
                step: "stdin".into(),
                error: problem,
            });
        }
        let steps: Vec<StepTime> = array(record, "steps")
            .iter()
            .filter_map(|s| {
                Some(StepTime {
                    tool: field(s, "tool")?,
                    outcome: field(s, "outcome").unwrap_or_default(),
                    ms: s.get("ms").and_then(Value::as_u64).unwrap_or(0),
                })
            })
            .filter(|s| s.tool != "notify")
            .collect();

        let pushed = array(record, "img-push.pushed");
        let image = text(record, "swap.image")
            .or_else(|| text(record, "restore.containers.0.image"))
            .or_else(|| pushed.first().and_then(|p| field(p, "tag")))
            .or_else(|| text(record, "img-push.tags.0"))
            .or_else(|| text(record, "img-build.tags.0"));
        // The digest of the image shown, never another's (a frontend's image with the
        // backend's digest would mislead).
        let digest = match &image {
            Some(shown) => pushed
                .iter()
                .find(|p| field(p, "tag").as_ref() == Some(shown))
                .and_then(|p| field(p, "digest")),
            None => pushed
                .first()
                .and_then(|p| field(p, "digest"))
                .or_else(|| text(record, "img-push.digest")),
        };
        let service = overrides
            .service
            .or_else(|| swapped_services(record))
            .or_else(|| text(record, "restore.containers.0.service"));
        let url = overrides
            .url
            .or_else(|| text(record, "swap.url"))
            .or_else(|| text(record, "swap.health_url"))
            .or_else(|| text(record, "healthwait.target").filter(|t| t.starts_with("http")));

        let rollback = rollback_of(record, &steps);
        let total_ms = steps.iter().map(|s| s.ms).sum();
        let mut summary = Summary {
            outcome: match &failure {
                _ if unknown => "unknown",
                Some(_) => "failed",
                None => "ok",
            },
            title: String::new(),
            text: String::new(),
            deploy_id: text(record, "id"),
            service,
            image,
            digest,
            url,
            context,
            failure,
            rollback,
            steps,
            total_ms,
        };
        summary.title = summary.headline();
        summary
    }

    /// The first line: `✅ backend deployed — acme/shop@main`.
    fn headline(&self) -> String {
        let named = |what: &str, alone: &str| match &self.service {
            Some(n) => format!("{n} {what}"),
            None => alone.to_string(),
        };
        let what = match (self.outcome, &self.failure, &self.rollback) {
            ("unknown", ..) => format!(
                "⚠️ {}",
                named("deploy outcome unknown", "Deploy outcome unknown")
            ),
            // A rollback by hand (`restore --latest | notify`), not after a failure.
            (_, None, Some(r)) if r.ok => format!("↩️ {}", named("rolled back", "Rolled back")),
            (_, None, _) => format!("✅ {}", named("deployed", "Deploy succeeded")),
            (_, Some(_), _) => format!("❌ {}", named("deploy FAILED", "Deploy FAILED")),
        };
        let place = match (&self.context.repository, &self.context.branch) {
            (Some(r), Some(b)) => format!(" — {r}@{b}"),
            (Some(r), None) => format!(" — {r}"),
            (None, Some(b)) => format!(" — {b}"),
            (None, None) => String::new(),
        };
        format!("{what}{place}")
    }

    /// The default message.
    pub fn doc(&self) -> Doc {
        let mut doc = Doc::default();
        doc.push(vec![Span::Bold(self.title.clone())]);
        if let Some(f) = &self.failure {
            if f.tool.is_empty() {
                doc.push(vec![Span::text(f.error.clone())]);
            } else {
                doc.push(vec![
                    Span::Bold("Failed: ".into()),
                    Span::Code(format!("{} ({})", f.tool, f.step)),
                    Span::text(format!(": {}", f.error)),
                ]);
            }
        }
        // Only when restore ran: a failed swap leaves the old version serving by itself.
        if self.rollback.is_some() {
            doc.push(vec![Span::text(self.rollback_words())]);
        }
        if let Some(image) = &self.image {
            let mut line = vec![Span::text("Image: "), Span::Code(image.clone())];
            if let Some(d) = &self.digest {
                line.push(Span::text(" "));
                line.push(Span::Code(short_digest(d)));
            }
            doc.push(line);
        }
        if let Some(commit) = self.context.commit_short() {
            let mut line = vec![Span::text("Commit: ")];
            line.push(match &self.context.commit_url {
                Some(url) => Span::Link {
                    text: commit,
                    url: url.clone(),
                },
                None => Span::Code(commit),
            });
            if let Some(m) = &self.context.commit_message {
                line.push(Span::text(format!(" {m}")));
            }
            if let Some(a) = &self.context.author {
                line.push(Span::text(format!(" — {a}")));
            }
            doc.push(line);
        } else if let Some(a) = &self.context.author {
            doc.push(vec![Span::text(format!("By: {a}"))]);
        }
        if let Some(url) = &self.url {
            doc.push(vec![
                Span::text("URL: "),
                Span::Link {
                    text: url.clone(),
                    url: url.clone(),
                },
            ]);
        }
        if !self.steps.is_empty() {
            doc.push(vec![Span::text(self.steps_words())]);
        }
        if let Some(run) = &self.context.run_url {
            doc.push(vec![
                Span::text("Run: "),
                Span::Link {
                    text: run.clone(),
                    url: run.clone(),
                },
            ]);
        }
        doc
    }

    fn rollback_words(&self) -> String {
        match &self.rollback {
            Some(Rollback {
                ok: true, snapshot, ..
            }) => format!(
                "Rolled back{}: the previous version is serving.",
                snapshot
                    .as_ref()
                    .map(|s| format!(" to snapshot {s}"))
                    .unwrap_or_default()
            ),
            Some(Rollback {
                ok: false, error, ..
            }) => format!(
                "Rollback FAILED{}: check the server now.",
                error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        }
    }

    /// `Took 15.6s: img-build 8.1s, img-push 2.3s, swap 4.0s ✗`.
    fn steps_words(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                let mark = match s.outcome.as_str() {
                    // restore exits 1 after a good rollback (the deploy still failed).
                    _ if s.tool == "restore" && self.rollback.as_ref().is_some_and(|r| r.ok) => "",
                    "ok" | "" => "",
                    "skipped" => " (skipped)",
                    _ => " ✗",
                };
                format!("{} {}{mark}", s.tool, human_ms(s.ms))
            })
            .collect();
        format!("Took {}: {}", human_ms(self.total_ms), steps.join(", "))
    }

    /// The names a template may use, with this deploy's values.
    pub fn values(&self, default_message: &str) -> BTreeMap<&'static str, String> {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let f = self.failure.as_ref();
        let failed = self.failure.is_some();
        BTreeMap::from([
            (
                "status",
                match self.outcome {
                    "unknown" => "unknown",
                    _ if failed => "failed",
                    _ => "succeeded",
                }
                .into(),
            ),
            (
                "icon",
                match self.outcome {
                    "unknown" => "⚠️",
                    _ if failed => "❌",
                    _ => "✅",
                }
                .into(),
            ),
            ("failed", if failed { "yes".into() } else { String::new() }),
            ("title", self.title.clone()),
            ("message", default_message.to_string()),
            ("service", o(&self.service)),
            ("image", o(&self.image)),
            ("digest", o(&self.digest)),
            ("url", o(&self.url)),
            ("deploy_id", o(&self.deploy_id)),
            ("repository", o(&self.context.repository)),
            ("branch", o(&self.context.branch)),
            ("commit", o(&self.context.commit)),
            (
                "commit_short",
                self.context.commit_short().unwrap_or_default(),
            ),
            ("commit_message", o(&self.context.commit_message)),
            ("author", o(&self.context.author)),
            ("run_url", o(&self.context.run_url)),
            ("commit_url", o(&self.context.commit_url)),
            ("failed_tool", f.map(|f| f.tool.clone()).unwrap_or_default()),
            ("failed_step", f.map(|f| f.step.clone()).unwrap_or_default()),
            ("error", f.map(|f| f.error.clone()).unwrap_or_default()),
            (
                "rollback",
                if failed {
                    self.rollback_words()
                } else {
                    String::new()
                },
            ),
            (
                "rolled_back",
                match &self.rollback {
                    Some(r) if r.ok => "yes".into(),
                    _ => String::new(),
                },
            ),
            (
                "steps",
                if self.steps.is_empty() {
                    String::new()
                } else {
                    self.steps_words()
                },
            ),
            ("duration", human_ms(self.total_ms)),
        ])
    }
}

/// The names [`Summary::values`] fills, for checking a template before anything is sent.
pub const TEMPLATE_NAMES: &[&str] = &[
    "status",
    "icon",
    "failed",
    "title",
    "message",
    "service",
    "image",
    "digest",
    "url",
    "deploy_id",
    "repository",
    "branch",
    "commit",
    "commit_short",
    "commit_message",
    "author",
    "run_url",
    "commit_url",
    "failed_tool",
    "failed_step",
    "error",
    "rollback",
    "rolled_back",
    "steps",
    "duration",
];

/// Did restore roll back, and did it work? Read from restore's result: it exits 1 after a good
/// rollback too (the deploy still failed), so its step entry cannot tell. A restore that chose
/// to do nothing, or only showed a plan, is no rollback.
fn rollback_of(record: &Record, steps: &[StepTime]) -> Option<Rollback> {
    let snapshot = || {
        text(record, "restore.snapshot")
            .or_else(|| text(record, "restore.snapshot.id"))
            .or_else(|| text(record, "snapshot.id"))
    };
    let Some(r) = record.get("restore").filter(|v| v.is_object()) else {
        // No result at all: restore stopped before it had one (bad input, a crash).
        let step = steps.iter().rev().find(|s| s.tool == "restore")?;
        return matches!(step.outcome.as_str(), "failed" | "bad-input").then(|| Rollback {
            ok: false,
            error: None,
            snapshot: None,
        });
    };
    let is = |k: &str, b: bool| r.get(k) == Some(&Value::Bool(b));
    if let Some(error) = r.get("error").and_then(Value::as_str) {
        return Some(Rollback {
            ok: false,
            error: Some(error.to_string()),
            snapshot: snapshot(),
        });
    }
    if is("dry_run", true) || is("skipped", true) || is("restored", false) {
        return None;
    }
    let healthy = !is("healthy", false);
    Some(Rollback {
        ok: healthy,
        error: (!healthy).then(|| "not healthy after the rollback".to_string()),
        snapshot: snapshot(),
    })
}

fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}", &hex[..12]),
        _ => d.to_string(),
    }
}

fn human_ms(ms: u64) -> String {
    kit::human(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(v: Value) -> Summary {
        let record = Record::parse(&v.to_string()).unwrap();
        Summary::read(&record, None, Context::default(), Overrides::default())
    }

    #[test]
    fn a_deploy_of_several_services_names_them_all() {
        let s = summary(json!({"version": 1,
            "swap": {"service": "frontend", "image": "web:2",
                     "earlier": [{"service": "backend", "image": "api:2"}]}}));
        assert_eq!(s.title, "✅ backend, frontend deployed");
        let s = summary(json!({"version": 1,
            "img-push": {"pushed": [{"tag": "api:2", "digest": "sha256:0b1e0b1e0b1e0b1e0b1e"}]},
            "swap": {"service": "backend", "image": "api:2",
                     "earlier": [{"service": "backend"}, {"service": "frontend"}]}}));
        assert_eq!(s.title, "✅ backend, frontend deployed");
        assert!(s.digest.is_some());
        let s = summary(json!({"version": 1,
            "img-push": {"pushed": [{"tag": "api:2", "digest": "sha256:0b1e0b1e0b1e0b1e0b1e"}]},
            "swap": {"service": "frontend", "image": "web:2"}}));
        assert_eq!(
            s.digest, None,
            "the frontend's image is shown without the backend's digest"
        );
    }

    #[test]
    fn success_names_service_image_and_digest() {
        let s = summary(json!({
            "steps": [{"tool":"img-push","outcome":"ok","ms":2300},{"tool":"swap","outcome":"ok","ms":4000}],
            "img-push": {"pushed":[{"tag":"r/app:v2","digest":"sha256:0123456789abcdef0123"}]},
            "swap": {"service":"backend","image":"r/app:v2"},
        }));
        let text = s.doc().plain();
        assert!(text.starts_with("✅ backend deployed\n"), "{text}");
        assert!(
            text.contains("Image: r/app:v2 sha256:0123456789ab\n"),
            "{text}"
        );
        assert!(
            text.ends_with("Took 6.3s: img-push 2.3s, swap 4.0s"),
            "{text}"
        );
    }

    #[test]
    fn failure_says_who_where_why_and_the_rollback() {
        let s = summary(json!({
            "steps": [{"tool":"swap","outcome":"failed","ms":1},{"tool":"restore","outcome":"failed","ms":1}],
            "failure": {"tool":"swap","step":"health","error":"never healthy","exit":1,"at":"x"},
            "restore": {"restored":true,"snapshot":{"id":"snap-1","path":"/x"},"healthy":true},
            "swap": 42,
        }));
        let text = s.doc().plain();
        assert!(text.starts_with("❌ Deploy FAILED\nFailed: swap (health): never healthy\n"));
        assert!(text.contains("Rolled back to snapshot snap-1"), "{text}");
        assert!(text.contains("swap 1ms ✗, restore 1ms"), "{text}");
        assert!(text.ends_with("restore 1ms"), "{text}");
    }

    #[test]
    fn a_restore_that_did_nothing_is_no_rollback() {
        let s = summary(json!({
            "failure": {"tool":"swap","step":"health","error":"e","exit":1,"at":"x"},
            "restore": {"dry_run": true},
        }));
        assert!(s.rollback.is_none());
        assert!(!s.doc().plain().contains("olled back"));
        let s = summary(json!({
            "failure": {"tool":"swap","step":"health","error":"e","exit":1,"at":"x"},
            "restore": {"restored": false, "reason": "no snapshot"},
        }));
        assert!(s.rollback.is_none());
    }

    #[test]
    fn a_failed_rollback_is_loud() {
        let s = summary(json!({
            "steps": [{"tool":"restore","outcome":"failed","ms":1}],
            "failure": {"tool":"swap","step":"health","error":"e","exit":1,"at":"x"},
            "restore": {"restored": false, "error": "snapshot x is refused: tampered"},
        }));
        let text = s.doc().plain();
        assert!(
            text.contains(
                "Rollback FAILED (snapshot x is refused: tampered): check the server now."
            ),
            "{text}"
        );
        assert!(text.contains("restore 1ms ✗"), "{text}");
        let s = summary(json!({
            "steps": [{"tool":"restore","outcome":"bad-input","ms":1}],
            "failure": {"tool":"swap","step":"health","error":"e","exit":1,"at":"x"},
        }));
        assert!(s.doc().plain().contains("Rollback FAILED: check"));
    }

    #[test]
    fn a_rollback_by_hand_and_a_missing_record() {
        let s = summary(json!({
            "restore": {"restored": true, "snapshot": {"id": "s1"}, "healthy": true,
                        "containers": [{"service": "web", "image": "app:v1"}]},
        }));
        assert!(s
            .doc()
            .plain()
            .starts_with("↩️ web rolled back\nRolled back to snapshot s1"));
        let record = Record::parse("").unwrap();
        let s = Summary::read(
            &record,
            Some(crate::NO_RECORD.into()),
            Context::default(),
            Overrides::default(),
        );
        assert_eq!(s.outcome, "unknown");
        let text = s.doc().plain();
        assert!(
            text.starts_with("⚠️ Deploy outcome unknown\nno deploy record arrived"),
            "{text}"
        );
    }
}
