//! BuildKit's progress stream (vertices, their logs and errors) turned into the compact log
//! img-build shows for the classic builder: one line per Dockerfile step as it starts
//! (`img-build: [2/5] RUN make`, or `… CACHED`), the whole log with `-v`, folded into a
//! `::group::` under GitHub Actions, and the failing step's last lines on failure.

use std::collections::{HashMap, VecDeque};

use bollard::grpc::build::moby::buildkit::v1::StatusResponse;
use kit::log;
use regex::Regex;

use crate::Step;

/// Lines kept for the folded log and the failure tail.
const KEEP_LINES: usize = 5000;
const TAIL_LINES: usize = 20;

#[derive(Default)]
struct Vertex {
    /// The order it was first seen in, BuildKit's `#N`.
    number: usize,
    name: String,
    step: Option<Step>,
    announced: bool,
    done: bool,
    cached: bool,
    /// Its log lines (the end of them), and the line being written.
    tail: VecDeque<String>,
    partial: String,
}

/// Follows one build's status messages.
pub struct Progress {
    vertices: HashMap<String, Vertex>,
    lines: VecDeque<String>,
    step_re: Regex,
    live_all: bool,
    /// The step (or, failing that, the vertex name) whose error ended the build.
    pub failed: Option<(Option<Step>, String)>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::default()
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            vertices: HashMap::new(),
            lines: VecDeque::new(),
            // `[2/5] RUN make`, `[builder 2/5] RUN make`, `[stage-1 3/3] COPY --from=…`.
            step_re: Regex::new(r"^\[(?:(\S+) )?(\d+)/(\d+)\] (.*)$")
                .unwrap_or_else(|_| unreachable!()),
            live_all: log::is_verbose() && !kit::github::is_actions(),
            failed: None,
        }
    }
}

impl Progress {
    pub fn update(&mut self, status: &StatusResponse) {
        for v in &status.vertexes {
            let next = self.vertices.len() + 1;
            let step_re = &self.step_re;
            let vertex = self.vertices.entry(v.digest.clone()).or_insert_with(|| {
                let step = step_re.captures(&v.name).map(|c| Step {
                    stage: c.get(1).map(|m| m.as_str().to_string()),
                    number: c[2].parse().unwrap_or(0),
                    of: c[3].parse().unwrap_or(0),
                    instruction: c[4].to_string(),
                });
                Vertex {
                    number: next,
                    name: v.name.clone(),
                    step,
                    ..Vertex::default()
                }
            });
            vertex.cached |= v.cached;
            let mut say = Vec::new();
            if !vertex.announced && (v.started.is_some() || v.cached) {
                vertex.announced = true;
                let line = if v.cached {
                    format!("{} CACHED", vertex.name)
                } else {
                    vertex.name.clone()
                };
                if vertex.step.is_some() || self.live_all {
                    log::info(&line);
                }
                say.push(format!("#{} {line}", vertex.number));
            }
            if !v.error.is_empty() && self.failed.is_none() {
                self.failed = Some((vertex.step.clone(), vertex.name.clone()));
                say.push(format!("#{} ERROR: {}", vertex.number, v.error));
            }
            if v.completed.is_some() && !vertex.done {
                vertex.done = true;
                if !vertex.partial.is_empty() {
                    let rest = std::mem::take(&mut vertex.partial);
                    say.push(keep_tail(vertex, &rest, self.live_all));
                }
                if !v.cached && v.error.is_empty() {
                    say.push(format!("#{} DONE", vertex.number));
                }
            }
            for line in say {
                self.keep(line);
            }
        }
        for l in &status.logs {
            let Some(vertex) = self.vertices.get_mut(&l.vertex) else {
                continue;
            };
            vertex.partial.push_str(&String::from_utf8_lossy(&l.msg));
            let mut said = Vec::new();
            while let Some(i) = vertex.partial.find('\n') {
                let line: String = vertex.partial.drain(..=i).collect();
                let line = line.trim_end_matches(['\n', '\r']).to_string();
                said.push(keep_tail(vertex, &line, self.live_all));
            }
            for line in said {
                self.keep(line);
            }
        }
    }

    fn keep(&mut self, line: String) {
        if self.lines.len() == KEEP_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Dockerfile steps seen, and those the cache satisfied.
    pub fn counts(&self) -> (u32, u32, Vec<String>) {
        let mut steps: Vec<&Vertex> = self
            .vertices
            .values()
            .filter(|v| v.step.is_some())
            .collect();
        steps.sort_by_key(|v| v.number);
        // A FROM of a local image always shows as cached; the classic builder does not count
        // it either.
        let cached: Vec<String> = steps
            .iter()
            .filter(|v| {
                v.cached
                    && !v
                        .step
                        .as_ref()
                        .is_some_and(|s| s.instruction.starts_with("FROM "))
            })
            .map(|v| v.name.clone())
            .collect();
        (steps.len() as u32, cached.len() as u32, cached)
    }

    /// Under GitHub Actions, the whole log in a collapsed group.
    pub fn fold(&self) {
        if kit::github::is_actions() {
            let lines: Vec<String> = self.lines.iter().cloned().collect();
            log::block(&format!("build log ({} lines)", lines.len()), &lines, false);
        }
    }

    /// The failing step's last log lines (else the whole log's), shown even with -q, unless
    /// they were all just printed.
    pub fn show_tail(&self, header: &str) {
        if self.live_all {
            return;
        }
        let failing = self.failed.as_ref().and_then(|(_, name)| {
            self.vertices
                .values()
                .find(|v| &v.name == name && !v.tail.is_empty())
        });
        let tail: Vec<String> = match failing {
            Some(v) => v.tail.iter().cloned().collect(),
            None => {
                let skip = self.lines.len().saturating_sub(TAIL_LINES);
                self.lines.iter().skip(skip).cloned().collect()
            }
        };
        log::block(header, &tail, true);
    }
}

/// Keeps a vertex's log line for its tail; returns it as a line of the whole log.
fn keep_tail(vertex: &mut Vertex, line: &str, live: bool) -> String {
    if live {
        log::info(&format!("  | {line}"));
    }
    if vertex.tail.len() == TAIL_LINES {
        vertex.tail.pop_front();
    }
    vertex.tail.push_back(line.to_string());
    format!("#{} {line}", vertex.number)
}

/// Why a BuildKit build failed, in words a user can act on, when the Dockerfile uses what
/// this engine's built-in frontend cannot do.
pub fn explain(error: &str, dockerfile: &str) -> Option<String> {
    let heredoc = Regex::new(r"(?m)^\s*(RUN|COPY|ADD)\b[^\n]*<<-?\s*['\x22]?[A-Za-z_]\w*")
        .unwrap_or_else(|_| unreachable!());
    let syntax = Regex::new(r"(?m)\A(?:\s*#[^\n]*\n)*?\s*#\s*syntax\s*=\s*(\S+)")
        .unwrap_or_else(|_| unreachable!());
    if let Some(c) = syntax.captures(dockerfile) {
        if !error.contains("executor failed") {
            return Some(format!(
                "the Dockerfile's `# syntax={}` line makes the engine pull that frontend image \
                 first, and it could not (offline, or the registry refused); remove the line to \
                 build with the engine's built-in frontend",
                &c[1]
            ));
        }
    }
    if heredoc.is_match(dockerfile)
        && (error.contains("unknown instruction") || error.contains("parse error"))
    {
        return Some(
            "the Dockerfile uses a heredoc (`RUN <<EOF`), which this engine's built-in \
             Dockerfile frontend does not know (heredocs came with Dockerfile syntax 1.4, \
             built into Docker Engine 23 and later): join the commands with && on one RUN \
             line, or COPY a script and RUN it"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::grpc::build::moby::buildkit::v1::{Vertex as V, VertexLog};

    fn vertex(digest: &str, name: &str, cached: bool, done: bool, error: &str) -> V {
        let t = Some(Default::default());
        V {
            digest: digest.into(),
            name: name.into(),
            cached,
            started: t,
            completed: if done { t } else { None },
            error: error.into(),
            ..V::default()
        }
    }

    #[test]
    fn steps_cache_hits_and_the_failing_step_are_followed() {
        let mut p = Progress::new();
        p.update(&StatusResponse {
            vertexes: vec![
                vertex(
                    "a",
                    "[internal] load build definition from Dockerfile",
                    false,
                    true,
                    "",
                ),
                vertex(
                    "b",
                    "[builder 1/2] FROM docker.io/dkt/busybox:latest",
                    true,
                    true,
                    "",
                ),
                vertex("c", "[builder 2/2] RUN make", true, true, ""),
                vertex("d", "[stage-1 2/3] RUN test", false, false, ""),
            ],
            ..Default::default()
        });
        p.update(&StatusResponse {
            vertexes: vec![vertex(
                "d",
                "[stage-1 2/3] RUN test",
                false,
                true,
                "exit code: 1",
            )],
            logs: vec![VertexLog {
                vertex: "d".into(),
                msg: b"one\ntwo".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let (steps, cached, names) = p.counts();
        assert_eq!((steps, cached), (3, 1));
        assert_eq!(names, ["[builder 2/2] RUN make"]);
        let (step, _) = p.failed.clone().unwrap();
        let step = step.unwrap();
        assert_eq!(
            (
                step.stage.as_deref(),
                step.number,
                step.of,
                step.instruction.as_str()
            ),
            (Some("stage-1"), 2, 3, "RUN test")
        );
        assert!(p
            .lines
            .iter()
            .any(|l| l == "#3 [builder 2/2] RUN make CACHED"));
        assert!(p.lines.iter().any(|l| l == "#4 one"), "{:?}", p.lines);
    }

    #[test]
    fn heredocs_and_syntax_lines_are_explained() {
        let e = explain(
            "dockerfile parse error line 3: unknown instruction: ECHO",
            "FROM x\nRUN <<EOF\necho hi\nEOF\n",
        )
        .unwrap();
        assert!(e.contains("heredoc"), "{e}");
        let e = explain(
            "failed to solve with frontend dockerfile.v0: failed to resolve",
            "# syntax=docker/dockerfile:1.4\nFROM x\n",
        )
        .unwrap();
        assert!(e.contains("`# syntax=docker/dockerfile:1.4` line"), "{e}");
        assert!(explain("executor failed running", "FROM x\nRUN false\n").is_none());
    }
}
