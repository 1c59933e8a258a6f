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
    let steps: Vec<(String, String)> = out.record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["tool"].as_str().unwrap().into(),
                s["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected = [
        ("img-build", "failed"),
        ("img-push", "skipped"),
        ("swap", "skipped"),
        ("notify", "ok"),
    ];
    assert_eq!(
        steps,
        expected
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .to_vec()
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
