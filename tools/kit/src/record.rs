//! The deploy record: one JSON object on one line, read from stdin and written to stdout.
//!
//! The record grows as it flows through a pipe. Each tool reads the keys it needs, adds its
//! result under its own key (its name: `img-build`, `swap`, ...), appends one entry to `steps`,
//! and passes every other key through untouched, in order. Keys may be added over time;
//! readers ignore keys they don't know. docs/contract.md is the full description.
//!
//! ```json
//! {"version":1,"id":"20261126T233000Z-4242","started_at":"2026-11-26T23:30:00Z",
//!  "steps":[{"tool":"img-build","outcome":"ok","started_at":"…","ms":8123}],
//!  "img-build":{"image_id":"sha256:…","tags":["…"]},
//!  "failure":{"tool":"swap","step":"health","error":"…","exit":1}}
//! ```

use std::io::{IsTerminal, Read};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Exit};

/// The record format version this build writes. A record with a higher version is refused.
pub const VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    map: Map<String, Value>,
}

/// The failure a record carries, as written by the tool that failed.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Failure {
    pub tool: String,
    pub step: String,
    pub error: String,
    pub exit: u8,
    pub at: String,
}

impl Failure {
    /// Reads a recorded failure tolerantly: any object is a failure (the deploy failed, which
    /// is what matters most); a field that is missing or of another type reads as `unknown`
    /// (`exit` as 1, `at` as empty). `None` for anything but an object.
    pub fn from_value(v: &Value) -> Option<Failure> {
        let map = v.as_object()?;
        let text = |key: &str, default: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        Some(Failure {
            tool: text("tool", "unknown"),
            step: text("step", "unknown"),
            error: text("error", "unknown"),
            exit: map
                .get("exit")
                .and_then(Value::as_u64)
                .and_then(|e| u8::try_from(e).ok())
                .unwrap_or(1),
            at: text("at", ""),
        })
    }
}

impl Default for Record {
    fn default() -> Self {
        Record::fresh()
    }
}

impl Record {
    /// A new record: version, a deploy id and the time it started.
    pub fn fresh() -> Record {
        let now = Utc::now();
        let mut map = Map::new();
        map.insert("version".into(), VERSION.into());
        map.insert(
            "id".into(),
            format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), std::process::id()).into(),
        );
        map.insert("started_at".into(), now_rfc3339().into());
        Record { map }
    }

    /// Reads the record from stdin. A terminal or empty stdin starts a fresh record.
    pub fn from_stdin() -> Result<Record, Error> {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Ok(Record::fresh());
        }
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .map_err(|e| Error::input("stdin", format!("cannot read the record: {e}")))?;
        Record::parse(&text)
    }

    /// Parses a record. Empty or blank text is a fresh record.
    pub fn parse(text: &str) -> Result<Record, Error> {
        if text.trim().is_empty() {
            return Ok(Record::fresh());
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::input(
                "stdin",
                format!("not a JSON deploy record ({e}); pipe one JSON object, or nothing"),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(Error::input(
                "stdin",
                format!("the record must be a JSON object, got {}", kind(&value)),
            ));
        };
        let record = Record { map };
        record.check()?;
        Ok(record)
    }

    /// Checks the few keys every tool relies on, so a bad record fails at once, by name.
    fn check(&self) -> Result<(), Error> {
        match self.map.get("version") {
            None => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= VERSION) => {}
            Some(Value::Number(n)) => {
                return Err(Error::input(
                    "version",
                    format!("record version {n} is newer than this tool understands ({VERSION})"),
                ))
            }
            Some(other) => return Err(wrong_type("version", "a number", other)),
        }
        if let Some(v) = self.map.get("steps") {
            if !v.is_array() {
                return Err(wrong_type("steps", "an array", v));
            }
        }
        if let Some(v) = self.map.get("failure") {
            if !v.is_null() && !v.is_object() {
                return Err(wrong_type("failure", "an object", v));
            }
        }
        Ok(())
    }

    /// The upstream failure this record carries, if any.
    pub fn failure(&self) -> Option<Failure> {
        self.map.get("failure").and_then(Failure::from_value)
    }

    /// Records that `tool` failed. Replaces an earlier failure only if there is none.
    pub fn set_failure(&mut self, tool: &str, err: &Error) {
        if self.failure().is_some() {
            return;
        }
        let failure = Failure {
            tool: tool.into(),
            step: err.step_name().into(),
            error: err.to_string(),
            exit: err.exit().code(),
            at: now_rfc3339(),
        };
        self.set("failure", failure);
    }

    /// A top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// A value by dotted path: `swap.health_url`.
    pub fn path(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut v = self.map.get(parts.next()?)?;
        for p in parts {
            v = match v {
                Value::Object(m) => m.get(p)?,
                Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    /// A string by dotted path; absent or null is `None`, another type is bad input naming it.
    pub fn string(&self, path: &str) -> Result<Option<String>, Error> {
        match self.path(path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(wrong_type(path, "a string", other)),
        }
    }

    /// A list of strings by dotted path; absent or null is empty.
    pub fn strings(&self, path: &str) -> Result<Vec<String>, Error> {
        match self.path(path) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong_type(&format!("{path}.{i}"), "a string", other)),
                })
                .collect(),
            Some(other) => Err(wrong_type(path, "an array of strings", other)),
        }
    }

    /// A typed value by dotted path (a tool's report read back by another tool); absent or
    /// null is `None`. A value of the wrong shape is bad input naming the innermost field:
    /// `swap.earlier.0.switch.upstream: invalid type: integer `3`, expected a string`.
    pub fn typed<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Error> {
        match self.path(path) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => typed(value, path).map(Some),
        }
    }

    /// Sets a top-level key (a tool's own key), keeping its position if it was there.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.map.insert(key.into(), value);
    }

    /// Appends one entry to `steps`: which tool ran, how it ended, when, and for how long.
    pub fn add_step(&mut self, tool: &str, exit: Exit, started_at: &str, ms: u128) {
        let outcome = match exit {
            Exit::Success => "ok",
            Exit::Failure => "failed",
            Exit::BadInput => "bad-input",
            Exit::Skipped => "skipped",
        };
        let entry = serde_json::json!({
            "tool": tool, "outcome": outcome, "started_at": started_at, "ms": ms as u64,
        });
        match self.map.get_mut("steps") {
            Some(Value::Array(steps)) => steps.push(entry),
            _ => {
                self.map.insert("steps".into(), Value::Array(vec![entry]));
            }
        }
    }

    /// The record as one line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&self.map).unwrap_or_else(|_| "{}".into())
    }

    /// [`Record::to_line`] with every registered secret hidden ([`crate::log::redact`]) inside
    /// the strings of the record, keys included: numbers and booleans are never touched (the
    /// line stays JSON whatever the secrets are), and a secret is found however JSON would
    /// escape it.
    pub fn to_redacted_line(&self) -> String {
        fn walk(v: &Value) -> Value {
            match v {
                Value::String(s) => Value::String(crate::log::redact(s)),
                Value::Array(items) => Value::Array(items.iter().map(walk).collect()),
                Value::Object(map) => Value::Object(
                    map.iter()
                        .map(|(k, v)| (crate::log::redact(k), walk(v)))
                        .collect(),
                ),
                other => other.clone(),
            }
        }
        let map: Map<String, Value> = self
            .map
            .iter()
            .map(|(k, v)| (crate::log::redact(k), walk(v)))
            .collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Reads `value`, found at `path`, as a `T`; an error names the field inside it that is wrong.
pub fn typed<T: serde::de::DeserializeOwned>(value: &Value, path: &str) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        Error::input(field, e.into_inner().to_string())
    })
}

/// "swap.image: expected a string, got a number".
pub fn wrong_type(field: &str, expected: &str, got: &Value) -> Error {
    Error::input(field, format!("expected {expected}, got {}", kind(got)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_written_record_hides_secrets_in_strings_and_stays_json() {
        crate::log::secret("84736251");
        crate::log::secret("Zq9\"pw\\x");
        let mut r = Record::fresh();
        r.set(
            "t",
            serde_json::json!({"n": 84736251, "ok": true, "msg": "login Zq9\"pw\\x as 84736251",
                               "Zq9\"pw\\x": 1}),
        );
        let line = r.to_redacted_line();
        let back: Value = serde_json::from_str(&line).expect("still JSON");
        assert_eq!(
            back["t"]["n"], 84736251,
            "a number is not a string: left alone"
        );
        assert_eq!(back["t"]["ok"], true);
        assert_eq!(back["t"]["msg"], "login [REDACTED] as [REDACTED]");
        assert_eq!(back["t"]["[REDACTED]"], 1);
        assert!(!line.contains("Zq9"), "{line}");
    }
    use super::*;

    #[test]
    fn blank_is_fresh() {
        let r = Record::parse("  \n").unwrap();
        assert_eq!(r.get("version"), Some(&Value::from(VERSION)));
        assert!(r.string("id").unwrap().is_some());
    }

    #[test]
    fn unknown_keys_keep_order_and_value() {
        let text = r#"{"z":1,"a":{"deep":[1,2]},"version":1}"#;
        let r = Record::parse(text).unwrap();
        assert_eq!(r.to_line(), text);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = Record::parse(r#"{"version":"x"}"#).unwrap_err();
        assert_eq!(err.to_string(), "version: expected a number, got a string");
        let err = Record::parse("[1]").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("stdin: the record must be a JSON object"));
        let r = Record::parse(r#"{"swap":{"image":3}}"#).unwrap();
        assert_eq!(
            r.string("swap.image").unwrap_err().to_string(),
            "swap.image: expected a string, got a number"
        );
    }

    #[test]
    fn typed_reads_name_the_wrong_field() {
        #[derive(Debug, serde::Deserialize)]
        struct Switch {
            #[allow(dead_code)]
            upstream: String,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Swap {
            #[allow(dead_code)]
            earlier: Vec<Swap>,
            #[allow(dead_code)]
            switch: Option<Switch>,
        }
        let r = Record::parse(r#"{"swap":{"earlier":[{"earlier":[],"switch":{"upstream":3}}]}}"#)
            .unwrap();
        let err = r.typed::<Swap>("swap").unwrap_err().to_string();
        assert!(
            err.starts_with("swap.earlier[0].switch.upstream: invalid type: integer `3`"),
            "{err}"
        );
        assert!(r.typed::<Swap>("nothing").unwrap().is_none());
    }

    #[test]
    fn an_odd_failure_still_counts_as_a_failure() {
        let r = Record::parse(r#"{"failure":{"tool":"swap","error":"boom","exit":"x"}}"#).unwrap();
        let f = r.failure().expect("a failure");
        assert_eq!(
            (f.tool.as_str(), f.step.as_str(), f.error.as_str(), f.exit),
            ("swap", "unknown", "boom", 1)
        );
        let err = Record::parse(r#"{"failure":"boom"}"#).unwrap_err();
        assert_eq!(err.to_string(), "failure: expected an object, got a string");
        assert!(Record::parse(r#"{"failure":null}"#)
            .unwrap()
            .failure()
            .is_none());
    }

    #[test]
    fn first_failure_wins() {
        let mut r = Record::fresh();
        r.set_failure("swap", &Error::step("health", "never healthy"));
        r.set_failure("notify", &Error::step("send", "later"));
        let f = r.failure().unwrap();
        assert_eq!(
            (f.tool.as_str(), f.step.as_str(), f.exit),
            ("swap", "health", 1)
        );
    }
}
