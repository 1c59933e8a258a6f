#!/usr/bin/env python3
"""swap under load through a real nginx, against the compose-style recreate, in one run,
printed as Markdown tables (issue 4).

Setup: a test network, dkt/nginx (the host's nginx-light) proxying to an upstream include
file, the service `backend` running dkt/app:v1. Load: 20 connections for LOAD_SECONDS (12 s),
the deploy started in the middle:

  swap, wrk -H 'Connection: close'   a new connection per request
  swap, hey                          keep-alive; retries a request whose idle connection the
                                     server closed, as browsers do
  swap, wrk keep-alive               no retries: nginx's reload closing idle keep-alive
                                     connections shows up as socket read errors
  compose-style recreate, wrk k-a    `docker-compose up -d backend` (stop, then start), then the
                                     upstream file pointed at the new address and nginx reloaded
  20 requests of 2 s each            started just before the switch: all must return 200
  never-healthy image                swap aborts within its health budget; 0 failed requests
  alias behind a resolving nginx     `--strategy alias` with nginx resolving the alias per
                                     request (`resolver 127.0.0.11 valid=1s`), hey: on a network
                                     whose subnet the engine chose, and on one with a configured
                                     subnet (the old container then leaves DNS at the switch)

Bars: 0 non-2xx and 0 errors for the first two; 0 non-2xx for wrk keep-alive (its socket
errors reported); both versions answered; swap's overhead (total - time to healthy - drain)
at most 1 s. Needs wrk, hey, docker-compose and the fixture images (scripts/fixtures).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD_SECONDS = int(os.environ.get("BENCH_SECONDS", "12"))
CONNECTIONS = 20
ALIAS_RUNS = int(os.environ.get("BENCH_ALIAS_RUNS", "3"))
TAG = f"dkt-bench-swap-{os.getpid()}"
LABEL = "io.deploykit.test=1"

WRK_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) seen = {} non2xx = 0 end
function response(status, headers, body)
  local v = headers["X-App-Version"] or headers["x-app-version"] or "none"
  seen[v] = (seen[v] or 0) + 1
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local total, bad = {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("seen")) do total[k] = (total[k] or 0) + v end
    bad = bad + t:get("non2xx")
  end
  for k, v in pairs(total) do io.write(string.format("BENCH version %s %d\n", k, v)) end
  io.write(string.format("BENCH non2xx %d\n", bad))
  io.write(string.format("BENCH requests %d\n", summary.requests))
  local e = summary.errors
  io.write(string.format("BENCH errors %d %d %d %d\n", e.connect, e.read, e.write, e.timeout))
end
"""


def sh(*args, check=True, capture=True):
    return subprocess.run(list(args), check=check, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)


def docker(*args):
    return sh("docker", *args).stdout.strip()


def say(msg):
    print(f"bench-swap: {msg}", file=sys.stderr, flush=True)


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "swap"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "swap")


def ip_of(container, net):
    return docker("inspect", "-f",
                  f'{{{{(index .NetworkSettings.Networks "{net}").IPAddress}}}}', container)


class Site:
    """nginx + backend on a fresh network; the upstream file in a temp dir."""

    def __init__(self, swap_bin):
        self.swap_bin = swap_bin
        self.net = f"{TAG}-net"
        self.nginx = f"{TAG}-nginx"
        self.backend = "backend"  # the service's stable name, as a user has it
        self.project = TAG.replace("-", "")
        self.dir = tempfile.mkdtemp(prefix="dkt-bench-swap-")
        self.conf = os.path.join(self.dir, "conf.d")
        os.makedirs(self.conf)
        self.locks = os.path.join(self.dir, "locks")
        self.upstream = os.path.join(self.conf, "upstream-backend.conf")
        docker("network", "create", "--label", LABEL, self.net)
        with open(os.path.join(self.conf, "site.conf"), "w") as f:
            f.write("server {\n    listen 80;\n    location / {\n"
                    "        proxy_pass http://backend;\n    }\n}\n")
        self.backend_container = None

    def start_backend(self, image):
        name = f"{TAG}-backend"
        docker("run", "-d", "--name", name, "--label", LABEL, "--network", self.net, image)
        self.backend_container = name
        self.point_upstream(name)
        return name

    def point_upstream(self, container):
        with open(self.upstream + ".tmp", "w") as f:
            f.write(f"upstream backend {{\n    server {ip_of(container, self.net)}:8000;\n}}\n")
        os.rename(self.upstream + ".tmp", self.upstream)

    def start_nginx(self):
        docker("run", "-d", "--name", self.nginx, "--label", LABEL, "--network", self.net,
               "-v", f"{self.conf}:/etc/nginx/conf.d", "dkt/nginx:latest")
        self.url = f"http://{ip_of(self.nginx, self.net)}:80"
        wait_for(lambda: version(self.url) is not None, 10)

    def reload(self):
        docker("exec", self.nginx, "nginx", "-s", "reload")

    def swap(self, image, *extra):
        args = [self.swap_bin, "-q", "--service", "backend", "--container",
                self.backend_container, "--image", image, "--upstream-file", self.upstream,
                "--nginx-container", self.nginx, "--health-path", "/health",
                "--lock-dir", self.locks, *extra]
        start = time.monotonic()
        p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        elapsed = time.monotonic() - start
        try:
            record = json.loads(p.stdout)
        except json.JSONDecodeError:
            record = {}
        if p.returncode not in (0, 1):
            say(p.stderr)
        return p.returncode, record.get("swap", {}), elapsed, p.stderr

    def cleanup(self):
        subprocess.run(["bash", "-c",
                        f"docker ps -aq --filter name=^/{TAG} | xargs -r docker rm -f -v"],
                       capture_output=True)
        subprocess.run(["docker-compose", "-p", self.project, "-f",
                        os.path.join(self.dir, "compose.yml"), "down", "-t", "10"],
                       capture_output=True, cwd=self.dir)
        subprocess.run(["docker", "network", "rm", self.net], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class AliasSite:
    """The service `api` found by its network alias, behind an nginx that resolves the alias per
    request, as proxies that discover containers do."""

    def __init__(self, swap_bin, subnet):
        self.swap_bin = swap_bin
        kind = "subnet" if subnet else "auto"
        self.net = f"{TAG}-alias-{kind}"
        self.nginx = f"{TAG}-alias-{kind}-nginx"
        self.api = f"{TAG}-alias-{kind}-api"
        self.dir = tempfile.mkdtemp(prefix="dkt-bench-swap-alias-")
        self.locks = os.path.join(self.dir, "locks")
        conf = os.path.join(self.dir, "conf.d")
        os.makedirs(conf)
        with open(os.path.join(conf, "site.conf"), "w") as f:
            f.write("server {\n    listen 80;\n    resolver 127.0.0.11 valid=1s;\n"
                    "    location / {\n        set $api http://api:8000;\n"
                    "        proxy_pass $api;\n    }\n}\n")
        create = ["network", "create", "--label", LABEL]
        if subnet:
            for n in range(256):
                p = subprocess.run(["docker", *create, "--subnet", f"10.254.{n}.0/24", self.net],
                                   capture_output=True, text=True, check=False)
                if p.returncode == 0:
                    break
            else:
                raise SystemExit("bench-swap: no free 10.254.x.0/24 subnet")
        else:
            docker(*create, self.net)
        docker("run", "-d", "--name", self.api, "--label", LABEL, "--network", self.net,
               "--network-alias", "api", "dkt/app:v1")
        docker("run", "-d", "--name", self.nginx, "--label", LABEL, "--network", self.net,
               "-v", f"{conf}:/etc/nginx/conf.d", "dkt/nginx:latest")
        self.url = f"http://{ip_of(self.nginx, self.net)}:80"
        wait_for(lambda: version(self.url) is not None, 10)

    def swap(self, image):
        p = subprocess.run([self.swap_bin, "-q", "--service", "api", "--container", self.api,
                            "--image", image, "--strategy", "alias", "--drain", "3s",
                            "--health-path", "/health", "--lock-dir", self.locks],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            say(f"swap (alias) failed:\n{p.stderr}")
        try:
            switch = json.loads(p.stdout).get("swap", {}).get("switch", {})
        except json.JSONDecodeError:
            switch = {}
        left = "old left DNS at the switch" if switch.get("old_left_dns") else "old kept the alias"
        return f"exit {p.returncode}, {left}"

    def cleanup(self):
        subprocess.run(["bash", "-c",
                        f"docker ps -aq --filter name=^/{self.net} | xargs -r docker rm -f -v"],
                       capture_output=True, check=False)
        subprocess.run(["docker", "network", "rm", self.net], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def version(url):
    try:
        with urllib.request.urlopen(url + "/version", timeout=2) as r:
            return r.read().decode().strip()
    except (OSError, ValueError):
        return None


def wait_for(f, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if f():
            return True
        time.sleep(0.05)
    raise SystemExit("bench-swap: timed out waiting for the site")


class Sampler(threading.Thread):
    """Versions seen through nginx (a new connection every 20 ms), for hey, which cannot."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.stop, self.seen = url, False, set()

    def run(self):
        while not self.stop:
            v = version(self.url)
            if v:
                self.seen.add(v)
            time.sleep(0.02)


def run_wrk(url, keepalive, deploy):
    """wrk for LOAD_SECONDS with `deploy()` started in the middle."""
    lua = os.path.join(tempfile.gettempdir(), f"{TAG}.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{LOAD_SECONDS}s", "-s", lua]
    if not keepalive:
        args += ["-H", "Connection: close"]
    p = subprocess.Popen(args + [url + "/"], stdout=subprocess.PIPE, text=True)
    time.sleep(LOAD_SECONDS / 2 - 1)
    result = deploy()
    out, _ = p.communicate()
    versions = {m[0]: int(m[1]) for m in re.findall(r"BENCH version (\S+) (\d+)", out)}
    errors = [int(x) for x in re.search(r"BENCH errors (\d+) (\d+) (\d+) (\d+)", out).groups()]
    return {
        "requests": int(re.search(r"BENCH requests (\d+)", out).group(1)),
        "non2xx": int(re.search(r"BENCH non2xx (\d+)", out).group(1)),
        "errors": dict(zip(["connect", "read", "write", "timeout"], errors, strict=True)),
        "versions": sorted(v for v in versions if v != "none"),
        "deploy": result,
    }


def run_hey(url, deploy):
    sampler = Sampler(url)
    sampler.start()
    p = subprocess.Popen(["hey", "-z", f"{LOAD_SECONDS}s", "-c", str(CONNECTIONS), url + "/"],
                         stdout=subprocess.PIPE, text=True)
    time.sleep(LOAD_SECONDS / 2 - 1)
    result = deploy()
    out, _ = p.communicate()
    sampler.stop = True
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    err_section = out.split("Error distribution:")[1] if "Error distribution:" in out else ""
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", err_section))
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", out)
    return {
        "requests": sum(statuses.values()) + errors,
        "non2xx": sum(n for c, n in statuses.items() if not 200 <= c < 300),
        "errors": {"all": errors},
        "versions": sorted(sampler.seen),
        "deploy": result + (f"; slowest request {float(slowest[1]):.2f} s" if slowest else ""),
    }


def slow_requests(site, image):
    """20 requests of 2 s each, started just before the swap."""
    results = []

    def one():
        try:
            with urllib.request.urlopen(site.url + "/slow?ms=2000", timeout=30) as r:
                results.append(r.status)
        except Exception as e:  # noqa: BLE001 - any failure counts
            results.append(str(e))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    code, rec, elapsed, _ = site.swap(image)
    for t in threads:
        t.join()
    return results, code, rec, elapsed


def compose_recreate(site, image):
    """What users run today: `docker-compose up -d backend` stops the old container, then
    starts the new one; their script then points nginx at it (here: upstream file + reload)."""
    compose = os.path.join(site.dir, "compose.yml")
    with open(compose, "w") as f:
        f.write(f"""version: "2.4"
services:
  backend:
    image: ${{TAG_IMAGE}}
    labels: ["{LABEL}"]
networks:
  default:
    external: true
    name: {site.net}
""")
    env = dict(os.environ, TAG_IMAGE=image)
    start = time.monotonic()
    subprocess.run(["docker-compose", "-p", site.project, "-f", compose, "up", "-d", "backend"],
                   env=env, cwd=site.dir, check=True, capture_output=True)
    container = f"{site.project}_backend_1"
    site.point_upstream(container)
    site.reload()
    return time.monotonic() - start


def cell_errors(errors):
    if "all" in errors:
        return str(errors["all"])
    total = sum(errors.values())
    if total == 0:
        return "0"
    return f"{total} ({', '.join(f'{k} {v}' for k, v in errors.items() if v)})"


def main():
    for tool in ("wrk", "hey", "docker-compose"):
        if not shutil.which(tool):
            raise SystemExit(f"bench-swap: {tool} is not installed")
    subprocess.run([os.path.join(ROOT, "scripts/fixtures")], check=True)
    swap_bin = build()
    site = Site(swap_bin)
    rows, overheads = [], []
    try:
        site.start_backend("dkt/app:v1")
        site.start_nginx()
        images = iter(["dkt/app:v2", "dkt/app:v1", "dkt/app:v2", "dkt/app:v1", "dkt/app:v2"])

        def swap_once():
            code, rec, elapsed, err = site.swap(next(images))
            if code != 0:
                say(f"swap failed:\n{err}")
            overheads.append(rec)
            return f"exit {code}, {elapsed:.2f} s"

        say("swap under wrk -H 'Connection: close'")
        rows.append(("swap, wrk `Connection: close`", run_wrk(site.url, False, swap_once)))
        say("swap under hey (keep-alive)")
        rows.append(("swap, hey (keep-alive, retries)", run_hey(site.url, swap_once)))
        say("swap under wrk keep-alive")
        rows.append(("swap, wrk keep-alive (no retries)", run_wrk(site.url, True, swap_once)))

        say("20 requests of 2 s at the switch")
        slow, slow_code, slow_rec, slow_elapsed = slow_requests(site, next(images))
        overheads.append(slow_rec)

        say("a never-healthy image (NEVER_HEALTHY=1, health budget 5 s)")

        def never_healthy():
            code, _rec, elapsed, _ = site.swap("dkt/app:v3", "--env", "NEVER_HEALTHY=1",
                                               "--health-timeout", "5s")
            return f"exit {code} after {elapsed:.1f} s (budget 5 s)"

        rows.append(("swap to a never-healthy image, wrk `Connection: close`",
                     run_wrk(site.url, False, never_healthy)))
        live = docker("inspect", "-f", "{{.Config.Image}} {{.State.Status}}",
                      site.backend_container)

        for subnet in (False, True):
            kind = "a configured subnet" if subnet else "a subnet the engine chose"
            runs = []
            for n in range(ALIAS_RUNS):
                say(f"alias behind an nginx resolving per request, on {kind}, under hey "
                    f"({n + 1} of {ALIAS_RUNS})")
                alias = AliasSite(swap_bin, subnet)
                try:
                    runs.append(run_hey(alias.url, lambda a=alias: a.swap("dkt/app:v2")))
                finally:
                    alias.cleanup()
            stalled = sum(1 for r in runs if r["errors"]["all"])
            rows.append((f"alias behind nginx resolving per request, {kind}, hey, "
                         f"{ALIAS_RUNS} runs summed", {
                             "requests": sum(r["requests"] for r in runs),
                             "non2xx": sum(r["non2xx"] for r in runs),
                             "errors": {"all": sum(r["errors"]["all"] for r in runs)},
                             "versions": sorted({v for r in runs for v in r["versions"]}),
                             "deploy": f"{runs[0]['deploy'].split(';')[0]}; "
                                       f"runs with stuck requests: {stalled} of {ALIAS_RUNS}",
                         }))

        say("compose-style recreate under wrk keep-alive")
        # Hand the service over to compose: stop swap's container, let compose own `backend`.
        docker("rm", "-f", site.backend_container)
        compose_recreate(site, "dkt/app:v1")
        wait_for(lambda: version(site.url) == "v1", 10)
        time.sleep(1)
        rows.append(("compose-style recreate (`docker-compose up -d`), wrk keep-alive",
                     run_wrk(site.url, True,
                             lambda: f"{compose_recreate(site, 'dkt/app:v2'):.2f} s")))
    finally:
        site.cleanup()

    print(f"### swap through nginx, {CONNECTIONS} connections, {LOAD_SECONDS} s, "
          "deploy in the middle\n")
    print("| run | requests | non-2xx | socket errors | versions answering | deploy |")
    print("|---|---:|---:|---:|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['requests']} | {r['non2xx']} | {cell_errors(r['errors'])} "
              f"| {', '.join(r['versions'])} | {r['deploy']} |")
    ok = sum(1 for s in slow if s == 200)
    print(f"| 20 requests of 2 s started just before the switch | {len(slow)} "
          f"| {len(slow) - ok} | 0 | | exit {slow_code}, {slow_elapsed:.2f} s, "
          f"drain {slow_rec.get('drain', {}).get('ms', '?')} ms |")
    print(f"\nAfter the never-healthy attempt the live container was: `{live}`.\n")
    print("### swap's own overhead (total − new container's time to healthy − drain; bar ≤ 1000 ms)\n")
    print("| swap | total ms | start + healthy ms | drain ms | overhead ms | of which: "
          "preflight, create, switch, stop, cleanup ms |")
    print("|---|---:|---:|---:|---:|---|")
    for i, rec in enumerate(overheads, 1):
        ms = rec.get("ms", {})
        healthy = ms.get("start", 0) + rec.get("health", {}).get("elapsed_ms", 0)
        parts = ", ".join(str(ms.get(k, "?")) for k in
                          ("preflight", "create", "switch", "stop", "cleanup"))
        print(f"| {i} ({rec.get('image', '?')}) | {ms.get('total', '?')} | {healthy} "
              f"| {ms.get('drain', 0)} | {rec.get('overhead_ms', '?')} | {parts} |")
    print(f"\nLoad average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
