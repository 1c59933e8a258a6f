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

/// Both builders: `--builder classic` and `--builder buildkit`.
const BUILDERS: [&str; 2] = ["classic", "buildkit"];

#[test]
fn builds_with_every_tag_and_records_the_image() {
    fixtures();
    for builder in BUILDERS {
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
        let out = build(
            dir.path(),
            &["-t", &first, "--tag", &second, "--builder", builder],
        );
        out.code(0).one_record();
        let r = &out.record["img-build"];
        assert_eq!(r["builder"], builder);
        assert_eq!(r["tags"], json!([first, second]));
        let id = r["image_id"].as_str().expect("image_id");
        assert!(id.starts_with("sha256:"), "{id}");
        assert!(r["size"].as_i64().expect("size") > 0);
        assert!(r["duration_ms"].as_u64().is_some());
        assert_eq!(r["labels"][LABEL.split('=').next().unwrap()], "1");
        for tag in [&first, &second] {
            assert_eq!(
                docker(&["image", "inspect", "--format", "{{.Id}}", tag]),
                id
            );
        }
        assert_eq!(docker(&["run", "--rm", &first, "cat", "/a.txt"]), "hello");
        let labels = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            &first,
        ]);
        assert!(labels.contains("io.deploykit.test"), "{labels}");
        // Compact by default: the steps, not the output of RUN.
        out.stderr_lacks("  | built-by-run")
            .stderr_has(&format!("as {first}, {second}"));
        if builder == "classic" {
            // The labels are one more step, as with `docker build --label`.
            assert_eq!(r["steps"], 4);
            out.stderr_has("builder: classic (as asked")
                .stderr_has("step 3/4: RUN echo built-by-run");
        } else {
            // BuildKit sets labels on the image config: no step.
            assert_eq!(r["steps"], 3);
            assert_eq!(r["cache_to"], "inline");
            out.stderr_has("builder: BuildKit (as asked")
                .stderr_has("3/3] RUN echo built-by-run");
        }
    }
}

#[test]
fn auto_picks_buildkit_on_this_engine_and_says_so() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[(
        "Dockerfile",
        &format!("FROM dkt/busybox:latest\nRUN echo {}\n", unique("auto")),
    )]);
    let tag = c.image(&format!("{}:v1", unique("auto")));
    let out = build(dir.path(), &["-t", &tag]);
    out.code(0).stderr_has("builder: BuildKit (auto, Engine ");
    assert_eq!(out.record["img-build"]["builder"], "buildkit");
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
        .stderr_has("visible-line")
        .stderr_has("::endgroup::");
    let group = out
        .stderr
        .split("::group::img-build: build log")
        .nth(1)
        .and_then(|g| g.split("::endgroup::").next())
        .unwrap_or_default();
    assert!(group.contains("visible-line"), "{}", out.stderr);
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
    // The docker CLI's classic builder is the reference (its BuildKit mode needs buildx,
    // which this engine's CLI lacks): both builders of img-build must see the same files —
    // the classic one through the tar, BuildKit through the session's file sync.
    let theirs = c.image(&format!("{}:theirs", unique("parity")));
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
    let theirs = files_in(&theirs);
    let mut lists = Vec::new();
    for builder in BUILDERS {
        let ours = c.image(&format!("{}:ours", unique("parity")));
        build(dir.path(), &["-t", &ours, "--builder", builder]).code(0);
        let ours = files_in(&ours);
        assert_eq!(ours, theirs, "{builder}");
        lists.push(ours);
    }
    assert_eq!(lists[0], lists[1]);
    let ours = &lists[0];
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
    for builder in BUILDERS {
        let mut c = Cleanup::new();
        let dir = context(&[("app.txt", "inside\n")]);
        let outside = context(&[("build.Dockerfile", "FROM dkt/busybox:latest\nCOPY . /ctx\n")]);
        let tag = c.image(&format!("{}:v1", unique("outside")));
        build(
            dir.path(),
            &[
                "-t",
                &tag,
                "--builder",
                builder,
                "-f",
                &outside.path().join("build.Dockerfile").to_string_lossy(),
            ],
        )
        .code(0);
        let files = files_in(&tag);
        assert!(files.contains(&"/ctx/app.txt".to_string()), "{files:?}");
        assert!(
            !files.iter().any(|f| f.contains(".dockerfile.")),
            "{builder}: {files:?}"
        );
    }
}

#[test]
fn a_copy_of_some_paths_gets_them_whole() {
    fixtures();
    // BuildKit asks only for a COPY's sources (and what is under them): each builder must
    // still copy them whole, and nothing else.
    for builder in BUILDERS {
        let mut c = Cleanup::new();
        let dir = context(&[
            (
                "Dockerfile",
                "FROM dkt/busybox:latest\nCOPY src/ /app/src/\nCOPY *.cfg /app/\n",
            ),
            ("src/main.txt", "main"),
            ("src/deep/lib.txt", "lib"),
            ("a.cfg", "a"),
            ("other/x.txt", "x"),
            ("b.txt", "b"),
        ]);
        let tag = c.image(&format!("{}:v1", unique("paths")));
        build(dir.path(), &["-t", &tag, "--builder", builder]).code(0);
        let mut files: Vec<String> = docker(&["run", "--rm", &tag, "find", "/app"])
            .lines()
            .map(str::to_string)
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "/app",
                "/app/a.cfg",
                "/app/src",
                "/app/src/deep",
                "/app/src/deep/lib.txt",
                "/app/src/main.txt"
            ],
            "{builder}"
        );
    }
}

#[test]
fn a_failing_run_fails_at_its_step_and_leaves_no_tag() {
    fixtures();
    for builder in BUILDERS {
        let mut c = Cleanup::new();
        let marker = unique("about-to-fail");
        let dir = context(&[(
            "Dockerfile",
            &format!("FROM dkt/busybox:latest\nRUN echo {marker} && false\nRUN echo never\n"),
        )]);
        let tag = c.image(&format!("{}:v1", unique("fail")));
        let out = build(dir.path(), &["-t", &tag, "--builder", builder]);
        out.code(1).one_record().stderr_has(&marker);
        let f = out.failure_from("img-build");
        assert_eq!(f["step"], "build");
        let instruction = format!("RUN echo {marker} && false");
        if builder == "classic" {
            out.stderr_has(&format!("step 2/4 ({instruction}) failed"))
                .stderr_has("returned a non-zero code: 1");
            assert_eq!(
                out.record["img-build"]["failed_step"],
                json!({"number": 2, "of": 4, "instruction": instruction})
            );
        } else {
            out.stderr_has(&format!("({instruction}) failed: executor failed running"))
                .stderr_has("exit code: 1");
            let step = &out.record["img-build"]["failed_step"];
            assert_eq!(
                (&step["number"], &step["of"], &step["instruction"]),
                (&json!(2), &json!(3), &json!(instruction))
            );
        }
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
        assert!(!left.contains(&marker), "{left}");
    }
}

#[test]
fn a_copy_of_a_missing_file_fails_with_its_step() {
    fixtures();
    for builder in BUILDERS {
        let mut c = Cleanup::new();
        let dir = context(&[(
            "Dockerfile",
            "FROM dkt/busybox:latest\nCOPY missing.txt /\n",
        )]);
        let tag = c.image(&format!("{}:v1", unique("missing")));
        let out = build(dir.path(), &["-t", &tag, "--builder", builder]);
        out.code(1);
        if builder == "classic" {
            out.stderr_has("step 2/3 (COPY missing.txt /) failed");
        } else {
            out.stderr_has("(COPY missing.txt /) failed");
        }
        assert!(out.failure_from("img-build")["error"]
            .as_str()
            .unwrap()
            .contains("missing.txt"));
        assert!(docker_try(&["image", "inspect", &tag]).is_err());
    }
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

/// Every byte of an image as `docker save` writes it: its config and every layer, uncompressed.
fn saved(image: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("image.tar");
    docker(&["save", "-o", &path.to_string_lossy(), image]);
    fs::read(&path).expect("read the saved image")
}

fn holds(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn sha256(text: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v");
    fs::write(&path, text).expect("write");
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn a_secret_reaches_its_run_step_and_no_layer() {
    fixtures();
    let mut c = Cleanup::new();
    let u = unique("secret");
    let (from_file, from_env) = (format!("{u}-file-s3cr3t"), format!("{u}-env-s3cr3t"));
    let secret_dir = tempfile::tempdir().expect("temp dir");
    let secret_file = secret_dir.path().join("token");
    fs::write(&secret_file, &from_file).expect("write the secret");
    // The step proves it read both secrets by their hashes; the Dockerfile never holds them.
    let dir = context(&[
        (
            "Dockerfile",
            "FROM dkt/busybox:latest\nCOPY marker.txt /marker.txt\n\
             RUN --mount=type=secret,id=tok --mount=type=secret,id=env_tok \
             sha256sum /run/secrets/tok /run/secrets/env_tok | cut -c1-64 > /hashes\n",
        ),
        ("marker.txt", &format!("{u}-visible-marker")),
    ]);
    let tag = c.image(&format!("{u}:v1"));
    let out = tool("img-build")
        .arg("--context")
        .arg(dir.path())
        .args(["--label", LABEL, "-t", &tag, "-v"])
        .arg("--secret")
        .arg(format!("id=tok,src={}", secret_file.display()))
        .args(["--secret", "id=env_tok,env=DKT_TEST_BUILD_TOKEN"])
        .env("DKT_TEST_BUILD_TOKEN", &from_env)
        .run();
    out.code(0).one_record();
    assert_eq!(
        docker(&["run", "--rm", &tag, "cat", "/hashes"]),
        format!("{}\n{}", sha256(&from_file), sha256(&from_env))
    );
    let image = saved(&tag);
    assert!(
        holds(&image, &format!("{u}-visible-marker")),
        "the search cannot find what a layer holds"
    );
    for secret in [&from_file, &from_env] {
        assert!(
            !holds(&image, secret),
            "a layer or the config holds {secret}"
        );
        assert!(!out.stdout.contains(secret.as_str()));
        out.stderr_lacks(secret);
    }
    // The second build reuses the step, as BuildKit does: the secret is not in its key.
    let again = tool("img-build")
        .arg("--context")
        .arg(dir.path())
        .args(["--label", LABEL, "-t", &tag])
        .arg("--secret")
        .arg(format!("id=tok,src={}", secret_file.display()))
        .args(["--secret", "id=env_tok,env=DKT_TEST_BUILD_TOKEN"])
        .env("DKT_TEST_BUILD_TOKEN", &from_env)
        .run();
    again.code(0);
    assert_eq!(again.record["img-build"]["cached_steps"], 2);
}

#[test]
fn a_cache_mount_keeps_what_the_first_build_wrote() {
    fixtures();
    let mut c = Cleanup::new();
    let u = unique("cachemount");
    // Cold, the step "downloads" for 5 s and fills the cache; warm, it finds the cache.
    let dir = context(&[(
        "Dockerfile",
        &format!(
            "FROM dkt/busybox:latest\nARG RUN_N\n\
             RUN --mount=type=cache,id={u},target=/deps \
             if [ -f /deps/stamp ]; then echo \"reused $(cat /deps/stamp) in run $RUN_N\" > /seen; \
             else sleep 5 && echo {u}-run-$RUN_N > /deps/stamp && echo filled > /seen; fi\n"
        ),
    )]);
    let tag = c.image(&format!("{u}:v1"));
    let first = build(dir.path(), &["-t", &tag, "--build-arg", "RUN_N=1"]);
    first.code(0);
    assert_eq!(docker(&["run", "--rm", &tag, "cat", "/seen"]), "filled");
    // A new build-arg value: the step runs again (it is not layer-cached) and finds the cache.
    let second = build(dir.path(), &["-t", &tag, "--build-arg", "RUN_N=2"]);
    second.code(0);
    assert_eq!(
        docker(&["run", "--rm", &tag, "cat", "/seen"]),
        format!("reused {u}-run-1 in run 2")
    );
    assert_eq!(second.record["img-build"]["cached_steps"], 0);
    let ms = |o: &testkit::Out| o.record["img-build"]["duration_ms"].as_u64().unwrap();
    assert!(
        ms(&second) < ms(&first),
        "the warm step took {} ms, the cold one {} ms",
        ms(&second),
        ms(&first)
    );
}

#[test]
fn a_multi_stage_build_runs_its_stages_and_honours_target() {
    fixtures();
    let mut c = Cleanup::new();
    let u = unique("stages");
    let dir = context(&[(
        "Dockerfile",
        &format!(
            "FROM dkt/busybox:latest AS deps\nRUN echo deps-{u} > /deps.txt\n\
             FROM dkt/busybox:latest AS tools\nRUN echo tools-{u} > /tools.txt\n\
             FROM dkt/busybox:latest\nCOPY --from=deps /deps.txt /deps.txt\n\
             COPY --from=tools /tools.txt /tools.txt\n"
        ),
    )]);
    let tag = c.image(&format!("{u}:all"));
    let out = build(dir.path(), &["-t", &tag]);
    out.code(0)
        .stderr_has("[deps 2/2] RUN echo deps-")
        .stderr_has("[tools 2/2] RUN echo tools-")
        .stderr_has("[stage-2 3/3] COPY --from=tools /tools.txt /tools.txt");
    // BuildKit runs the three FROMs of one image as one vertex.
    assert_eq!(out.record["img-build"]["steps"], 5);
    assert_eq!(
        docker(&["run", "--rm", &tag, "cat", "/deps.txt", "/tools.txt"]),
        format!("deps-{u}\ntools-{u}")
    );
    let target = c.image(&format!("{u}:tools"));
    let out = build(dir.path(), &["-t", &target, "--target", "tools"]);
    out.code(0).stderr_lacks("[deps ");
    assert_eq!(out.record["img-build"]["steps"], 2);
    assert_eq!(
        docker(&["run", "--rm", &target, "cat", "/tools.txt"]),
        format!("tools-{u}")
    );
}

#[test]
fn a_heredoc_is_refused_with_the_reason() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[(
        "Dockerfile",
        &format!(
            "FROM dkt/busybox:latest\nRUN <<EOF\necho {}\nEOF\n",
            unique("heredoc")
        ),
    )]);
    let tag = c.image(&format!("{}:v1", unique("heredoc")));
    let out = build(dir.path(), &["-t", &tag]);
    out.code(1)
        .one_record()
        .stderr_has("uses a heredoc (`RUN <<EOF`), which this engine's built-in Dockerfile frontend does not know")
        .stderr_has("join the commands with && on one RUN line");
    assert!(docker_try(&["image", "inspect", &tag]).is_err());
}

#[test]
fn the_image_carries_its_cache_inline_unless_told_not_to() {
    fixtures();
    let mut c = Cleanup::new();
    let dir = context(&[(
        "Dockerfile",
        &format!("FROM dkt/busybox:latest\nRUN echo {}\n", unique("inline")),
    )]);
    let with = c.image(&format!("{}:with", unique("inline")));
    let out = build(dir.path(), &["-t", &with]);
    out.code(0);
    assert_eq!(out.record["img-build"]["cache_to"], "inline");
    assert!(holds(&saved(&with), "moby.buildkit.cache.v0"));
    let without = c.image(&format!("{}:without", unique("inline")));
    let out = build(dir.path(), &["-t", &without, "--cache-to", "none"]);
    out.code(0);
    assert!(out.record["img-build"].get("cache_to").is_none());
    assert!(!holds(&saved(&without), "moby.buildkit.cache.v0"));
}

#[test]
fn an_unreachable_cache_from_is_a_warning_and_a_cold_build() {
    fixtures();
    let mut c = Cleanup::new();
    let registry = c.registry(None);
    c.stop_registries();
    let dir = context(&[(
        "Dockerfile",
        &format!(
            "FROM dkt/busybox:latest\nRUN echo {}\n",
            unique("coldcache")
        ),
    )]);
    let tag = c.image(&format!("{}:v1", unique("coldcache")));
    let from = format!("{registry}/dkt-gone:latest");
    let out = build(dir.path(), &["-t", &tag, "--cache-from", &from]);
    out.code(0)
        .stderr_has(&format!("warning: --cache-from {from}: cannot be read ("))
        .stderr_has("building without it");
    assert_eq!(out.record["img-build"]["cached_steps"], 0);
    assert!(docker_try(&["image", "inspect", &tag]).is_ok());
}

#[test]
fn bad_secret_and_cache_flags_are_bad_input_and_build_nothing() {
    let dir = context(&[("Dockerfile", "FROM dkt/busybox:latest\n")]);
    let tag = unique("badflags");
    for (args, says) in [
        (
            vec!["--secret", "id=tok,path=/etc/hostname"],
            "--secret: unknown key 'path' in 'id=tok,path=/etc/hostname' (give id=NAME,src=FILE or id=NAME,env=VAR)",
        ),
        (
            vec!["--secret", "id=tok,src=/nonexistent/dkt-token"],
            "--secret: id=tok: /nonexistent/dkt-token: no such file",
        ),
        (
            vec!["--secret", "id=tok,env=DKT_SURELY_UNSET_TOKEN"],
            "--secret: id=tok: the environment variable DKT_SURELY_UNSET_TOKEN is not set",
        ),
        (
            vec!["--builder", "classic", "--secret", "id=tok,src=/etc/hostname"],
            "--secret: the classic builder cannot mount secrets",
        ),
        (
            vec!["--cache-to", "type=registry,ref=x"],
            "--cache-to: 'registry': the engine's builder exports the cache inline only",
        ),
        (vec!["--cache-mode", "max"], "--cache-mode: max needs a registry or local cache exporter"),
        (vec!["--cache-from", "Bad/Ref"], "--cache-from: 'Bad/Ref' is not an image reference"),
        (
            vec!["--platform", "linux/amd64,linux/arm64"],
            "--platform: 'linux/amd64,linux/arm64': give one platform",
        ),
    ] {
        let out = tool("img-build")
            .arg("--context")
            .arg(dir.path())
            .args(["-t", &format!("{tag}:v1")])
            .args(&args)
            .run();
        out.code(2).one_record().stderr_has(says);
        assert_eq!(out.failure_from("img-build")["step"], "input");
    }
    assert!(docker_try(&["image", "inspect", &format!("{tag}:v1")]).is_err());
}
