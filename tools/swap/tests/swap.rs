//! swap on the real engine, behind a real nginx (dkt/nginx, the host's nginx-light) on a
//! network each test creates, with the fixture app images dkt/app:v1|v2|v3.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use testkit::{
    docker, docker_try, eventually, fixtures, http_get, json, tool, unique, Cleanup, Run,
};

/// swap's steps (nginx strategy), in order.
const STEPS: [&str; 9] = [
    "lock",
    "preflight",
    "create",
    "start",
    "health",
    "switch",
    "drain",
    "stop",
    "cleanup",
];

/// A service `backend` (dkt/app:v1) behind nginx, both on a fresh network.
struct Site {
    _cleanup: Cleanup,
    net: String,
    backend: String,
    nginx: String,
    dir: PathBuf,
    locks: PathBuf,
}

impl Site {
    fn new() -> Site {
        Site::with_backend(true)
    }

    fn with_backend(run_backend: bool) -> Site {
        fixtures();
        let mut cleanup = Cleanup::new();
        let net = cleanup.network();
        let backend = cleanup.container(&unique("backend"));
        let nginx = cleanup.container(&unique("nginx"));
        let dir = std::env::temp_dir().join(unique("swap-nginx"));
        std::fs::create_dir_all(&dir).unwrap();
        cleanup.dir(&dir);
        let upstream_server = if run_backend {
            run_app(
                &backend,
                &net,
                &["-e", "DATABASE_URL=postgres://db/app", "dkt/app:v1"],
            );
            format!("{}:8000", testkit::ip_of(&backend, &net))
        } else {
            // Nothing deployed yet: a placeholder nginx accepts.
            "127.0.0.1:9".to_string()
        };
        testkit::nginx_proxy(
            &nginx,
            &net,
            &dir.join("conf.d"),
            "backend",
            &upstream_server,
            &[],
        );
        let site = Site {
            _cleanup: cleanup,
            net,
            backend,
            nginx,
            locks: dir.join("locks"),
            dir,
        };
        if run_backend {
            let url = site.url("/version");
            assert!(
                eventually(Duration::from_secs(10), || http_get(
                    &url,
                    Duration::from_secs(1)
                )
                .is_ok_and(|r| r.0 == 200)),
                "the site never served v1"
            );
        }
        site
    }

    fn upstream_file(&self) -> PathBuf {
        self.dir.join("conf.d/upstream-backend.conf")
    }

    fn upstream_text(&self) -> String {
        std::fs::read_to_string(self.upstream_file()).unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:80{path}", testkit::ip_of(&self.nginx, &self.net))
    }

    /// `swap` of the backend to `image` through nginx, health on /health.
    fn swap(&self, image: &str) -> Run {
        self.swap_from_record().args(["--image", image])
    }

    /// `swap` with the image taken from the record.
    fn swap_from_record(&self) -> Run {
        tool("swap")
            .args(["--service", "backend", "--container", &self.backend])
            .arg("--upstream-file")
            .arg(self.upstream_file())
            .args(["--nginx-container", &self.nginx, "--health-path", "/health"])
            .args(["--service-url", &self.url("")])
            .arg("--lock-dir")
            .arg(&self.locks)
    }

    /// The version the site answers through nginx.
    fn version(&self) -> String {
        http_get(&self.url("/version"), Duration::from_secs(2))
            .map(|r| r.2.trim().to_string())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    /// Names of this service's containers (live, next and old), sorted.
    fn containers(&self) -> Vec<String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name=^/{}", self.backend),
            "--format",
            "{{.Names}}",
        ]);
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    fn image_of_live(&self) -> String {
        docker(&["inspect", "-f", "{{.Config.Image}}", &self.backend])
    }

    /// The upstream file points at the live container.
    fn assert_upstream_is_live(&self) {
        let ip = testkit::ip_of(&self.backend, &self.net);
        assert!(
            self.upstream_text().contains(&format!("server {ip}:8000;")),
            "upstream file does not point at {} ({ip}):\n{}",
            self.backend,
            self.upstream_text()
        );
    }

    /// Only the live container: nothing new was left, nothing old was renamed.
    fn assert_only_live(&self) {
        assert_eq!(self.containers(), vec![self.backend.clone()]);
    }

    fn assert_no_leftovers(&self) {
        let next: Vec<String> = self
            .containers()
            .into_iter()
            .filter(|n| n.contains("-next-"))
            .collect();
        assert!(next.is_empty(), "half-made containers left: {next:?}");
        let tmp = self.dir.join("conf.d/.upstream-backend.conf.swap-tmp");
        assert!(!tmp.exists(), "temp upstream file left");
    }
}

/// `docker run -d` of a test-labelled container on `net`: extra flags, then the image.
fn run_app(name: &str, net: &str, extra: &[&str]) {
    testkit::run_container(name, net, extra);
}

/// Requests through nginx from a few threads until stopped: statuses and versions seen.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u32,
    failures: Vec<String>,
    versions: Vec<String>,
}

impl Load {
    fn start(url: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, url) = (stop.clone(), url.to_string());
                std::thread::spawn(move || {
                    let mut t = Tally::default();
                    while !stop.load(Ordering::SeqCst) {
                        match http_get(&url, Duration::from_secs(10)) {
                            Ok((200, _, body)) => {
                                t.ok += 1;
                                let v = body.trim().to_string();
                                if !t.versions.contains(&v) {
                                    t.versions.push(v);
                                }
                            }
                            Ok((status, _, body)) => t.failures.push(format!("{status}: {body}")),
                            Err(e) => t.failures.push(e),
                        }
                    }
                    t
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for t in self.threads {
            let t = t.join().expect("load thread");
            tally.ok += t.ok;
            tally.failures.extend(t.failures);
            for v in t.versions {
                if !tally.versions.contains(&v) {
                    tally.versions.push(v);
                }
            }
        }
        tally.versions.sort();
        tally
    }
}

/// A swap paused at a step by the test-only SWAP_TEST_PAUSE_AT.
struct Paused {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Paused {
    fn start(run: Run, step: &str) -> Paused {
        let mut child = run.env("SWAP_TEST_PAUSE_AT", step).spawn();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("test pause at") {
                    let _ = tx.send(());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!(
                "swap never reached step {step}:\n{}",
                stderr.lock().unwrap()
            );
        }
        Paused {
            child,
            stderr,
            reader,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then what the swap printed: (exit code, record, stderr).
    fn terminate(mut self) -> (Option<i32>, serde_json::Value, String) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().expect("wait");
        self.reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        let record = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
        (status.code(), record, stderr)
    }
}

#[test]
fn good_swap_under_load_fails_no_request_and_both_versions_answer() {
    let site = Site::new();
    let old_ip = testkit::ip_of(&site.backend, &site.net);
    let load = Load::start(&site.url("/version"), 4);
    std::thread::sleep(Duration::from_millis(500));
    let out = site.swap("dkt/app:v2").run();
    std::thread::sleep(Duration::from_millis(500));
    let tally = load.finish();
    out.code(0).one_record();
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    assert_eq!(tally.versions, ["v1", "v2"], "{tally:?}");

    let swap = &out.record["swap"];
    assert_eq!(swap["strategy"], "nginx");
    assert_eq!(swap["image"], "dkt/app:v2");
    assert_eq!(swap["new"]["name"], site.backend.as_str());
    let old_name = swap["old"]["name"].as_str().unwrap();
    assert!(
        old_name.starts_with(&format!("{}-old-", site.backend)),
        "{swap}"
    );
    assert_eq!(swap["old"]["ip"], old_ip.as_str());
    assert_eq!(swap["health"]["healthy"], true);
    assert_eq!(swap["health_url"], site.url("/health").as_str());
    assert_eq!(swap["drain"]["drained"], true);
    assert_eq!(swap["switch"]["before"], json!([format!("{old_ip}:8000")]));
    for step in STEPS.iter().chain(&["total"]) {
        assert!(swap["ms"][step].is_u64(), "no ms.{step} in {swap}");
    }

    // The live container keeps the stable name and a label; the old one is kept, stopped.
    assert_eq!(site.image_of_live(), "dkt/app:v2");
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"io.deploykit.service\"}}",
            &site.backend
        ]),
        "backend"
    );
    assert!(eventually(Duration::from_secs(5), || docker(&[
        "inspect",
        "-f",
        "{{.State.Status}}",
        old_name
    ]) == "exited"));
    // Its own settings came along; the old image's (APP_VERSION=v1) did not.
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &site.backend]);
    assert!(
        env.contains("DATABASE_URL=postgres://db/app") && env.contains("APP_VERSION=v2"),
        "{env}"
    );
    assert!(!env.contains("APP_VERSION=v1"), "{env}");
    site.assert_upstream_is_live();
    site.assert_no_leftovers();
    assert_eq!(site.version(), "v2");

    // The next swap (image from the record, as piped after img-build) keeps one old container.
    let record = json!({"img-build": {"tags": ["dkt/app:v1"]}});
    let out = site.swap("dkt/app:v3").record(&record).run();
    out.code(0);
    assert_eq!(site.version(), "v3");
    assert_eq!(out.record["swap"]["removed"], json!([old_name]));
    let out = site.swap_from_record().record(&record).run();
    out.code(0);
    assert_eq!(out.record["swap"]["image"], "dkt/app:v1");
    assert_eq!(site.version(), "v1");
}

#[test]
fn never_healthy_image_is_removed_and_the_old_keeps_serving() {
    let site = Site::new();
    let before = site.upstream_text();
    let load = Load::start(&site.url("/version"), 2);
    let out = site
        .swap("dkt/app:v2")
        .args(["--env", "NEVER_HEALTHY=1", "--health-timeout", "2s"])
        .run();
    let tally = load.finish();
    out.code(1).one_record();
    let failure = out.failure_from("swap");
    assert_eq!(failure["step"], "health");
    out.stderr_has("did not become healthy within 2.0s")
        .stderr_has("500")
        .stderr_has("last log lines of");
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    assert_eq!(tally.versions, ["v1"]);
    assert_eq!(
        site.upstream_text(),
        before,
        "the proxy configuration changed"
    );
    assert_eq!(site.image_of_live(), "dkt/app:v1");
    site.assert_only_live();
    assert_eq!(out.record["swap"]["health"]["healthy"], false);
}

#[test]
fn a_new_container_that_crashes_fails_fast_with_its_logs() {
    let site = Site::new();
    let before = site.upstream_text();
    let out = site
        .swap("dkt/app:v2")
        .args(["--env", "CRASH=1", "--health-timeout", "60s"])
        .run();
    out.code(1);
    assert_eq!(out.failure_from("swap")["step"], "health");
    out.stderr_has("exited (code 3)")
        .stderr_has("last log lines of");
    assert_eq!(site.upstream_text(), before);
    site.assert_only_live();
    assert_eq!(site.version(), "v1");
}

#[test]
fn an_invalid_nginx_config_is_never_loaded_and_the_old_file_comes_back() {
    let site = Site::new();
    let before = site.upstream_text();
    // Someone broke another file of the config since nginx last loaded it.
    std::fs::write(site.dir.join("conf.d/broken.conf"), "this is not nginx;\n").unwrap();
    let out = site.swap("dkt/app:v2").run();
    out.code(1);
    assert_eq!(out.failure_from("swap")["step"], "switch");
    out.stderr_has("nginx -t refused")
        .stderr_has("previous upstream file is back");
    assert_eq!(site.upstream_text(), before);
    site.assert_only_live();
    assert_eq!(site.version(), "v1");
    site.assert_no_leftovers();
}

#[test]
fn two_swaps_at_once_one_proceeds_the_other_names_the_holder() {
    let site = Site::new();
    let first = Paused::start(site.swap("dkt/app:v2"), "create");
    let second = site.swap("dkt/app:v3").run();
    second.code(1);
    assert_eq!(second.failure_from("swap")["step"], "lock");
    second
        .stderr_has("is being deployed by")
        .stderr_has(&format!("pid {}", first.pid()))
        .stderr_has("dkt/app:v2")
        .stderr_has("--lock-wait");
    let (code, record, stderr) = first.terminate();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(record["failure"]["step"], "create");
    site.assert_no_leftovers();

    // A holder that died without releasing: the lock file still names it.
    std::fs::write(
        site.locks.join("backend.lock"),
        r#"{"pid":999999,"host":"ci-runner","since":"2026-01-01T00:00:00Z","image":"dkt/app:v9"}"#,
    )
    .unwrap();
    let third = site.swap("dkt/app:v3").args(["--lock-wait", "5s"]).run();
    third
        .code(0)
        .stderr_has("took over the deploy lock of pid 999999 on ci-runner");
    assert_eq!(third.record["swap"]["lock"]["took_over"]["pid"], 999999);
    assert_eq!(site.version(), "v3");
}

#[test]
fn sigterm_at_each_step_leaves_old_or_new_serving_and_nothing_half_made() {
    let site = Site::new();
    let load = Load::start(&site.url("/version"), 2);
    let mut image = "v1";
    for (n, step) in STEPS.into_iter().enumerate() {
        let next = ["v2", "v3", "v1"][n % 3];
        let paused = Paused::start(site.swap(&format!("dkt/app:{next}")), step);
        let (code, record, stderr) = paused.terminate();
        assert_eq!(code, Some(1), "{step}: {stderr}");
        assert_eq!(record["failure"]["step"], step, "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIGTERM during {step}")),
            "{stderr}"
        );
        // Before the switch the old one still serves; from the switch on, the new one.
        if ["drain", "stop", "cleanup"].contains(&step) {
            image = next;
        }
        assert_eq!(
            site.image_of_live(),
            format!("dkt/app:{image}"),
            "{step}: {stderr}"
        );
        assert_eq!(site.version(), image, "{step}");
        site.assert_upstream_is_live();
        site.assert_no_leftovers();
        let running = || {
            docker(&[
                "ps",
                "--filter",
                &format!("name=^/{}", site.backend),
                "--format",
                "{{.Names}}",
            ])
        };
        // swap stops the old container before it exits, even when a signal came during
        // the drain: never two versions left running.
        assert_eq!(
            running().lines().count(),
            1,
            "{step}: more than one running: {}",
            running()
        );
    }
    // The next deploy works: the lock was released every time.
    site.swap("dkt/app:v2").run().code(0);
    let tally = load.finish();
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    assert_eq!(site.version(), "v2");
}

#[test]
fn first_deploy_creates_the_service_from_flags() {
    let site = Site::with_backend(false);
    let out = site
        .swap("dkt/app:v1")
        .args([
            "--network",
            &site.net,
            "--env",
            "GREETING=hi",
            "--label",
            "team=web",
        ])
        .run();
    out.code(0);
    let swap = &out.record["swap"];
    assert!(swap.get("old").is_none(), "{swap}");
    assert_eq!(swap["new"]["name"], site.backend.as_str());
    assert_eq!(site.version(), "v1");
    site.assert_upstream_is_live();
    assert_eq!(docker(&["inspect", "-f", "{{index .Config.Labels \"team\"}} {{index .Config.Labels \"io.deploykit.service\"}} {{.HostConfig.RestartPolicy.Name}}", &site.backend]), "web backend unless-stopped");
    assert!(
        docker(&["inspect", "-f", "{{json .Config.Env}}", &site.backend]).contains("GREETING=hi")
    );
    // And the second deploy is an ordinary swap.
    site.swap("dkt/app:v2").run().code(0);
    assert_eq!(site.version(), "v2");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let site = Site::new();
    let before = site.upstream_text();
    let out = site
        .swap("dkt/app:v2")
        .args(["--dry-run", "--env-file"])
        .arg(env_file(&site))
        .run();
    out.code(0)
        .stderr_has("dry run: nothing changed")
        .stderr_has("nginx -s reload in container");
    out.stderr_lacks("s3cr3t-value");
    let plan = &out.record["swap"]["plan"];
    assert_eq!(plan["create"]["image"], "dkt/app:v2");
    assert_eq!(
        plan["create"]["env_keys"],
        json!(["DATABASE_URL", "API_TOKEN"])
    );
    assert_eq!(plan["old"]["name"], site.backend.as_str());
    assert!(!out.stdout.contains("s3cr3t-value"));
    assert_eq!(site.upstream_text(), before);
    site.assert_only_live();
    assert!(!site.locks.exists(), "dry run took the lock");
}

fn env_file(site: &Site) -> PathBuf {
    let path = site.dir.join("env.production");
    std::fs::write(&path, "# production\nAPI_TOKEN=\"s3cr3t-value\"\n").unwrap();
    path
}

#[test]
fn host_ports_need_recreate_which_reports_the_gap() {
    fixtures();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network();
    let name = cleanup.container(&unique("front"));
    let port = testkit::free_port().to_string();
    run_app(
        &name,
        &net,
        &["-p", &format!("127.0.0.1:{port}:8000"), "dkt/app:v1"],
    );
    let locks = std::env::temp_dir().join(unique("locks"));
    cleanup.dir(&locks);
    let swap = |args: &[&str]| {
        tool("swap")
            .args(["--service", "front", "--container", &name])
            .arg("--lock-dir")
            .arg(&locks)
            .args(args)
            .run()
    };
    let out = swap(&["--image", "dkt/app:v2", "--strategy", "alias"]);
    out.code(2)
        .stderr_has("owns host ports")
        .stderr_has("--strategy recreate");
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.Image}}", &name]),
        "dkt/app:v1"
    );

    let out = swap(&[
        "--image",
        "dkt/app:v2",
        "--strategy",
        "recreate",
        "--health-path",
        "/health",
    ]);
    out.code(0);
    assert!(out.record["swap"]["gap_ms"].is_u64(), "{}", out.stdout);
    out.stderr_has("the service was down for");
    let r = http_get(
        &format!("http://127.0.0.1:{port}/version"),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.2.trim(), "v2");
    assert!(docker_try(&["inspect", &name]).is_ok());
}

#[test]
fn alias_moves_to_the_new_container() {
    fixtures();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network();
    let name = cleanup.container(&unique("api"));
    run_app(&name, &net, &["--network-alias", "api", "dkt/app:v1"]);
    let locks = std::env::temp_dir().join(unique("locks"));
    cleanup.dir(&locks);
    let out = tool("swap")
        .args([
            "--service",
            "api",
            "--container",
            &name,
            "--image",
            "dkt/app:v2",
            "--strategy",
            "alias",
            "--drain",
            "200ms",
        ])
        .arg("--lock-dir")
        .arg(&locks)
        .run();
    out.code(0);
    assert_eq!(out.record["swap"]["switch"]["alias"], "api");
    assert_eq!(
        out.record["swap"]["switch"]["old_left_dns"], false,
        "the engine chose this network's subnet: no fixed addresses, the old one keeps the alias"
    );
    let aliases = docker(&[
        "inspect",
        "-f",
        &format!("{{{{json (index .NetworkSettings.Networks \"{net}\").Aliases}}}}"),
        &name,
    ]);
    assert!(aliases.contains("\"api\""), "{aliases}");
    let old = out.record["swap"]["old"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &old]),
        "exited",
        "swap returns once the old container has stopped"
    );
}

#[test]
fn alias_behind_an_nginx_resolving_per_request_fails_no_request_on_a_configured_subnet() {
    fixtures();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network_with_subnet();
    let name = cleanup.container(&unique("api"));
    run_app(&name, &net, &["--network-alias", "api", "dkt/app:v1"]);
    // How proxies that discover containers reach them: the name, resolved per request.
    let nginx = cleanup.container(&unique("nginx"));
    let conf = std::env::temp_dir().join(unique("resolving-nginx"));
    cleanup.dir(&conf);
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("site.conf"),
        "server {\n    listen 80;\n    resolver 127.0.0.11 valid=1s;\n    location / {\n        \
         set $api http://api:8000;\n        proxy_pass $api;\n    }\n}\n",
    )
    .unwrap();
    run_app(
        &nginx,
        &net,
        &[
            "-v",
            &format!("{}:/etc/nginx/conf.d", conf.display()),
            "dkt/nginx:latest",
        ],
    );
    let url = format!("http://{}:80/version", testkit::ip_of(&nginx, &net));
    assert!(
        eventually(Duration::from_secs(10), || http_get(
            &url,
            Duration::from_secs(1)
        )
        .is_ok_and(|r| r.0 == 200)),
        "nginx never served"
    );
    let locks = std::env::temp_dir().join(unique("locks"));
    cleanup.dir(&locks);
    let load = Load::start(&url, 4);
    let out = tool("swap")
        .args(["--service", "api", "--container", &name])
        .args([
            "--image",
            "dkt/app:v2",
            "--strategy",
            "alias",
            "--drain",
            "2s",
        ])
        .arg("--lock-dir")
        .arg(&locks)
        .run();
    // Load past the moment the old one stopped, while nginx's cache (1 s) could still hold it.
    std::thread::sleep(Duration::from_secs(2));
    let tally = load.finish();
    out.code(0).stderr_has("out of DNS for api: reconnected to");
    assert_eq!(
        out.record["swap"]["switch"]["old_left_dns"], true,
        "{}",
        out.stdout
    );
    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    assert_eq!(tally.versions, ["v1", "v2"], "both versions answered");
}

#[test]
fn an_old_container_that_ignores_its_stop_signal_is_killed_after_one_stop_timeout() {
    fixtures();
    let mut cleanup = Cleanup::new();
    let net = cleanup.network();
    let name = cleanup.container(&unique("stubborn"));
    // SIGWINCH is ignored by default, so the app never hears its stop signal (as many apps
    // and busybox httpd ignore SIGTERM); its stop timeout is 4 s.
    run_app(
        &name,
        &net,
        &[
            "--network-alias",
            "api",
            "--stop-signal",
            "SIGWINCH",
            "--stop-timeout",
            "4",
            "dkt/app:v1",
        ],
    );
    let locks = std::env::temp_dir().join(unique("locks"));
    cleanup.dir(&locks);
    let out = tool("swap")
        .args(["--service", "api", "--container", &name])
        .args([
            "--image",
            "dkt/app:v2",
            "--strategy",
            "alias",
            "--drain",
            "0s",
        ])
        .arg("--lock-dir")
        .arg(&locks)
        .run();
    out.code(0)
        .stderr_has("did not stop within 4.0s of SIGWINCH: killing it");
    let stopped = &out.record["swap"]["stopped"];
    assert_eq!(stopped["killed"], true, "{stopped}");
    assert_eq!(stopped["exit_code"], 137, "SIGKILL: {stopped}");
    let ms = stopped["ms"].as_u64().unwrap();
    // One stop timeout, then SIGKILL: never the timeout twice (docker stop after a signal).
    assert!(
        (4000..8000).contains(&ms),
        "the stop step took {ms} ms for a 4 s stop timeout"
    );
    let old = out.record["swap"]["old"]["name"].as_str().unwrap();
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", old]),
        "exited"
    );
}

#[test]
fn bad_input_changes_nothing() {
    let out = tool("swap")
        .args(["--service", "backend", "--image", "dkt/app:v2"])
        .run();
    out.code(2).stderr_has("--strategy");
    let out = tool("swap")
        .args(["--service", "backend", "--strategy", "alias"])
        .run();
    out.code(2).stderr_has("--image: no image given");
    let out = tool("swap")
        .args([
            "--service",
            "backend",
            "--image",
            "x",
            "--strategy",
            "alias",
            "--publish",
            "80:80",
        ])
        .run();
    out.code(2).stderr_has("--publish");
    // An upstream failure passes through untouched.
    let out = tool("swap")
        .args(["--service", "backend", "--image", "x", "--strategy", "alias"])
        .record(&json!({"failure": {"tool": "img-build", "step": "build", "error": "x", "exit": 1, "at": "t"}}))
        .run();
    out.code(3);
}

#[test]
fn pull_logs_in_with_the_docker_config_and_without_it_leaves_the_old_one_serving() {
    const PASSWORD: &str = "swap-pull-Sentinel-pw-31";
    let site = Site::new();
    let mut cleanup = Cleanup::new();
    let (registry, config) = cleanup.logged_in_registry("dkt", PASSWORD);
    let reference = format!("{registry}/{}:v2", unique("pulled"));
    docker(&["tag", "dkt/app:v2", &cleanup.image(&reference)]);
    docker(&["--config", &config, "push", &reference]);
    docker(&["rmi", &reference]);

    // Not logged in: the registry refuses the pull, before anything was created.
    let no_login = std::env::temp_dir().join(unique("no-config"));
    let out = site
        .swap(&reference)
        .arg("--pull")
        .env("DOCKER_CONFIG", &no_login)
        .run();
    out.code(1).stderr_has(&format!("pulling {reference}"));
    assert_eq!(out.failure_from("swap")["step"], "preflight");
    assert_eq!(site.version(), "v1");
    site.assert_only_live();

    let out = site
        .swap(&reference)
        .arg("--pull")
        .env("DOCKER_CONFIG", &config)
        .run();
    out.code(0);
    assert!(!out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD));
    assert_eq!(site.version(), "v2");
}
