//! healthwait, run as a user would: the real binary, real sockets, the real Docker Engine.
//! These tests also hold the record contract that every tool shares (kit::main).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{docker, fixtures, json, tool, Cleanup, StubServer};

/// A health endpoint that answers 503 for the first `n` requests, then 200.
fn healthy_after(n: u32) -> StubServer {
    let seen = Arc::new(AtomicU32::new(0));
    StubServer::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < n {
            Some((503, "text/plain", "starting".into()))
        } else {
            Some((200, "application/json", r#"{"status":"ok"}"#.into()))
        }
    })
}

#[test]
fn waits_until_the_endpoint_turns_healthy() {
    let server = healthy_after(3);
    let out = tool("healthwait")
        .args(["--url", &format!("{}/api/v1/health", server.url())])
        .run();
    out.code(0).one_record().stderr_has("healthy after");
    let hw = &out.record["healthwait"];
    assert_eq!(hw["healthy"], true);
    assert_eq!(hw["attempts"], 4);
    assert_eq!(hw["last_status"], 200);
    assert_eq!(server.requests().len(), 4);
    assert_eq!(server.requests()[0].path, "/api/v1/health");
}

#[test]
fn attempts_and_interval_do_exactly_that() {
    let server = healthy_after(u32::MAX);
    let start = Instant::now();
    let out = tool("healthwait")
        .args([
            "--url",
            &server.url(),
            "--attempts",
            "3",
            "--interval",
            "200ms",
        ])
        .run();
    out.code(1).one_record().stderr_has("503");
    assert_eq!(server.requests().len(), 3);
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(out.record["healthwait"]["healthy"], false);
    assert_eq!(out.record["healthwait"]["attempts"], 3);
    let failure = out.failure_from("healthwait");
    assert_eq!(failure["step"], "health");
    assert_eq!(failure["exit"], 1);
    assert!(failure["error"].as_str().unwrap().contains("503"));
}

#[test]
fn a_deploys_healthwait_timeout_bounds_the_wait_and_attempts_still_win() {
    let server = healthy_after(u32::MAX);
    // The deploy's .env sets HEALTHWAIT_TIMEOUT for every stage.
    let out = tool("healthwait")
        .args(["--url", &server.url()])
        .env("HEALTHWAIT_TIMEOUT", "300ms")
        .run();
    out.code(1).stderr_has("(within 300ms)");
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    // A user's own count is not refused because of it.
    let out = tool("healthwait")
        .args([
            "--url",
            &server.url(),
            "--attempts",
            "2",
            "--interval",
            "10ms",
        ])
        .env("HEALTHWAIT_TIMEOUT", "300ms")
        .run();
    out.code(1);
    assert_eq!(out.record["healthwait"]["attempts"], 2);
    let out = tool("healthwait")
        .args(["--url", &server.url()])
        .env("HEALTHWAIT_TIMEOUT", "soon")
        .run();
    out.code(2)
        .stderr_has("HEALTHWAIT_TIMEOUT: 'soon' is not a duration");
}

#[test]
fn body_and_headers_are_checked() {
    let server = StubServer::start(|req| {
        let ok = req.header("host") == Some("app.example.com");
        Some((
            200,
            "application/json",
            format!(r#"{{"status":"{}"}}"#, if ok { "ok" } else { "degraded" }),
        ))
    });
    let out = tool("healthwait")
        .args([
            "--url",
            &server.url(),
            "--expect-body",
            r#""status":"ok""#,
            "--timeout",
            "600ms",
        ])
        .run();
    out.code(1).stderr_has("body does not match");
    let out = tool("healthwait")
        .args(["--url", &server.url(), "--expect-body", r#""status":"ok""#])
        .args(["-H", "Host: app.example.com"])
        .run();
    out.code(0);
}

#[test]
fn a_hanging_endpoint_is_bounded_by_the_attempt_timeout() {
    let server = StubServer::start(|_| None);
    let start = Instant::now();
    let out = tool("healthwait")
        .args([
            "--url",
            &server.url(),
            "--timeout",
            "1500ms",
            "--attempt-timeout",
            "300ms",
        ])
        .run();
    out.code(1).stderr_has("no answer within");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn connection_refused_is_not_healthy_yet() {
    let port = testkit::free_port();
    let out = tool("healthwait")
        .args(["--tcp", &format!("127.0.0.1:{port}"), "--timeout", "400ms"])
        .run();
    out.code(1).stderr_has("connection refused");
    assert!(out.record["healthwait"]["attempts"].as_u64().unwrap() >= 3);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tool("healthwait").args(["--tcp", &addr]).run().code(0);
}

#[test]
fn malformed_targets_are_exit_2_at_once() {
    for (flag, value, field) in [
        ("--url", "not a url", "--url"),
        ("--url", "ftp://host/x", "--url"),
        ("--tcp", "127.0.0.1", "--tcp"),
        ("--tcp", "host:99999", "--tcp"),
    ] {
        let start = Instant::now();
        let out = tool("healthwait").args([flag, value]).run();
        out.code(2).one_record();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
        assert!(out.stderr.contains(field), "{}", out.stderr);
        assert_eq!(out.failure_from("healthwait")["step"], "input");
    }
    let out = tool("healthwait")
        .args(["--interval", "soon", "--url", "http://x"])
        .run();
    out.code(2).stderr_has("'soon' is not a duration");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    let out = tool("healthwait").run();
    out.code(2).stderr_has("nothing to wait for");
}

// ---- the record contract, through a real binary ------------------------------------------------

#[test]
fn unknown_keys_pass_through_unchanged_and_in_order() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let input = json!({
        "version": 1, "id": "d-1", "zeta": {"nested": [1, "two", null]}, "alpha": "kept",
        "img-build": {"image_id": "sha256:abc"}
    });
    let out = tool("healthwait")
        .args(["--tcp", &addr])
        .record(&input)
        .run();
    out.code(0).one_record();
    let rec = out.record.as_object().unwrap();
    for (k, v) in input.as_object().unwrap() {
        assert_eq!(&rec[k], v, "key {k}");
    }
    let keys: Vec<&str> = rec.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "version",
            "id",
            "zeta",
            "alpha",
            "img-build",
            "healthwait",
            "steps"
        ]
    );
    assert_eq!(rec["steps"][0]["tool"], "healthwait");
    assert_eq!(rec["steps"][0]["outcome"], "ok");
}

#[test]
fn an_upstream_failure_passes_through_without_acting() {
    let server = healthy_after(0);
    let input = json!({
        "version": 1, "id": "d-2", "extra": true,
        "failure": {"tool": "swap", "step": "health", "error": "never healthy", "exit": 1, "at": "2026-11-26T00:00:00Z"},
        "swap": {"health_url": server.url()}
    });
    let out = tool("healthwait").record(&input).run();
    out.code(3)
        .one_record()
        .stderr_has("not run: swap failed at health");
    assert!(
        server.requests().is_empty(),
        "it probed despite the failure"
    );
    for (k, v) in input.as_object().unwrap() {
        assert_eq!(&out.record[k], v, "key {k}");
    }
    assert!(out.record.get("healthwait").is_none());
    assert_eq!(out.record["steps"][0]["outcome"], "skipped");
}

#[test]
fn input_that_is_not_a_record_is_exit_2_with_one_line() {
    for (stdin, needle) in [
        ("this is not json", "stdin: not a JSON deploy record"),
        ("[1,2]", "stdin: the record must be a JSON object"),
        (
            r#"{"version":"one"}"#,
            "version: expected a number, got a string",
        ),
        (r#"{"steps":{}}"#, "steps: expected an array"),
        (
            r#"{"swap":{"health_url":5}}"#,
            "swap.health_url: expected a string, got a number",
        ),
    ] {
        let out = tool("healthwait").stdin(stdin).run();
        out.code(2).one_record();
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
        out.stderr_has(needle);
        let f = out.failure_from("healthwait");
        assert_eq!(f["step"], "input");
        assert_eq!(f["exit"], 2);
    }
}

#[test]
fn empty_stdin_starts_a_fresh_record() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    for stdin in ["", "\n  \n"] {
        let out = tool("healthwait").args(["--tcp", &addr]).stdin(stdin).run();
        out.code(0).one_record();
        assert_eq!(out.record["version"], 1);
        assert!(out.record["id"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(out.record["healthwait"]["healthy"], true);
    }
}

#[test]
fn the_target_can_come_from_the_record() {
    let server = healthy_after(1);
    let input = json!({"version": 1, "swap": {"health_url": format!("{}/up", server.url())}});
    let out = tool("healthwait").record(&input).run();
    out.code(0);
    assert_eq!(server.requests().last().unwrap().path, "/up");
}

#[test]
fn quiet_prints_nothing_on_success() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = tool("healthwait").args(["-q", "--tcp", &addr]).run();
    out.code(0);
    assert_eq!(out.stderr, "");
}

// ---- containers, on the real engine --------------------------------------------------------------

#[test]
fn a_container_healthcheck_is_waited_for() {
    fixtures();
    let mut clean = Cleanup::new();
    let name = clean.container(&testkit::unique("hw-slow"));
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        testkit::LABEL,
        "-e",
        "READY_AFTER=1500ms",
        "dkt/app:v1",
    ]);
    let out = tool("healthwait")
        .args(["--container", &name, "--timeout", "30s"])
        .run();
    out.code(0).stderr_has("is healthy");
    assert!(out.record["healthwait"]["elapsed_ms"].as_u64().unwrap() >= 1000);
}

#[test]
fn a_crashing_container_fails_fast_with_its_logs() {
    fixtures();
    let mut clean = Cleanup::new();
    let name = clean.container(&testkit::unique("hw-crash"));
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        testkit::LABEL,
        "-e",
        "CRASH=1",
        "dkt/app:v1",
    ]);
    let start = Instant::now();
    let out = tool("healthwait")
        .args(["--container", &name, "--timeout", "60s"])
        .run();
    out.code(1)
        .stderr_has("exited")
        .stderr_has(&format!("last log lines of {name}"));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "not fast: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_restart_loop_fails_fast() {
    fixtures();
    let mut clean = Cleanup::new();
    let name = clean.container(&testkit::unique("hw-loop"));
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        testkit::LABEL,
        "--restart",
        "always",
        "-e",
        "CRASH=1",
        "dkt/app:v1",
    ]);
    let out = tool("healthwait")
        .args(["--container", &name, "--timeout", "60s"])
        .run();
    out.code(1);
    assert!(
        out.elapsed < Duration::from_secs(15),
        "not fast: {:?}",
        out.elapsed
    );
    let last = out.record["healthwait"]["last"].as_str().unwrap();
    assert!(
        last.contains("restart") || last.contains("exited"),
        "{last}"
    );
}

#[test]
fn an_unreachable_engine_is_one_clear_line() {
    let out = tool("healthwait")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["--container", "whatever"])
        .run();
    out.code(1)
        .stderr_has("cannot reach the Docker Engine at unix:///nonexistent/docker.sock");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}
