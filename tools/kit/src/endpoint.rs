//! Where the Docker Engine is and how to reach it, read from the environment as the docker CLI
//! reads it, so the tools on a CI runner drive a remote engine or a Swarm manager as `docker`
//! would:
//!
//! - `DOCKER_HOST` unset or `unix:///path`: a local socket.
//! - `tcp://host[:port]` (or `http://`; port 2375 when none is given): plain HTTP, unless
//!   `DOCKER_TLS_VERIFY` is set to anything but the empty string: then TLS, the engine's
//!   certificate verified against `ca.pem` (and the system's roots), with `cert.pem` and
//!   `key.pem` as the client certificate when present, all three in `DOCKER_CERT_PATH`
//!   (default: `DOCKER_CONFIG`, else `~/.docker`). `DOCKER_TLS` without `DOCKER_TLS_VERIFY`
//!   (TLS that trusts any certificate) is refused: it would hand the engine to anyone on the path.
//! - `ssh://[user@]host[:port]`: the system's `ssh` runs `docker system dial-stdio` on the host,
//!   as the docker CLI does, with the user's ssh configuration, keys and `known_hosts`. It runs in
//!   batch mode: a host whose key is unknown or has changed is refused before anything runs on
//!   it, and nothing prompts.
//!
//! Bad settings (a scheme we do not speak, a certificate file missing or unreadable) are bad
//! input, exit 2, naming the variable; an engine that cannot be reached or whose certificate does
//! not verify is one line naming `DOCKER_HOST` and what failed.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::{BollardRequest, Docker, API_DEFAULT_VERSION};

use crate::error::{Error, Result};

/// bollard's own per-request timeout (seconds), as its `connect_with_defaults` uses.
const REQUEST_TIMEOUT: u64 = 120;
/// How long a connection may take, as the docker CLI's dialer and its ssh `ConnectTimeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Where the engine is.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, with TLS when the certificate settings ask for it.
    Tcp {
        addr: String,
        tls: Option<Tls>,
    },
    Ssh(Ssh),
}

/// The certificate files of a TLS connection (`DOCKER_CERT_PATH`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub ca: PathBuf,
    /// The client certificate and its key, when both files exist.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ssh {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Endpoint {
    /// Reads `DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_TLS`, `DOCKER_CERT_PATH` and
    /// `DOCKER_CONFIG`, and checks the certificate files, as the docker CLI does.
    pub fn from_env() -> Result<Endpoint> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = Endpoint::parse(var("DOCKER_HOST").as_deref(), &var)?;
        if let Endpoint::Tcp { tls: Some(tls), .. } = &endpoint {
            tls.check()?;
        }
        Ok(endpoint)
    }

    /// `host` is `DOCKER_HOST`; `var` reads the other settings (empty values count as unset).
    pub fn parse(host: Option<&str>, var: &dyn Fn(&str) -> Option<String>) -> Result<Endpoint> {
        let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(Endpoint::Unix(DEFAULT_SOCKET.into()));
        };
        let bad = |why: &str| Error::input("DOCKER_HOST", format!("'{host}' {why}"));
        let (scheme, rest) = host.split_once("://").unwrap_or(("tcp", host));
        match scheme {
            "unix" => Ok(Endpoint::Unix(if rest.is_empty() {
                DEFAULT_SOCKET.into()
            } else {
                rest.into()
            })),
            "tcp" | "http" => {
                let rest = rest.trim_end_matches('/');
                if rest.contains('/') || rest.contains('?') {
                    return Err(bad("has a path; give tcp://HOST:PORT"));
                }
                let (h, p) = split_port(rest);
                if h.is_empty() {
                    return Err(bad("has no host; give tcp://HOST:PORT"));
                }
                let p = p.unwrap_or("2375");
                if p.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(bad(&format!("has a bad port '{p}'")));
                }
                let addr = if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                };
                Ok(Endpoint::Tcp {
                    addr,
                    tls: Tls::from_settings(var)?,
                })
            }
            "ssh" => Ssh::parse(rest).map(Endpoint::Ssh).map_err(|why| bad(&why)),
            _ => Err(bad(
                "is not unix://PATH, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]",
            )),
        }
    }

    /// Connects (no request yet: [`crate::docker::Engine::connect`] pings).
    pub fn connect(&self) -> std::result::Result<Docker, bollard::errors::Error> {
        match self {
            Endpoint::Unix(path) => Docker::connect_with_unix(
                &format!("unix://{}", path.display()),
                REQUEST_TIMEOUT,
                API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp { addr, tls: None } => Docker::connect_with_http(
                &format!("tcp://{addr}"),
                REQUEST_TIMEOUT,
                API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp {
                addr,
                tls: Some(tls),
            } => {
                install_crypto_provider();
                // Missing client files: bollard then presents no client certificate.
                let (cert, key) = tls.client.clone().unwrap_or_else(|| {
                    let dir = tls.ca.parent().unwrap_or(Path::new("."));
                    (dir.join("cert.pem"), dir.join("key.pem"))
                });
                Docker::connect_with_ssl(
                    &format!("tcp://{addr}"),
                    &key,
                    &cert,
                    &tls.ca,
                    REQUEST_TIMEOUT,
                    API_DEFAULT_VERSION,
                )
            }
            Endpoint::Ssh(ssh) => Ok(ssh.connect()),
        }
    }

    /// Why a request to this endpoint failed, in words: the TLS or ssh failure rather than
    /// hyper's "client error (Connect)".
    pub fn explain(&self, err: &bollard::errors::Error) -> String {
        if let Endpoint::Ssh(_) = self {
            if let bollard::errors::Error::IOError { err } = err {
                return err.to_string();
            }
        }
        let tls = match self {
            Endpoint::Tcp { tls: Some(tls), .. } => Some(tls),
            _ => None,
        };
        explain(err, tls)
    }
}

/// The user's `DOCKER_HOST`, for messages: `unix:///var/run/docker.sock` when unset.
pub fn describe_env() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if !h.trim().is_empty() => h,
        _ => format!("unix://{DEFAULT_SOCKET}"),
    }
}

/// `host:port` or `[v6]:port` → (host, port). No port → `(all, None)`.
fn split_port(text: &str) -> (&str, Option<&str>) {
    if let Some(rest) = text.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (text, None),
        };
    }
    match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (text, None),
    }
}

// ---- TLS ----------------------------------------------------------------------------------------

impl Tls {
    /// The CLI's reading: `DOCKER_TLS_VERIFY` non-empty means TLS and verify; `DOCKER_CERT_PATH`,
    /// else `DOCKER_CONFIG`, else `~/.docker` holds the files.
    fn from_settings(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Tls>> {
        let verify = var("DOCKER_TLS_VERIFY").is_some();
        if !verify {
            if var("DOCKER_TLS").is_some() {
                return Err(Error::input(
                    "DOCKER_TLS",
                    "TLS without verifying the engine's certificate would hand the engine to \
                     anyone on the way; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH instead",
                ));
            }
            return Ok(None);
        }
        let dir = match var("DOCKER_CERT_PATH").or_else(|| var("DOCKER_CONFIG")) {
            Some(dir) => PathBuf::from(dir),
            None => match var("HOME") {
                Some(home) => Path::new(&home).join(".docker"),
                None => {
                    return Err(Error::input(
                        "DOCKER_CERT_PATH",
                        "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor HOME is",
                    ))
                }
            },
        };
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let client = match (cert.exists(), key.exists()) {
            (false, false) => None,
            _ => Some((cert, key)),
        };
        Ok(Some(Tls {
            ca: dir.join("ca.pem"),
            client,
        }))
    }

    /// Reads every file now, so a missing or broken one is exit 2 naming it rather than a
    /// handshake the engine refuses for reasons it does not say.
    fn check(&self) -> Result<()> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let field = "DOCKER_CERT_PATH";
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                Error::input(
                    field,
                    format!(
                        "DOCKER_TLS_VERIFY is set but {} cannot be read ({e})",
                        path.display()
                    ),
                )
            })
        };
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>> {
            let pem = read(path)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .unwrap_or_default();
            if certs.is_empty() {
                return Err(Error::input(
                    field,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Ok(certs)
        };
        certs(&self.ca)?;
        let Some((cert, key)) = &self.client else {
            return Ok(());
        };
        for path in [cert, key] {
            if !path.exists() {
                return Err(Error::input(
                    field,
                    format!(
                        "{} is missing: a client certificate needs both cert.pem and key.pem",
                        path.display()
                    ),
                ));
            }
        }
        let chain = certs(cert)?;
        let der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| {
            Error::input(
                field,
                format!("{} holds no usable PEM private key ({e})", key.display()),
            )
        })?;
        rustls::sign::CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
            Error::input(
                field,
                format!(
                    "{} and {} do not make a client certificate ({e})",
                    cert.display(),
                    key.display()
                ),
            )
        })?;
        Ok(())
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// bollard's client-certificate code asks rustls for the process-wide provider: make sure there
/// is one (ring, as ureq and lettre use), whatever else the build enabled.
fn install_crypto_provider() {
    // Err: one is installed already, which is all we need.
    let _ = provider().install_default();
}

/// The words for a failed request: the innermost cause that says something.
fn explain(err: &bollard::errors::Error, tls: Option<&Tls>) -> String {
    use bollard::errors::Error as B;
    match err {
        B::RequestTimeoutError => return format!("no answer within {REQUEST_TIMEOUT}s"),
        B::DockerResponseServerError {
            status_code,
            message,
        } => {
            let hint = if message.contains("HTTP request to an HTTPS server") {
                "; the engine speaks TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH"
            } else {
                ""
            };
            return format!("{} ({status_code}){hint}", message.trim());
        }
        _ => {}
    }
    // Walk the causes; an io::Error hides its inner error from `source()`, so open each one.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut io_words = None;
    while let Some(e) = source {
        if let Some(rustls_err) = e.downcast_ref::<rustls::Error>() {
            return tls_words(rustls_err, tls);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            io_words.get_or_insert_with(|| io_error_words(io));
            if let Some(inner) = io.get_ref() {
                source = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        source = e.source();
    }
    if let Some(words) = io_words {
        return words;
    }
    // The innermost message, without the wrappers' "client error (Connect)".
    let mut last = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        last = e.to_string();
        source = e.source();
    }
    last
}

fn io_error_words(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        NotFound => format!("no such socket ({e})"),
        PermissionDenied => format!("permission denied ({e})"),
        TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

fn tls_words(err: &rustls::Error, tls: Option<&Tls>) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let ca = tls
        .map(|t| t.ca.display().to_string())
        .unwrap_or_else(|| "ca.pem".into());
    let client = tls
        .and_then(|t| t.client.as_ref())
        .map(|(cert, _)| cert.display().to_string());
    match err {
        R::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer | C::BadSignature => format!(
                "TLS: the engine's certificate is not signed by the CA in {ca} ({cert:?}): \
                 refused"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "TLS: the engine's certificate is not valid for the host in DOCKER_HOST: \
                 refused ({err})"
            ),
            C::Expired | C::ExpiredContext { .. } => {
                "TLS: the engine's certificate has expired: refused".into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: the engine's certificate is not valid yet: refused".into()
            }
            _ => format!("TLS: the engine's certificate is refused ({err})"),
        },
        R::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::AccessDenied),
        ) => match client {
            Some(cert) => {
                format!("TLS: the engine refused our client certificate {cert} ({alert:?})")
            }
            None => format!(
                "TLS: the engine wants a client certificate ({alert:?}), and DOCKER_CERT_PATH \
                 holds no cert.pem and key.pem"
            ),
        },
        other => format!("TLS: {other}"),
    }
}

// ---- ssh, as the docker CLI does it ------------------------------------------------------------

impl Ssh {
    /// The part after `ssh://`: `[user@]host[:port]`, nothing else (the CLI's rules).
    fn parse(rest: &str) -> std::result::Result<Ssh, String> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err("has a path or query; give ssh://[USER@]HOST[:PORT]".into());
        }
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if let Some(u) = user {
            if u.contains(':') {
                return Err("holds a password; use an ssh key (agent or ~/.ssh/config)".into());
            }
            if u.is_empty() {
                return Err("has an empty user name".into());
            }
        }
        let (host, port) = split_port(hostport);
        if host.is_empty() || host.starts_with('-') {
            return Err("has no host; give ssh://[USER@]HOST[:PORT]".into());
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("has a bad port '{p}'"))?,
            ),
            None => None,
        };
        Ok(Ssh {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        })
    }

    /// The docker CLI's command line (`ssh -o ConnectTimeout=30 -T -l USER -p PORT -- HOST
    /// docker system dial-stdio`), plus `BatchMode=yes`: no password or host-key prompt ever
    /// waits on a terminal, so an unknown or changed host key is refused before anything runs.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-o".to_string(),
            format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()),
            "-o".into(),
            "BatchMode=yes".into(),
            "-T".into(),
        ];
        if let Some(user) = &self.user {
            args.extend(["-l".into(), user.clone()]);
        }
        if let Some(port) = self.port {
            args.extend(["-p".into(), port.to_string()]);
        }
        args.extend(["--".into(), self.host.clone()]);
        args.extend(["docker", "system", "dial-stdio"].map(String::from));
        args
    }

    fn connect(&self) -> Docker {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let connector = SshConnector {
            args: Arc::new(self.args()),
            said: Arc::new(Mutex::new(SshSaid::default())),
        };
        let said = connector.said.clone();
        let client = Arc::new(Client::builder(TokioExecutor::new()).build(connector));
        let transport = move |req: BollardRequest| {
            let client = client.clone();
            let said = said.clone();
            async move {
                match client.request(req).await {
                    Ok(response) => Ok(response),
                    Err(e) => {
                        // ssh says why on stderr as it exits; give it a moment to finish.
                        for _ in 0..100 {
                            if said.lock().map(|s| s.done).unwrap_or(true) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let text = said.lock().map(|s| s.text.clone()).unwrap_or_default();
                        match ssh_words(&text) {
                            Some(words) => Err(bollard::errors::Error::IOError {
                                err: io::Error::other(words),
                            }),
                            None => Err(e.into()),
                        }
                    }
                }
            }
        };
        // The host part is never dialled (the connector runs ssh); the CLI uses the same name.
        Docker::connect_with_custom_transport(
            transport,
            Some("http://api.moby.localhost"),
            REQUEST_TIMEOUT,
            API_DEFAULT_VERSION,
        )
        .expect("a custom transport needs no parsing that can fail")
    }
}

/// The last ssh process's stderr.
#[derive(Default)]
struct SshSaid {
    text: String,
    done: bool,
}

/// ssh's stderr as one line: what failed, without its banners and advice.
fn ssh_words(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("ssh: "))
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    if lines.is_empty() {
        return None;
    }
    // A changed host key comes with a banner and advice ("ssh-keygen -R …", which would
    // trust whoever answers now): keep only what happened.
    let changed = text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED");
    let kept: Vec<&str> = if changed {
        lines
            .iter()
            .copied()
            .filter(|l| l.contains("has changed and") || l.contains("verification failed"))
            .collect()
    } else {
        lines.iter().rev().take(2).rev().copied().collect()
    };
    Some(format!("ssh: {}", kept.join(" ")))
}

/// Opens a connection by running ssh; one ssh process per connection, killed with it.
#[derive(Clone)]
struct SshConnector {
    args: Arc<Vec<String>>,
    said: Arc<Mutex<SshSaid>>,
}

impl tower_service::Service<http::Uri> for SshConnector {
    type Response = SshStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<SshStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let args = self.args.clone();
        let said = self.said.clone();
        Box::pin(async move {
            use std::process::Stdio;
            use tokio::io::AsyncReadExt;
            let mut child = tokio::process::Command::new("ssh")
                .args(args.iter())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("cannot run ssh: {e}")))?;
            let (Some(stdin), Some(stdout), Some(mut stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(io::Error::other("ssh started without its pipes"));
            };
            if let Ok(mut s) = said.lock() {
                *s = SshSaid::default();
            }
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = stderr.read_to_end(&mut buf).await;
                if let Ok(mut s) = said.lock() {
                    s.text = String::from_utf8_lossy(&buf).into_owned();
                    s.done = true;
                }
            });
            Ok(SshStream {
                _child: child,
                stdin: hyper_util::rt::TokioIo::new(stdin),
                stdout: hyper_util::rt::TokioIo::new(stdout),
            })
        })
    }
}

/// One HTTP connection: ssh's stdout to read, its stdin to write.
struct SshStream {
    _child: tokio::process::Child,
    stdin: hyper_util::rt::TokioIo<tokio::process::ChildStdin>,
    stdout: hyper_util::rt::TokioIo<tokio::process::ChildStdout>,
}

impl hyper::rt::Read for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdout).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stdin).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_shutdown(cx)
    }
}

impl hyper_util::client::legacy::connect::Connection for SshStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(host: &str, vars: &[(&str, &str)]) -> Result<Endpoint> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Endpoint::parse(Some(host), &move |name| {
            vars.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn docker_host_as_the_cli_reads_it() {
        assert_eq!(
            Endpoint::parse(None, &|_| None).unwrap(),
            Endpoint::Unix(DEFAULT_SOCKET.into())
        );
        assert_eq!(
            parse("unix:///run/x.sock", &[]).unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        for (host, addr) in [
            ("tcp://10.0.0.5:2376", "10.0.0.5:2376"),
            ("tcp://manager", "manager:2375"),
            ("http://manager:1234/", "manager:1234"),
            ("manager:2376", "manager:2376"),
            ("tcp://[::1]:2376", "[::1]:2376"),
        ] {
            assert_eq!(
                parse(host, &[]).unwrap(),
                Endpoint::Tcp {
                    addr: addr.into(),
                    tls: None
                },
                "{host}"
            );
        }
        assert_eq!(
            parse("ssh://deploy@manager:2222", &[]).unwrap(),
            Endpoint::Ssh(Ssh {
                user: Some("deploy".into()),
                host: "manager".into(),
                port: Some(2222)
            })
        );
        for (host, needle) in [
            ("ftp://x", "is not unix://"),
            ("tcp://:2375", "has no host"),
            ("tcp://x:99999", "bad port"),
            ("tcp://x:2375/path", "has a path"),
            ("ssh://user:secret@host", "password"),
            ("ssh://host/path", "path"),
            ("ssh://-oProxyCommand=x", "has no host"),
        ] {
            let err = parse(host, &[]).unwrap_err().to_string();
            assert!(err.starts_with("DOCKER_HOST: "), "{err}");
            assert!(err.contains(needle), "{host}: {err}");
        }
    }

    #[test]
    fn tls_settings_as_the_cli_reads_them() {
        // Any non-empty DOCKER_TLS_VERIFY asks for verification, as `!= ""` in the CLI.
        let e = parse(
            "tcp://m:2376",
            &[("DOCKER_TLS_VERIFY", "0"), ("DOCKER_CERT_PATH", "/certs")],
        )
        .unwrap();
        assert_eq!(
            e,
            Endpoint::Tcp {
                addr: "m:2376".into(),
                tls: Some(Tls {
                    ca: "/certs/ca.pem".into(),
                    client: None
                })
            }
        );
        // Empty is unset; DOCKER_CONFIG, then HOME, are the fallbacks.
        let e = parse(
            "tcp://m:2376",
            &[
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", ""),
                ("DOCKER_CONFIG", "/cfg"),
            ],
        )
        .unwrap();
        assert!(
            matches!(e, Endpoint::Tcp { tls: Some(Tls { ref ca, .. }), .. } if ca == Path::new("/cfg/ca.pem"))
        );
        let e = parse(
            "tcp://m:2376",
            &[("DOCKER_TLS_VERIFY", "1"), ("HOME", "/home/u")],
        )
        .unwrap();
        assert!(
            matches!(e, Endpoint::Tcp { tls: Some(Tls { ref ca, .. }), .. } if ca == Path::new("/home/u/.docker/ca.pem"))
        );
        assert_eq!(
            parse("tcp://m:2376", &[("DOCKER_TLS_VERIFY", "")]).unwrap(),
            Endpoint::Tcp {
                addr: "m:2376".into(),
                tls: None
            }
        );
        let err = parse("tcp://m:2376", &[("DOCKER_TLS", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("DOCKER_TLS: "), "{err}");
        // TLS settings do not apply to a local socket or ssh.
        assert_eq!(
            parse("unix:///x.sock", &[("DOCKER_TLS", "1")]).unwrap(),
            Endpoint::Unix("/x.sock".into())
        );
    }

    #[test]
    fn ssh_runs_what_the_cli_runs_without_prompts() {
        let Endpoint::Ssh(ssh) = parse("ssh://deploy@10.1.2.3:2222", &[]).unwrap() else {
            panic!("not ssh");
        };
        assert_eq!(
            ssh.args().join(" "),
            "-o ConnectTimeout=30 -o BatchMode=yes -T -l deploy -p 2222 -- 10.1.2.3 docker system dial-stdio"
        );
        assert_eq!(
            ssh_words("Warning: Permanently added 'x' (ED25519) to the list of known hosts.\r\nHost key verification failed.\r\n")
                .as_deref(),
            Some("ssh: Host key verification failed.")
        );
        assert_eq!(ssh_words("\n"), None);
        let changed = "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@\n\
            IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
            Add correct host key in /k to get rid of this message.\n\
            Offending ED25519 key in /k:1\n  ssh-keygen -f \"/k\" -R \"[h]:22\"\n\
            Host key for [h]:22 has changed and you have requested strict checking.\n\
            Host key verification failed.\n";
        assert_eq!(
            ssh_words(changed).as_deref(),
            Some("ssh: Host key for [h]:22 has changed and you have requested strict checking. Host key verification failed.")
        );
        assert_eq!(
            ssh_words("ssh: connect to host h port 22: Connection refused\r\n").as_deref(),
            Some("ssh: connect to host h port 22: Connection refused")
        );
    }
}
