//! img-push against a real registry (Debian's docker-registry), through the real engine.

use std::path::Path;
use std::time::Duration;

use testkit::{docker, fixtures, json, shell, tool, unique, Cleanup, Value, LABEL};

/// Builds a small unique image and tags it `REGISTRY/dkt-push-…:v1` (and `:v2` when asked).
fn image(c: &mut Cleanup, registry: &str, tags: &[&str]) -> Vec<String> {
    fixtures();
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = format!("{registry}/{}", unique("push"));
    std::fs::write(
        dir.path().join("Dockerfile"),
        // The first step already its own: tests run at once, and one whose cleanup removes an
        // intermediate image another is building on (the legacy builder's cache) breaks it.
        format!("FROM dkt/busybox:latest\nLABEL {LABEL} io.deploykit.test.repo={repo}\nRUN echo {repo} > /id\n"),
    )
    .expect("Dockerfile");
    let refs: Vec<String> = tags
        .iter()
        .map(|t| c.image(&format!("{repo}:{t}")))
        .collect();
    let mut args = vec!["build", "-q"];
    for r in &refs {
        args.extend(["-t", r]);
    }
    let ctx = dir.path().to_string_lossy().to_string();
    args.push(&ctx);
    docker(&args);
    refs
}

/// What the registry serves for a tag: its `Docker-Content-Digest`, asked as the docker CLI
/// asks (schema 2 manifest), with basic auth when given.
fn served_digest(tag: &str, auth: Option<&str>) -> String {
    let (host, rest) = tag.split_once('/').expect("registry/");
    let (name, reference) = rest.rsplit_once(':').expect("name:tag");
    let url = format!("http://{host}/v2/{name}/manifests/{reference}");
    let mut req = ureq::get(&url).header(
        "Accept",
        "application/vnd.docker.distribution.manifest.v2+json",
    );
    if let Some(auth) = auth {
        req = req.header("Authorization", format!("Basic {}", base64(auth)));
    }
    let resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .expect("Docker-Content-Digest")
        .to_string()
}

fn base64(text: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A DOCKER_CONFIG directory whose config.json holds `user:pass` for `registry`.
fn docker_config(dir: &Path, registry: &str, auth: &str) {
    let config = json!({"auths": {registry: {"auth": base64(auth)}}});
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config.json");
}

fn pushed(record: &Value) -> Vec<(String, String)> {
    record["img-push"]["pushed"]
        .as_array()
        .expect("pushed")
        .iter()
        .map(|p| {
            (
                p["tag"].as_str().expect("tag").to_string(),
                p["digest"].as_str().expect("digest").to_string(),
            )
        })
        .collect()
}

#[test]
fn pushes_what_img_build_built_and_records_the_registrys_digest() {
    fixtures();
    let mut c = Cleanup::new();
    let registry = c.registry(None);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM dkt/busybox:latest\nRUN echo piped > /id\n",
    )
    .expect("Dockerfile");
    let repo = format!("{registry}/{}", unique("piped"));
    let (v1, latest) = (
        c.image(&format!("{repo}:v1")),
        c.image(&format!("{repo}:latest")),
    );
    let out = shell(&format!(
        "img-build --context {} -t {v1} -t {latest} --label {LABEL} | img-push",
        dir.path().display()
    ));
    out.code(0).one_record();
    let record = &out.record;
    let pushed = pushed(record);
    assert_eq!(
        pushed.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        [v1.as_str(), latest.as_str()]
    );
    for (tag, digest) in &pushed {
        assert!(digest.starts_with("sha256:"), "{digest}");
        assert_eq!(&served_digest(tag, None), digest, "{tag}");
    }
    assert_eq!(record["img-push"]["registry"], registry.as_str());
    assert_eq!(
        record["img-push"]["image_id"],
        record["img-build"]["image_id"]
    );
    assert!(record["img-push"].get("not_pushed").is_none());
    let steps: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tool"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["img-build", "img-push"]);
}

#[test]
fn pushes_only_the_tags_named() {
    let mut c = Cleanup::new();
    let registry = c.registry(None);
    let refs = image(&mut c, &registry, &["v1", "other"]);
    let out = tool("img-push").args(["--tag", &refs[0]]).run();
    out.code(0);
    assert_eq!(pushed(&out.record).len(), 1);
    served_digest(&refs[0], None);
    let (host, rest) = refs[1].split_once('/').unwrap();
    let (name, tag) = rest.rsplit_once(':').unwrap();
    let url = format!("http://{host}/v2/{name}/manifests/{tag}");
    assert!(
        ureq::get(&url).call().is_err(),
        "{} was pushed too",
        refs[1]
    );
}

#[test]
fn credentials_from_a_docker_config() {
    let mut c = Cleanup::new();
    let registry = c.registry(Some("deployer:Sentinel-Pa55word"));
    let refs = image(&mut c, &registry, &["v1"]);
    let config = tempfile::tempdir().expect("temp dir");
    docker_config(config.path(), &registry, "deployer:Sentinel-Pa55word");
    let out = tool("img-push")
        .args(["-t", &refs[0], "-v"])
        .env("DOCKER_CONFIG", config.path())
        .env("REGISTRY_USERNAME", "")
        .env("REGISTRY_PASSWORD", "")
        .run();
    out.code(0).stderr_lacks("Sentinel-Pa55word");
    assert!(!out.stdout.contains("Sentinel-Pa55word"));
    let (_, digest) = &pushed(&out.record)[0];
    assert_eq!(
        &served_digest(&refs[0], Some("deployer:Sentinel-Pa55word")),
        digest
    );
}

#[test]
fn credentials_from_the_environment_and_a_password_file() {
    let mut c = Cleanup::new();
    let registry = c.registry(Some("ci:Env-Sentinel-99"));
    let refs = image(&mut c, &registry, &["v1"]);
    let empty = tempfile::tempdir().expect("temp dir");
    let out = tool("img-push")
        .args(["-t", &refs[0], "-v"])
        .env("DOCKER_CONFIG", empty.path())
        .env("REGISTRY_USERNAME", "ci")
        .env("REGISTRY_PASSWORD", "Env-Sentinel-99")
        .run();
    out.code(0).stderr_lacks("Env-Sentinel-99");
    assert!(!out.stdout.contains("Env-Sentinel-99"));
    assert_eq!(
        &served_digest(&refs[0], Some("ci:Env-Sentinel-99")),
        &pushed(&out.record)[0].1
    );

    let file = empty.path().join("password");
    std::fs::write(&file, "Env-Sentinel-99\n").expect("password file");
    tool("img-push")
        .args(["-t", &refs[0]])
        .env("DOCKER_CONFIG", empty.path())
        .env("REGISTRY_USERNAME", "ci")
        .env("REGISTRY_PASSWORD_FILE", &file)
        .env("REGISTRY_PASSWORD", "")
        .run()
        .code(0);
}

#[test]
fn a_wrong_password_fails_at_once_without_retrying() {
    let mut c = Cleanup::new();
    let registry = c.registry(Some("ci:right-password"));
    let refs = image(&mut c, &registry, &["v1"]);
    let empty = tempfile::tempdir().expect("temp dir");
    let out = tool("img-push")
        .args(["-t", &refs[0], "--retry-delay", "2s"])
        .env("DOCKER_CONFIG", empty.path())
        .env("REGISTRY_USERNAME", "ci")
        .env("REGISTRY_PASSWORD", "Wrong-Sentinel-77")
        .run();
    out.code(1)
        .one_record()
        .stderr_lacks("retry")
        .stderr_lacks("Wrong-Sentinel-77")
        .stderr_has("check REGISTRY_PASSWORD");
    assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    let f = out.failure_from("img-push");
    assert_eq!(f["step"], "push");
    assert!(f["error"].as_str().unwrap().contains("unauthorized"), "{f}");
    assert_eq!(out.record["img-push"]["not_pushed"], json!([refs[0]]));
    assert_eq!(out.record["img-push"]["pushed"], json!([]));
}

#[test]
fn a_stopped_registry_gets_bounded_retries_then_a_clear_failure() {
    let mut c = Cleanup::new();
    let registry = c.registry(None);
    let refs = image(&mut c, &registry, &["v1", "v2"]);
    c.stop_registries();
    let out = tool("img-push")
        .args([
            "-t",
            &refs[0],
            "-t",
            &refs[1],
            "--retries",
            "2",
            "--retry-delay",
            "100ms",
        ])
        .run();
    out.code(1)
        .one_record()
        .stderr_has("retry 1/2 in 100ms")
        .stderr_has("retry 2/2 in 200ms")
        .stderr_lacks("retry 3/")
        .stderr_has("after 3 attempts")
        .stderr_has("connection refused");
    assert!(out.elapsed < Duration::from_secs(20), "{:?}", out.elapsed);
    assert_eq!(out.failure_from("img-push")["step"], "push");
    assert_eq!(out.record["img-push"]["not_pushed"], json!(refs));
}

#[test]
fn a_missing_image_fails_before_anything_is_pushed() {
    let mut c = Cleanup::new();
    let registry = c.registry(None);
    let refs = image(&mut c, &registry, &["v1"]);
    let missing = format!("{registry}/{}:v1", unique("absent"));
    let out = tool("img-push")
        .args(["-t", &refs[0], "-t", &missing])
        .run();
    out.code(1)
        .stderr_has(&format!("there is no image {missing} here to push"));
    assert_eq!(out.failure_from("img-push")["step"], "preflight");
    let (host, rest) = refs[0].split_once('/').unwrap();
    let (name, tag) = rest.rsplit_once(':').unwrap();
    assert!(
        ureq::get(&format!("http://{host}/v2/{name}/manifests/{tag}"))
            .call()
            .is_err()
    );
}

#[test]
fn nothing_to_push_is_bad_input() {
    tool("img-push")
        .run()
        .code(2)
        .one_record()
        .stderr_has("nothing to push");
    let out = tool("img-push")
        .record(&json!({"img-build": {"tags": "x"}}))
        .run();
    out.code(2)
        .stderr_has("img-build.tags: expected an array of strings");
    tool("img-push")
        .args(["-t", "Bad:Ref:x"])
        .run()
        .code(2)
        .stderr_has("is not an image reference");
}

#[test]
fn a_registry_answering_503_is_retried_too() {
    let mut c = Cleanup::new();
    // The engine asks a registry whether a layer exists only for layers it has pushed before
    // (elsewhere it uploads at once, and retries a failed upload by itself for 50 s before
    // img-push hears of it): push to a real registry first, then to one whose layers "already
    // exist" and whose manifest upload gets 503.
    let registry = c.registry(None);
    let refs = image(&mut c, &registry, &["v1"]);
    tool("img-push").args(["-t", &refs[0]]).run().code(0);
    let busy = testkit::StubServer::start(|r| {
        if r.method == "HEAD" && r.path.contains("/blobs/") {
            Some((200, "application/octet-stream", String::new()))
        } else {
            Some((503, "text/plain", "busy".into()))
        }
    });
    let name = refs[0].split_once('/').expect("registry/").1;
    let busy_ref = c.image(&format!("{}/{name}", busy.addr));
    docker(&["tag", &refs[0], &busy_ref]);
    let out = tool("img-push")
        .args(["-t", &busy_ref, "--retries", "1", "--retry-delay", "50ms"])
        .run();
    out.code(1)
        .stderr_has("retry 1/1 in 50ms")
        .stderr_has("503");
    let manifest_puts = busy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/"))
        .count();
    assert_eq!(manifest_puts, 2, "one attempt and one retry");
}
