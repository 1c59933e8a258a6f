//! What notify's tests share: a run with a fixed context, a stand-in for the Telegram Bot API,
//! a real SMTP server (Debian's python3-aiosmtpd) with a certificate made here, and a reader
//! for what Telegram would show of an HTML message.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use testkit::{eventually, free_port, json, tool, Out, Reply, Request, Run, StubServer, Value};

/// A commit message with everything that breaks Markdown and HTML senders.
pub const NASTY: &str = "Fix <b>bold</b> & snake_case_name *stars* [x](y) `tick`";

/// notify with a fixed context (no git, no GitHub), so messages are the same everywhere.
pub fn notify() -> Run {
    tool("notify")
        .args([
            "--repository",
            "acme/shop",
            "--branch",
            "main",
            "--commit",
            "0123456789abcdef0123456789abcdef01234567",
            "--commit-message",
            NASTY,
            "--author",
            "alice",
        ])
        .env("GITHUB_REPOSITORY", "")
        .env("GITHUB_RUN_ID", "")
        .env("GITHUB_SHA", "")
        .env("GITHUB_ACTOR", "")
        .env("GITHUB_REF_NAME", "")
}

/// A record of a deploy that went out.
pub fn deployed() -> Value {
    json!({
        "version": 1, "id": "20261126T233000Z-4242", "started_at": "2026-11-26T23:30:00.000Z",
        "img-build": {"image_id": "sha256:aaaa", "tags": ["registry.example.com/shop:v2"]},
        "img-push": {"pushed": [{"tag": "registry.example.com/shop:v2",
                                 "digest": "sha256:4f2a9c1e0b7d4f2a9c1e0b7d4f2a9c1e0b7d"}]},
        "swap": {"service": "backend", "image": "registry.example.com/shop:v2",
                 "health_url": "http://127.0.0.1:8000/up"},
        "steps": [
            {"tool": "img-build", "outcome": "ok", "started_at": "x", "ms": 8100},
            {"tool": "img-push", "outcome": "ok", "started_at": "x", "ms": 2300},
            {"tool": "swap", "outcome": "ok", "started_at": "x", "ms": 4000},
        ],
    })
}

/// A record of a deploy whose swap failed and was rolled back.
pub fn failed() -> Value {
    let mut r = deployed();
    r["steps"][2]["outcome"] = json!("failed");
    // restore exits 1 after a good rollback too: the deploy still failed.
    r["steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({"tool": "restore", "outcome": "failed", "started_at": "x", "ms": 900}));
    r["failure"] = json!({
        "tool": "swap", "step": "health",
        "error": "backend-new never became healthy: HTTP 500 from /up <html> & more",
        "exit": 1, "at": "2026-11-26T23:31:00.000Z",
    });
    r["restore"] = json!({
        "restored": true, "dry_run": false, "healthy": true,
        "snapshot": {"id": "20261126T232900Z-1", "path": "/srv/backups/20261126T232900Z-1",
                     "created_at": "2026-11-26T23:29:00Z"},
        "containers": [{"service": "backend", "name": "backend", "action": "recreated",
                        "image_id": "sha256:bbbb", "image": "registry.example.com/shop:v1"}],
    });
    r
}

/// A Bot API answer to sendMessage.
pub fn tg_ok(req: &Request) -> Reply {
    let body: Value = serde_json::from_str(&req.body).unwrap_or(Value::Null);
    Some((
        200,
        "application/json",
        json!({"ok": true, "result": {"message_id": 1, "date": 1_790_000_000,
               "chat": {"id": body["chat_id"]}, "text": body["text"]}})
        .to_string(),
    ))
}

pub fn tg_error(status: u16, description: &str, extra: Value) -> Reply {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if !extra.is_null() {
        body["parameters"] = extra;
    }
    Some((status, "application/json", body.to_string()))
}

/// A stand-in for the Bot API that answers every request as Telegram does when all is well.
pub fn bot() -> StubServer {
    StubServer::start(tg_ok)
}

/// The request bodies a stub received, as JSON.
pub fn bodies(stub: &StubServer) -> Vec<Value> {
    stub.requests()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap_or(Value::Null))
        .collect()
}

/// The first channel's error, as the record says it ("" when it has none).
pub fn error_of(out: &Out) -> String {
    out.record["notify"]["channels"][0]["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// What Telegram shows of an HTML-mode text: tags dropped, the three entities read back.
pub fn shown(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// A certificate for 127.0.0.1 and localhost, made once per test process with the openssl CLI
/// (self-signed; the tests trust it with --smtp-ca).
pub fn certificate() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("dkt-notify-cert-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .stdin(Stdio::null())
            .output()
            .expect("the openssl CLI is installed");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (cert, key)
    })
}

/// A real SMTP server (aiosmtpd), stopped on drop.
pub struct Smtp {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

pub const SMTP_USER: &str = "deploy-bot";

impl Smtp {
    /// `mode`: starttls, implicit or plain. With `password`, login is required.
    pub fn start(mode: &str, password: Option<&str>) -> Smtp {
        let dir = tempfile::Builder::new()
            .prefix("dkt-notify-mail-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let (cert, key) = certificate();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script)
            .args(["--port", &port.to_string(), "--mode", mode])
            .arg("--dir")
            .arg(dir.path())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key);
        if let Some(pw) = password {
            cmd.args(["--user", SMTP_USER, "--password", pw]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 runs");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).ok();
        if !line.starts_with("ready") {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "the SMTP server did not start (is python3-aiosmtpd installed? scripts/setup \
                 installs it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Smtp { child, port, dir }
    }

    /// The delivered messages (envelope and the message as a mail client shows it), in order.
    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for n in 1.. {
            let path = self.dir.path().join(format!("{n}.json"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                break;
            };
            out.push(serde_json::from_str(&text).expect("the server writes JSON"));
        }
        out
    }

    /// The raw message N (1-based) as it arrived.
    pub fn raw(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{n}.eml"))).unwrap_or_default()
    }

    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        eventually(Duration::from_secs(5), || self.messages().len() >= n);
        self.messages()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
