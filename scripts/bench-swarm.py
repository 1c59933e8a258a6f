#!/usr/bin/env python3
"""The test swarm and healthwait --service, measured in one run, printed as Markdown tables.

  harness:      scripts/swarm up / down of a two-node swarm (and a one-node one), N trials
  convergence:  on a two-node swarm, a service of 2 replicas (dkt/app, HEALTHCHECK every 1 s)
                updated v1 -> v2 -> v1 ... start-first, stop-first, and start-first with old
                tasks slow to stop (they ignore their stop signal, so Swarm kills them after a
                10 s grace period, as an app draining long requests would take); after each
                `docker service update --detach`, one waiter decides when it is done:
                  - healthwait --service web
                  - `docker service update` without --detach (the CLI's own "converged")
                  - the loop a user writes: `docker service ps` every 2 s until 2 tasks of the
                    new image are Running
                An observer polls the manager's API every 50 ms on its own and notes when the
                update has truly converged: 2 tasks of the new image running and no task of
                the old one alive. Reported per waiter: when it said done (from the update's
                start), how long after the true convergence, and how often it said done while
                an old task was still alive (or before the new ones ran).

The swarm runs in network namespaces (scripts/swarm), never on the host engine.
Usage: scripts/bench-swarm.py(BENCH_TRIALS=3 by default; needs root, scripts/fixtures)
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIALS = int(os.environ.get("BENCH_TRIALS", "3"))
IMAGES = ["dkt/app:v1", "dkt/app:v2"]


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "healthwait"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "healthwait")


def swarm(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    out = subprocess.run([os.path.join(ROOT, "scripts/swarm"), *args], check=False, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench-swarm: scripts/swarm {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def up(nodes):
    args = ["up", "--nodes", str(nodes)]
    for image in IMAGES:
        args += ["--image", image]
    return json.loads(swarm(*args))


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def api(sock, path):
    conn = UnixHTTP(sock)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


ALIVE = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting",
         "running"}


def converged(sock, image, replicas):
    """2 tasks of `image` running and no task of another image alive (the observer's test)."""
    flt = json.dumps({"service": ["web"]})
    tasks = api(sock, "/v1.41/tasks?filters=" + urllib.parse.quote(flt))
    running = old = 0
    for t in tasks:
        state = t["Status"]["State"]
        timg = t["Spec"]["ContainerSpec"]["Image"]
        if timg == image and state == "running" and t["DesiredState"] == "running":
            running += 1
        elif timg != image and state in ALIVE:
            old += 1
    return running == replicas and old == 0


class Observer(threading.Thread):
    def __init__(self, sock, image, replicas, t0):
        super().__init__(daemon=True)
        self.sock, self.image, self.replicas, self.t0 = sock, image, replicas, t0
        self.at = None
        self.stop = False

    def run(self):
        while not self.stop and self.at is None:
            try:
                if converged(self.sock, self.image, self.replicas):
                    self.at = time.monotonic() - self.t0
            except OSError:
                pass
            time.sleep(0.05)


def docker(host, *args, check=True):
    return subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True,
                          check=check)


USER_LOOP = r'''
while :; do
  n=$(docker service ps web --filter desired-state=running --format '{{.Image}} {{.CurrentState}}' \
      | grep -c "^$IMAGE Running")
  [ "$n" -ge 2 ] && break
  sleep 2
done
'''


SCENARIOS = [
    ("start-first", "start-first", []),
    ("stop-first", "stop-first", []),
    ("start-first, slow to stop", "start-first",
     ["--stop-signal", "SIGWINCH", "--stop-grace-period", "10s"]),
]


def trial(manager, sock, healthwait, waiter, image, order):
    """One update to `image`, waited for by `waiter`. Returns (done_at, true_at, early)."""
    env = dict(os.environ, DOCKER_HOST=manager, IMAGE=image)
    update = ["service", "update", "--quiet", "--image", image, "--update-order", order, "web"]
    t0 = time.monotonic()
    obs = Observer(sock, image, 2, t0)
    if waiter == "docker service update":
        obs.start()
        docker(manager, *update)
    else:
        docker(manager, *update[:2], "--detach", *update[2:])
        obs.start()
        if waiter == "healthwait --service":
            out = subprocess.run([healthwait, "-q", "--service", "web", "--timeout", "3m"],
                                 check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True)
            if out.returncode != 0:
                sys.exit(f"bench-swarm: healthwait failed:\n{out.stderr}")
        else:
            subprocess.run(["bash", "-c", USER_LOOP], env=env, check=True)
    done = time.monotonic() - t0
    early = not converged(sock, image, 2)
    # Wait for the true convergence before the next update (and for Swarm's own status).
    while obs.at is None and time.monotonic() - t0 < 180:
        time.sleep(0.05)
    obs.stop = True
    while api(sock, "/v1.41/services/web").get("UpdateStatus", {}).get("State") == "updating":
        time.sleep(0.1)
    return done, obs.at if obs.at is not None else float("nan"), early


def fmt(seconds):
    return f"{seconds:.1f} s"


def main():
    healthwait = build()

    # ---- the harness ------------------------------------------------------------------------
    rows = []
    for nodes in (2, 1):
        ups, downs = [], []
        for _ in range(TRIALS):
            t = time.monotonic()
            s = up(nodes)
            ups.append(time.monotonic() - t)
            t = time.monotonic()
            swarm("down", s["id"])
            downs.append(time.monotonic() - t)
        rows.append((f"{nodes}-node swarm up (ready, images loaded)", ups))
        rows.append((f"{nodes}-node swarm down", downs))
    print(f"### The test swarm (scripts/swarm), {TRIALS} trials\n")
    print("| step | median | min | max |")
    print("|---|---|---|---|")
    for name, xs in rows:
        print(f"| {name} | {fmt(statistics.median(xs))} | {fmt(min(xs))} | {fmt(max(xs))} |")
    print()

    # ---- convergence ------------------------------------------------------------------------
    s = up(2)
    try:
        manager = s["manager"]
        sock = manager[len("unix://"):]
        docker(manager, "service", "create", "--quiet", "--name", "web", "--replicas", "2",
               "--placement-pref", "spread=node.id", IMAGES[0])
        current = 0
        waiters = ["healthwait --service", "docker service update", "`docker service ps` loop"]
        results = {}
        for name, order, settings in SCENARIOS:
            if settings:
                docker(manager, "service", "update", "--quiet", *settings, "web")
            for _ in range(TRIALS):
                for waiter in waiters:
                    current = 1 - current
                    results.setdefault((name, waiter), []).append(
                        trial(manager, sock, healthwait, waiter, IMAGES[current], order))
        print(f"### Waiting for an update to converge, 2 nodes, 2 replicas, {TRIALS} trials each\n")
        print("Said done: from the update's start to the waiter's exit. After true: the waiter's")
        print("exit minus the moment the observer saw 2 new tasks running and no old one alive")
        print("(negative: it said done too early). Early: how often an old task was still alive")
        print("(or a new one not running) when it said done.\n")
        print("| order | waiter | said done (median) | after true convergence (median) "
              "| early | said done vs healthwait |")
        print("|---|---|---|---|---|---|")
        for order, _, _ in SCENARIOS:
            base = statistics.median(d for d, _, _ in results[(order, waiters[0])])
            for waiter in waiters:
                rs = results[(order, waiter)]
                done = statistics.median(d for d, _, _ in rs)
                lag = statistics.median(d - t for d, t, _ in rs)
                early = sum(1 for _, _, e in rs if e)
                print(f"| {order} | {waiter} | {fmt(done)} | {lag:+.2f} s | {early}/{len(rs)} "
                      f"| {done / base:.2f}× |")
    finally:
        swarm("down", s["id"])


if __name__ == "__main__":
    main()
