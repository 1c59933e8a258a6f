//! The nginx switch: rewrite the upstream include file atomically, `nginx -t`, graceful
//! `nginx -s reload`, and watch the old workers until they have finished.
//!
//! nginx runs in a container (commands through `docker exec`, workers through `docker top`)
//! or on this host (commands run directly, workers are the children of the master whose pid
//! is in the pid file). Old workers keep proxying to the old upstream until they exit, so the
//! old container may only be stopped once they are gone.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures_util::StreamExt;
use kit::docker::Engine;
use kit::{Error, Result};
use regex::Regex;

/// Where nginx runs.
pub(crate) enum Where {
    Container(String),
    Host { pid_file: PathBuf },
}

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Where::Container(c) => write!(f, "container {c}"),
            Where::Host { .. } => write!(f, "this host"),
        }
    }
}

/// Runs `nginx <args>`; returns (exit code, output).
pub(crate) fn nginx(engine: &Engine, at: &Where, args: &[&str]) -> Result<(i64, String)> {
    let mut cmd = vec!["nginx"];
    cmd.extend_from_slice(args);
    match at {
        Where::Container(name) => exec(engine, name, &cmd),
        Where::Host { .. } => {
            let out = std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| Error::io("switch", "cannot run nginx on this host", e))?;
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((i64::from(out.status.code().unwrap_or(-1)), text))
        }
    }
}

/// `docker exec` through the API: exit code and combined output.
pub(crate) fn exec(engine: &Engine, container: &str, cmd: &[&str]) -> Result<(i64, String)> {
    let docker_err = |e| Error::docker("switch", format!("exec {cmd:?} in {container}"), e);
    let created = engine
        .block(engine.docker.create_exec(
            container,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
        ))
        .map_err(docker_err)?;
    let mut text = String::new();
    let started = engine
        .block(engine.docker.start_exec(&created.id, None))
        .map_err(docker_err)?;
    if let StartExecResults::Attached { mut output, .. } = started {
        engine.block(async {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        });
    }
    let inspected = engine
        .block(engine.docker.inspect_exec(&created.id))
        .map_err(docker_err)?;
    Ok((inspected.exit_code.unwrap_or(-1), text))
}

/// nginx's master process as this host's /proc shows it: its pid, and whether it is the
/// container's first process (then a SIGHUP through the API reloads it, without an exec).
/// `None` when /proc does not show it (a remote engine, swap in another pid namespace).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Master {
    pub pid: u32,
    pub is_init: bool,
}

pub(crate) fn master(engine: &Engine, at: &Where) -> Option<Master> {
    let (pid, is_init) = match at {
        Where::Container(name) => {
            let ps = engine.processes(name, "switch").ok()?;
            let master = ps
                .iter()
                .find(|p| p.cmd.contains("nginx: master process"))?;
            // Its parent is outside the container: it is the container's first process.
            let ppid = master.ppid?;
            let is_init = !ps.iter().any(|p| p.pid == ppid);
            (master.pid, is_init)
        }
        Where::Host { pid_file } => (
            std::fs::read_to_string(pid_file)
                .ok()?
                .trim()
                .parse()
                .ok()?,
            false,
        ),
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("nginx: master")
        .then_some(Master { pid, is_init })
}

/// Reloads nginx gracefully: SIGHUP to the container when nginx is its first process (one
/// API call), else `nginx -s reload`.
pub(crate) fn reload(engine: &Engine, at: &Where, master: Option<Master>) -> Result<(i64, String)> {
    if let (Where::Container(name), Some(Master { is_init: true, .. })) = (at, master) {
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::default()
            .signal("HUP")
            .build();
        return match engine.block(engine.docker.kill_container(name, Some(opts))) {
            Ok(()) => Ok((0, String::new())),
            Err(e) => Ok((1, e.to_string())),
        };
    }
    nginx(engine, at, &["-s", "reload"])
}

/// The worker pids: from /proc when the master is visible there (cheap), else `docker top`.
pub(crate) fn workers_of(
    engine: &Engine,
    at: &Where,
    master: Option<Master>,
) -> Result<BTreeSet<u32>> {
    match master {
        Some(m) => Ok(host_children(m.pid)
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("worker process"))
            })
            .collect()),
        None => workers(engine, at),
    }
}

/// The pids of nginx's worker processes (current and shutting down).
pub(crate) fn workers(engine: &Engine, at: &Where) -> Result<BTreeSet<u32>> {
    match at {
        Where::Container(name) => Ok(engine
            .processes(name, "drain")?
            .into_iter()
            .filter(|p| p.cmd.contains("nginx: worker process"))
            .map(|p| p.pid)
            .collect()),
        Where::Host { pid_file } => {
            let master: u32 = std::fs::read_to_string(pid_file)
                .map_err(|e| {
                    Error::io(
                        "drain",
                        format!("read the nginx pid file {}", pid_file.display()),
                        e,
                    )
                })?
                .trim()
                .parse()
                .map_err(|_| {
                    Error::step("drain", format!("{} holds no pid", pid_file.display()))
                })?;
            Ok(host_children(master))
        }
    }
}

/// Children of `parent` per /proc (the host's nginx workers).
fn host_children(parent: u32) -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...; comm may hold spaces: split after ')'.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Waits until nginx runs workers that were not in `before` (the reload took), up to `within`.
pub(crate) fn wait_new_workers(
    engine: &Engine,
    at: &Where,
    master: Option<Master>,
    before: &BTreeSet<u32>,
    within: Duration,
) -> Result<bool> {
    let end = Instant::now() + within;
    loop {
        let now = workers_of(engine, at, master)?;
        if now.iter().any(|p| !before.contains(p)) {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The `server` addresses of `upstream NAME { ... }` in `text`.
pub(crate) fn servers(text: &str, upstream: &str) -> Option<Vec<String>> {
    let (start, end) = block(text, upstream)?;
    Some(
        server_re()
            .captures_iter(&text[start..end])
            .map(|c| c[1].to_string())
            .collect(),
    )
}

/// `text` with the `upstream NAME` block's servers replaced by the one `server`, keeping the
/// first server line's parameters and everything else; `None` if there is no such block.
pub(crate) fn rewrite(text: &str, upstream: &str, server: &str) -> Option<String> {
    let (start, end) = block(text, upstream)?;
    let body = &text[start..end];
    let re = server_re();
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str(&text[..start]);
    let mut first = true;
    let mut last = 0;
    for caps in re.captures_iter(body) {
        let m = caps.get(0).map_or(0..0, |m| m.range());
        out.push_str(&body[last..m.start]);
        if first {
            out.push_str(&format!("server {server}{};", &caps[2]));
            first = false;
            last = m.end;
        } else {
            // Drop the whole line of every further server.
            let line_start = body[..m.start].rfind('\n').map_or(0, |i| i + 1);
            if body[line_start..m.start].trim().is_empty() {
                out.truncate(out.len() - (m.start - line_start));
            }
            last = m.end;
            if body[last..].starts_with('\n') {
                last += 1;
            }
        }
    }
    out.push_str(&body[last..]);
    if first {
        // No server line yet: add one right after the brace.
        out.truncate(start);
        out.push_str(&format!("\n    server {server};"));
        out.push_str(body);
    }
    out.push_str(&text[end..]);
    Some(out)
}

/// A fresh upstream file.
pub(crate) fn generate(upstream: &str, server: &str, service: &str) -> String {
    format!(
        "# The live container of {service}: rewritten by deploykit's swap on every deploy.\n\
         upstream {upstream} {{\n    server {server};\n}}\n"
    )
}

fn server_re() -> Regex {
    Regex::new(r"\bserver\s+([^\s;]+)([^;]*);").expect("static regex")
}

/// The byte range of the inside of `upstream NAME { ... }` (after `{`, before `}`).
fn block(text: &str, upstream: &str) -> Option<(usize, usize)> {
    let re = Regex::new(&format!(
        r"(?m)^\s*upstream\s+{}\s*\{{",
        regex::escape(upstream)
    ))
    .expect("escaped regex");
    let m = re.find(text)?;
    let start = m.end();
    let end = start + text[start..].find('}')?;
    Some((start, end))
}

/// The temporary file next to `path` that an atomic write goes through.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.swap-tmp"))
}

/// Replaces `path` with `text` atomically: a temp file in the same directory, synced, renamed
/// over it (readers see the old file or the new one, never a partial one). Keeps the mode.
pub(crate) fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions());
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Some(mode) = mode {
            f.set_permissions(mode)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_servers_of_the_named_block() {
        let text = "# mine\nupstream other { server 1.1.1.1:80; }\nupstream backend {\n    server 172.18.0.5:8000 max_fails=0;\n    server 172.18.0.9:8000;\n    keepalive 16;\n}\n";
        let out = rewrite(text, "backend", "172.18.0.6:8000").unwrap();
        assert_eq!(
            out,
            "# mine\nupstream other { server 1.1.1.1:80; }\nupstream backend {\n    server 172.18.0.6:8000 max_fails=0;\n    keepalive 16;\n}\n"
        );
        assert_eq!(
            servers(&out, "backend").unwrap(),
            vec!["172.18.0.6:8000".to_string()]
        );
        assert_eq!(
            servers(&out, "other").unwrap(),
            vec!["1.1.1.1:80".to_string()]
        );
        assert!(rewrite(text, "nope", "x").is_none());
    }

    #[test]
    fn adds_a_server_to_an_empty_block() {
        let out = rewrite("upstream b {\n}\n", "b", "10.0.0.2:80").unwrap();
        assert_eq!(out, "upstream b {\n    server 10.0.0.2:80;\n}\n");
    }

    #[test]
    fn generated_file_round_trips() {
        let text = generate("backend", "10.0.0.2:8000", "backend");
        assert_eq!(servers(&text, "backend").unwrap(), vec!["10.0.0.2:8000"]);
    }
}
