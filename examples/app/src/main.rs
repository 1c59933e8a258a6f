//! demo-app: the demo's example backend and the fixture app of the integration tests.
//!
//! A small HTTP/1.1 server (thread per connection, keep-alive) configured by environment:
//!
//! | variable        | effect                                                                 |
//! |-----------------|------------------------------------------------------------------------|
//! | `LISTEN`        | address to bind, default `0.0.0.0:8000`                                |
//! | `APP_VERSION`   | reported everywhere, default `v1`; every response has `X-App-Version`   |
//! | `READY_AFTER`   | health answers 503 until this long after start (`1500ms`, `3s`, `2`)   |
//! | `NEVER_HEALTHY` | `1`: health answers 500 forever                                        |
//! | `HEALTH_HANG`   | `1`: health requests never get an answer                               |
//! | `CRASH`         | `1`: print a line to stderr and exit 3 at once                         |
//! | `SLOW_MS`       | every `GET /` waits this many milliseconds before answering            |
//!
//! Routes: `/` (`hello from <v>`), `/version`, `/slow?ms=N`, and the health endpoints `/health`,
//! `/up`, `/api/v1/health` (`{"status":"ok","version":"<v>"}`).
//!
//! SIGTERM/SIGINT: the listener closes, in-flight requests finish, idle keep-alive connections
//! are closed, then the process exits 0.
//!
//! `demo-app check URL` is the HEALTHCHECK of the scratch images (they have no curl): one GET,
//! exit 0 on 2xx, 1 otherwise.

// A test fixture talks to people on stderr and owns its process: it is its own "main module".
#![allow(clippy::print_stderr, clippy::print_stdout, clippy::exit)]
// A fixture must drain on SIGTERM and std has no signal API; the one FFI call is `signal()`.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often sleeping threads look at the shutdown flag.
const POLL: Duration = Duration::from_millis(20);
/// Requests whose head is larger than this get 431.
const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are read and dropped; larger ones get 413.
const MAX_BODY: usize = 1024 * 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// While shutting down, a connection with a half-sent request gets this long to finish it.
const DRAIN_STALL: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None => serve_main(),
        Some("check") if args.len() == 3 => check_main(&args[2]),
        Some(_) => {
            eprintln!("usage: demo-app            serve HTTP (configured by environment)");
            eprintln!("       demo-app check URL  one GET: exit 0 on 2xx, 1 otherwise");
            ExitCode::from(2)
        }
    }
}

// ---- signals ------------------------------------------------------------------------------------

/// The signal that asked us to stop, 0 while running.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

extern "C" {
    /// libc's `signal(2)`: glibc installs the handler with BSD semantics (SA_RESTART).
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
}

extern "C" fn on_signal(sig: i32) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
    }
}

fn stopping() -> bool {
    STOP_SIGNAL.load(Ordering::SeqCst) != 0
}

// ---- configuration ------------------------------------------------------------------------------

struct Config {
    listen: String,
    version: String,
    started: Instant,
    ready_after: Duration,
    never_healthy: bool,
    health_hang: bool,
    slow: Duration,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let flag = |name: &str| var(name).is_some_and(|v| v != "0" && v != "false");
        let ready_after = match var("READY_AFTER") {
            Some(v) => parse_duration(&v).map_err(|e| format!("READY_AFTER: {e}"))?,
            None => Duration::ZERO,
        };
        let slow = match var("SLOW_MS") {
            Some(v) => Duration::from_millis(
                v.trim()
                    .parse()
                    .map_err(|_| format!("SLOW_MS: not a number of milliseconds: {v:?}"))?,
            ),
            None => Duration::ZERO,
        };
        Ok(Config {
            listen: var("LISTEN").unwrap_or_else(|| "0.0.0.0:8000".to_string()),
            version: var("APP_VERSION").unwrap_or_else(|| "v1".to_string()),
            started: Instant::now(),
            ready_after,
            never_healthy: flag("NEVER_HEALTHY"),
            health_hang: flag("HEALTH_HANG"),
            slow,
        })
    }
}

/// `1500ms`, `3s`, `1.5s`, `2m`, or bare seconds (`3`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 1500ms, 3s or 2)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("duration out of range: {text:?}"))
}

// ---- server -------------------------------------------------------------------------------------

fn serve_main() -> ExitCode {
    if std::env::var("CRASH").is_ok_and(|v| v == "1") {
        eprintln!("demo-app: CRASH=1 is set, exiting with code 3");
        return ExitCode::from(3);
    }
    let config = match Config::from_env() {
        Ok(config) => Arc::new(config),
        Err(e) => {
            eprintln!("demo-app: {e}");
            return ExitCode::from(2);
        }
    };
    install_signal_handlers();
    let listener = match TcpListener::bind(&config.listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("demo-app: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().ok();
    eprintln!(
        "demo-app {} listening on {}",
        config.version,
        local.map_or(config.listen.clone(), |a| a.to_string())
    );

    let active = Arc::new(AtomicUsize::new(0));
    // A blocking accept in its own thread answers new connections without polling latency;
    // on shutdown the main thread wakes it with a connection to itself (see `wake`).
    let acceptor = {
        let (config, active) = (Arc::clone(&config), Arc::clone(&active));
        thread::spawn(move || accept_loop(&listener, &config, &active))
    };
    while !stopping() {
        thread::sleep(POLL);
    }
    let name = match STOP_SIGNAL.load(Ordering::SeqCst) {
        SIGINT => "SIGINT",
        _ => "SIGTERM",
    };
    if let Some(local) = local {
        wake(local);
    }
    // Should the wake-up fail, the acceptor still drops whatever it accepts from now on.
    let waited = Instant::now();
    while !acceptor.is_finished() && waited.elapsed() < Duration::from_secs(1) {
        thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "demo-app {} got {name}: closed the listener, draining {} connection(s)",
        config.version,
        active.load(Ordering::SeqCst)
    );
    while active.load(Ordering::SeqCst) > 0 {
        thread::sleep(POLL);
    }
    ExitCode::SUCCESS
}

fn accept_loop(listener: &TcpListener, config: &Arc<Config>, active: &Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        if stopping() {
            // The wake-up connection, or a client that raced it: the listener closes now.
            return;
        }
        match stream {
            Ok(stream) => {
                let config = Arc::clone(config);
                let guard = ActiveGuard::new(active);
                let spawned = thread::Builder::new().spawn(move || {
                    let _guard = guard;
                    serve_connection(stream, &config);
                });
                if let Err(e) = spawned {
                    eprintln!("demo-app: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("demo-app: accept failed: {e}");
                thread::sleep(POLL);
            }
        }
    }
}

/// Unblocks `accept` in the acceptor thread by connecting to our own listener.
fn wake(local: SocketAddr) {
    let mut target = local;
    if target.ip().is_unspecified() {
        target.set_ip(match local {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

/// Counts a connection as in flight for as long as it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> ActiveGuard {
        active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves requests on one connection until the client or we close it.
fn serve_connection(mut stream: TcpStream, config: &Config) {
    // Reads time out often so an idle connection notices a shutdown.
    if stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut last_progress = Instant::now();
    loop {
        let (request, used) = match parse_head(&buf) {
            Ok(Some((request, head_len))) if buf.len() >= head_len + request.content_length => {
                let used = head_len + request.content_length;
                (request, used)
            }
            Ok(Some((request, _))) if request.content_length > MAX_BODY => {
                let _ = write_response(&mut stream, &Response::error(413, config), false, true);
                return;
            }
            Ok(_) if buf.len() > MAX_HEAD + MAX_BODY => return,
            Ok(None) if buf.len() > MAX_HEAD => {
                let _ = write_response(&mut stream, &Response::error(431, config), false, true);
                return;
            }
            Ok(_) => {
                // Need more bytes.
                let waited = last_progress.elapsed();
                if (stopping() && (buf.is_empty() || waited > DRAIN_STALL)) || waited > IDLE_TIMEOUT
                {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        last_progress = Instant::now();
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return,
                }
                continue;
            }
            Err(status) => {
                let _ = write_response(&mut stream, &Response::error(status, config), false, true);
                return;
            }
        };
        buf.drain(..used);
        let response = match route(&request, config) {
            Some(response) => response,
            None => {
                // HEALTH_HANG: hold the connection, never answer; let go on shutdown.
                while !stopping() {
                    thread::sleep(POLL);
                }
                return;
            }
        };
        let keep_alive = request.keep_alive && !stopping();
        let head_only = request.method == "HEAD";
        if write_response(&mut stream, &response, head_only, !keep_alive).is_err() || !keep_alive {
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        last_progress = Instant::now();
    }
}

// ---- HTTP ---------------------------------------------------------------------------------------

/// What we need from a request head.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    /// The path without the query.
    path: String,
    query: String,
    keep_alive: bool,
    content_length: usize,
}

/// Parses a request head from the start of `buf`: `Ok(None)` until the blank line has arrived,
/// then the request and the length of its head. `Err(status)` for a request we cannot serve.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, u16> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| 400u16)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(505),
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(400);
    }
    let mut keep_alive = http11;
    let mut content_length = 0usize;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| 400u16)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked request bodies are more than a fixture needs.
            return Err(501);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        keep_alive,
        content_length,
    };
    Ok(Some((request, end + 4)))
}

/// The value of `name` in a query string (`ms=200&x=1`).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    version: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, body: String, config: &Config) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            version: config.version.clone(),
            allow: false,
        }
    }

    fn json(status: u16, body: String, config: &Config) -> Response {
        Response {
            content_type: "application/json",
            ..Response::text(status, body, config)
        }
    }

    fn error(status: u16, config: &Config) -> Response {
        Response::text(status, format!("{}\n", reason(status)), config)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The response to a request; `None` means never answer (HEALTH_HANG).
fn route(request: &Request, config: &Config) -> Option<Response> {
    if request.method != "GET" && request.method != "HEAD" {
        return Some(Response {
            allow: true,
            ..Response::error(405, config)
        });
    }
    let version = &config.version;
    let response = match request.path.as_str() {
        "/" => {
            if !config.slow.is_zero() {
                thread::sleep(config.slow);
            }
            Response::text(200, format!("hello from {version}\n"), config)
        }
        "/version" => Response::text(200, format!("{version}\n"), config),
        "/slow" => {
            let ms = query_param(&request.query, "ms").and_then(|v| v.parse().ok());
            let Some(ms) = ms else {
                return Some(Response::text(400, "usage: /slow?ms=N\n".into(), config));
            };
            thread::sleep(Duration::from_millis(ms));
            Response::text(200, format!("slow {version}\n"), config)
        }
        "/health" | "/up" | "/api/v1/health" => {
            if config.health_hang {
                return None;
            }
            if config.never_healthy {
                Response::json(500, r#"{"status":"unhealthy"}"#.into(), config)
            } else if config.started.elapsed() < config.ready_after {
                Response::json(503, r#"{"status":"starting"}"#.into(), config)
            } else {
                let body = format!(r#"{{"status":"ok","version":"{version}"}}"#);
                Response::json(200, body, config)
            }
        }
        _ => Response::error(404, config),
    };
    Some(response)
}

fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-App-Version: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        response.version,
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

// ---- check mode ---------------------------------------------------------------------------------

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn check_main(url: &str) -> ExitCode {
    match check(url) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("demo-app check: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo-app check: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `http://host[:port][/path]` into `host:port` and the path.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err("no host in URL".into());
    }
    // A port is present unless the authority ends in a bare host or an IPv6 literal.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let hostport = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((hostport, path))
}

/// One GET with `Connection: close`; the status code of the answer.
fn check(url: &str) -> Result<u16, String> {
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    let (hostport, path) = parse_url(url)?;
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .collect();
    let mut last_error = format!("{hostport} has no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_error)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: demo-app-check\r\nConnection: close\r\n\r\n");
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.contains(&b'\n') {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out waiting for the answer".into())
            }
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    parse_status(&head).ok_or_else(|| "not an HTTP answer".to_string())
}

/// The status code of an HTTP/1.x status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    fn head(text: &str) -> Result<Option<(Request, usize)>, u16> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(head(""), Ok(None));
    }

    #[test]
    fn a_request_head_is_parsed() {
        let text = "GET /slow?ms=20 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET";
        let (request, used) = head(text).unwrap().unwrap();
        assert_eq!(
            request,
            Request {
                method: "GET".into(),
                path: "/slow".into(),
                query: "ms=20".into(),
                keep_alive: true,
                content_length: 3,
            }
        );
        assert_eq!(&text[used..], "abcGET");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let keep = |text: &str| head(text).unwrap().unwrap().0.keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keep(
            "GET / HTTP/1.1\r\nconnection: Upgrade, Close\r\n\r\n"
        ));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(head("GET /\r\n\r\n").err(), Some(400));
        assert_eq!(head("GET / HTTP/2.0\r\n\r\n").err(), Some(505));
        assert_eq!(head("GET / HTTP/1.1\r\nno colon\r\n\r\n").err(), Some(400));
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").err(),
            Some(400)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").err(),
            Some(501)
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=200", "ms"), Some("200"));
        assert_eq!(query_param("a=1&ms=5", "ms"), Some("5"));
        assert_eq!(query_param("a=1", "ms"), None);
        assert_eq!(query_param("", "ms"), None);
    }

    #[test]
    fn check_urls() {
        let url = |u: &str| parse_url(u).unwrap();
        assert_eq!(
            url("http://127.0.0.1:8000/health"),
            ("127.0.0.1:8000".into(), "/health".into())
        );
        assert_eq!(url("http://localhost"), ("localhost:80".into(), "/".into()));
        assert_eq!(url("http://[::1]/x"), ("[::1]:80".into(), "/x".into()));
        assert_eq!(url("http://[::1]:81"), ("[::1]:81".into(), "/".into()));
        assert_eq!(url("http://h?x=1"), ("h:80".into(), "/?x=1".into()));
        assert!(parse_url("https://h/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
    }
}
