//! A real Docker Swarm for a test, never on the host engine: `scripts/swarm` makes a private
//! bridge and one network namespace per node, each with a dockerd of its own, and loads the
//! fixture images into every node. Dropping the [`Swarm`] removes it all, also after a panic;
//! a test run that is killed leaves nothing either (the script's watcher removes a swarm whose
//! owner process is gone, and the next `up` removes leftovers).
//!
//! ```no_run
//! let swarm = testkit::swarm::Swarm::up(2, &["dkt/app:v1"]);
//! swarm.docker(&["service", "create", "--name", "web", "dkt/app:v1"]);
//! testkit::tool("healthwait").env("DOCKER_HOST", swarm.manager()).args(["--service", "web"]).run();
//! ```
//!
//! The kernel here has no IPVS, so the routing mesh and VIPs do not work: reach a service's
//! tasks through [`Swarm::nginx`] (a real nginx resolving a `dnsrr` service per request) or a
//! host-mode published port on a node's [`Node::ip`], which the host reaches over the bridge.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One node: its engine (`host`, a unix socket) and its address on the bridge.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ip: String,
    pub host: String,
    pub role: String,
}

/// A swarm (or, with [`Swarm::engines`], plain engines) made for one test.
#[derive(Debug)]
pub struct Swarm {
    pub id: String,
    pub dir: PathBuf,
    /// The host's address on the swarm's bridge.
    pub gateway: String,
    pub nodes: Vec<Node>,
}

impl Swarm {
    /// `nodes` nodes (node 1 the manager, the others workers), each holding `images` (fixture
    /// images of the host engine: run [`crate::fixtures`] first).
    pub fn up(nodes: usize, images: &[&str]) -> Swarm {
        Swarm::make(nodes, images, false, &[])
    }

    /// `nodes` engines of their own, not in a swarm, each started with `dockerd_args` too
    /// (e.g. a TLS-protected `-H tcp://0.0.0.0:2376`).
    pub fn engines(nodes: usize, images: &[&str], dockerd_args: &[&str]) -> Swarm {
        Swarm::make(nodes, images, true, dockerd_args)
    }

    fn make(nodes: usize, images: &[&str], no_swarm: bool, dockerd_args: &[&str]) -> Swarm {
        let mut args = vec!["up".to_string(), "--nodes".into(), nodes.to_string()];
        for image in images {
            args.extend(["--image".to_string(), image.to_string()]);
        }
        if no_swarm {
            args.push("--no-swarm".into());
        }
        for arg in dockerd_args {
            args.push(format!("--dockerd-arg={arg}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v: Value = serde_json::from_str(&script(&args)).expect("scripts/swarm up prints JSON");
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Swarm {
            id: text(&v["id"]),
            dir: PathBuf::from(text(&v["dir"])),
            gateway: text(&v["gateway"]),
            nodes: v["nodes"]
                .as_array()
                .map(|nodes| {
                    nodes
                        .iter()
                        .map(|n| Node {
                            name: text(&n["name"]),
                            ip: text(&n["ip"]),
                            host: text(&n["host"]),
                            role: text(&n["role"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The manager's engine, for `DOCKER_HOST`.
    pub fn manager(&self) -> &str {
        &self.nodes[0].host
    }

    /// The docker CLI against the manager; panics with its stderr when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        self.docker_on(1, args)
    }

    /// The docker CLI against node `n` (1-based).
    pub fn docker_on(&self, n: usize, args: &[&str]) -> String {
        match self.try_docker_on(n, args) {
            Ok(out) => out,
            Err(err) => panic!("docker {} on node {n} failed: {err}", args.join(" ")),
        }
    }

    /// The docker CLI against node `n`; `Err(stderr)` when it fails.
    pub fn try_docker_on(&self, n: usize, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-H", self.nodes[n - 1].host.as_str()];
        all.extend_from_slice(args);
        crate::docker_try(&all)
    }

    /// Kills node `n`'s dockerd and everything it ran, as a machine that goes down.
    pub fn stop_node(&self, n: usize) {
        script(&["stop-node", &self.id, &n.to_string()]);
    }

    /// Starts node `n` again; it rejoins the swarm by itself.
    pub fn start_node(&self, n: usize) {
        script(&["start-node", &self.id, &n.to_string()]);
    }

    /// `docker service create --detach --quiet --name NAME ARGS…` on the manager; `args` end
    /// with the image (and its command).
    pub fn create_service(&self, name: &str, args: &[&str]) {
        let mut all = vec!["service", "create", "--detach", "--quiet", "--name", name];
        all.extend_from_slice(args);
        self.docker(&all);
    }

    /// Each node's status as the manager sees it: `[("dkt-sw3-n1", "Ready"), …]`.
    pub fn node_states(&self) -> Vec<(String, String)> {
        self.docker(&["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(h, s)| (h.to_string(), s.to_string()))
            .collect()
    }

    /// An attachable overlay network `name` (services and plain containers can join it).
    pub fn overlay(&self, name: &str) -> String {
        self.docker(&["network", "create", "-d", "overlay", "--attachable", name]);
        name.to_string()
    }

    /// A real nginx as a service on the manager, on `network`, resolving `backend` (a service
    /// with `--endpoint-mode dnsrr`) per request through Docker's DNS (`resolver 127.0.0.11
    /// valid=1s`) and proxying `/` to its tasks' `port`; published in host mode, so the host
    /// reaches it. Returns its URL (`http://<manager ip>:8080`) once it answers.
    pub fn nginx(&self, network: &str, backend: &str, port: u16) -> String {
        let conf = format!(
            "resolver 127.0.0.11 valid=1s ipv6=off;\n\
             server {{\n    listen 80;\n    location / {{\n        set $backend {backend};\n        \
             proxy_pass http://$backend:{port};\n        proxy_next_upstream error timeout http_502;\n    }}\n}}\n"
        );
        let file = self.dir.join(format!("nginx-{backend}.conf"));
        std::fs::write(&file, conf).expect("write the nginx site");
        let config = format!("dkt-nginx-{backend}");
        self.docker(&["config", "create", &config, &file.display().to_string()]);
        let target = format!("src={config},target=/etc/nginx/conf.d/site.conf");
        self.create_service(
            &format!("dkt-nginx-{backend}"),
            &[
                "--network",
                network,
                "--constraint",
                "node.role==manager",
                "--config",
                &target,
                "--publish",
                "mode=host,target=80,published=8080",
                "dkt/nginx:latest",
            ],
        );
        let url = format!("http://{}:8080", self.nodes[0].ip);
        assert!(
            crate::eventually(Duration::from_secs(60), || crate::http_get(
                &url,
                Duration::from_secs(2)
            )
            .is_ok()),
            "nginx at {url} never answered"
        );
        url
    }
}

/// Runs `scripts/swarm ARGS…` (its images always come from the host engine, whatever the
/// test's DOCKER_HOST) and returns its stdout; panics with its stderr when it fails.
pub fn script(args: &[&str]) -> String {
    let out = Command::new(crate::root().join("scripts/swarm"))
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/swarm");
    assert!(
        out.status.success(),
        "scripts/swarm {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = Command::new(crate::root().join("scripts/swarm"))
            .args(["down", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
