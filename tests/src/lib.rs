//! The test harness: run the real tool binaries as a user would, pipe them together, and make
//! and clean up things on the real Docker Engine.
//!
//! ```no_run
//! use testkit::tool;
//! let out = tool("healthwait").args(["--tcp", "127.0.0.1:9"]).stdin("").run();
//! out.code(1).stderr_has("connection refused");
//! assert_eq!(out.record["healthwait"]["healthy"], false);
//! ```
//!
//! Everything a test makes on the engine is named `dkt-…` and labelled `io.deploykit.test=1`,
//! so it cannot collide with a user's things; [`Cleanup`] removes it on drop, also when the
//! test panics.
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::{json, Value};

pub mod swarm;

/// The label every test-made container, network and image carries.
pub const LABEL: &str = "io.deploykit.test=1";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a tool binary built by this `cargo test` run (target/<profile>/<name>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A command to run: a tool binary, with args, env and stdin.
pub struct Run {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    label: String,
}

/// Starts building a run of the tool binary `name`.
pub fn tool(name: &str) -> Run {
    let mut cmd = Command::new(bin(name));
    // A clean environment for what the tools read, so a developer's shell cannot leak in.
    for var in [
        "GITHUB_ACTIONS",
        "GITHUB_OUTPUT",
        "GITHUB_STEP_SUMMARY",
        "DEPLOY_QUIET",
        "DEPLOY_VERBOSE",
    ] {
        cmd.env_remove(var);
    }
    Run {
        cmd,
        stdin: None,
        label: name.to_string(),
    }
}

impl Run {
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Run {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Run {
        self.cmd.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Run {
        self.cmd.current_dir(dir);
        self
    }

    /// Text on stdin. Without this, stdin is empty (/dev/null): a fresh record.
    pub fn stdin(mut self, text: impl Into<Vec<u8>>) -> Run {
        self.stdin = Some(text.into());
        self
    }

    /// A record on stdin.
    pub fn record(self, record: &Value) -> Run {
        self.stdin(record.to_string())
    }

    /// Runs to completion and collects what the user would see.
    pub fn run(mut self) -> Out {
        let start = Instant::now();
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.label));
        if let Some(input) = self.stdin.take() {
            let mut stdin = child.stdin.take().expect("piped stdin");
            // A tool may exit before reading everything (a usage error); that is its right.
            let _ = stdin.write_all(&input);
        }
        let output = child.wait_with_output().expect("wait for tool");
        Out::new(
            &self.label,
            output.status.code(),
            output.stdout,
            output.stderr,
            start.elapsed(),
        )
    }

    /// Starts without waiting (for tests that signal or race it). Stdin is written and closed.
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.label));
        let input = self.stdin.take().unwrap_or_default();
        let mut stdin = child.stdin.take().expect("piped stdin");
        let _ = stdin.write_all(&input);
        drop(stdin);
        child
    }
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub label: String,
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as the one-line JSON record (Null if it was not one).
    pub record: Value,
    pub elapsed: Duration,
}

impl Out {
    fn new(
        label: &str,
        status: Option<i32>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        elapsed: Duration,
    ) -> Out {
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let record = serde_json::from_str(stdout.trim_end()).unwrap_or(Value::Null);
        Out {
            label: label.to_string(),
            status,
            stdout,
            stderr,
            record,
            elapsed,
        }
    }

    /// Asserts the exit code, showing stderr when it differs.
    pub fn code(&self, expected: i32) -> &Out {
        assert_eq!(
            self.status,
            Some(expected),
            "{} exited {:?}, expected {expected}\n--- stderr:\n{}\n--- stdout:\n{}",
            self.label,
            self.status,
            self.stderr,
            self.stdout
        );
        self
    }

    /// Asserts stdout is exactly one line holding one JSON object.
    pub fn one_record(&self) -> &Out {
        assert!(
            self.stdout.ends_with('\n') && self.stdout.trim_end().lines().count() == 1,
            "{}: stdout is not one line: {:?}",
            self.label,
            self.stdout
        );
        assert!(
            self.record.is_object(),
            "{}: stdout is not a JSON object: {}",
            self.label,
            self.stdout
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Out {
        assert!(
            self.stderr.contains(needle),
            "{}: stderr lacks {needle:?}:\n{}",
            self.label,
            self.stderr
        );
        self
    }

    pub fn stderr_lacks(&self, needle: &str) -> &Out {
        assert!(
            !self.stderr.contains(needle),
            "{}: stderr shows {needle:?}:\n{}",
            self.label,
            self.stderr
        );
        self
    }

    /// `steps[]` as `"tool outcome"`, in order: `["snapshot ok", "swap failed", …]`.
    pub fn steps(&self) -> Vec<String> {
        self.record["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {}",
                            s["tool"].as_str().unwrap_or("?"),
                            s["outcome"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The recorded failure, asserting there is one from `tool`.
    pub fn failure_from(&self, tool: &str) -> &Value {
        let f = &self.record["failure"];
        assert_eq!(
            f["tool"], tool,
            "{}: failure is {f} in {}",
            self.label, self.stdout
        );
        f
    }
}

/// Runs a shell pipeline (`bash -o pipefail -c`) with the tools' directory first on PATH, as a
/// user would type it. Returns the pipeline's exit status, stdout and stderr.
pub fn shell(script: &str) -> Out {
    let dir = bin("healthwait").parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = Instant::now();
    let output = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .env("PATH", path)
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    Out::new(
        "pipeline",
        output.status.code(),
        output.stdout,
        output.stderr,
        start.elapsed(),
    )
}

/// A name no user has and no other test uses: `dkt-<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "dkt-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A free loopback TCP port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs the docker CLI (setup and assertions only: the tools under test use the API).
/// Panics with docker's stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let out = docker_try(args);
    match out {
        Ok(stdout) => stdout,
        Err(stderr) => panic!("docker {} failed: {stderr}", args.join(" ")),
    }
}

/// Runs the docker CLI; `Err(stderr)` when it fails.
pub fn docker_try(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI is installed");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `docker run -d --name NAME --label io.deploykit.test=1 --network NET ARGS…`: a test's
/// container on a network it made; `args` are further flags, then the image and its command.
pub fn run_container(name: &str, net: &str, args: &[&str]) -> String {
    let mut all = vec![
        "run",
        "-d",
        "--name",
        name,
        "--label",
        LABEL,
        "--network",
        net,
    ];
    all.extend_from_slice(args);
    docker(&all)
}

/// Builds `tag` from a Dockerfile alone (no context; the legacy builder's notice is kept out
/// of the test's output), removed when `cleanup` drops. Returns the image id.
pub fn build_image(cleanup: &mut Cleanup, tag: &str, dockerfile: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the docker CLI is installed");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(dockerfile.as_bytes())
        .expect("write the Dockerfile");
    drop(stdin);
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build -t {tag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cleanup.image(tag);
    docker(&["image", "inspect", "-f", "{{.Id}}", tag])
}

/// A real nginx (dkt/nginx) named `name` on `net`, proxying `/` to the upstream `upstream`,
/// whose one server `server` (`IP:PORT`) is written in `<conf>/upstream-<upstream>.conf`:
/// `conf` is mounted as its conf.d, a directory as swap's nginx strategy needs. Returns the
/// upstream file. `extra` are further `docker run` flags (an env, a label).
pub fn nginx_proxy(
    name: &str,
    net: &str,
    conf: &Path,
    upstream: &str,
    server: &str,
    extra: &[&str],
) -> PathBuf {
    std::fs::create_dir_all(conf).expect("conf dir");
    let file = conf.join(format!("upstream-{upstream}.conf"));
    std::fs::write(
        &file,
        format!("upstream {upstream} {{\n    server {server};\n}}\n"),
    )
    .expect("upstream file");
    std::fs::write(
        conf.join("site.conf"),
        format!(
            "server {{\n    listen 80;\n    location / {{\n        proxy_pass http://{upstream};\n    }}\n}}\n"
        ),
    )
    .expect("site.conf");
    let mount = format!("{}:/etc/nginx/conf.d", conf.display());
    let mut args = vec!["-v", mount.as_str()];
    args.extend_from_slice(extra);
    args.push("dkt/nginx:latest");
    run_container(name, net, &args);
    file
}

/// A container's IP address on a Docker network the test made.
pub fn ip_of(container: &str, net: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        container,
    ])
}

/// Builds the fixture images once per test process (scripts/fixtures is idempotent and quick
/// when they are up to date). Fails the test with one clear line when the engine is down.
pub fn fixtures() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let out = Command::new(root().join("scripts/fixtures"))
            .current_dir(root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/fixtures: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = result {
        panic!("fixture images could not be built:\n{e}");
    }
}

/// Removes what a test made on the engine when dropped, also after a panic.
#[derive(Default)]
pub struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
    dirs: Vec<PathBuf>,
    registries: Vec<PathBuf>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// A container name (or name prefix: every container whose name starts with it goes).
    pub fn container(&mut self, name: &str) -> String {
        self.containers.push(name.to_string());
        name.to_string()
    }

    /// Creates a labelled network with a unique name, removed on drop.
    pub fn network(&mut self) -> String {
        let name = unique("net");
        docker(&["network", "create", "--label", LABEL, &name]);
        self.networks.push(name.clone());
        name
    }

    /// Creates a labelled network with a subnet of its own (a free 10.x.y.0/24: the engine
    /// then accepts fixed container addresses on it), removed on drop.
    pub fn network_with_subnet(&mut self) -> String {
        let name = unique("net");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as usize)
            ^ std::process::id() as usize;
        for attempt in 0..200 {
            let n = (seed * 7919 + attempt * 104_729) % (56 * 256);
            let subnet = format!("10.{}.{}.0/24", 200 + n / 256, n % 256);
            let made = docker_try(&[
                "network", "create", "--label", LABEL, "--subnet", &subnet, &name,
            ]);
            match made {
                Ok(_) => {
                    self.networks.push(name.clone());
                    return name;
                }
                Err(e) if e.contains("overlap") => continue,
                Err(e) => panic!("docker network create --subnet {subnet}: {e}"),
            }
        }
        panic!("no free 10.x.y.0/24 subnet for a test network");
    }

    pub fn image(&mut self, reference: &str) -> String {
        self.images.push(reference.to_string());
        reference.to_string()
    }

    pub fn dir(&mut self, dir: impl Into<PathBuf>) {
        self.dirs.push(dir.into());
    }

    /// A registry with basic auth (`user:password`) and a DOCKER_CONFIG directory logged in
    /// to it by `docker login`, removed on drop. Returns `(127.0.0.1:PORT, config dir)`.
    pub fn logged_in_registry(&mut self, user: &str, password: &str) -> (String, String) {
        let registry = self.registry(Some(&format!("{user}:{password}")));
        let config = std::env::temp_dir().join(unique("docker-config"));
        self.dir(&config);
        let config = config.display().to_string();
        docker(&[
            "--config", &config, "login", "-u", user, "-p", password, &registry,
        ]);
        (registry, config)
    }

    /// Starts a real registry (scripts/registry) on a free loopback port; stopped on drop.
    /// `auth` is `user:password` for basic auth. Returns `127.0.0.1:PORT`.
    pub fn registry(&mut self, auth: Option<&str>) -> String {
        let dir = tempfile::Builder::new()
            .prefix("dkt-registry-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut cmd = Command::new(root().join("scripts/registry"));
        cmd.args(["start", "--dir"]).arg(&dir);
        if let Some(auth) = auth {
            cmd.args(["--auth", auth]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/registry");
        assert!(
            out.status.success(),
            "registry did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.registries.push(dir);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops a registry started by [`Cleanup::registry`] now (to test an unreachable one).
    pub fn stop_registries(&mut self) {
        for dir in self.registries.drain(..) {
            let _ = Command::new(root().join("scripts/registry"))
                .arg("stop")
                .arg(&dir)
                .stdin(Stdio::null())
                .output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for prefix in &self.containers {
            let ids = docker_try(&["ps", "-aq", "--filter", &format!("name=^/{prefix}")])
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let _ = docker_try(&["rm", "-f", "-v", id]);
            }
        }
        for net in &self.networks {
            let _ = docker_try(&["network", "rm", net]);
        }
        for image in &self.images {
            let _ = docker_try(&["rmi", "-f", image]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        self.stop_registries();
    }
}

/// Status, headers (lower-cased names) and body of an HTTP response.
pub type Response = (u16, Vec<(String, String)>, String);

/// One HTTP GET from the test itself (plain HTTP/1.1 over TCP, `Connection: close`):
/// returns status, headers (lower-cased names) and body. `Err` on a connection error.
pub fn http_get(url: &str, timeout: Duration) -> Result<Response, String> {
    use std::io::Read;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// Polls `f` every 50 ms until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request received by a [`StubServer`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a [`StubServer`] handler answers: status, content type, body; `None` = hang (never
/// answer, hold the connection).
pub type Reply = Option<(u16, &'static str, String)>;

/// A loopback HTTP/1.1 server whose answers a test decides (a health endpoint that turns
/// healthy, a webhook receiver, a stand-in for the Telegram Bot API). Records every request.
/// Stops when dropped.
pub struct StubServer {
    pub addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StubServer {
    pub fn start<F>(handler: F) -> StubServer
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind stub server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let (reqs, stopped) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (reqs, handler, stopped) =
                            (reqs.clone(), handler.clone(), stopped.clone());
                        std::thread::spawn(move || serve(stream, &*handler, &reqs, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        StubServer {
            addr,
            requests,
            stop,
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    stream: std::net::TcpStream,
    handler: &(dyn Fn(&Request) -> Reply + Send + Sync),
    requests: &std::sync::Mutex<Vec<Request>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{BufRead, BufReader, Read};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = Request {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(req.clone());
        match handler(&req) {
            Some((status, content_type, body)) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if writer
                    .write_all(head.as_bytes())
                    .and_then(|()| writer.write_all(body.as_bytes()))
                    .is_err()
                {
                    return;
                }
            }
            None => {
                // Hang: hold the connection without answering until the server stops.
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        }
    }
}
