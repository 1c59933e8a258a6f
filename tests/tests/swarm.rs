//! The test swarm itself (scripts/swarm through testkit::swarm): real nodes in network
//! namespaces, a dnsrr service reached through a real nginx, a node that goes down, and a
//! harness that leaves the host as it found it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::swarm::Swarm;
use testkit::{docker, eventually, fixtures, http_get};

/// Every namespace, bridge and state directory the harness makes for swarm `id`.
fn leftovers(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.starts_with(&format!("dkt-sw{id}-")) {
            found.push(format!("netns {line}"));
        }
    }
    if Path::new(&format!("/sys/class/net/dksw{id}")).exists() {
        found.push(format!("bridge dksw{id}"));
    }
    let root = std::env::var("DKT_SWARM_ROOT").unwrap_or_else(|_| "/tmp/dkt-swarm".into());
    if Path::new(&root).join(id).exists() {
        found.push(format!("dir {root}/{id}"));
    }
    found
}

fn answers(url: &str) -> Option<String> {
    match http_get(url, Duration::from_secs(3)) {
        Ok((200, _, body)) => Some(body.trim().to_string()),
        _ => None,
    }
}

#[test]
fn two_nodes_serve_a_dnsrr_service_through_nginx_and_a_stopped_node_is_seen_down() {
    fixtures();
    let swarm = Swarm::up(2, &["dkt/app:v1", "dkt/nginx:latest"]);
    assert_eq!(
        swarm.node_states(),
        [
            (swarm.nodes[0].name.clone(), "Ready".to_string()),
            (swarm.nodes[1].name.clone(), "Ready".to_string())
        ]
    );
    // Never on the host engine.
    assert_eq!(
        docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]),
        "inactive"
    );

    let net = swarm.overlay("dkt-net");
    swarm.create_service(
        "web",
        &[
            "--replicas",
            "2",
            "--endpoint-mode",
            "dnsrr",
            "--network",
            &net,
            "--env",
            "APP_VERSION=v1-{{.Task.Slot}}",
            "--placement-pref",
            "spread=node.id",
            "dkt/app:v1",
        ],
    );
    // nginx resolves `web` per request: both replicas answer through it, from the host, over
    // its host-mode published port on the manager's bridge address.
    let url = swarm.nginx(&net, "web", 8000);
    let mut seen = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(90), || {
            if let Some(body) = answers(&url) {
                seen.insert(body);
            }
            seen.len() == 2
        }),
        "both replicas never answered through nginx; seen {seen:?}"
    );
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["hello from v1-1", "hello from v1-2"]
    );
    let nodes: BTreeSet<String> = swarm
        .docker(&[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Node}}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(nodes.len(), 2, "one replica per node: {nodes:?}");

    // A node goes down: its dockerd and everything it ran die, the manager sees it down, and
    // the service keeps answering from the node that is left.
    swarm.stop_node(2);
    let down = swarm.nodes[1].name.clone();
    assert!(
        eventually(Duration::from_secs(60), || swarm
            .node_states()
            .contains(&(down.clone(), "Down".to_string()))),
        "node 2 never seen down: {:?}",
        swarm.node_states()
    );
    assert!(
        swarm.try_docker_on(2, &["version"]).is_err(),
        "node 2's engine still answers"
    );
    let mut ok_in_a_row = 0;
    assert!(
        eventually(Duration::from_secs(90), || {
            ok_in_a_row = if answers(&url).is_some() {
                ok_in_a_row + 1
            } else {
                0
            };
            ok_in_a_row >= 10
        }),
        "the service does not answer from the node that is left"
    );
}

#[test]
fn a_killed_test_run_leaves_nothing_behind() {
    fixtures();
    // The swarm's owner is a process of its own, killed as a test run is killed (no Drop).
    let mut owner = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep");
    let made = testkit::swarm::script(&[
        "up",
        "--nodes",
        "1",
        "--image",
        "dkt/busybox:latest",
        "--owner",
        &owner.id().to_string(),
    ]);
    let made: testkit::Value = serde_json::from_str(&made).expect("JSON");
    let id = made["id"].as_str().expect("id").to_string();
    assert_eq!(leftovers(&id).len(), 3, "{:?}", leftovers(&id));
    let host = made["manager"].as_str().expect("manager");
    assert_eq!(
        docker(&["-H", host, "info", "--format", "{{.Swarm.LocalNodeState}}"]),
        "active"
    );

    let _ = owner.kill();
    let _ = owner.wait();
    assert!(
        eventually(Duration::from_secs(60), || leftovers(&id).is_empty()),
        "left behind after its owner died: {:?}",
        leftovers(&id)
    );
    assert!(
        testkit::docker_try(&["-H", host, "version"]).is_err(),
        "its engine still answers"
    );
    let dir = made["dir"].as_str().expect("dir");
    let procs = Command::new("pgrep")
        .args(["-f", dir])
        .output()
        .expect("pgrep");
    assert!(
        procs.stdout.is_empty(),
        "processes of it are left: {}",
        String::from_utf8_lossy(&procs.stdout)
    );
}
