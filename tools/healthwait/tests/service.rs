//! healthwait --service and --stack on a real swarm (testkit::swarm: nodes in network
//! namespaces, never the host engine): what the user sees, what the record says.

use std::time::Duration;

use testkit::swarm::Swarm;
use testkit::{fixtures, tool, Out, Value};

fn healthwait(swarm: &Swarm, args: &[&str]) -> Out {
    tool("healthwait")
        .env("DOCKER_HOST", swarm.manager())
        .args(args)
        .run()
}

/// `docker service ps` lines as `IMAGE STATE` (e.g. `dkt/app:v1 Running`), every task.
fn tasks(swarm: &Swarm, service: &str) -> Vec<String> {
    swarm
        .docker(&[
            "service",
            "ps",
            service,
            "--format",
            "{{.Image}} {{.CurrentState}}",
        ])
        .lines()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

fn service<'a>(record: &'a Value, name: &str) -> &'a Value {
    record["healthwait"]["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["service"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {record}"))
}

#[test]
fn an_update_converges_only_when_the_old_tasks_are_gone_and_a_node_going_down_is_survived() {
    fixtures();
    let swarm = Swarm::up(2, &["dkt/app:v1", "dkt/app:v2"]);
    swarm.create_service(
        "web",
        &[
            "--replicas",
            "2",
            "--placement-pref",
            "spread=node.id",
            "--update-order",
            "start-first",
            "dkt/app:v1",
        ],
    );
    // A second service, one task per node, for the node that goes down.
    swarm.create_service(
        "spread",
        &[
            "--replicas",
            "2",
            "--placement-pref",
            "spread=node.id",
            "dkt/app:v1",
        ],
    );
    let out = healthwait(
        &swarm,
        &[
            "--service",
            "web",
            "--service",
            "spread",
            "--timeout",
            "90s",
        ],
    );
    out.code(0).one_record().stderr_has("converged after");
    for name in ["web", "spread"] {
        let s = service(&out.record, name);
        assert_eq!(s["image"], "dkt/app:v1");
        assert_eq!(
            (s["desired"].as_u64(), s["running"].as_u64()),
            (Some(2), Some(2))
        );
    }
    let spread = service(&out.record, "spread");
    let nodes = spread["nodes"].as_object().expect("nodes");
    assert_eq!(nodes.len(), 2, "one task per node: {spread}");
    for n in &swarm.nodes {
        assert_eq!(nodes[&n.name]["running"], 1, "{spread}");
    }

    // The update: "converged" only once every task runs v2 and no v1 task is left running.
    swarm.docker(&[
        "service",
        "update",
        "--detach",
        "--quiet",
        "--image",
        "dkt/app:v2",
        "web",
    ]);
    let out = healthwait(&swarm, &["--service", "web", "--timeout", "90s"]);
    out.code(0);
    let still = tasks(&swarm, "web");
    assert!(
        !still.iter().any(|t| t == "dkt/app:v1 Running"),
        "a v1 task still runs after healthwait said converged: {still:?}"
    );
    let web = service(&out.record, "web");
    assert_eq!(web["image"], "dkt/app:v2");
    assert_eq!(web["converged"], true);
    assert!(web["converged_ms"].as_u64().is_some(), "{web}");
    let live = web["tasks"].as_array().expect("tasks");
    assert_eq!(live.len(), 2, "{web}");
    assert!(live
        .iter()
        .all(|t| t["image"] == "dkt/app:v2" && t["state"] == "running" && t["current"] == true));
    assert!(
        web["update"]
            .as_str()
            .unwrap_or("")
            .starts_with("completed"),
        "{web}"
    );

    // Node 2 goes down: Swarm puts its task on node 1, and the dead node's task, which Swarm
    // still lists as it last heard of it, counts neither way.
    swarm.stop_node(2);
    let down = (swarm.nodes[1].name.clone(), "Down".to_string());
    assert!(
        testkit::eventually(Duration::from_secs(60), || swarm
            .node_states()
            .contains(&down)),
        "node 2 never seen down"
    );
    let out = healthwait(&swarm, &["--service", "spread", "--timeout", "120s"]);
    out.code(0);
    let spread = service(&out.record, "spread");
    let (n1, n2) = (&swarm.nodes[0].name, &swarm.nodes[1].name);
    assert_eq!(spread["nodes"][n1]["running"], 2, "{spread}");
    assert_eq!(spread["nodes"][n2]["up"], false, "{spread}");
    assert_eq!(spread["nodes"][n2]["running"], 0, "{spread}");
    assert_eq!(spread["nodes"][n2]["unreachable"], 1, "{spread}");
}

#[test]
fn tasks_that_keep_failing_and_a_rolled_back_update_fail_fast_with_their_errors_and_logs() {
    fixtures();
    let swarm = Swarm::up(1, &["dkt/app:v1"]);
    swarm.create_service(
        "crashy",
        &["--restart-delay", "1s", "--env", "CRASH=1", "dkt/app:v1"],
    );
    let out = healthwait(&swarm, &["--service", "crashy", "--timeout", "3m"]);
    out.code(1)
        .one_record()
        .stderr_has("keep failing")
        .stderr_has("non-zero exit (3)")
        .stderr_has("last log lines of crashy.1");
    assert!(
        out.elapsed < Duration::from_secs(90),
        "not fast: {:?}",
        out.elapsed
    );
    let failure = out.failure_from("healthwait");
    assert_eq!(failure["step"], "health");
    assert!(failure["error"]
        .as_str()
        .unwrap_or("")
        .contains("service crashy did not converge"));
    let crashy = service(&out.record, "crashy");
    assert!(
        crashy["nodes"][&swarm.nodes[0].name]["failed"].as_u64() >= Some(2),
        "{crashy}"
    );
    assert!(crashy["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .any(|t| t["error"]
            .as_str()
            .unwrap_or("")
            .contains("non-zero exit (3)")));

    // A never-healthy update that Swarm rolls back: failed, not "converged" on the old spec.
    swarm.create_service("web", &["dkt/app:v1"]);
    healthwait(&swarm, &["--service", "web", "--timeout", "90s"]).code(0);
    swarm.docker(&[
        "service",
        "update",
        "--detach",
        "--quiet",
        "--env-add",
        "NEVER_HEALTHY=1",
        "--update-failure-action",
        "rollback",
        "web",
    ]);
    let out = healthwait(&swarm, &["--service", "web", "--timeout", "3m"]);
    out.code(1).stderr_has("Swarm rolled it back");
    assert!(
        out.elapsed < Duration::from_secs(90),
        "not fast: {:?}",
        out.elapsed
    );
    let web = service(&out.record, "web");
    assert!(
        web["update"]
            .as_str()
            .unwrap_or("")
            .starts_with("rollback_"),
        "{web}"
    );
}

#[test]
fn a_whole_stack_is_waited_for_and_unknown_names_are_exit_2() {
    fixtures();
    let swarm = Swarm::up(1, &["dkt/app:v1", "dkt/app:v2"]);
    let compose = swarm.dir.join("shop.yml");
    std::fs::write(
        &compose,
        "version: \"3.8\"\n\
         services:\n  \
           web:\n    image: dkt/app:v1\n    deploy:\n      replicas: 2\n      endpoint_mode: dnsrr\n  \
           api:\n    image: dkt/app:v2\n    environment:\n      APP_VERSION: api\n    deploy:\n      endpoint_mode: dnsrr\n",
    )
    .expect("write the compose file");
    swarm.docker(&[
        "stack",
        "deploy",
        "--resolve-image",
        "never",
        "-c",
        &compose.display().to_string(),
        "shop",
    ]);
    let out = healthwait(&swarm, &["--stack", "shop", "--timeout", "90s"]);
    out.code(0).one_record();
    assert_eq!(service(&out.record, "shop_web")["running"], 2);
    assert_eq!(service(&out.record, "shop_api")["running"], 1);
    assert_eq!(service(&out.record, "shop_api")["image"], "dkt/app:v2");
    assert_eq!(out.record["healthwait"]["target"], "stack shop to converge");

    for (args, needle) in [
        (
            ["--service", "nosuch"],
            "--service: no service named nosuch on the Swarm at unix://",
        ),
        (
            ["--stack", "nosuch"],
            "--stack: no service of a stack named nosuch",
        ),
    ] {
        let out = healthwait(&swarm, &args);
        out.code(2).one_record().stderr_has(needle);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert_eq!(out.failure_from("healthwait")["exit"], 2);
    }
}

#[test]
fn an_engine_that_is_not_a_swarm_manager_and_bad_names_are_exit_2() {
    // The host engine is never a swarm manager here (tests never `swarm init` on it).
    let out = tool("healthwait").args(["--service", "web"]).run();
    out.code(2).one_record().stderr_has(
        "DOCKER_HOST: the Docker Engine at unix:///var/run/docker.sock is not a Swarm manager",
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    for (flag, value) in [
        ("--service", "no such"),
        ("--stack", "-x"),
        ("--service", ""),
    ] {
        let out = tool("healthwait").arg(format!("{flag}={value}")).run();
        out.code(2).stderr_has(&format!("{flag}: "));
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
    let out = tool("healthwait")
        .args(["--service", "web", "--url", "http://127.0.0.1:9"])
        .run();
    out.code(2).stderr_has("cannot be used with");
}
