//! What a replacement did: [`Report`], stored under `swap` in the record (docs/tools.md
//! describes it) and read back, typed, by restore. Every part serializes and deserializes, so
//! a record written by swap is read by restore without guessing at its shape.

use std::path::PathBuf;

use kit::health::Outcome;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lock::Holder;

/// A container as the report names it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// What a replacement did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Report {
    pub service: String,
    pub strategy: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The container that served before (absent on a first deploy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Container>,
    /// The container that serves now (or would have).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Outcome>,
    /// The service's health URL: through the proxy when known, else the container's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    /// What the switch changed: present once traffic moved (nginx, alias).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<Switch>,
    /// How the old side drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// How the old container was stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
    /// Old containers retention removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// recreate: the time nothing served, from stopping the old to the new being healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<u64>,
    /// Each step's wall time in ms, in order, and `total`.
    pub ms: Map<String, Value>,
    /// total - time to healthy - drain: what swap itself costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_ms: Option<u64>,
    /// The lock file and, when its last holder had died, who that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockInfo>,
    /// `--dry-run`: what would be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    pub dry_run: bool,
    /// The swaps made earlier in the same record (several services in one deploy), oldest
    /// first: so restore knows how each service's traffic moved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Report>,
}

impl Report {
    /// The step's time in ms, 0 when it did not run.
    pub fn step_ms(&self, step: &str) -> u64 {
        self.ms.get(step).and_then(Value::as_u64).unwrap_or(0)
    }

    /// Whether this swap moved the service's traffic to its new container (and so tells how
    /// to move it back): not a dry run, and recreated or switched.
    pub fn moved_traffic(&self) -> bool {
        !self.dry_run
            && match self.strategy.as_str() {
                "recreate" => true,
                "nginx" | "alias" => self.switch.is_some(),
                _ => false,
            }
    }
}

/// What the switch changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Switch {
    Nginx(NginxSwitch),
    Alias(AliasSwitch),
}

/// The nginx upstream rewritten.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NginxSwitch {
    pub upstream_file: PathBuf,
    pub upstream: String,
    /// The server it points at now (`172.18.0.7:8000`).
    pub server: String,
    /// The servers it pointed at before (`null`: there was no such file).
    pub before: Option<Vec<String>>,
    /// Where nginx runs, for people: `container edge` or `this host`.
    pub nginx: String,
    /// The container nginx runs in (absent: on this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx_container: Option<String>,
}

/// The alias given to the new container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasSwitch {
    pub network: String,
    pub alias: String,
    /// The new container's address on that network.
    pub ip: Option<String>,
    /// The old container left DNS at the switch, keeping its address until it stopped (a
    /// network with a configured subnet).
    #[serde(default)]
    pub old_left_dns: bool,
}

/// How the old side drained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Drain {
    /// nginx: the workers that ran before the reload, waited for until they exited.
    Workers {
        old_workers: usize,
        drained: bool,
        ms: u64,
    },
    /// alias: a window during which both answer.
    Window {
        window_ms: u64,
        drained: bool,
        ms: u64,
    },
}

/// How the old container was stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stopped {
    pub name: String,
    /// Its exit code, when the engine reported one.
    pub exit_code: Option<i64>,
    pub ms: u64,
    /// Kept for rollback (renamed `<name>-old-<id>`), or removed by retention.
    pub kept: bool,
    /// It outlived its stop timeout and was killed (SIGKILL).
    #[serde(default)]
    pub killed: bool,
}

/// The deploy lock held during the swap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub file: String,
    /// The holder whose lock this one took over after it died mid-swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over: Option<Holder>,
}

/// A replacement that failed: the error, and the report of what was done before it (the old
/// and new containers, the health outcome), which the caller records.
#[derive(Debug)]
pub struct Failed {
    pub report: Box<Report>,
    pub error: kit::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written() {
        let mut r = Report {
            service: "backend".into(),
            strategy: "nginx".into(),
            switch: Some(Switch::Nginx(NginxSwitch {
                upstream_file: "/srv/up.conf".into(),
                upstream: "backend".into(),
                server: "172.18.0.7:8000".into(),
                before: None,
                nginx: "container edge".into(),
                nginx_container: Some("edge".into()),
            })),
            drain: Some(Drain::Workers {
                old_workers: 2,
                drained: true,
                ms: 87,
            }),
            ..Report::default()
        };
        r.earlier.push(Report {
            service: "frontend".into(),
            strategy: "alias".into(),
            switch: Some(Switch::Alias(AliasSwitch {
                network: "app".into(),
                alias: "frontend".into(),
                ip: None,
                old_left_dns: true,
            })),
            drain: Some(Drain::Window {
                window_ms: 3000,
                drained: true,
                ms: 3001,
            }),
            ..Report::default()
        });
        let value = serde_json::to_value(&r).unwrap();
        assert_eq!(value["switch"]["before"], Value::Null, "written as null");
        assert_eq!(value["earlier"][0]["switch"]["ip"], Value::Null);
        let back: Report = serde_json::from_value(value).unwrap();
        assert_eq!(back.switch, r.switch);
        assert_eq!(back.earlier[0].switch, r.earlier[0].switch);
        assert_eq!(back.earlier[0].drain, r.earlier[0].drain);
        assert!(back.moved_traffic());
    }

    #[test]
    fn only_a_swap_that_moved_traffic_tells_how_to_move_it_back() {
        let r = |strategy: &str, switched: bool, dry_run: bool| Report {
            strategy: strategy.into(),
            switch: switched.then(|| {
                Switch::Alias(AliasSwitch {
                    network: "n".into(),
                    alias: "a".into(),
                    ip: None,
                    old_left_dns: false,
                })
            }),
            dry_run,
            ..Report::default()
        };
        assert!(r("recreate", false, false).moved_traffic());
        assert!(r("alias", true, false).moved_traffic());
        assert!(
            !r("alias", false, false).moved_traffic(),
            "failed before its switch"
        );
        assert!(!r("alias", true, true).moved_traffic(), "a dry run");
    }
}
