//! Swarm services: what a service's tasks are doing on each node, and whether the service has
//! converged — for `healthwait --service`, and for swap and notify.
//!
//! A service has converged when the tasks Swarm wants (its replicas, or one per eligible node
//! for a global service) all run the service's *current* spec, are running (which, for an image
//! with a HEALTHCHECK, Swarm reports only once the container is healthy: until then the task is
//! `starting`), and no task of an older spec is still alive. Swarm's own update status says
//! "completed" several seconds before the old tasks are gone: it is not the test.
//!
//! Which spec a task runs: Swarm gives a task a copy of the service's task template when it
//! makes it, so a task is current when its spec equals the service's template (read without
//! Swarm's inserted defaults). The API has no spec version on tasks.
//!
//! Tasks on a node that is down are not counted either way (Swarm cannot reach them, and
//! reports them as it last heard of them); the record shows them with `node_up: false`.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{Node, Service, ServiceUpdateStatusStateEnum, Task, TaskSpec, TaskState};
use bollard::query_parameters::{
    InspectServiceOptions, ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    LogsOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Serialize;

use crate::docker::Engine;
use crate::error::{Error, Result};

/// The stack a service belongs to (`docker stack deploy` sets it).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// One task as the record shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub id: String,
    /// `web.2` (replicated) or `web.<node>` (global), as `docker service ps` names it.
    pub name: String,
    /// The node's hostname, or `unassigned`.
    pub node: String,
    pub node_up: bool,
    /// What the task is doing: `running`, `starting`, `failed`, `shutdown`, …
    pub state: String,
    /// What Swarm wants it to do: `running` or `shutdown`.
    pub desired: String,
    /// Whether it runs the service's current spec.
    pub current: bool,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(skip)]
    slot: Option<i64>,
}

/// What one look at a service found.
#[derive(Debug, Clone)]
pub struct Look {
    pub id: String,
    pub name: String,
    pub image: String,
    /// The service's spec version (`Version.Index`), which every update changes.
    pub version: u64,
    /// How many tasks Swarm wants running.
    pub desired: u64,
    /// Swarm's update status (`updating`, `completed`, `rollback_completed`, …) and message.
    pub update: Option<(String, String)>,
    pub tasks: Vec<TaskView>,
}

/// How a look ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Converged; the words say what runs where.
    Converged(String),
    /// Not yet; the words say what is missing.
    Converging(String),
    /// It cannot converge (a restart loop, a paused or rolled-back update); the words say why.
    Failed(String),
}

/// Per node: how many tasks of the service are in which state.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NodeTasks {
    pub up: bool,
    /// Tasks of the current spec running.
    pub running: u32,
    /// Tasks of the current spec on their way (pending, starting, …).
    pub starting: u32,
    /// Tasks of the current spec that failed (or were rejected) while we watched.
    pub failed: u32,
    /// Tasks of an older spec still alive.
    pub old: u32,
    /// Tasks Swarm last heard of as alive on this node, which is down: it cannot reach them.
    pub unreachable: u32,
}

/// A service as the record shows it after a wait.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceReport {
    pub service: String,
    pub id: String,
    pub image: String,
    pub version: u64,
    pub desired: u64,
    pub running: u64,
    pub converged: bool,
    /// When it converged, from the start of the wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converged_ms: Option<u64>,
    /// Swarm's update state and message (`completed: update completed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    pub nodes: BTreeMap<String, NodeTasks>,
    /// Its live tasks, and the tasks of the current spec that failed while we watched.
    pub tasks: Vec<TaskView>,
}

/// The ids of the services named `name` (a name or an id); `Ok(None)` when there is none.
/// An engine that is not a Swarm manager is bad input naming DOCKER_HOST.
pub fn find_service(engine: &Engine, name: &str) -> Result<Option<String>> {
    let options = InspectServiceOptions {
        insert_defaults: false,
    };
    match engine.block(engine.docker.inspect_service(name, Some(options))) {
        Ok(service) => Ok(service.id),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(swarm_error(format!("inspect service {name}"), e)),
    }
}

/// The names of the services of stack `stack`, sorted.
pub fn stack_services(engine: &Engine, stack: &str) -> Result<Vec<String>> {
    let filters = HashMap::from([("label", vec![format!("{STACK_LABEL}={stack}")])]);
    let options = ListServicesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let services = engine
        .block(engine.docker.list_services(Some(options)))
        .map_err(|e| swarm_error(format!("list the services of stack {stack}"), e))?;
    let mut names: Vec<String> = services
        .into_iter()
        .filter_map(|s| s.spec.and_then(|spec| spec.name))
        .collect();
    names.sort();
    Ok(names)
}

/// "This node is not a swarm manager" is the wrong engine, not a failed step.
fn swarm_error(context: String, e: bollard::errors::Error) -> Error {
    if let bollard::errors::Error::DockerResponseServerError {
        status_code: 503,
        message,
    } = &e
    {
        if message.contains("not a swarm manager") || message.contains("swarm mode") {
            return Error::input(
                "DOCKER_HOST",
                format!(
                    "the Docker Engine at {} is not a Swarm manager; point DOCKER_HOST at one",
                    crate::docker::host(),
                ),
            );
        }
    }
    Error::docker("swarm", context, e)
}

/// One look at service `id`: its current spec and desired count, its tasks and their nodes.
pub fn look(engine: &Engine, id: &str) -> Result<Look> {
    let service_filter = HashMap::from([("id", vec![id.to_string()])]);
    let options = ListServicesOptionsBuilder::default()
        .filters(&service_filter)
        .status(true)
        .build();
    let services = engine
        .block(engine.docker.list_services(Some(options)))
        .map_err(|e| swarm_error(format!("look at service {id}"), e))?;
    let Some(service) = services.into_iter().find(|s| s.id.as_deref() == Some(id)) else {
        return Err(Error::step("swarm", format!("service {id} was removed")));
    };
    let task_filter = HashMap::from([("service", vec![id.to_string()])]);
    let options = ListTasksOptionsBuilder::default()
        .filters(&task_filter)
        .build();
    let tasks = engine
        .block(engine.docker.list_tasks(Some(options)))
        .map_err(|e| swarm_error(format!("list the tasks of service {id}"), e))?;
    let nodes = engine
        .block(engine.docker.list_nodes(None::<ListNodesOptions>))
        .map_err(|e| swarm_error("list the nodes".into(), e))?;
    Ok(Look::new(service, tasks, &nodes))
}

impl Look {
    fn new(service: Service, tasks: Vec<Task>, nodes: &[Node]) -> Look {
        let spec = service.spec.clone().unwrap_or_default();
        let name = spec.name.clone().unwrap_or_default();
        let template = normalized(spec.task_template.as_ref());
        let image = spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let node_info: HashMap<String, (String, bool)> = nodes
            .iter()
            .filter_map(|n| {
                let id = n.id.clone()?;
                let host = n
                    .description
                    .as_ref()
                    .and_then(|d| d.hostname.clone())
                    .unwrap_or_else(|| id.clone());
                let up = n
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .is_some_and(|s| s.to_string() == "ready");
                Some((id, (host, up)))
            })
            .collect();
        let mode = spec.mode.clone().unwrap_or_default();
        let global = mode.global.is_some();
        let status_desired = service
            .service_status
            .as_ref()
            .and_then(|s| s.desired_tasks);
        let replicas = mode
            .replicated
            .as_ref()
            .and_then(|r| r.replicas)
            .map(|r| r.max(0) as u64);
        let mut views: Vec<TaskView> = tasks
            .into_iter()
            .map(|t| {
                let node_id = t.node_id.clone().unwrap_or_default();
                let (node, node_up) = match node_info.get(&node_id) {
                    Some((host, up)) => (host.clone(), *up),
                    None if node_id.is_empty() => ("unassigned".to_string(), true),
                    None => (node_id.clone(), false),
                };
                let status = t.status.clone().unwrap_or_default();
                let name = match t.slot {
                    Some(slot) if !global => format!("{name}.{slot}"),
                    _ => format!("{name}.{node}"),
                };
                TaskView {
                    id: t.id.clone().unwrap_or_default(),
                    name,
                    node,
                    node_up,
                    state: state_name(status.state),
                    desired: state_name(t.desired_state),
                    current: normalized(t.spec.as_ref()) == template,
                    image: t
                        .spec
                        .as_ref()
                        .and_then(|s| s.container_spec.as_ref())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default(),
                    error: status.err.filter(|e| !e.is_empty()),
                    exit_code: status
                        .container_status
                        .and_then(|c| c.exit_code)
                        .filter(|&c| c != 0),
                    slot: if global { None } else { t.slot },
                }
            })
            .collect();
        views.sort_by(|a, b| (a.slot, &a.node, &a.id).cmp(&(b.slot, &b.node, &b.id)));
        let desired = match replicas {
            Some(r) if !global => r,
            // Global: one per eligible node, as Swarm counts them.
            _ => status_desired.unwrap_or_else(|| {
                views
                    .iter()
                    .filter(|t| t.current && t.desired == "running")
                    .count() as u64
            }),
        };
        let update = service.update_status.as_ref().and_then(|u| {
            let state = u.state?;
            if state == ServiceUpdateStatusStateEnum::EMPTY {
                return None;
            }
            Some((state.to_string(), u.message.clone().unwrap_or_default()))
        });
        Look {
            id: service.id.unwrap_or_default(),
            name,
            image,
            version: service.version.and_then(|v| v.index).unwrap_or(0),
            desired,
            update,
            tasks: views,
        }
    }

    /// Tasks of the current spec running on a node that is up.
    pub fn running(&self) -> u64 {
        self.tasks
            .iter()
            .filter(|t| t.current && t.node_up && t.state == "running" && t.desired == "running")
            .count() as u64
    }

    /// Converged, converging or failed; `watch` remembers the failures seen before.
    pub fn verdict(&self, watch: &mut Watch) -> Verdict {
        let first = watch.first_look;
        watch.first_look = false;
        for t in &self.tasks {
            if t.current && is_failed(&t.state) && !watch.failed.contains_key(&t.id) {
                watch.failed.insert(t.id.clone(), !first);
            }
        }

        if let Some((state, message)) = &self.update {
            let manual = message.contains("manually requested rollback");
            match state.as_str() {
                "paused" => {
                    return Verdict::Failed(format!(
                        "{}: its update is paused: {message}",
                        self.name
                    ))
                }
                "rollback_paused" => {
                    return Verdict::Failed(format!(
                        "{}: its update failed and the rollback is paused: {message}",
                        self.name
                    ))
                }
                "rollback_started" | "rollback_completed" if !manual => {
                    return Verdict::Failed(format!(
                        "{}: its update failed and Swarm rolled it back ({state}): {message}",
                        self.name
                    ))
                }
                _ => {}
            }
        }

        // Failures of the current spec while we watched: a slot (or node) failing twice, or
        // more failures than replicas, is a restart loop.
        let new_failures: Vec<&TaskView> = self
            .tasks
            .iter()
            .filter(|t| watch.failed.get(&t.id) == Some(&true))
            .collect();
        let mut per_slot: HashMap<String, u32> = HashMap::new();
        for t in &new_failures {
            let key = match t.slot {
                Some(slot) => slot.to_string(),
                None => t.node.clone(),
            };
            *per_slot.entry(key).or_default() += 1;
        }
        if per_slot.values().any(|&n| n >= 2) || new_failures.len() as u64 > self.desired.max(1) {
            let last = new_failures
                .iter()
                .map(|t| {
                    format!(
                        "{} on {}: {}",
                        t.name,
                        t.node,
                        t.error.as_deref().unwrap_or(&t.state)
                    )
                })
                .next_back()
                .unwrap_or_default();
            return Verdict::Failed(format!(
                "{}: its tasks keep failing ({} failed while waiting; last: {last})",
                self.name,
                new_failures.len()
            ));
        }

        let running = self.running();
        let alive_old: Vec<&TaskView> = self
            .tasks
            .iter()
            .filter(|t| t.node_up && is_alive(&t.state) && !t.current)
            .collect();
        let leaving: Vec<&TaskView> = self
            .tasks
            .iter()
            .filter(|t| t.node_up && is_alive(&t.state) && t.current && t.desired != "running")
            .collect();
        // Swarm may still roll back while its update runs (it watches each new task for its
        // monitor period): not converged until it says it is done.
        let updating = self
            .update
            .as_ref()
            .filter(|(state, _)| matches!(state.as_str(), "updating" | "rollback_started"));
        let summary = self.summary();
        if running == self.desired
            && alive_old.is_empty()
            && leaving.is_empty()
            && updating.is_none()
        {
            return Verdict::Converged(format!(
                "{}: {running}/{} tasks of the current spec running ({summary})",
                self.name, self.desired
            ));
        }
        let mut missing = format!(
            "{}: {running}/{} tasks of the current spec running",
            self.name, self.desired
        );
        if !alive_old.is_empty() {
            missing.push_str(&format!(
                ", {} of an older spec still alive",
                alive_old.len()
            ));
        }
        if !leaving.is_empty() {
            missing.push_str(&format!(", {} shutting down", leaving.len()));
        }
        if let Some((state, _)) = updating {
            missing.push_str(match state.as_str() {
                "updating" => ", Swarm's update still in progress",
                _ => ", Swarm's rollback still in progress",
            });
        }
        if let Some(err) = self
            .tasks
            .iter()
            .filter(|t| t.current && t.desired == "running" && t.state != "running")
            .find_map(|t| t.error.as_deref())
        {
            missing.push_str(&format!(" (last error: {err})"));
        }
        Verdict::Converging(format!("{missing} ({summary})"))
    }

    /// Per node: current tasks by state, and old ones still alive.
    pub fn per_node(&self, watch: &Watch) -> BTreeMap<String, NodeTasks> {
        let mut nodes: BTreeMap<String, NodeTasks> = BTreeMap::new();
        for t in &self.tasks {
            let alive = is_alive(&t.state);
            let failed_here = watch.failed.get(&t.id) == Some(&true);
            if !alive && !failed_here {
                continue;
            }
            let entry = nodes.entry(t.node.clone()).or_default();
            entry.up = t.node_up;
            if !t.node_up {
                entry.unreachable += 1;
            } else if failed_here {
                entry.failed += 1;
            } else if !t.current {
                entry.old += 1;
            } else if t.state == "running" {
                entry.running += 1;
            } else {
                entry.starting += 1;
            }
        }
        nodes
    }

    /// `dkt-n1: 1 running; dkt-n2: 1 starting, 1 old (down)`.
    fn summary(&self) -> String {
        let nodes = self.per_node(&Watch::default());
        if nodes.is_empty() {
            return "no tasks".into();
        }
        nodes
            .iter()
            .map(|(node, n)| {
                let mut parts = Vec::new();
                for (count, what) in [
                    (n.running, "running"),
                    (n.starting, "starting"),
                    (n.old, "old"),
                    (n.unreachable, "unreachable"),
                ] {
                    if count > 0 {
                        parts.push(format!("{count} {what}"));
                    }
                }
                let down = if n.up { "" } else { " (down)" };
                format!("{node}: {}{down}", parts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The record's view after a wait.
    pub fn report(&self, watch: &Watch, converged_ms: Option<u64>) -> ServiceReport {
        ServiceReport {
            service: self.name.clone(),
            id: self.id.clone(),
            image: self.image.clone(),
            version: self.version,
            desired: self.desired,
            running: self.running(),
            converged: converged_ms.is_some(),
            converged_ms,
            update: self
                .update
                .as_ref()
                .map(|(state, message)| format!("{state}: {message}")),
            nodes: self.per_node(watch),
            tasks: self
                .tasks
                .iter()
                .filter(|t| is_alive(&t.state) || watch.failed.get(&t.id) == Some(&true))
                .cloned()
                .collect(),
        }
    }
}

/// What a wait remembers between looks at one service.
#[derive(Debug, Default)]
pub struct Watch {
    /// Failed tasks of the current spec: `true` when it failed while we watched.
    failed: HashMap<String, bool>,
    first_look: bool,
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            failed: HashMap::new(),
            first_look: true,
        }
    }
}

fn is_alive(state: &str) -> bool {
    matches!(
        state,
        "new"
            | "allocated"
            | "pending"
            | "assigned"
            | "accepted"
            | "preparing"
            | "ready"
            | "starting"
            | "running"
    )
}

fn is_failed(state: &str) -> bool {
    matches!(state, "failed" | "rejected" | "complete")
}

fn state_name(state: Option<TaskState>) -> String {
    state
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A task spec as JSON without what only the service's copy carries (`Runtime`).
fn normalized(spec: Option<&TaskSpec>) -> serde_json::Value {
    let mut value =
        serde_json::to_value(spec.cloned().unwrap_or_default()).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("Runtime");
    }
    value
}

/// The last `n` lines a task's container wrote, through the manager (any node).
pub fn task_logs(engine: &Engine, task_id: &str, n: usize) -> Vec<String> {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail(&n.to_string())
        .build();
    let mut stream = engine.docker.task_logs(task_id, Some(options));
    let mut text = String::new();
    engine.block(async {
        // A task on a node that is down never answers: bound the wait.
        let read = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(out) => text.push_str(&String::from_utf8_lossy(&out.into_bytes())),
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
    });
    text.lines().map(str::to_string).collect()
}

/// Shows the errors and last log lines of the tasks that failed or are stuck, at most `max`
/// tasks, on stderr (even with `-q`): the first thing a user needs when a service does not
/// converge.
pub fn report_failed_tasks(engine: &Engine, reports: &[ServiceReport], max: usize) {
    let troubled = reports.iter().flat_map(|r| {
        r.tasks
            .iter()
            .rev()
            .filter(|t| t.current && t.node_up && t.state != "running")
    });
    for t in troubled.take(max) {
        let why = match (&t.error, t.exit_code) {
            (Some(e), _) => format!(": {e}"),
            (None, Some(code)) => format!(" (exit code {code})"),
            (None, None) => String::new(),
        };
        crate::log::block(
            &format!("task {} ({}) on {}: {}{why}", t.name, t.id, t.node, t.state),
            &[],
            true,
        );
        let logs = task_logs(engine, &t.id, 20);
        if !logs.is_empty() {
            crate::log::block(&format!("last log lines of {}:", t.name), &logs, true);
        }
    }
}

/// What to wait for on a Swarm: services by name, or every service of a stack.
#[derive(Debug, Clone, PartialEq)]
pub enum Services {
    Named(Vec<String>),
    Stack(String),
}

impl std::fmt::Display for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Services::Named(names) if names.len() == 1 => write!(f, "service {}", names[0]),
            Services::Named(names) => write!(f, "services {}", names.join(", ")),
            Services::Stack(stack) => write!(f, "stack {stack}"),
        }
    }
}

/// Waiting for several services to converge: one [`Watch`] and the last [`Look`] each.
pub struct Convergence {
    services: Vec<Tracked>,
    started: std::time::Instant,
}

struct Tracked {
    id: String,
    watch: Watch,
    last: Option<Look>,
    converged_ms: Option<u64>,
}

impl Convergence {
    /// Resolves the services (bad input, exit 2, when one does not exist or the stack has none).
    pub fn new(engine: &Engine, what: &Services) -> Result<Convergence> {
        let ids = match what {
            Services::Named(names) => names
                .iter()
                .map(|name| {
                    find_service(engine, name)?.ok_or_else(|| {
                        Error::input(
                            "--service",
                            format!(
                                "no service named {name} on the Swarm at {}",
                                crate::docker::host()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Services::Stack(stack) => {
                let names = stack_services(engine, stack)?;
                if names.is_empty() {
                    return Err(Error::input(
                        "--stack",
                        format!(
                            "no service of a stack named {stack} on the Swarm at {} (label {STACK_LABEL})",
                            crate::docker::host()
                        ),
                    ));
                }
                names
                    .iter()
                    .map(|name| {
                        find_service(engine, name)?.ok_or_else(|| {
                            Error::step("swarm", format!("service {name} was removed"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Convergence {
            services: ids
                .into_iter()
                .map(|id| Tracked {
                    id,
                    watch: Watch::new(),
                    last: None,
                    converged_ms: None,
                })
                .collect(),
            started: std::time::Instant::now(),
        })
    }

    /// Looks at every service once: failed when one cannot converge, converged when all have.
    pub fn look(&mut self, engine: &Engine) -> Result<Verdict> {
        let mut converged = Vec::new();
        let mut converging = Vec::new();
        let mut failed = Vec::new();
        let elapsed = self.started.elapsed().as_millis() as u64;
        for tracked in &mut self.services {
            let look = look(engine, &tracked.id)?;
            match look.verdict(&mut tracked.watch) {
                Verdict::Converged(words) => {
                    tracked.converged_ms.get_or_insert(elapsed);
                    converged.push(words);
                }
                Verdict::Converging(words) => {
                    tracked.converged_ms = None;
                    converging.push(words);
                }
                Verdict::Failed(words) => {
                    tracked.converged_ms = None;
                    failed.push(words);
                }
            }
            tracked.last = Some(look);
        }
        Ok(if !failed.is_empty() {
            Verdict::Failed(failed.join("; "))
        } else if !converging.is_empty() {
            Verdict::Converging(converging.join("; "))
        } else {
            Verdict::Converged(converged.join("; "))
        })
    }

    /// The record's view of every service, as last seen.
    pub fn reports(&self) -> Vec<ServiceReport> {
        self.services
            .iter()
            .filter_map(|t| {
                t.last
                    .as_ref()
                    .map(|look| look.report(&t.watch, t.converged_ms))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(id: &str, slot: i64, node: &str, state: &str, desired: &str, image: &str) -> Task {
        serde_json::from_value(json!({
            "ID": id, "Slot": slot, "NodeID": node, "DesiredState": desired,
            "Spec": {"ContainerSpec": {"Image": image}, "ForceUpdate": 0},
            "Status": {"State": state, "Err": if state == "failed" { "task: non-zero exit (3)" } else { "" }}
        }))
        .unwrap()
    }

    fn service(image: &str, replicas: i64, update: Option<(&str, &str)>) -> Service {
        let mut s = json!({
            "ID": "svc", "Version": {"Index": 7},
            "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                     "TaskTemplate": {"ContainerSpec": {"Image": image}, "ForceUpdate": 0, "Runtime": "container"}}
        });
        if let Some((state, message)) = update {
            s["UpdateStatus"] = json!({"State": state, "Message": message});
        }
        serde_json::from_value(s).unwrap()
    }

    fn nodes(down: &[&str]) -> Vec<Node> {
        ["n1", "n2"]
            .iter()
            .map(|id| {
                let state = if down.contains(id) { "down" } else { "ready" };
                serde_json::from_value(json!({
                    "ID": id, "Description": {"Hostname": format!("host-{id}")},
                    "Status": {"State": state}
                }))
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn converged_only_when_the_old_tasks_are_gone() {
        let mut watch = Watch::new();
        let tasks = vec![
            task("a", 1, "n1", "running", "running", "app:v2"),
            task("b", 2, "n2", "running", "running", "app:v2"),
            task("c", 2, "n2", "running", "shutdown", "app:v1"),
        ];
        let look = Look::new(
            service("app:v2", 2, Some(("completed", "update completed"))),
            tasks,
            &nodes(&[]),
        );
        let Verdict::Converging(why) = look.verdict(&mut watch) else {
            panic!("converged with an old task alive");
        };
        assert!(
            why.contains("2/2") && why.contains("1 of an older spec"),
            "{why}"
        );

        let tasks = vec![
            task("a", 1, "n1", "running", "running", "app:v2"),
            task("b", 2, "n2", "running", "running", "app:v2"),
            task("c", 2, "n2", "shutdown", "shutdown", "app:v1"),
        ];
        let look = Look::new(service("app:v2", 2, None), tasks, &nodes(&[]));
        assert_eq!(
            look.verdict(&mut watch),
            Verdict::Converged(
                "web: 2/2 tasks of the current spec running (host-n1: 1 running; host-n2: 1 running)"
                    .into()
            )
        );
        let report = look.report(&watch, Some(1200));
        assert_eq!(report.nodes["host-n2"].running, 1);
        assert_eq!(report.tasks.len(), 2, "only live tasks: {:?}", report.tasks);
    }

    #[test]
    fn a_task_on_a_node_that_is_down_does_not_count() {
        let tasks = vec![
            task("a", 1, "n1", "running", "running", "app:v1"),
            task("b", 2, "n2", "running", "running", "app:v1"),
        ];
        let look = Look::new(service("app:v1", 2, None), tasks, &nodes(&["n2"]));
        assert!(matches!(
            look.verdict(&mut Watch::new()),
            Verdict::Converging(ref w) if w.contains("1/2") && w.contains("(down)")
        ));
    }

    #[test]
    fn a_restart_loop_and_a_rollback_fail() {
        let mut watch = Watch::new();
        let before = vec![task("x", 1, "n1", "failed", "shutdown", "app:v2")];
        let look = Look::new(service("app:v2", 1, None), before.clone(), &nodes(&[]));
        // A failure from before the wait is history, not a loop.
        assert!(matches!(look.verdict(&mut watch), Verdict::Converging(_)));
        let mut tasks = before;
        tasks.push(task("y", 1, "n1", "failed", "shutdown", "app:v2"));
        tasks.push(task("z", 1, "n1", "starting", "running", "app:v2"));
        let look = Look::new(service("app:v2", 1, None), tasks.clone(), &nodes(&[]));
        assert!(matches!(look.verdict(&mut watch), Verdict::Converging(_)));
        tasks.push(task("w", 1, "n1", "failed", "shutdown", "app:v2"));
        let look = Look::new(service("app:v2", 1, None), tasks, &nodes(&[]));
        let Verdict::Failed(why) = look.verdict(&mut watch) else {
            panic!("a restart loop is not failed");
        };
        assert!(
            why.contains("2 failed while waiting") && why.contains("non-zero exit (3)"),
            "{why}"
        );

        let look = Look::new(
            service(
                "app:v1",
                1,
                Some(("rollback_completed", "update rolled back due to failure")),
            ),
            vec![task("a", 1, "n1", "running", "running", "app:v1")],
            &nodes(&[]),
        );
        assert!(
            matches!(look.verdict(&mut Watch::new()), Verdict::Failed(ref w) if w.contains("rolled it back"))
        );
        let look = Look::new(
            service(
                "app:v1",
                1,
                Some(("rollback_completed", "manually requested rollback")),
            ),
            vec![task("a", 1, "n1", "running", "running", "app:v1")],
            &nodes(&[]),
        );
        assert!(matches!(
            look.verdict(&mut Watch::new()),
            Verdict::Converged(_)
        ));
    }
}
