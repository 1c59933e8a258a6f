//! The BuildKit session: the context's files, build secrets and registry credentials, served
//! to the engine; and `--secret` as the docker CLI spells it.
//!
//! A BuildKit build through the Engine API (`POST /build?version=2&session=ID`) asks the client
//! for what only the client has — the context's files, registry credentials, secrets — over a
//! gRPC session the client opens on `POST /session` (an HTTP upgrade to h2c) and serves.
//! bollard's `build_image` opens one, but it serves only registry auth (bollard 0.21; later
//! versions serve secrets too), and the parts it is made of are private. So img-build opens
//! its own session, serving health (the engine's keep-alive), the file sync
//! ([`crate::filesync`]), registry credentials (the docker config, as [`kit::registry`] reads
//! it) and the secrets, and bollard's session is registered under another id no build uses
//! (see [`bollard_session_renamed`]).
//!
//! A secret is read once, when the input is checked (a missing file is bad input, before
//! anything runs), registered with [`kit::log::secret`] so no line or record can show it, and
//! handed to the engine only when a `RUN --mount=type=secret` asks for its id; BuildKit mounts
//! it on a tmpfs for that step, so it is in no layer, no image config and no cache export.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bollard::grpc::build::health::health_check_response::ServingStatus;
use bollard::grpc::build::health::health_server::{Health, HealthServer};
use bollard::grpc::build::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard::grpc::build::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard::grpc::build::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard::grpc::build::moby::filesync::packet::file_sync_server::FileSyncServer;
use bollard::grpc::build::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard::grpc::build::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use hyper_util::rt::TokioIo;
use kit::{log, Error, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{Request, Response, Status};

/// BuildKit's own limit on a secret's size.
const MAX_SECRET: u64 = 500 * 1024;

/// One `--secret`: its id and its value, read when the input was checked.
#[derive(Clone)]
pub struct Secret {
    pub id: String,
    value: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.id)
    }
}

/// Parses `id=NAME,src=FILE` or `id=NAME,env=VAR` (also `source=`, and `type=file|env`, as
/// the docker CLI accepts them) and reads the value. Every failure names the form to use.
pub fn parse(spec: &str) -> Result<Secret> {
    const FORMS: &str = "give id=NAME,src=FILE or id=NAME,env=VAR";
    let bad = |why: String| Error::input("--secret", format!("{why} ({FORMS})"));
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for part in spec.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            return Err(bad(format!("'{part}' in '{spec}' is not KEY=VALUE")));
        };
        match k.trim() {
            "id" => id = Some(v.to_string()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            "type" if v == "file" || v == "env" => kind = Some(v.to_string()),
            "type" => return Err(bad(format!("unknown secret type '{v}' in '{spec}'"))),
            other => return Err(bad(format!("unknown key '{other}' in '{spec}'"))),
        }
    }
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        return Err(bad(format!("'{spec}' names no id")));
    };
    let value = match (src, env, kind.as_deref()) {
        (Some(_), Some(_), _) => {
            return Err(bad(format!("'{spec}' gives both a file and a variable")))
        }
        (Some(path), None, None | Some("file")) => {
            let meta = std::fs::metadata(&path).map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_string(),
                    _ => e.to_string(),
                };
                Error::input("--secret", format!("id={id}: {path}: {why}"))
            })?;
            if !meta.is_file() || meta.len() > MAX_SECRET {
                return Err(Error::input(
                    "--secret",
                    format!("id={id}: {path} is not a file of at most 500 KiB"),
                ));
            }
            std::fs::read(&path)
                .map_err(|e| Error::input("--secret", format!("id={id}: {path}: {e}")))?
        }
        (None, Some(var), None | Some("env")) => std::env::var_os(&var)
            .ok_or_else(|| {
                Error::input(
                    "--secret",
                    format!("id={id}: the environment variable {var} is not set"),
                )
            })?
            .into_encoded_bytes(),
        (None, None, _) => return Err(bad(format!("'{spec}' names no src= and no env="))),
        (_, _, Some(kind)) => {
            return Err(bad(format!(
                "'{spec}' is type={kind} but gives the other source"
            )))
        }
    };
    if let Ok(text) = std::str::from_utf8(&value) {
        log::secret(text);
    }
    Ok(Secret { id, value })
}

/// The session's id header, as the engine reads it.
const SESSION_UUID: &str = "X-Docker-Expose-Session-Uuid";

/// A modifier for the bollard client that sends the build: its own session (registry auth
/// only) is registered under `ID-unused`, so the build's session id is ours.
pub fn bollard_session_renamed(mut req: bollard::BollardRequest) -> bollard::BollardRequest {
    if req.uri().path().ends_with("/session") {
        if let Some(id) = req.headers().get(SESSION_UUID).cloned() {
            let renamed = format!("{}-unused", id.to_str().unwrap_or("bollard"));
            if let Ok(value) = http::HeaderValue::from_str(&renamed) {
                req.headers_mut().insert(SESSION_UUID, value);
            }
        }
    }
    req
}

/// Opens the session `id` on the engine at `DOCKER_HOST` and serves it until the runtime
/// ends. Returns once the engine has accepted it, so a build started after this finds it.
pub async fn open(id: &str, secrets: Vec<Secret>, files: crate::filesync::Provider) -> Result<()> {
    let step = "session";
    let failed = |why: String| Error::step(step, format!("cannot open a BuildKit session: {why}"));
    let host = kit::docker::host();
    let io: Box<dyn Io> = match transport().map_err(failed)? {
        Transport::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| failed(format!("{host}: {e}")))?,
        ),
        Transport::Tcp(addr) => Box::new(
            tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| failed(format!("{host}: {e}")))?,
        ),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());

    let methods = [
        "/moby.filesync.v1.FileSync/diffcopy",
        "/grpc.health.v1.Health/Check",
        "/moby.filesync.v1.Auth/Credentials",
        "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    ];
    let mut request = http::Request::post("/session")
        .header(http::header::HOST, "docker")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c")
        .header(SESSION_UUID, id)
        .header("X-Docker-Expose-Session-Name", "img-build");
    for method in methods {
        request = request.header("X-Docker-Expose-Session-Grpc-Method", method);
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(failed(format!("the engine answered {}", response.status())));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let transport = Upgraded(TokioIo::new(upgraded));

    let secrets: HashMap<String, Vec<u8>> = secrets.into_iter().map(|s| (s.id, s.value)).collect();
    let router = tonic::transport::Server::builder()
        .add_service(HealthServer::new(Healthy))
        .add_service(AuthServer::new(Credentials))
        .add_service(SecretsServer::new(Store(Arc::new(secrets))))
        .add_service(FileSyncServer::new(files));
    tokio::spawn(async move {
        let incoming = futures_util::stream::iter([Ok::<_, std::io::Error>(transport)]);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            log::debug(&format!("the BuildKit session ended: {e}"));
        }
    });
    Ok(())
}

/// How the session reaches the engine: `DOCKER_HOST` as a plain unix:// or tcp:// connection.
enum Transport {
    Unix(String),
    Tcp(String),
}

/// The session's connection to the engine, or why img-build cannot open one (an engine
/// behind TLS or ssh: then `--builder auto` picks the classic builder).
fn transport() -> std::result::Result<Transport, String> {
    let host = kit::docker::host();
    if let Some(path) = host.strip_prefix("unix://") {
        return Ok(Transport::Unix(path.to_string()));
    }
    if let Some(addr) = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
    {
        if std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty()) {
            return Err(
                "img-build's BuildKit session is a plain tcp:// connection, and \
                 DOCKER_TLS_VERIFY asks for TLS"
                    .into(),
            );
        }
        return Ok(Transport::Tcp(addr.trim_end_matches('/').to_string()));
    }
    Err(format!(
        "img-build's BuildKit session needs DOCKER_HOST to be unix:// or tcp://, not {host}"
    ))
}

/// Whether img-build can open a session to this engine; if not, why.
pub fn supported() -> std::result::Result<(), String> {
    transport().map(|_| ())
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// The upgraded connection, as tonic's server takes it.
struct Upgraded(TokioIo<hyper::upgrade::Upgraded>);

impl tonic::transport::server::Connected for Upgraded {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct Healthy;

#[tonic::async_trait]
impl Health for Healthy {
    type WatchStream =
        futures_util::stream::Empty<std::result::Result<HealthCheckResponse, Status>>;

    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> std::result::Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    async fn list(
        &self,
        _: Request<HealthListRequest>,
    ) -> std::result::Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> std::result::Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

/// Registry credentials from the docker config, for `FROM` and `--cache-from` images.
/// Tokens are left to the engine: without `FetchToken`, BuildKit asks for credentials.
struct Credentials;

#[tonic::async_trait]
impl Auth for Credentials {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> std::result::Result<Response<CredentialsResponse>, Status> {
        // BuildKit names Docker Hub by its API host; the docker config by `docker.io`.
        let host = match request.get_ref().host.as_str() {
            "registry-1.docker.io" | "index.docker.io" => kit::image::DOCKER_HUB,
            host => host,
        };
        let found = kit::image::Reference::parse(&format!("{host}/x"))
            .ok()
            .and_then(|r| kit::registry::from_docker_config(&r));
        let mut response = CredentialsResponse::default();
        if let Some(c) = found {
            match (c.username, c.password, c.identitytoken) {
                (Some(user), Some(password), _) => {
                    response.username = user;
                    response.secret = password;
                }
                (_, _, Some(token)) => response.secret = token,
                _ => {}
            }
        }
        Ok(Response::new(response))
    }

    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> std::result::Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("fetch_token"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> std::result::Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unavailable("client-side authentication disabled"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> std::result::Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unavailable("client-side authentication disabled"))
    }
}

struct Store(Arc<HashMap<String, Vec<u8>>>);

#[tonic::async_trait]
impl Secrets for Store {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> std::result::Result<Response<GetSecretResponse>, Status> {
        let id = &request.get_ref().id;
        match self.0.get(id) {
            Some(value) => Ok(Response::new(GetSecretResponse {
                data: value.clone(),
            })),
            None => {
                log::warn(&format!(
                    "the Dockerfile asks for the secret '{id}', which no --secret gives"
                ));
                Err(Status::not_found(format!("secret {id} not found")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_forms() {
        let dir = std::env::temp_dir().join(format!("dkt-secret-{}", std::process::id()));
        std::fs::write(&dir, "file-value").unwrap();
        let s = parse(&format!("id=tok,src={}", dir.display())).unwrap();
        assert_eq!(
            (s.id.as_str(), s.value.as_slice()),
            ("tok", &b"file-value"[..])
        );
        std::env::set_var("DKT_SECRET_TEST_VAR", "env-value");
        let s = parse("type=env,id=tok,env=DKT_SECRET_TEST_VAR").unwrap();
        assert_eq!(s.value, b"env-value");
        let _ = std::fs::remove_file(&dir);
        for (spec, says) in [
            ("id=x,foo=y", "unknown key 'foo'"),
            ("id=x", "names no src= and no env="),
            ("src=/etc/hostname", "names no id"),
            (
                "id=x,src=/nonexistent/dkt",
                "id=x: /nonexistent/dkt: no such file",
            ),
            (
                "id=x,env=DKT_SURELY_UNSET_VAR",
                "DKT_SURELY_UNSET_VAR is not set",
            ),
            ("id=x,type=ssh", "unknown secret type 'ssh'"),
            ("oops", "is not KEY=VALUE"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
