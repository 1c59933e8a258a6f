//! img-build on the real engine: what a user sees, what the record says, what the image holds.

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::{docker, docker_try, fixtures, json, tool, unique, Cleanup, Out, LABEL};

/// Writes files (path → content) under `dir`, creating parent directories.
fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, content).expect("write");
    }
}

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dkt-ctx-")
        .tempdir()
        .expect("temp dir");
    write(dir.path(), files);
    dir
}

fn build(dir: &Path, args: &[&str]) -> Out {
    tool("img-build")
        .arg("--context")
        .arg(dir)
        .args(["--label", LABEL])
        .args(args)
        .run()
}

const COPY_ALL: &str = "FROM dkt/busybox:latest\nCOPY . /ctx\n";

fn files_in(image: &str) -> Vec<String> {
    let mut files: Vec<String> = docker(&["run", "--rm", image, "find", "/ctx"])
        .lines()
        .map(str::to_string)
        .collect();
    files.sort();
    files
}

#[test]
fn builds_with_every_tag_and_records_the_image() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[
        (
            "Dockerfile",
            "FROM dkt/busybox:latest\nCOPY a.txt /a.txt\nRUN echo built-by-run\n",
        ),
        ("a.txt", "hello\n"),
    ]);
    let (first, second) = (
        c.image(&format!("{}:v1", unique("build"))),
        c.image(&format!("{}:v2", unique("build"))),
    );
    let out = build(dir.path(), &["-t", &first, "--tag", &second]);
    out.code(0).one_record();
    let r = &out.record["img-build"];
    assert_eq!(r["tags"], json!([first, second]));
    let id = r["image_id"].as_str().expect("image_id");
    assert!(id.starts_with("sha256:"), "{id}");
    assert!(r["size"].as_i64().expect("size") > 0);
    assert!(r["duration_ms"].as_u64().is_some());
    // The labels are one more step, as with `docker build --label`.
    assert_eq!(r["steps"], 4);
    assert_eq!(r["labels"][LABEL.split('=').next().unwrap()], "1");
    for tag in [&first, &second] {
        assert_eq!(
            docker(&["image", "inspect", "--format", "{{.Id}}", tag]),
            id
        );
    }
    assert_eq!(docker(&["run", "--rm", &first, "cat", "/a.txt"]), "hello");
    // Compact by default: the steps, not the output of RUN.
    out.stderr_has("step 3/4: RUN echo built-by-run")
        .stderr_lacks("  | built-by-run")
        .stderr_has(&format!("as {first}, {second}"));
}

#[test]
fn verbose_shows_the_whole_log_and_actions_fold_it() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[(
        "Dockerfile",
        "FROM dkt/busybox:latest\nRUN echo visible-line\n",
    )]);
    let tag = c.image(&format!("{}:v1", unique("verbose")));
    let first = build(dir.path(), &["-t", &tag, "-v", "--no-cache"]);
    first.code(0).stderr_has("  | visible-line");
    // The second build takes the tag: the first image is removed by its id.
    c.image(first.record["img-build"]["image_id"].as_str().unwrap());
    let out = tool("img-build")
        .arg("--context")
        .arg(dir.path())
        .args(["-t", &tag, "--no-cache", "--label", LABEL])
        .env("GITHUB_ACTIONS", "true")
        .run();
    out.code(0)
        .stderr_has("::group::img-build: build log")
        .stderr_has("  | visible-line")
        .stderr_has("::endgroup::");
}

#[test]
fn without_a_tag_it_tags_the_short_commit_and_fills_the_oci_labels() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[("Dockerfile", COPY_ALL), ("app.txt", "v1\n")]);
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&[
        "remote",
        "add",
        "origin",
        "https://user:s3cret-token@git.example.com/shop/api.git",
    ]);
    git(&["add", "."]);
    git(&["commit", "-qm", "first"]);
    git(&["tag", "v1.2.3"]);
    let revision = git(&["rev-parse", "HEAD"]);
    let short = git(&["rev-parse", "--short", "HEAD"]);
    let repo = unique("sha");
    let expected_tag = c.image(&format!("{repo}:{short}"));

    let out = build(dir.path(), &["--image", &repo]);
    out.code(0);
    let r = &out.record["img-build"];
    assert_eq!(r["tags"], json!([expected_tag]));
    let labels = &r["labels"];
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        revision.as_str()
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://git.example.com/shop/api"
    );
    assert_eq!(labels["org.opencontainers.image.version"], "v1.2.3");
    assert!(labels["org.opencontainers.image.created"].is_string());
    let on_image = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &expected_tag,
    ]);
    assert!(on_image.contains(&revision), "{on_image}");
    assert!(!out.stdout.contains("s3cret-token") && !out.stderr.contains("s3cret-token"));

    // Same commit again: every step from the cache, the same image.
    let again = build(dir.path(), &["--image", &repo]);
    again.code(0);
    assert_eq!(again.record["img-build"]["image_id"], r["image_id"]);
}

#[test]
fn dockerignore_sends_the_same_files_as_the_docker_cli() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[
            ("Dockerfile", COPY_ALL),
            (
                ".dockerignore",
                "# comment\n*.log\n!keep.log\n**/*.tmp\n/build\nnode_modules\n!node_modules/keep/me.js\n\
                 docs/**\n!docs/README.md\nsecret?.txt\n[ab].bin\nDockerfile\n.dockerignore\n./trail/\n",
            ),
            ("app.txt", "a"),
            ("x.log", "a"),
            ("keep.log", "a"),
            ("sub/y.log", "a"),
            ("sub/deep/z.tmp", "a"),
            ("top.tmp", "a"),
            ("build/out", "a"),
            ("src/build/kept", "a"),
            ("node_modules/pkg/index.js", "a"),
            ("node_modules/keep/me.js", "a"),
            ("node_modules/keep/not-me.js", "a"),
            ("docs/guide/intro.md", "a"),
            ("docs/README.md", "a"),
            ("secret1.txt", "a"),
            ("secret10.txt", "a"),
            ("a.bin", "a"),
            ("c.bin", "a"),
            ("trail/x", "a"),
            ("#hash", "a"),
            ("space name.txt", "a"),
        ],
    );
    std::os::unix::fs::symlink("app.txt", dir.path().join("link")).expect("symlink");
    let ours = c.image(&format!("{}:ours", unique("parity")));
    let theirs = c.image(&format!("{}:theirs", unique("parity")));
    build(dir.path(), &["-t", &ours]).code(0);
    // The CLI's classic builder, as img-build uses (with BuildKit the CLI would not send a tar).
    let cli = Command::new("docker")
        .args(["build", "-q", "--label", LABEL, "-t", &theirs])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let (ours, theirs) = (files_in(&ours), files_in(&theirs));
    assert_eq!(ours, theirs);
    // And the cases the patterns are about, so an empty /ctx cannot pass.
    for kept in [
        "/ctx/keep.log",
        "/ctx/node_modules/keep/me.js",
        "/ctx/docs/README.md",
        "/ctx/src/build/kept",
        "/ctx/secret10.txt",
        "/ctx/c.bin",
        "/ctx/link",
        // `*.log` is rooted: unlike .gitignore, it leaves sub/y.log in.
        "/ctx/sub/y.log",
    ] {
        assert!(
            ours.iter().any(|f| f == kept),
            "{kept} missing from {ours:?}"
        );
    }
    for gone in [
        "/ctx/x.log",
        "/ctx/top.tmp",
        "/ctx/build",
        "/ctx/node_modules/keep/not-me.js",
        "/ctx/docs/guide",
        "/ctx/secret1.txt",
        "/ctx/a.bin",
        "/ctx/trail",
    ] {
        assert!(!ours.iter().any(|f| f == gone), "{gone} was sent: {ours:?}");
    }
}

#[test]
fn a_dockerfile_outside_the_context_is_sent_too() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[("app.txt", "inside\n")]);
    let outside = context(&[("build.Dockerfile", "FROM dkt/busybox:latest\nCOPY . /ctx\n")]);
    let tag = c.image(&format!("{}:v1", unique("outside")));
    build(
        dir.path(),
        &[
            "-t",
            &tag,
            "-f",
            &outside.path().join("build.Dockerfile").to_string_lossy(),
        ],
    )
    .code(0);
    let files = files_in(&tag);
    assert!(files.contains(&"/ctx/app.txt".to_string()), "{files:?}");
    assert!(
        !files.iter().any(|f| f.contains(".dockerfile.")),
        "{files:?}"
    );
}

#[test]
fn a_failing_run_fails_at_its_step_and_leaves_no_tag() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[(
        "Dockerfile",
        "FROM dkt/busybox:latest\nRUN echo about-to-fail && false\nRUN echo never\n",
    )]);
    let tag = c.image(&format!("{}:v1", unique("fail")));
    let out = build(dir.path(), &["-t", &tag]);
    out.code(1)
        .one_record()
        .stderr_has("about-to-fail")
        .stderr_has("step 2/4 (RUN echo about-to-fail && false) failed")
        .stderr_has("returned a non-zero code: 1");
    let f = out.failure_from("img-build");
    assert_eq!(f["step"], "build");
    assert_eq!(
        out.record["img-build"]["failed_step"],
        json!({"number": 2, "of": 4, "instruction": "RUN echo about-to-fail && false"})
    );
    assert!(
        docker_try(&["image", "inspect", &tag]).is_err(),
        "{tag} exists after a failed build"
    );
    // No stopped container of the failed step is left behind.
    let left = docker(&[
        "ps",
        "-a",
        "--filter",
        "status=exited",
        "--format",
        "{{.Command}}",
    ]);
    assert!(!left.contains("about-to-fail"), "{left}");
}

#[test]
fn a_copy_of_a_missing_file_fails_with_its_step() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[(
        "Dockerfile",
        "FROM dkt/busybox:latest\nCOPY missing.txt /\n",
    )]);
    let tag = c.image(&format!("{}:v1", unique("missing")));
    let out = build(dir.path(), &["-t", &tag]);
    out.code(1)
        .stderr_has("step 2/3 (COPY missing.txt /) failed");
    assert!(out.failure_from("img-build")["error"]
        .as_str()
        .unwrap()
        .contains("missing.txt"));
    assert!(docker_try(&["image", "inspect", &tag]).is_err());
}

#[test]
fn a_missing_dockerfile_or_context_is_bad_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tool("img-build")
        .arg("--context")
        .arg(dir.path())
        .args(["-t", "dkt-none:v1"])
        .run();
    out.code(2)
        .one_record()
        .stderr_has("--file: no Dockerfile at");
    assert_eq!(out.failure_from("img-build")["exit"], 2);

    let out = tool("img-build")
        .args(["--context", "/nonexistent/dkt-context", "-t", "dkt-none:v1"])
        .run();
    out.code(2)
        .stderr_has("--context: /nonexistent/dkt-context: no such directory");

    std::fs::write(dir.path().join("Dockerfile"), "FROM dkt/busybox:latest\n").expect("write");
    let out = tool("img-build")
        .arg("--context")
        .arg(dir.path())
        .args(["-t", "Bad/Name:v1"])
        .run();
    out.code(2)
        .stderr_has("--tag: 'Bad/Name:v1' is not an image reference");
}

#[test]
fn an_upstream_failure_is_passed_on() {
    let record = json!({"version": 1, "failure": {"tool": "x", "step": "s", "error": "e", "exit": 1, "at": "t"}});
    let out = tool("img-build")
        .args(["-t", "dkt-none:v1"])
        .record(&record)
        .run();
    out.code(3).one_record();
    assert!(out.record.get("img-build").is_none());
}
