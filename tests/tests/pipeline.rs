//! The tools piped together as a user types them: a failure upstream flows down the pipe,
//! every tool after it passes the record on without acting, notify tells, and the pipe ends red.

use testkit::{fixtures, shell, unique, Cleanup};

#[test]
fn a_failed_build_flows_through_push_and_swap_to_notify_and_the_pipe_ends_red() {
    fixtures();
    let mut clean = Cleanup::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM dkt/busybox:latest\nRUN echo compiling && exit 7\n",
    )
    .unwrap();
    let tag = clean.image(&format!("dkt/pipeline:{}", unique("tag")));
    let service = clean.container(&unique("pipeline-svc"));
    let out = shell(&format!(
        "img-build --context {} --tag {tag} | img-push | swap --service {service} | notify",
        ctx.path().display()
    ));
    assert_ne!(
        out.status,
        Some(0),
        "the pipe must end red:\n{}",
        out.stderr
    );
    out.one_record();
    let failure = out.failure_from("img-build");
    assert!(
        failure["error"].as_str().unwrap().contains("RUN"),
        "{failure}"
    );
    assert_eq!(
        out.steps(),
        [
            "img-build failed",
            "img-push skipped",
            "swap skipped",
            "notify ok"
        ]
    );
    out.stderr_has("img-push: not run: img-build failed")
        .stderr_has("swap: not run: img-build failed")
        .stderr_has("FAILED");
    // Nothing half-done: no tag claims success, no container was made.
    assert!(testkit::docker_try(&["image", "inspect", &tag]).is_err());
    assert_eq!(
        testkit::docker(&["ps", "-aq", "--filter", &format!("name=^/{service}")]),
        ""
    );
}

/// An image of its own (a distinct id) tagged `tag`: the app fixture plus `extra` lines.
fn app_image(clean: &mut Cleanup, tag: &str, extra: &str) -> String {
    let label = format!("LABEL io.deploykit.test.tag={tag}");
    testkit::build_image(clean, tag, &format!("FROM dkt/app:v1\n{label}\n{extra}\n"))
}

#[test]
fn just_deploy_swaps_cleans_old_images_and_rolls_back_a_broken_release() {
    fixtures();
    let mut clean = Cleanup::new();
    let net = clean.network();
    let repo = unique("deploy");
    let tag = |t: &str| format!("{repo}/app:{t}");
    let v1 = app_image(&mut clean, &tag("v1"), "");
    let v2 = app_image(&mut clean, &tag("v2"), "");
    let stale = app_image(&mut clean, &tag("stale"), "");
    let backend = clean.container(&unique("backend"));
    testkit::run_container(&backend, &net, &[&tag("v1")]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        "services:\n  backend: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".env.production"),
        "SECRET_KEY=s3cr3t-deploy-value\n",
    )
    .unwrap();
    let hook = testkit::StubServer::start(|_| Some((200, "text/plain", "ok".into())));
    // `just RECIPE` in the deploy directory, configured by the environment as on a server.
    let just = |recipe: &str, env: &str| {
        shell(&format!(
            "cd {dir} && BACKEND={backend} SWAP_STRATEGY=recreate SWAP_KEEP=0 \
             SWAP_HEALTH_PATH=/health SWAP_HEALTH_TIMEOUT=3s RESTORE_HEALTH_PATH=/health \
             RESTORE_STRATEGY=recreate DEPLOY_STATE={dir}/state {env} \
             just --justfile {root}/justfile --working-directory {dir} {recipe}",
            dir = dir.path().display(),
            root = testkit::root().display(),
        ))
    };
    let deploy = |image: &str| just("deploy", &format!("SWAP_IMAGE={image}"));
    let serving = || testkit::docker(&["inspect", "-f", "{{.Image}}", &backend]);

    // v2: swapped in, healthy, and the stale image is gone; v1 stays: no container runs it
    // any more (SWAP_KEEP=0), but the deploy's snapshot did.
    let out = deploy(&tag("v2"));
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let before_v2 = out.record["snapshot"]["id"].as_str().unwrap().to_string();
    out.one_record();
    assert_eq!(
        out.steps(),
        [
            "snapshot ok",
            "swap ok",
            "healthwait ok",
            "snapshot ok",
            "restore ok",
            "notify ok"
        ]
    );
    assert_eq!(serving(), v2);
    let prune = &out.record["snapshot"]["prune"];
    assert_eq!(prune["removed"][0]["id"], stale.as_str(), "{prune}");
    assert_eq!(prune["removed"].as_array().unwrap().len(), 1, "{prune}");
    let kept: Vec<(&str, &str)> = prune["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["why"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kept,
        [(v1.as_str(), "snapshot"), (v2.as_str(), "container")]
    );
    assert!(testkit::docker_try(&["image", "inspect", &tag("stale")]).is_err());
    assert_eq!(
        testkit::docker(&["image", "inspect", "-f", "{{.Id}}", &tag("v1")]),
        v1
    );
    assert!(!out.stdout.contains("s3cr3t") && !out.stderr.contains("s3cr3t"));
    // Every stage's record is kept for inspection and re-notifying.
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1);
    let mut stages: Vec<String> = std::fs::read_dir(runs[0].path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    stages.sort();
    assert_eq!(
        stages,
        [
            "00-input.json",
            "01-snapshot.json",
            "02-swap-backend.json",
            "03-health.json",
            "06-clean-images.json",
            "07-restore.json",
            "08-notify.json"
        ]
    );

    // broken: swap refuses it, nothing is cleaned, restore acts, the recipe ends red, v2 serves.
    app_image(&mut clean, &tag("broken"), "ENV NEVER_HEALTHY=1");
    let out = deploy(&tag("broken"));
    assert_ne!(out.status, Some(0), "a failed deploy must end red");
    out.one_record();
    assert_eq!(
        out.steps(),
        [
            "snapshot ok",
            "swap failed",
            "healthwait skipped",
            "snapshot skipped",
            "restore failed",
            "notify ok"
        ]
    );
    assert_eq!(out.failure_from("swap")["step"], "health");
    assert_eq!(out.record["restore"]["restored"], true);
    let snapshots = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .flatten();
    let snapshots = snapshots
        .filter(|e| e.file_type().unwrap().is_dir())
        .count();
    assert_eq!(
        snapshots, 2,
        "one snapshot per deploy, in the deploy directory"
    );
    assert_eq!(serving(), v2);
    assert!(testkit::docker_try(&["image", "inspect", &tag("broken")]).is_ok());
    out.stderr_has("FAILED");

    // `just renotify` sends the last deploy's record again, to a channel fixed since.
    let again = just(
        "renotify",
        &format!("NOTIFY_URLS=json://{}/hook", hook.addr),
    );
    assert_eq!(again.status, Some(0), "{}", again.stderr);
    let sent: testkit::Value = serde_json::from_str(&hook.requests()[0].body).unwrap();
    assert_eq!(sent["outcome"], "failed", "{sent}");
    assert_eq!(sent["failure"]["tool"], "swap");

    // `just rollback ID` goes back to the snapshot taken before v2: v1 serves again.
    let rollback = just("rollback", "");
    assert_eq!(rollback.status, Some(0), "{}", rollback.stderr);
    assert_eq!(
        serving(),
        v2,
        "the latest snapshot is the one before the broken release"
    );
    let rollback = just(&format!("rollback {before_v2}"), "");
    assert_eq!(rollback.status, Some(0), "{}", rollback.stderr);
    assert_eq!(serving(), v1);
    rollback.stderr_has("rolled back");
}

#[test]
fn just_build_and_push_ship_the_commit_to_the_registry() {
    fixtures();
    let mut clean = Cleanup::new();
    let registry = clean.registry(None);
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("Dockerfile"),
        "FROM dkt/busybox:latest\nCOPY hello.txt /\n",
    )
    .unwrap();
    std::fs::write(app.path().join("hello.txt"), "hi\n").unwrap();
    let image = unique("shop");
    let out = shell(&format!(
        "cd {dir} && git init -q && git add . && \
         git -c user.name=t -c user.email=t@example.com commit -qm init && \
         export REGISTRY={registry} IMAGE={image} DEPLOY_STATE={dir}/.state && \
         just --justfile {root}/justfile --working-directory {dir} build && \
         just --justfile {root}/justfile --working-directory {dir} push && \
         git rev-parse --short=12 HEAD",
        dir = app.path().display(),
        root = testkit::root().display(),
    ));
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let commit = out.stdout.trim().to_string();
    let tag = clean.image(&format!("{registry}/{image}:{commit}"));
    let pushed: testkit::Value =
        serde_json::from_slice(&std::fs::read(app.path().join(".state/push.json")).unwrap())
            .unwrap();
    assert_eq!(pushed["img-push"]["pushed"][0]["tag"], tag.as_str());
    assert_eq!(
        out.record,
        testkit::Value::Null,
        "the recipes keep the records in files"
    );
    let (status, _, body) = testkit::http_get(
        &format!("http://{registry}/v2/{image}/tags/list"),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let tags: testkit::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tags["tags"], testkit::json!([commit]));
}

/// GETs `url` in a loop until stopped: how many answered 200, how many did not, and the
/// bodies seen (the versions).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>, std::collections::BTreeSet<String>)>,
}

impl Load {
    fn start(url: String) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failed, mut seen) = (0, Vec::new(), std::collections::BTreeSet::new());
            while !flag.load(Ordering::SeqCst) {
                match testkit::http_get(&url, std::time::Duration::from_secs(2)) {
                    Ok((200, _, body)) => {
                        ok += 1;
                        seen.insert(body.trim().to_string());
                    }
                    Ok((status, _, body)) => failed.push(format!("{status} {body}")),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed, seen)
        });
        Load { stop, thread }
    }

    fn stop(self) -> (usize, Vec<String>, std::collections::BTreeSet<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

#[test]
fn just_deploy_of_two_services_rolls_both_back_the_way_each_moved_with_no_failed_request() {
    fixtures();
    let mut clean = Cleanup::new();
    let net = clean.network();
    let backend = clean.container(&unique("backend"));
    let front = clean.container(&unique("front"));
    let edge = clean.container(&unique("edge"));
    testkit::run_container(&backend, &net, &["dkt/app:v1"]);
    testkit::run_container(&front, &net, &["dkt/app:v1"]);
    let v1 = testkit::docker(&["image", "inspect", "-f", "{{.Id}}", "dkt/app:v1"]);

    // The edge nginx owns the traffic; the frontend is swapped behind it.
    let dir = tempfile::tempdir().unwrap();
    let upstream = testkit::nginx_proxy(
        &edge,
        &net,
        &dir.path().join("edge"),
        &front,
        &format!("{}:8000", testkit::ip_of(&front, &net)),
        &[],
    );
    let url = format!("http://{}:80/version", testkit::ip_of(&edge, &net));
    assert!(testkit::eventually(
        std::time::Duration::from_secs(10),
        || { testkit::http_get(&url, std::time::Duration::from_secs(1)).is_ok_and(|r| r.0 == 200) }
    ));
    std::fs::write(dir.path().join("docker-compose.yml"), "services: {}\n").unwrap();

    // The deploy's settings, in the deploy directory's .env as on a server (examples/deploy.env).
    // RESTORE_STRATEGY=alias is wrong for both services: the record knows better, and wins.
    // SWAP_CONTAINER is the backend's: it must not make the frontend's swap replace it.
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "BACKEND={backend}\nSWAP_STRATEGY=recreate\nSWAP_HEALTH_PATH=/health\n\
             SWAP_DRAIN=300ms\nRESTORE_HEALTH_PATH=/health\nRESTORE_STRATEGY=alias\n\
             FRONTEND={front}\nFRONTEND_STRATEGY=nginx\nFRONTEND_UPSTREAM_FILE={}\n\
             FRONTEND_NGINX_CONTAINER={edge}\nFRONTEND_HEALTH_PATH=/health\n\
             SWAP_CONTAINER={backend}\nAPP_URL=http://127.0.0.1:9/health\n\
             HEALTHWAIT_TIMEOUT=2s\nDEPLOY_STATE={}/state\n",
            upstream.display(),
            dir.path().display()
        ),
    )
    .unwrap();

    // Both swaps succeed, then the final check fails: restore must move each service back
    // the way swap moved it (recreate, nginx behind the edge).
    let load = Load::start(url.clone());
    let out = shell(&format!(
        "cd {dir} && SWAP_IMAGE=dkt/app:v2 FRONTEND_IMAGE=dkt/app:v3 \
         just --justfile {root}/justfile --working-directory {dir} deploy",
        dir = dir.path().display(),
        root = testkit::root().display(),
    ));
    // Let the edge serve a moment after the rollback too.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, failed, seen) = load.stop();

    assert_ne!(
        out.status,
        Some(0),
        "a failed final check ends red:\n{}",
        out.stderr
    );
    out.one_record();
    assert_eq!(
        out.steps(),
        [
            "snapshot ok",
            "swap ok",
            "healthwait ok",
            "swap ok",
            "healthwait failed",
            "snapshot skipped",
            "restore failed",
            "notify ok"
        ],
        "{}",
        out.stderr
    );
    assert_eq!(
        out.record["swap"]["earlier"][0]["service"],
        backend.as_str()
    );
    let restored: Vec<(&str, &str, &str)> = out.record["restore"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["service"].as_str().unwrap(),
                c["action"].as_str().unwrap(),
                c["strategy"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        restored,
        [
            (backend.as_str(), "recreated", "recreate"),
            (front.as_str(), "recreated", "nginx")
        ]
    );
    let image_of = |c: &str| testkit::docker(&["inspect", "-f", "{{.Image}}", c]);
    assert_eq!(image_of(&backend), v1);
    assert_eq!(image_of(&front), v1);
    assert_eq!(
        testkit::http_get(&url, std::time::Duration::from_secs(2))
            .unwrap()
            .2
            .trim(),
        "v1"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(seen.contains("v1") && seen.contains("v3"), "{seen:?}");
}
