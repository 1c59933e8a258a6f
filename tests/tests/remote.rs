//! Reaching a remote engine as the docker CLI does (kit::endpoint), through the real tools:
//! a dockerd of our own behind TLS with certificates made here, and a real sshd on loopback
//! whose `docker system dial-stdio` reaches the host engine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::swarm::Swarm;
use testkit::{docker, eventually, fixtures, free_port, tool, unique, Cleanup, Out, LABEL};

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (scripts/setup installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one error line a tool printed, asserting there is exactly one.
fn one_line(out: &Out) -> &str {
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "not one line:\n{}",
        out.stderr
    );
    out.stderr.trim_end()
}

// ---- TLS -------------------------------------------------------------------------------------

/// A CA (`NAME.pem`, `NAME-key.pem`) made with openssl (EC P-256: quick).
fn make_ca(dir: &Path, name: &str) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
    );
}

/// A certificate `NAME.pem`/`NAME-key.pem` signed by CA `ca`, for `usage` (serverAuth or
/// clientAuth), with the subjectAltName `san` when given.
fn make_cert(dir: &Path, name: &str, ca: &str, usage: &str, san: Option<&str>) {
    let p = |f: String| dir.join(f).display().to_string();
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &p(format!("{name}-key.pem")),
            "-out",
            &p(format!("{name}.csr")),
        ],
    );
    let mut ext = format!("extendedKeyUsage={usage}\n");
    if let Some(san) = san {
        ext.push_str(&format!("subjectAltName={san}\n"));
    }
    fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-CAcreateserial",
            "-in",
            &p(format!("{name}.csr")),
            "-CA",
            &p(format!("{ca}.pem")),
            "-CAkey",
            &p(format!("{ca}-key.pem")),
            "-extfile",
            &p(format!("{name}.ext")),
            "-out",
            &p(format!("{name}.pem")),
        ],
    );
}

/// A DOCKER_CERT_PATH directory holding `ca` as ca.pem and the client `client` (if any).
fn cert_path(dir: &Path, name: &str, ca: &str, client: Option<&str>) -> PathBuf {
    let out = dir.join(name);
    fs::create_dir_all(&out).expect("mkdir");
    fs::copy(dir.join(format!("{ca}.pem")), out.join("ca.pem")).expect("ca");
    if let Some(client) = client {
        fs::copy(dir.join(format!("{client}.pem")), out.join("cert.pem")).expect("cert");
        fs::copy(dir.join(format!("{client}-key.pem")), out.join("key.pem")).expect("key");
    }
    out
}

/// img-build of a tiny context tagged `tag`, through `DOCKER_HOST`/TLS settings `env`.
fn build(context: &Path, tag: &str, env: &[(&str, String)]) -> Out {
    let mut run = tool("img-build")
        .arg("--context")
        .arg(context)
        .args(["--tag", tag, "--label", LABEL]);
    for (k, v) in env {
        run = run.env(k, v);
    }
    run.run()
}

#[test]
fn a_tls_engine_is_driven_with_the_right_certificates_and_refused_with_the_wrong_ones() {
    fixtures();
    let certs = tempfile::Builder::new()
        .prefix("dkt-tls-")
        .tempdir()
        .expect("temp dir");
    let dir = certs.path();
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    // The engine's address on the test bridge is known before it starts: node 1 of the next
    // swarm. Its certificate names every address a node can have, as a real one names its host.
    let sans: Vec<String> = (1..=200).map(|s| format!("IP:10.213.{s}.11")).collect();
    make_cert(dir, "server", "ca", "serverAuth", Some(&sans.join(",")));
    make_cert(dir, "client", "ca", "clientAuth", None);
    make_cert(dir, "rogue", "other-ca", "clientAuth", None);
    let p = |f: &str| dir.join(f).display().to_string();
    let engine = Swarm::engines(
        1,
        &["dkt/app:v1"],
        &[
            "-H",
            "tcp://0.0.0.0:2376",
            "--tlsverify",
            &format!("--tlscacert={}", p("ca.pem")),
            &format!("--tlscert={}", p("server.pem")),
            &format!("--tlskey={}", p("server-key.pem")),
        ],
    );
    let host = format!("tcp://{}:2376", engine.nodes[0].ip);
    let tls = |cert_dir: &Path| {
        vec![
            ("DOCKER_HOST", host.clone()),
            ("DOCKER_TLS_VERIFY", "1".to_string()),
            ("DOCKER_CERT_PATH", cert_dir.display().to_string()),
        ]
    };
    let context = tempfile::Builder::new()
        .prefix("dkt-ctx-")
        .tempdir()
        .expect("temp dir");
    fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /a.txt\n",
    )
    .unwrap();
    fs::write(context.path().join("a.txt"), "over TLS\n").unwrap();
    let image_on_engine = |tag: &str| engine.try_docker_on(1, &["image", "inspect", tag]).is_ok();

    // The right CA and a client certificate it signed: the tools work through it.
    let good = cert_path(dir, "good", "ca", Some("client"));
    let tag = format!("{}:tls", unique("remote"));
    build(context.path(), &tag, &tls(&good))
        .code(0)
        .one_record();
    assert!(
        image_on_engine(&tag),
        "built elsewhere than on the TLS engine"
    );
    assert!(
        testkit::docker_try(&["image", "inspect", &tag]).is_err(),
        "built on the host engine"
    );
    let app = unique("tls-app");
    engine.docker_on(1, &["run", "-d", "--name", &app, "dkt/app:v1"]);
    let mut hw = tool("healthwait").args(["--container", &app, "--timeout", "60s"]);
    for (k, v) in tls(&good) {
        hw = hw.env(k, v);
    }
    hw.run().code(0).stderr_has("is healthy");

    // Refused, with one line naming DOCKER_HOST and what failed, and nothing built.
    let rogue = cert_path(dir, "rogue", "ca", Some("rogue"));
    let wrong_ca = cert_path(dir, "wrong-ca", "other-ca", Some("client"));
    let no_client = cert_path(dir, "no-client", "ca", None);
    for (cert_dir, needle) in [
        (&rogue, "TLS: the engine refused our client certificate"),
        (
            &wrong_ca,
            "TLS: the engine's certificate is not signed by the CA in",
        ),
        (&no_client, "TLS: the engine wants a client certificate"),
    ] {
        let tag = format!("{}:refused", unique("remote"));
        let out = build(context.path(), &tag, &tls(cert_dir));
        out.code(1).one_record();
        let line = one_line(&out);
        assert!(
            line.contains(&format!(
                "cannot reach the Docker Engine at {host} (DOCKER_HOST)"
            )),
            "{line}"
        );
        assert!(line.contains(needle), "{line}");
        assert!(!image_on_engine(&tag), "{tag} was built despite: {line}");
    }

    // Plain HTTP to the TLS port, a certificate directory without ca.pem, an unreachable
    // manager: one line each.
    let out = build(
        context.path(),
        "dkt-never:x",
        &[("DOCKER_HOST", host.clone())],
    );
    out.code(1);
    assert!(one_line(&out).contains("the engine speaks TLS: set DOCKER_TLS_VERIFY=1"));
    let out = build(context.path(), "dkt-never:x", &tls(&dir.join("nowhere")));
    out.code(2);
    assert!(one_line(&out).contains("DOCKER_CERT_PATH: DOCKER_TLS_VERIFY is set but"));
    let unreachable = format!("tcp://127.0.0.1:{}", free_port());
    let mut env = tls(&good);
    env[0].1 = unreachable.clone();
    let out = build(context.path(), "dkt-never:x", &env);
    out.code(1);
    let line = one_line(&out);
    assert!(
        line.contains(&format!("cannot reach the Docker Engine at {unreachable}"))
            && line.contains("connection refused"),
        "{line}"
    );
}

// ---- ssh -------------------------------------------------------------------------------------

/// A real sshd on a loopback port, its own host key and config; every command it runs is
/// appended to `ran.log` first. `ssh` on the PATH of the tools under test is the system's ssh
/// reading this test's client config (its key and known_hosts), as ~/.ssh/config would.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sshd {
    fn start() -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "/usr/sbin/sshd is missing: run scripts/setup (openssh-server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("dkt-sshd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let p = |f: &str| d.join(f).display().to_string();
        for key in ["host_key", "other_host_key", "client_key"] {
            run(
                "ssh-keygen",
                &["-q", "-t", "ed25519", "-N", "", "-f", &p(key)],
            );
        }
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        fs::write(
            d.join("record-and-run"),
            format!(
                "#!/bin/sh\necho \"$SSH_ORIGINAL_COMMAND\" >> {}\nexec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
                p("ran.log")
            ),
        )
        .expect("record-and-run");
        run("chmod", &["755", &p("record-and-run")]);
        fs::write(d.join("ran.log"), "").expect("ran.log");
        // sshd's privilege separation directory (Debian's package makes it at boot).
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = free_port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nForceCommand {}\n",
                p("host_key"),
                p("sshd.pid"),
                p("authorized_keys"),
                p("record-and-run"),
            ),
        )
        .expect("sshd_config");
        fs::write(
            d.join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                 GlobalKnownHostsFile /dev/null\n",
                p("client_key"),
                p("known_hosts"),
            ),
        )
        .expect("ssh_config");
        fs::create_dir_all(d.join("bin")).expect("bin");
        fs::write(
            d.join("bin/ssh"),
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n",
                p("ssh_config")
            ),
        )
        .expect("ssh wrapper");
        run("chmod", &["755", &p("bin/ssh")]);
        // sshd goes when this test's process goes, even when the run is killed (no Drop).
        let watch = format!(
            "/usr/sbin/sshd -D -e -f {} 2>>{} & sshd=$!\n\
             while kill -0 {} 2>/dev/null && kill -0 $sshd 2>/dev/null; do sleep 1; done\n\
             kill $sshd 2>/dev/null",
            p("sshd_config"),
            p("sshd.log"),
            std::process::id()
        );
        let child = Command::new("sh")
            .args(["-c", &watch])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        assert!(
            eventually(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "sshd never listened: {}",
            fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
        Sshd { dir, port, child }
    }

    /// known_hosts holding `key`'s public half for this server ("" = an empty file).
    fn known_hosts(&self, key: Option<&str>) {
        let line = match key {
            Some(key) => {
                let public = fs::read_to_string(self.dir.path().join(format!("{key}.pub")))
                    .expect("public key");
                format!("[127.0.0.1]:{} {}", self.port, public)
            }
            None => String::new(),
        };
        fs::write(self.dir.path().join("known_hosts"), line).expect("known_hosts");
    }

    fn ran(&self) -> String {
        fs::read_to_string(self.dir.path().join("ran.log")).unwrap_or_default()
    }

    /// healthwait --container NAME through DOCKER_HOST=ssh://root@127.0.0.1:PORT.
    fn healthwait(&self, container: &str, port: u16) -> Out {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        tool("healthwait")
            .env("DOCKER_HOST", format!("ssh://root@127.0.0.1:{port}"))
            .env("PATH", path)
            .args(["--container", container, "--timeout", "60s"])
            .run()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.dir.path().join("sshd.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ssh_reaches_the_engine_through_dial_stdio_and_a_host_key_mismatch_runs_nothing() {
    fixtures();
    let mut clean = Cleanup::new();
    let app = clean.container(&unique("ssh-app"));
    docker(&["run", "-d", "--name", &app, "--label", LABEL, "dkt/app:v1"]);
    let sshd = Sshd::start();

    // The host key the client knows is the server's: it works, through the CLI's dial-stdio.
    sshd.known_hosts(Some("host_key"));
    sshd.healthwait(&app, sshd.port)
        .code(0)
        .stderr_has("is healthy");
    // One ssh connection carries the whole run (ping, inspect): it is kept alive.
    assert_eq!(
        sshd.ran(),
        "docker system dial-stdio\n",
        "what ran on the server"
    );

    // A changed host key, and an unknown one: refused before anything runs, and never
    // learnt (known_hosts is left as it was).
    for known in [Some("other_host_key"), None] {
        sshd.known_hosts(known);
        let before = fs::read_to_string(sshd.dir.path().join("known_hosts")).unwrap();
        fs::write(sshd.dir.path().join("ran.log"), "").unwrap();
        let out = sshd.healthwait(&app, sshd.port);
        out.code(1).one_record();
        let line = one_line(&out);
        assert!(
            line.contains(&format!(
                "cannot reach the Docker Engine at ssh://root@127.0.0.1:{} (DOCKER_HOST): ssh:",
                sshd.port
            )) && line.contains("Host key verification failed"),
            "{line}"
        );
        assert_eq!(sshd.ran(), "", "something ran despite the host key");
        assert_eq!(
            fs::read_to_string(sshd.dir.path().join("known_hosts")).unwrap(),
            before,
            "known_hosts changed"
        );
    }

    // Nobody listening: one line.
    sshd.known_hosts(Some("host_key"));
    let out = sshd.healthwait(&app, free_port());
    out.code(1);
    assert!(
        one_line(&out).contains("Connection refused"),
        "{}",
        out.stderr
    );
}
