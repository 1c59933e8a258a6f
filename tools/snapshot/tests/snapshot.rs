//! snapshot, run as a user would: the real binary on real directories (and a real tmpfs for a
//! full disk), the real Docker Engine for the containers part.

mod deploy;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deploy::{image_of, mode_of, run_app, verify_independently, Deploy, SECRET};
use testkit::{docker, fixtures, shell, tool, unique, Cleanup, Value};

#[test]
fn a_snapshot_is_private_whole_and_listed() {
    let d = Deploy::new();
    // Whatever the umask, the snapshot is private.
    let out = shell(&format!(
        "umask 000; snapshot --dir {} </dev/null",
        d.dir.display()
    ));
    out.code(0).one_record();
    deploy::no_secret(&out);
    let s = &out.record["snapshot"];
    let id = s["id"].as_str().unwrap();
    let path = Path::new(s["path"].as_str().unwrap());
    assert_eq!(path, d.backups.join(id));
    assert_eq!(s["files"][0]["path"], ".env.production");
    assert_eq!(s["files"][1]["path"], "docker-compose.yml");
    assert_eq!(s["files"][1]["size"], deploy::COMPOSE.len());
    assert_eq!(s["containers"], testkit::json!([]));
    assert_eq!(s["kept"], 1);
    assert!(
        s["files"][0].get("sha256").is_none(),
        "no checksums in the record"
    );

    assert_eq!(mode_of(path), 0o700);
    assert_eq!(mode_of(&path.join("manifest.json")), 0o600);
    assert_eq!(mode_of(&path.join("files/.env.production")), 0o600);
    assert_eq!(
        std::fs::read(path.join("files/docker-compose.yml")).unwrap(),
        deploy::COMPOSE.as_bytes()
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], 1);
    assert_eq!(manifest["files"][0]["mode"], "0600");
    assert_eq!(manifest["files"][1]["mode"], "0644");
    assert_eq!(
        verify_independently(path).unwrap(),
        [".env.production", "docker-compose.yml"]
    );

    let list = d.snapshot(&["--list"]);
    list.code(0).one_record().stderr_has("ID").stderr_has(id);
    let l = &list.record["snapshot"];
    assert_eq!(l["latest"], id);
    assert_eq!(l["list"][0]["id"], id);
    assert_eq!(l["list"][0]["files"], 2);
    assert_eq!(l["corrupt"], testkit::json!([]));
}

#[test]
fn everyday_env_values_leave_the_record_whole() {
    let d = Deploy::new();
    d.write(
        ".env.production",
        format!(
            "PORT=8000\nRAILS_ENV=production\nTAG=snapshot\nAPP_ROOT={}\nSECRET_KEY_BASE={SECRET}\n",
            d.dir.display()
        )
        .as_bytes(),
        0o600,
    );
    let out = d.snapshot(&[]);
    out.code(0).one_record();
    let s = &out.record["snapshot"];
    assert_eq!(s["files"][0]["path"], ".env.production");
    assert!(s["path"]
        .as_str()
        .unwrap()
        .starts_with(&d.dir.display().to_string()));
    assert!(s["ms"].is_u64());
}

#[test]
fn named_files_and_directories_are_backed_up_and_bad_names_refused() {
    let d = Deploy::new();
    d.write("nginx/conf.d/app.conf", b"server {}\n", 0o640);
    d.write("nginx/conf.d/extra/a.conf", b"# a\n", 0o644);
    let out = d.snapshot(&["--file", "docker-compose.yml", "--file", "nginx"]);
    out.code(0);
    let paths: Vec<&str> = out.record["snapshot"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "docker-compose.yml",
            "nginx/conf.d/app.conf",
            "nginx/conf.d/extra/a.conf"
        ]
    );

    let out = d.snapshot(&["--file", "../etc/passwd"]);
    out.code(2)
        .stderr_has("--file")
        .stderr_has("leave the deploy directory");
    let out = d.snapshot(&["--file", "missing.yml"]);
    out.code(2).stderr_has("missing.yml");
    d.snapshot(&["--keep", "0"]).code(2).stderr_has("--keep");
    // Bad input changed nothing: still one snapshot.
    assert_eq!(d.listed().len(), 1);
}

#[test]
fn retention_keeps_exactly_the_newest_n() {
    let d = Deploy::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        d.write(
            "docker-compose.yml",
            format!("version {i}\n").as_bytes(),
            0o644,
        );
        let out = d.snapshot(&["--keep", "3"]);
        out.code(0);
        ids.push(out.record["snapshot"]["id"].as_str().unwrap().to_string());
        if i == 4 {
            assert_eq!(out.record["snapshot"]["pruned"], testkit::json!([ids[1]]));
            assert_eq!(out.record["snapshot"]["kept"], 3);
        }
    }
    let mut newest: Vec<String> = ids[2..].to_vec();
    assert_eq!(d.on_disk(), newest);
    newest.reverse();
    assert_eq!(d.listed(), newest);
}

#[test]
fn corrupt_newest_snapshots_never_push_out_the_newest_good_one() {
    let d = Deploy::new();
    let take = |content: &str, keep: &str| {
        d.write("docker-compose.yml", content.as_bytes(), 0o644);
        let out = d.snapshot(&["--keep", keep]);
        out.code(0);
        out.record["snapshot"]["id"].as_str().unwrap().to_string()
    };
    let a = take("a\n", "3");
    let b = take("b\n", "3");
    let c = take("c\n", "3");
    let e = take("e\n", "3");
    assert!(!d.on_disk().contains(&a));
    // Damage c (a tampered file) and e (a truncated manifest): the newest good one is now b.
    std::fs::write(d.backups.join(&c).join("files/docker-compose.yml"), "x\n").unwrap();
    let manifest = d.backups.join(&e).join("manifest.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();

    let list = d.snapshot(&["--list"]);
    list.code(0).stderr_has("corrupt");
    assert_eq!(list.record["snapshot"]["latest"], b.as_str());
    let corrupt = list.record["snapshot"]["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 2);
    assert!(corrupt[0]["error"].as_str().unwrap().contains("truncated"));
    assert!(corrupt[1]["error"]
        .as_str()
        .unwrap()
        .contains("files/docker-compose.yml"));

    // Retention with keep 2: the corrupt ones do not count, so b stays next to the new one.
    let f = take("f\n", "2");
    let on_disk = d.on_disk();
    assert!(on_disk.contains(&b), "b was pruned: {on_disk:?}");
    assert!(on_disk.contains(&f));
    assert_eq!(d.listed(), [f, b]);
}

#[test]
fn the_latest_goes_by_name_and_sequence_never_by_mtime_or_a_clock_set_back() {
    let d = Deploy::new();
    d.write("docker-compose.yml", b"first\n", 0o644);
    let first = d.snapshot(&[]);
    first.code(0);
    let first = first.record["snapshot"]["id"].as_str().unwrap().to_string();
    // As if the clock ran ahead when it was taken and was set back since.
    let ahead = "20991231_235959";
    std::fs::rename(d.backups.join(&first), d.backups.join(ahead)).unwrap();

    d.write("docker-compose.yml", b"second\n", 0o644);
    let second = d.snapshot(&[]);
    second.code(0).stderr_has("clock");
    assert_eq!(second.record["snapshot"]["id"], "20991231_235959-1");
    d.write("docker-compose.yml", b"third\n", 0o644);
    let third = d.snapshot(&[]);
    assert_eq!(third.record["snapshot"]["id"], "20991231_235959-2");

    // mtimes that say otherwise change nothing.
    for (id, when) in [
        ("20991231_235959-2", "2001-01-01"),
        ("20991231_235959", "2030-01-01"),
    ] {
        let ok = Command::new("touch")
            .args(["-d", when])
            .arg(d.backups.join(id))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    assert_eq!(
        d.listed(),
        ["20991231_235959-2", "20991231_235959-1", "20991231_235959"]
    );
    // Sequence numbers order as numbers: -10 after -9.
    for n in 3..=10 {
        let out = d.snapshot(&["--keep", "20"]);
        assert_eq!(out.record["snapshot"]["id"], format!("{ahead}-{n}"));
    }
    assert_eq!(d.listed()[0], format!("{ahead}-10"));
}

#[test]
fn kill_9_during_a_snapshot_never_leaves_a_listed_partial_one() {
    let d = Deploy::new();
    for i in 0..5 {
        d.write(
            &format!("conf/{i}.conf"),
            format!("# {i}\n").as_bytes(),
            0o644,
        );
    }
    let expected = [
        ".env.production",
        "conf/0.conf",
        "conf/1.conf",
        "conf/2.conf",
        "conf/3.conf",
        "conf/4.conf",
        "docker-compose.yml",
    ];
    // The test-only pause between the steps makes each run last long enough to be killed in
    // every one of them: copying, the manifest, the rename, retention.
    let run = || {
        tool("snapshot")
            .args(["--dir", &d.dir.display().to_string()])
            .args([
                "--file",
                "docker-compose.yml,.env.production,conf",
                "--keep",
                "3",
            ])
            .env(snapshot::TEST_DELAY_ENV, "15ms")
    };
    let start = Instant::now();
    run().run().code(0);
    let one = start.elapsed();

    let trials = 40;
    let mut killed_mid_run = 0;
    for i in 0..trials {
        let delay = one.mul_f64(1.2 * f64::from(i) / f64::from(trials));
        let mut child = run().spawn();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        for id in d.listed() {
            let files = verify_independently(&d.backups.join(&id))
                .unwrap_or_else(|e| panic!("trial {i}: listed snapshot {id} is partial: {e}"));
            assert_eq!(files, expected, "trial {i}: {id}");
        }
    }
    assert!(
        killed_mid_run >= trials / 2,
        "only {killed_mid_run} runs were killed mid-way"
    );

    // The next run cleans up what the killed ones left, and works.
    run().run().code(0);
    let left: Vec<String> = d
        .on_disk()
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
    assert_eq!(d.listed().len(), 3);
}

/// A 1 MiB tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (the tests run as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_the_older_snapshots() {
    let d = Deploy::new();
    let _disk = Tmpfs::mount(&d.backups);
    let first = d.snapshot(&[]);
    first.code(0);
    let first = first.record["snapshot"]["id"].as_str().unwrap().to_string();

    d.write("data.bin", &vec![7u8; 2 << 20], 0o644);
    let out = d.snapshot(&["--file", "docker-compose.yml,.env.production,data.bin"]);
    out.code(1)
        .one_record()
        .stderr_has("No space left on device");
    let failure = out.failure_from("snapshot");
    assert_eq!(failure["step"], "files");
    assert!(failure["error"].as_str().unwrap().contains("data.bin"));

    assert_eq!(
        d.on_disk(),
        std::slice::from_ref(&first),
        "no temp left, the older one intact"
    );
    verify_independently(&d.backups.join(&first)).unwrap();
    assert_eq!(d.listed(), [first]);
}

#[test]
fn a_snapshot_in_use_by_a_restore_is_not_pruned() {
    let d = Deploy::new();
    let old = d.snapshot(&["--keep", "1"]);
    let old = old.record["snapshot"]["id"].as_str().unwrap().to_string();
    // What restore holds while it reads a snapshot: a shared flock on its lock file.
    let mut holder = Command::new("bash")
        .args(["-c", r#"exec 9<"$0"; flock -s 9; exec sleep 30"#])
        .arg(d.backups.join(&old).join(".lock"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = d.snapshot(&["--keep", "1"]);
    out.code(0).stderr_has("a restore is using it");
    assert_eq!(out.record["snapshot"]["pruned"], testkit::json!([]));
    assert_eq!(out.record["snapshot"]["kept_in_use"], testkit::json!([old]));
    assert!(d.on_disk().contains(&old));
    let _ = holder.kill();
    let _ = holder.wait();

    let out = d.snapshot(&["--keep", "1"]);
    out.code(0);
    assert!(out.record["snapshot"]["pruned"]
        .as_array()
        .unwrap()
        .contains(&testkit::json!(old)));
    assert_eq!(d.on_disk().len(), 1);
}

#[test]
fn containers_are_recorded_with_their_configuration_and_image() {
    fixtures();
    let d = Deploy::new();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network();
    let by_name = run_app(&mut cleanup, &net, "dkt/app:v1", &[]);
    let service = unique("labelled");
    let by_label = run_app(
        &mut cleanup,
        &net,
        "dkt/app:v2",
        &["--label", &format!("com.docker.compose.service={service}")],
    );
    let out = d.snapshot(&[
        "--service",
        &by_name,
        "--service",
        &service,
        "--service",
        "dkt-nothing-runs-this",
    ]);
    out.code(0)
        .stderr_has("dkt-nothing-runs-this has no container");
    let s = &out.record["snapshot"];
    assert_eq!(s["containers"][0]["service"], by_name.as_str());
    assert_eq!(s["containers"][0]["image_id"], image_of(&by_name));
    assert_eq!(s["containers"][0]["image"], "dkt/app:v1");
    assert_eq!(s["containers"][1]["service"], service.as_str());
    assert_eq!(s["containers"][1]["name"], by_label.as_str());
    assert_eq!(s["containers"][1]["image_id"], image_of(&by_label));
    assert_eq!(s["missing"], testkit::json!(["dkt-nothing-runs-this"]));
    let mut images = vec![image_of(&by_name), image_of(&by_label)];
    images.sort();
    assert_eq!(s["images"], testkit::json!(images));
    // The environment values are in the private manifest only, never in the record.
    assert!(!out.stdout.contains("APP_SECRET_SETTING"));
    let path = Path::new(s["path"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("manifest.json")).unwrap()).unwrap();
    let c = &manifest["containers"][0];
    assert_eq!(c["image"]["tags"], testkit::json!(["dkt/app:v1"]));
    assert_eq!(
        c["inspect"]["Id"],
        docker(&["inspect", "-f", "{{.Id}}", &by_name])
    );
    assert!(c["inspect"]["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&testkit::json!(format!("APP_SECRET_SETTING={SECRET}"))));

    let list = d.snapshot(&["--list"]);
    list.code(0).stderr_has(&format!("{by_name}=dkt/app:v1"));
    assert_eq!(list.record["snapshot"]["images"], testkit::json!(images));
}

/// An image of its own (a distinct id) tagged `tag`, built from the app fixture.
fn own_image(cleanup: &mut Cleanup, tag: &str) -> String {
    let label = format!("LABEL io.deploykit.test.tag={tag}");
    testkit::build_image(cleanup, tag, &format!("FROM dkt/app:v1\n{label}\n"))
}

fn image_exists(reference: &str) -> bool {
    testkit::docker_try(&["image", "inspect", reference]).is_ok()
}

#[test]
fn pruning_images_never_removes_what_a_container_or_a_kept_snapshot_needs() {
    fixtures();
    let d = Deploy::new();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network();
    let repo = unique("prune");
    let tag = |t: &str| format!("{repo}/app:{t}");
    let other = unique("prune-other");

    // a: ran when a snapshot was taken, its container gone since (a rollback target); that
    // snapshot is damaged since, and still protects it (it may be mended by hand).
    let a = own_image(&mut cleanup, &tag("a"));
    let gone = run_app(&mut cleanup, &net, &tag("a"), &[]);
    let first = d.snapshot(&["--service", &gone, "--keep", "1"]);
    first.code(0);
    docker(&["rm", "-f", &gone]);
    let first = Path::new(first.record["snapshot"]["path"].as_str().unwrap());
    std::fs::write(first.join("files/docker-compose.yml"), "tampered").unwrap();
    // b: a running container uses it; c: a stopped one does.
    let b = own_image(&mut cleanup, &tag("b"));
    let running = run_app(&mut cleanup, &net, &tag("b"), &[]);
    let c = own_image(&mut cleanup, &tag("c"));
    let stopped = cleanup.container(&unique("stopped"));
    docker(&[
        "create",
        "--name",
        &stopped,
        "--label",
        "io.deploykit.test=1",
        &tag("c"),
    ]);
    // d: unused, in no snapshot; e: the same, also tagged in another repository.
    let d_id = own_image(&mut cleanup, &tag("d"));
    let e = own_image(&mut cleanup, &tag("e"));
    docker(&["tag", &tag("e"), &cleanup.image(&format!("{other}/app:e"))]);
    // Another repository's unused image is not touched.
    own_image(&mut cleanup, &format!("{other}/app:x"));

    // The deploy's record passes through; the cleanup joins its snapshot result.
    let taken = d.snapshot(&["--service", &running]);
    taken.code(0);
    assert_eq!(
        d.snapshot(&["--list"]).record["snapshot"]["corrupt"][0]["path"],
        first.to_str().unwrap()
    );
    let snapshot_id = taken.record["snapshot"]["id"].clone();
    let mut record = taken.record.clone();
    record["custom"] = testkit::json!({"kept": true});

    let dry = tool("snapshot")
        .arg("--dir")
        .arg(&d.dir)
        .args(["--prune-images", &format!("{repo}/app"), "--dry-run"])
        .record(&record)
        .run();
    dry.code(0).one_record();
    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let p = &dry.record["snapshot"]["prune"];
    assert_eq!(p["dry_run"], true);
    assert_eq!(ids(&p["removed"]), [d_id.clone(), e.clone()]);
    for t in ["a", "b", "c", "d", "e"] {
        assert!(image_exists(&tag(t)), "--dry-run removed {t}");
    }

    let out = tool("snapshot")
        .arg("--dir")
        .arg(&d.dir)
        .args(["--prune-images", &format!("{repo}/app")])
        .record(&record)
        .run();
    out.code(0)
        .one_record()
        .stderr_has(&format!("removed {}", tag("d")));
    let s = &out.record["snapshot"];
    assert_eq!(
        s["id"], snapshot_id,
        "the deploy's snapshot stays in the record"
    );
    assert_eq!(out.record["custom"], testkit::json!({"kept": true}));
    assert_eq!(
        s["prune"]["repositories"],
        testkit::json!([format!("docker.io/{repo}/app")])
    );
    assert_eq!(ids(&s["prune"]["removed"]), [d_id, e.clone()]);
    let kept: Vec<(String, String)> = s["prune"]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().into(),
                i["why"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(kept.contains(&(a.clone(), "snapshot".into())), "{kept:?}");
    assert!(kept.contains(&(b, "container".into())), "{kept:?}");
    assert!(kept.contains(&(c, "container".into())), "{kept:?}");
    assert!(!image_exists(&tag("d")));
    assert!(!image_exists(&tag("e")));
    assert!(
        image_exists(&format!("{other}/app:e")),
        "only the repository's tag goes"
    );
    assert!(image_exists(&format!("{other}/app:x")));
    for t in ["a", "b", "c"] {
        assert!(image_exists(&tag(t)), "{t} was removed");
    }

    // Once retention drops the snapshot that ran a, a goes too. Without a REPO the
    // repositories are those the services run now.
    d.snapshot(&["--service", &running, "--keep", "1"]).code(0);
    let out = d.snapshot(&["--prune-images", "--service", &running]);
    out.code(0);
    assert_eq!(ids(&out.record["snapshot"]["prune"]["removed"]), [a]);
    assert!(!image_exists(&tag("a")));
    assert!(image_exists(&tag("b")) && image_exists(&tag("c")));
}

#[test]
fn pruning_images_without_the_snapshots_refuses_and_removes_nothing() {
    fixtures();
    let d = Deploy::new();
    let mut cleanup = Cleanup::new();
    let repo = unique("prune");
    own_image(&mut cleanup, &format!("{repo}/app:1"));
    let repo_arg = format!("{repo}/app");
    let empty = d.dir.join("empty-backups");
    std::fs::create_dir(&empty).unwrap();
    for (backups, why) in [
        (d.dir.join("no-such-dir"), "does not exist"),
        (empty, "holds no snapshot"),
    ] {
        let out = d.snapshot(&[
            "--backups",
            backups.to_str().unwrap(),
            "--prune-images",
            &repo_arg,
        ]);
        out.code(2)
            .one_record()
            .stderr_has(&format!("--backups: {}", backups.display()));
        out.stderr_has(why);
        assert_eq!(out.record["snapshot"]["prune"]["step"], "input");
        assert!(image_exists(&format!("{repo}/app:1")));
    }

    let out = d.snapshot(&["--prune-images", &format!("{repo}/app:1")]);
    out.code(2).stderr_has("--prune-images: ");
    assert!(image_exists(&format!("{repo}/app:1")));
}

#[test]
fn a_cleanup_that_cannot_run_never_makes_restore_roll_back_a_good_deploy() {
    let d = Deploy::new();
    let taken = d.snapshot(&[]);
    taken.code(0);
    // The deploy went well; then the cleanup cannot reach the Docker Engine.
    let cleaned = tool("snapshot")
        .arg("--dir")
        .arg(&d.dir)
        .args(["--prune-images", "app"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .record(&taken.record)
        .run();
    cleaned.code(1).one_record();
    cleaned.stderr_has("no image was removed, and the deploy stands");
    assert!(
        cleaned.record.get("failure").is_none(),
        "{}",
        cleaned.stdout
    );
    assert_eq!(
        cleaned.record["snapshot"]["id"],
        taken.record["snapshot"]["id"]
    );
    let prune = &cleaned.record["snapshot"]["prune"];
    assert!(
        prune["error"].as_str().unwrap().contains("nonexistent"),
        "{prune}"
    );

    let before = d.state();
    let out = d.restore_piped(&cleaned.stdout);
    out.code(0).stderr_has("nothing to roll back");
    assert_eq!(out.record["restore"]["restored"], false);
    assert_eq!(d.state(), before);
}
