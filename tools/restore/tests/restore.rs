//! restore, run as a user would: real snapshots taken by the real `snapshot`, the real Docker
//! Engine with the fixture app images on a network each test creates, a real registry for
//! pulling an image back, and the tools piped together the way a deploy runs them.

#[path = "../../snapshot/tests/deploy/mod.rs"]
mod deploy;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deploy::{image_of, run_app, Deploy};
use testkit::{
    docker, docker_try, eventually, fixtures, http_get, json, shell, tool, unique, Cleanup, Value,
};

/// The service container `name` replaced by one running `image` (a deploy done by hand).
fn redeploy(name: &str, net: &str, image: &str) {
    docker(&["rm", "-f", name]);
    deploy::run_named(name, net, image, &[]);
}

/// A deploy directory, and a service container running dkt/app:v1 on a fresh network:
/// (deploy, cleanup, network, service container).
fn site() -> (Deploy, Cleanup, String, String) {
    fixtures();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network();
    let svc = run_app(&mut cleanup, &net, "dkt/app:v1", &[]);
    (Deploy::new(), cleanup, net, svc)
}

/// A snapshot id from a snapshot run's record.
fn id_of(out: &testkit::Out) -> String {
    out.code(0);
    out.record["snapshot"]["id"].as_str().unwrap().to_string()
}

/// A failure as an upstream tool records it.
fn failed(snapshot: &testkit::Out) -> Value {
    json!({
        "version": 1,
        "snapshot": snapshot.record["snapshot"],
        "failure": {"tool": "swap", "step": "health", "error": "never healthy", "exit": 1,
                    "at": "2026-01-01T00:00:00Z"},
    })
}

/// A new image (its own id) made from dkt/app:v1, tagged `reference`.
fn unique_image(cleanup: &mut Cleanup, net: &str, reference: &str) {
    let base = run_app(cleanup, net, "dkt/app:v1", &[]);
    cleanup.image(reference);
    let id = docker(&[
        "commit",
        "-c",
        &format!("LABEL dkt.unique={}", unique("img")),
        &base,
        reference,
    ]);
    // By id too: a test that removes the tag and pulls the image back by digest leaves it
    // without the tag.
    cleanup.image(&id);
    docker(&["rm", "-f", &base]);
}

#[test]
fn round_trip_brings_back_files_modes_and_containers_on_their_image_ids() {
    let (d, _cleanup, net, svc) = site();
    d.write(
        "nginx/conf.d/app.conf",
        b"upstream backend { server app:8000; }\n",
        0o640,
    );
    d.write("deploy.sh", b"#!/bin/sh\necho deploy\n", 0o755);
    let v1 = image_of(&svc);
    let before = d.state();

    let snap = d.snapshot(&[
        "--service",
        &svc,
        "--file",
        "docker-compose.yml,.env.production,nginx,deploy.sh",
    ]);
    let id = id_of(&snap);

    // The deploy: new files, other modes, a file gone, the container on v2.
    d.write(
        "docker-compose.yml",
        b"services: {backend: {image: dkt/app:v2}}\n",
        0o600,
    );
    d.write(".env.production", b"DATABASE_URL=postgres://new\n", 0o644);
    std::fs::remove_file(d.path("nginx/conf.d/app.conf")).unwrap();
    std::fs::set_permissions(d.path("deploy.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
    redeploy(&svc, &net, "dkt/app:v2");
    assert_ne!(image_of(&svc), v1);

    let out = d.restore(&["--latest", "--strategy", "alias", "--drain", "200ms"]);
    out.code(0)
        .one_record()
        .stderr_has(&format!("restored {id}"));
    assert_eq!(d.state(), before, "files byte-identical, with their modes");
    assert_eq!(
        image_of(&svc),
        v1,
        "the container runs the recorded image again"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &svc]),
        "healthy"
    );

    let r = &out.record["restore"];
    assert_eq!(r["restored"], true);
    assert_eq!(r["snapshot"]["id"], id.as_str());
    assert_eq!(
        r["dir"],
        d.dir.canonicalize().unwrap().display().to_string()
    );
    assert_eq!(r["files_restored"], 4);
    let actions: Vec<(&str, &str)> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            (".env.production", "restored"),
            ("deploy.sh", "restored"),
            ("docker-compose.yml", "restored"),
            ("nginx/conf.d/app.conf", "created"),
        ]
    );
    assert_eq!(r["containers_recreated"], 1);
    let c = &r["containers"][0];
    assert_eq!(c["name"], svc.as_str());
    assert_eq!(c["action"], "recreated");
    assert_eq!(c["image_id"], v1.as_str());
    assert_eq!(c["strategy"], "alias");
    assert_eq!(c["health"]["healthy"], true);
    assert_eq!(r["healthy"], true);
    assert!(!out.stdout.contains("APP_SECRET_SETTING"));

    // Restoring again changes nothing: the files are already the snapshot's.
    let again = d.restore(&["--id", &id, "--no-containers"]);
    again.code(0);
    assert_eq!(again.record["restore"]["files_restored"], 0);
}

#[test]
fn a_failed_swap_is_rolled_back_in_the_same_pipe() {
    let (d, _cleanup, _, svc) = site();
    let v1 = image_of(&svc);
    let before = d.state();

    // The deploy writes its new .env once the snapshot is taken, then swaps to a version that
    // never turns healthy.
    let out = shell(&format!(
        "cd {dir} && snapshot --service {svc} </dev/null \
         | {{ r=$(cat); printf 'DATABASE_URL=postgres://new\\n' > .env.production; \
              printf '%s\\n' \"$r\"; }} \
         | swap --service {svc} --image dkt/app:v2 --strategy alias -e NEVER_HEALTHY=1 \
                --health-timeout 3s \
         | restore",
        dir = d.dir.display()
    ));
    deploy::no_secret(&out);
    out.code(1)
        .one_record()
        .stderr_has("rolling back: swap failed");
    out.failure_from("swap");
    let r = &out.record["restore"];
    assert_eq!(r["restored"], true);
    assert_eq!(r["files_restored"], 1);
    assert_eq!(r["files"][0]["path"], ".env.production");
    // swap left the old container serving: nothing to recreate.
    assert_eq!(r["containers"][0]["action"], "unchanged");
    assert_eq!(r["containers_recreated"], 0);
    assert_eq!(d.state(), before);
    assert_eq!(image_of(&svc), v1);
    assert_eq!(
        out.steps(),
        ["snapshot ok", "swap failed", "restore failed"]
    );
}

#[test]
fn a_failed_check_after_a_good_swap_moves_traffic_back_the_way_swap_moved_it() {
    let (d, _cleanup, _, svc) = site();
    let v1 = image_of(&svc);

    // swap succeeds, the check after it fails; restore reads swap's strategy from the record.
    let out = shell(&format!(
        "cd {dir} && snapshot --service {svc} </dev/null \
         | swap --service {svc} --image dkt/app:v2 --strategy alias --drain 200ms \
         | healthwait --url http://127.0.0.1:9/health --timeout 500ms \
         | restore --drain 200ms",
        dir = d.dir.display()
    ));
    out.code(1).one_record();
    out.failure_from("healthwait");
    assert_eq!(out.record["swap"]["strategy"], "alias");
    let c = &out.record["restore"]["containers"][0];
    assert_eq!(c["action"], "recreated");
    assert_eq!(c["strategy"], "alias");
    assert_eq!(out.record["restore"]["healthy"], true);
    assert_eq!(image_of(&svc), v1);
}

/// The IP of a container on a network.
#[test]
fn behind_nginx_the_rollback_drops_no_request() {
    let (d, mut cleanup, net, svc) = site();
    let nginx = cleanup.container(&unique("nginx"));
    let upstream = testkit::nginx_proxy(
        &nginx,
        &net,
        &d.path("nginx-conf"),
        "backend",
        &format!("{}:8000", testkit::ip_of(&svc, &net)),
        &["-e", "APP_SECRET_SETTING=hunter2-Sentinel-7f3e"],
    );
    let url = format!("http://{}:80/version", testkit::ip_of(&nginx, &net));
    let version = move || {
        http_get(&url, Duration::from_secs(2))
            .ok()
            .filter(|r| r.0 == 200)
            .map(|r| r.2.trim().to_string())
    };
    assert!(eventually(Duration::from_secs(10), || version().is_some()));
    let v1 = version().unwrap();

    // Requests through nginx all along, from the deploy to the end of the rollback.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, version) = (stop.clone(), version.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut failed = 0;
            while !stop.load(Ordering::SeqCst) {
                match version() {
                    Some(v) => seen.push(v),
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (seen, failed)
        })
    };
    let locks = d.path("locks");
    let out = shell(&format!(
        "cd {dir} && snapshot --service {svc} </dev/null \
         | swap --service {svc} --image dkt/app:v2 --upstream-file {upstream} \
                --upstream backend --nginx-container {nginx} --health-path /health \
                --lock-dir {locks} \
         | healthwait --url http://127.0.0.1:9/health --timeout 300ms \
         | restore --lock-dir {locks}",
        dir = d.dir.display(),
        upstream = upstream.display(),
        locks = locks.display(),
    ));
    stop.store(true, Ordering::SeqCst);
    let (seen, failed) = prober.join().unwrap();
    out.code(1).one_record();
    out.failure_from("healthwait");
    let c = &out.record["restore"]["containers"][0];
    assert_eq!(
        c["strategy"], "nginx",
        "the strategy swap used, from the record"
    );
    assert_eq!(c["action"], "recreated");
    assert_eq!(
        failed, 0,
        "requests failed during the deploy and the rollback"
    );
    assert!(seen.iter().any(|v| *v != v1), "v2 never served: {seen:?}");
    assert_eq!(seen.last(), Some(&v1));
    assert_eq!(version().as_deref(), Some(v1.as_str()));
    assert!(std::fs::read_to_string(&upstream)
        .unwrap()
        .contains(&format!("server {}:8000;", testkit::ip_of(&svc, &net))));

    // Settings name this service's upstream; a restore of another service by hand must not
    // point it there: refused, nothing changed, the site still serves.
    let other = run_app(&mut cleanup, &net, "dkt/app:v1", &[]);
    d.snapshot(&["--service", &other]).code(0);
    redeploy(&other, &net, "dkt/app:v2");
    let before = std::fs::read_to_string(&upstream).unwrap();
    let out = tool("restore")
        .args(["--dir", &d.dir.display().to_string(), "--latest"])
        .args([
            "--service",
            &other,
            "--lock-dir",
            &locks.display().to_string(),
        ])
        .env("RESTORE_UPSTREAM_FILE", &upstream)
        .env("RESTORE_UPSTREAM", "backend")
        .env("RESTORE_NGINX_CONTAINER", &nginx)
        .run();
    out.code(1)
        .stderr_has("it is not this service's upstream; nothing was changed");
    assert_eq!(std::fs::read_to_string(&upstream).unwrap(), before);
    assert_eq!(version().as_deref(), Some(v1.as_str()));
}

#[test]
fn a_tampered_or_truncated_snapshot_is_refused_and_nothing_changes() {
    let d = Deploy::new();
    let snap = d.snapshot(&[]);
    let id = id_of(&snap);
    d.write(".env.production", b"DATABASE_URL=postgres://new\n", 0o600);
    let live = d.state();

    // Same size, other content.
    let copy = d.backups.join(&id).join("files/.env.production");
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&copy, &bytes).unwrap();
    let out = tool("restore").record(&failed(&snap)).run();
    out.code(1)
        .one_record()
        .stderr_has("files/.env.production")
        .stderr_has("nothing was changed");
    deploy::no_secret(&out);
    out.failure_from("swap");
    assert!(out.record["restore"]["error"]
        .as_str()
        .unwrap()
        .contains("refused"));
    assert_eq!(d.state(), live);

    // A truncated manifest.
    let snap2 = d.snapshot(&[]);
    let id2 = id_of(&snap2);
    let manifest = d.backups.join(&id2).join("manifest.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() - 40]).unwrap();
    d.restore(&["--id", &id2])
        .code(1)
        .stderr_has("truncated")
        .stderr_has(&id2);
    assert_eq!(d.state(), live);
    // And --latest has nothing whole to offer.
    d.restore(&["--latest"])
        .code(1)
        .stderr_has("no whole snapshot");
    assert_eq!(d.state(), live);
}

#[test]
fn paths_that_would_leave_the_deploy_directory_are_refused() {
    let d = Deploy::new();
    let outside = std::env::temp_dir().join(unique("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    let mut cleanup = Cleanup::new();
    cleanup.dir(&outside);

    // A manifest whose checksum is right but whose entry climbs out.
    let snap = d.snapshot(&[]);
    let dir = d.backups.join(id_of(&snap));
    let mut manifest =
        snapshot::Manifest::parse(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest.files[1].path = "../escaped.txt".into();
    std::fs::write(dir.join("escaped.txt"), deploy::COMPOSE).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest.to_bytes().unwrap()).unwrap();
    let live = d.state();
    let out = d.restore(&["--id", &id_of(&snap)]);
    out.code(1)
        .stderr_has("../escaped.txt")
        .stderr_has("leave the deploy directory");
    assert!(!d.dir.parent().unwrap().join("escaped.txt").exists());
    assert_eq!(d.state(), live);

    // A directory of the deploy that became a symlink to elsewhere.
    d.write("conf/app.conf", b"# app\n", 0o644);
    let snap = d.snapshot(&["--file", "conf"]);
    std::fs::remove_dir_all(d.path("conf")).unwrap();
    std::os::unix::fs::symlink(&outside, d.path("conf")).unwrap();
    let out = d.restore(&["--id", &id_of(&snap)]);
    out.code(1).stderr_has("outside the deploy directory");
    assert!(!outside.join("app.conf").exists());
}

#[test]
fn an_image_that_is_gone_and_was_never_pushed_fails_before_anything_changes() {
    let (d, mut cleanup, net, _) = site();
    let reference = format!("{}:v1", unique("local"));
    unique_image(&mut cleanup, &net, &reference);
    let svc = run_app(&mut cleanup, &net, &reference, &[]);
    let snap = d.snapshot(&["--service", &svc]);
    id_of(&snap);

    d.write(".env.production", b"DATABASE_URL=postgres://new\n", 0o600);
    redeploy(&svc, &net, "dkt/app:v2");
    docker(&["rmi", &reference]);
    let live = d.state();
    let v2 = image_of(&svc);

    let out = d.restore(&["--latest", "--strategy", "alias"]);
    out.code(1)
        .stderr_has("cannot be pulled back")
        .stderr_has("nothing was changed");
    assert_eq!(out.failure_from("restore")["step"], "preflight");
    assert_eq!(d.state(), live);
    assert_eq!(image_of(&svc), v2);
}

#[test]
fn an_image_that_is_gone_is_pulled_back_by_its_digest_with_the_docker_config_login() {
    const PASSWORD: &str = "registry-Sentinel-pw-9d2";
    let (d, mut cleanup, net, _) = site();
    let (registry, config) = cleanup.logged_in_registry("dkt", PASSWORD);
    let reference = format!("{registry}/{}:v1", unique("pushed"));
    unique_image(&mut cleanup, &net, &reference);
    docker(&["--config", &config, "push", &reference]);
    let svc = run_app(&mut cleanup, &net, &reference, &[]);
    let recorded = image_of(&svc);
    id_of(&d.snapshot(&["--service", &svc]));

    d.write(".env.production", b"DATABASE_URL=postgres://new\n", 0o600);
    redeploy(&svc, &net, "dkt/app:v2");
    docker(&["rmi", &reference]);
    assert!(docker_try(&["image", "inspect", &recorded]).is_err());
    let live = d.state();
    let args = ["--latest", "--strategy", "alias", "--drain", "200ms"];

    // Without the login the registry refuses: a clear error, and nothing changed.
    let out = tool("restore")
        .args(["--dir", &d.dir.display().to_string()])
        .args(args)
        .env(
            "DOCKER_CONFIG",
            std::env::temp_dir().join(unique("no-config")),
        )
        .run();
    out.code(1)
        .stderr_has("pulling it back failed")
        .stderr_has("nothing was changed");
    assert_eq!(d.state(), live);
    assert_ne!(image_of(&svc), recorded);

    let out = tool("restore")
        .args(["--dir", &d.dir.display().to_string()])
        .args(args)
        .env("DOCKER_CONFIG", &config)
        .run();
    out.code(0).stderr_has("pulling");
    assert!(!out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD));
    let c = &out.record["restore"]["containers"][0];
    assert!(c["pulled"].as_str().unwrap().contains("@sha256:"));
    assert_eq!(image_of(&svc), recorded);
    assert_ne!(d.state(), live, "the files were restored too");
}

#[test]
fn dry_run_shows_the_plan_and_changes_nothing() {
    let (d, _cleanup, net, svc) = site();
    d.snapshot(&["--service", &svc]).code(0);
    d.write(".env.production", b"DATABASE_URL=postgres://new\n", 0o600);
    redeploy(&svc, &net, "dkt/app:v2");
    let live = d.state();
    let v2 = image_of(&svc);
    let containers_before = docker(&["ps", "-aq", "--filter", &format!("name={svc}")]);

    let out = d.restore(&["--latest", "--dry-run", "--strategy", "alias"]);
    out.code(0)
        .stderr_has("dry run: nothing changed")
        .stderr_has("restore  .env.production")
        .stderr_has("keep     docker-compose.yml")
        .stderr_has(&format!("recreate container {svc} from dkt/app:v1"));
    let r = &out.record["restore"];
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["restored"], false);
    assert_eq!(r["files"][0]["action"], "restored");
    assert!(r["containers"][0]["plan"].is_object());
    assert_eq!(d.state(), live);
    assert_eq!(image_of(&svc), v2);
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &format!("name={svc}")]),
        containers_before
    );
}

#[test]
fn without_a_failure_or_a_choice_it_does_nothing_and_says_so() {
    let d = Deploy::new();
    let snap = d.snapshot(&[]);
    d.write(".env.production", b"DATABASE_URL=postgres://new\n", 0o600);
    let live = d.state();

    // The deploy went well: snapshot | swap | restore passes through.
    let mut record = failed(&snap);
    record.as_object_mut().unwrap().remove("failure");
    let out = tool("restore").record(&record).run();
    out.code(0).one_record().stderr_has("nothing to roll back");
    assert_eq!(out.record["restore"]["restored"], false);
    assert_eq!(d.state(), live);

    // swap failed, but no snapshot is named anywhere: bad input, the failure kept.
    let out = tool("restore")
        .record(&json!({
            "failure": failed(&snap)["failure"],
            "steps": [{"tool": "swap", "outcome": "failed", "started_at": "", "ms": 1}],
        }))
        .run();
    out.code(2).stderr_has("snapshot.path");
    assert_eq!(out.failure_from("swap")["step"], "health");
    assert_eq!(d.state(), live);

    // The deploy failed before anything was deployed (here: the snapshot itself): nothing to
    // roll back, and the pipe still ends red.
    let out = shell(&format!(
        "cd {} && snapshot --file missing.yml </dev/null \
         | swap --service dkt-none --image dkt/app:v2 --strategy recreate | restore",
        d.dir.display()
    ));
    out.code(1).one_record().stderr_has("nothing to roll back");
    out.failure_from("snapshot");
    assert_eq!(out.record["restore"]["restored"], false);
    assert_eq!(d.state(), live);

    d.restore(&["--id", "../etc"]).code(2).stderr_has("--id");
    d.restore(&["--id", "20000101_000000"])
        .code(2)
        .stderr_has("no snapshot 20000101_000000");
}

#[test]
fn latest_is_the_newest_whole_snapshot_by_name_even_after_the_clock_went_back() {
    let d = Deploy::new();
    d.write("docker-compose.yml", b"first\n", 0o644);
    let first = id_of(&d.snapshot(&[]));
    // Taken while the clock ran ahead; it has been set back since.
    std::fs::rename(d.backups.join(&first), d.backups.join("20991231_235959")).unwrap();
    d.write("docker-compose.yml", b"second\n", 0o644);
    let second = id_of(&d.snapshot(&[]));
    d.write("docker-compose.yml", b"third\n", 0o644);
    let third = id_of(&d.snapshot(&[]));
    assert_eq!(
        (second.as_str(), third.as_str()),
        ("20991231_235959-1", "20991231_235959-2")
    );
    // The newest is damaged: the one before it is the latest whole one.
    std::fs::write(
        d.backups.join(&third).join("files/docker-compose.yml"),
        "bad\n",
    )
    .unwrap();

    d.write("docker-compose.yml", b"live\n", 0o644);
    let out = d.restore(&["--latest"]);
    out.code(0)
        .stderr_has(&format!(
            "skipping snapshot {third}, newer than the one restored, because it does not verify"
        ))
        .stderr_has("1 newer one(s) skipped: corrupt");
    assert_eq!(out.record["restore"]["snapshot"]["id"], second.as_str());
    let skipped = &out.record["restore"]["skipped"];
    assert_eq!(skipped[0]["id"], third.as_str(), "{skipped}");
    assert!(
        skipped[0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("docker-compose.yml")),
        "{skipped}"
    );
    assert_eq!(d.read("docker-compose.yml"), b"second\n");
}
